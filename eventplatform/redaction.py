"""One rule that keeps credentials out of everything the platform writes.

:func:`redact` is applied to every log line (:class:`RedactingFormatter`), every error message
built from a DSN or a server URL, the command line's whole output (:class:`RedactingStream`),
``status``, the demo and the dead-letter records. It masks, wherever they appear in a text:

- the password of a URL's user info (``postgresql://alice:***@db/app``), and the whole user info
  of a NATS URL without a colon, which is a token (``nats://***@host:4222``);
- ``password=`` and ``sslpassword=`` in a key=value DSN or in a URI's query (quoted or not);
- user info in the repr of a parsed URL (``netloc='bob:***@host'``), as nats-py logs it;
- every secret registered with :func:`register_secret` (``load_settings`` registers the passwords
  and tokens it finds in ``APP_DSN`` and ``APP_NATS_URL``), verbatim, so a library's message
  that quotes one without a recognisable shape is masked too.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from typing import TextIO
from urllib.parse import unquote

#: What a masked secret is replaced with.
MASK = "***"

#: Secrets shorter than this are masked only where their shape shows them (a URL's password,
#: ``password=``): masking a two-letter password verbatim would mangle every word holding it.
MIN_LITERAL_SECRET = 4

_NATS_SCHEMES = ("nats", "tls", "ws", "wss")

# scheme://userinfo@ : user info ends at the last '@' before the next '/', space or quote.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<userinfo>[^\s/@'\"]+)@")
# password=... in key=value DSNs (quoted values may hold spaces and escaped quotes) and in URI
# query strings (up to '&', space or quote).
_KV_PASSWORD = re.compile(
    r"(?P<key>\b(?:ssl)?password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE
)
# netloc='user:password@host' in the repr of urllib's ParseResult / SplitResult.
_NETLOC_REPR = re.compile(r"(?P<key>netloc=['\"])(?P<userinfo>[^'\"@]+)@")

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Masks ``value`` verbatim in everything :func:`redact` sees from now on.

    Its URL-encoded spelling is masked as well. Values shorter than
    :data:`MIN_LITERAL_SECRET` are ignored (they are still masked where their shape shows).
    """
    if not value:
        return
    with _lock:
        for spelling in {value, unquote(value)}:
            if len(spelling) >= MIN_LITERAL_SECRET:
                _secrets.add(spelling)


def secrets_in_url(url: str) -> list[str]:
    """The password (or NATS token) a URL carries in its user info, if any."""
    match = _URL_USERINFO.search(url)
    if match is None:
        return []
    user, colon, password = match["userinfo"].partition(":")
    if colon:
        return [password]
    return [user] if match["scheme"].lower() in _NATS_SCHEMES else []


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}://{user}:{MASK}@"
    if scheme.lower() in _NATS_SCHEMES:
        return f"{scheme}://{MASK}@"  # nats://TOKEN@host
    return match.group(0)  # postgresql://alice@host: a user name, not a secret


def _mask_netloc(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['key']}{user}:{MASK}@" if colon else f"{match['key']}{MASK}@"


def redact(text: str) -> str:
    """Returns ``text`` with every credential it shows masked (see the module docstring)."""
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _KV_PASSWORD.sub(lambda m: m["key"] + MASK, text)
    text = _NETLOC_REPR.sub(_mask_netloc, text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A logging formatter whose whole output (message, arguments, traceback) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Formats the record as :class:`logging.Formatter` does, then redacts it."""
        return redact(super().format(record))


class RedactingStream(io.TextIOBase):
    """A text stream that redacts every write before passing it on.

    The command line wraps ``sys.stdout`` and ``sys.stderr`` in it, so nothing it prints (a
    message, a traceback, a library's warning) shows a credential. Each write is redacted on its
    own: ``print`` and the logging handlers write whole lines, so a secret is never split.

    Args:
        inner: the stream written to.
    """

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self._inner = inner

    def write(self, text: str) -> int:
        """Writes ``text`` redacted; returns ``len(text)`` as callers expect."""
        self._inner.write(redact(text))
        return len(text)

    def flush(self) -> None:
        """Flushes the wrapped stream."""
        self._inner.flush()

    def writable(self) -> bool:
        """Always true."""
        return True

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal (progress bars ask)."""
        return self._inner.isatty()

    def fileno(self) -> int:
        """The wrapped stream's file descriptor."""
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The wrapped stream's encoding."""
        return self._inner.encoding
