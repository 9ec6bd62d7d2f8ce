"""A nats-server with accounts, users, the deployed permissions and mutual TLS, for specs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nkeys

from eventplatform.testing.embedded import EmbeddedNats
from tests.support.tls import Certificate, make_certificates

#: The permission file docker-compose deploys; the spec runs the same one.
PERMISSIONS = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "permissions.conf"

RELAY_PASSWORD = "Relay-NatsPW-7731"


@dataclass(frozen=True)
class SecuredNats:
    """A running secured server and what its clients need.

    Attributes:
        server: the running server.
        tls: the CA, and a client certificate it signed (every client must show one).
        relay_url: ``nats://relay:<password>@127.0.0.1:PORT`` (the relay's user).
        consumer_seed: the NKEY seed file of the consumers' user.
    """

    server: EmbeddedNats
    tls: Certificate
    relay_url: str
    consumer_seed: Path

    @property
    def url(self) -> str:
        """The server's URL without credentials."""
        return self.server.url


def user_nkey(directory: Path) -> tuple[Path, str]:
    """A new user NKEY: its seed file (mode 0600) and its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = directory / "consumer.nk"
    path.write_bytes(seed)
    path.chmod(0o600)
    return path, nkeys.from_seed(bytearray(seed)).public_key.decode()


@contextmanager
def secured_nats(directory: Path) -> Iterator[SecuredNats]:
    """Starts nats-server with the deployed permissions, two users and mutual TLS."""
    tls = make_certificates(directory)
    client = make_certificates(directory, name="client")
    seed, public = user_nkey(directory)
    shutil.copyfile(PERMISSIONS, directory / "permissions.conf")
    config = directory / "nats.conf"
    config.write_text(
        f"""
include ./permissions.conf
tls {{
  cert_file: "{tls.cert}"
  key_file: "{tls.key}"
  ca_file: "{tls.ca}"
  verify: true
  timeout: 2
}}
accounts {{
  EVENTPLATFORM {{
    jetstream: enabled
    users = [
      {{ user: relay, password: $RELAY_PASSWORD, permissions: $RELAY_PERMISSIONS }}
      {{ nkey: {public}, permissions: $CONSUMER_PERMISSIONS }}
      {{ user: demo, password: "{RELAY_PASSWORD}-demo", permissions: $DEMO_PERMISSIONS }}
    ]
  }}
}}
"""
    )
    with EmbeddedNats(config=config, environ={"RELAY_PASSWORD": RELAY_PASSWORD}) as server:
        yield SecuredNats(
            server=server,
            tls=client,
            relay_url=f"nats://relay:{RELAY_PASSWORD}@127.0.0.1:{server.port}",
            consumer_seed=seed,
        )
