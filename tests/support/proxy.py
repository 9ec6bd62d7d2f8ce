"""A TCP proxy in front of PostgreSQL that loses one message on purpose.

It forwards bytes both ways until armed. Armed with a marker, it cuts the connection that
sends a client message containing the marker, either before the server sees that message
(``lose="request"``: the server never got it) or after the server answered it in full
(``lose="response"``: the server did it, the client never hears so). ``refuse`` makes it close
every new connection at once, as a server out of reach would look to a client.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Mapping
from typing import Literal, Self

_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's last message of every answer


class CuttingProxy:
    """Listens on 127.0.0.1 (``port``) and forwards to ``host:target_port``."""

    def __init__(self, host: str, target_port: int) -> None:
        self._target = (host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so that the accept loop sees the proxy close
        self.port: int = self._listener.getsockname()[1]
        self._marker: bytes | None = None
        self._lose: Literal["request", "response"] = "request"
        self._then_refuse = False
        self.refuse = False
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def arm(
        self, marker: bytes, lose: Literal["request", "response"], *, then_refuse: bool = False
    ) -> None:
        """Cuts the next connection that sends a message containing ``marker``; with
        ``then_refuse``, refuses every connection from then on."""
        with self._lock:
            self._marker, self._lose, self._then_refuse = marker, lose, then_refuse
            self.cut.clear()

    def _cut(self) -> None:
        if self._then_refuse:
            self.refuse = True
        self.cut.set()

    def dsn(self, dsn_params: Mapping[str, object]) -> str:
        """A libpq DSN that reaches the server through this proxy."""
        from psycopg.conninfo import make_conninfo

        params = {**dsn_params, "host": "127.0.0.1", "port": self.port}
        return make_conninfo("", **params)  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        for thread in self._threads[:1]:
            thread.join(timeout=5)  # the accept loop, before its socket goes
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.refuse:
                client.close()
                continue
            server = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, server]
            thread = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        losing_response = False
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        with self._lock:
                            hit = self._marker is not None and self._marker in data
                            if hit:
                                self._marker = None
                                lose = self._lose
                        if hit and lose == "request":
                            self._cut()
                            return
                        losing_response = losing_response or hit
                        server.sendall(data)
                    elif losing_response:
                        if _READY_FOR_QUERY in data:  # the server has answered in full
                            self._cut()
                            return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()
