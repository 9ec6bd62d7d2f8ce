"""How a platform process authenticates to NATS and secures the connection, from settings.

Credentials come in the forms a NATS operator hands out: user and password or a token in the
URL (``nats://user:password@host``), a ``.creds`` file (JWT + NKEY seed, ``APP_NATS_CREDS``), an
NKEY seed file (``APP_NATS_NKEY_SEED``); TLS with a private CA (``APP_NATS_TLS_CA``) and a
client certificate (``APP_NATS_TLS_CERT`` + ``APP_NATS_TLS_KEY``). Every process builds its
connection from :func:`nats_options`, so all of them accept the same settings.
"""

from __future__ import annotations

import importlib.util
import ssl
from dataclasses import dataclass
from typing import Any

from eventplatform.errors import ConfigurationError
from eventplatform.settings import Settings


@dataclass(frozen=True, slots=True)
class NatsConnectOptions:
    """Authentication and TLS options for ``nats.connect``.

    Attributes:
        tls: the TLS context (None: plain, or nats-py's default context for ``tls://`` URLs).
        user_credentials: path of a ``.creds`` file.
        nkeys_seed: path of an NKEY seed file.
    """

    tls: ssl.SSLContext | None = None
    user_credentials: str | None = None
    nkeys_seed: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``nats.connect`` these options set (unset ones omitted)."""
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs["tls"] = self.tls
        if self.user_credentials:
            kwargs["user_credentials"] = self.user_credentials
        if self.nkeys_seed:
            kwargs["nkeys_seed"] = self.nkeys_seed
        return kwargs


def tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client TLS context that verifies servers (against ``ca`` if given, else the system's
    store) and presents ``cert``/``key`` if given.

    Raises:
        ConfigurationError: a file is not valid PEM; the message names its variable.
    """
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except (ssl.SSLError, OSError) as e:
        msg = f"APP_NATS_TLS_CA={ca!r}: not a readable PEM CA file ({e})"
        raise ConfigurationError(msg) from e
    if cert:
        try:
            context.load_cert_chain(cert, key or None)
        except (ssl.SSLError, OSError) as e:
            msg = (
                f"APP_NATS_TLS_CERT={cert!r} / APP_NATS_TLS_KEY={key!r}: not a matching PEM "
                f"certificate and key ({e})"
            )
            raise ConfigurationError(msg) from e
    return context


def nats_options(settings: Settings) -> NatsConnectOptions:
    """The connect options ``settings`` ask for; files are read now, so a bad one stops the
    process at start-up rather than at its first reconnect.

    Raises:
        ConfigurationError: a TLS file is not valid PEM, or nkeys support is missing.
    """
    tls = None
    if settings.nats_tls_ca or settings.nats_tls_cert:
        tls = tls_context(settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key)
    # nats-py signs the server's nonce with the nkeys package (nats-py's "nkeys" extra).
    signs = settings.nats_creds or settings.nats_nkey_seed
    if signs and importlib.util.find_spec("nkeys") is None:
        msg = "APP_NATS_CREDS / APP_NATS_NKEY_SEED need the nkeys package: pip install nkeys"
        raise ConfigurationError(msg)
    return NatsConnectOptions(
        tls=tls,
        user_credentials=settings.nats_creds or None,
        nkeys_seed=settings.nats_nkey_seed or None,
    )
