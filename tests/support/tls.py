"""Self-signed TLS material made in a test, with the machine's ``openssl``."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certificate:
    """A CA and a server (and client) certificate it signed, all PEM files.

    Attributes:
        ca: the CA certificate (what clients trust: ``sslrootcert``, ``APP_NATS_TLS_CA``).
        cert: a certificate for ``127.0.0.1`` / ``localhost``.
        key: its private key.
    """

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path, name: str = "server") -> Certificate:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (skips without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    if not ca.exists():
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=eventplatform test CA",
        )  # fmt: skip
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={name}",
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(extensions),
    )  # fmt: skip
    return Certificate(ca=ca, cert=cert, key=key)
