"""docker-compose and the image are secure by default, and stay so.

Text checks of the committed files (Docker does not run here): secrets only from .env, ports on
127.0.0.1, images pinned by digest, a healthcheck on every long-running service, NATS with
users and permissions (the permissions themselves are exercised on a real server in
tests/integration/messagebus/test_nats_authorisation.py).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = (ROOT / "docker-compose.yml").read_text()
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\b")


def services() -> dict[str, str]:
    """Each service's block of docker-compose.yml, by name."""
    body = COMPOSE.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    parts = re.split(r"^  ([a-z_-]+):\n", body, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_published_port_is_bound_to_the_loopback_interface():
    ports = re.findall(r'^\s+- "([^"]+)"', COMPOSE, flags=re.MULTILINE)
    assert ports, "the compose file publishes the servers' ports for local tools"
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


def test_no_secret_is_written_in_the_compose_file():
    passwords = [line for line in COMPOSE.splitlines() if re.search(r"PASSWORD\s*:", line)]
    assert passwords
    assert all("${" in line for line in passwords), passwords
    assert not re.search(r"://\w+:[^$@\s]+@", COMPOSE), "a password literal in a URL"


def test_every_variable_the_compose_file_needs_is_in_the_example_and_env_is_ignored():
    needed = set(re.findall(r"\$\{(\w+):\?", COMPOSE))
    example = (ROOT / ".env.example").read_text()
    assert needed == set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_every_base_image_is_pinned_by_digest():
    images = re.findall(r"^\s+image:\s*(\S+)", COMPOSE, flags=re.MULTILINE)
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert images
    assert froms
    for image in images + froms:
        assert DIGEST.search(image), image


def test_every_long_running_service_has_a_healthcheck():
    for name, block in services().items():
        one_shot = 'restart: "no"' in block
        assert one_shot or "healthcheck:" in block, name


def test_the_image_installs_only_hashed_locked_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile
    assert "--no-build-isolation" in dockerfile


def test_nats_runs_with_the_deployed_users_and_permissions():
    nats = services()["nats"]
    assert "/etc/nats/nats.conf" in nats
    config = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert "include ./permissions.conf" in config
    for user in ("relay", "consumer", "demo"):
        assert f"user: {user}, password: $NATS_" in config
    assert "permissions: $CONSUMER_PERMISSIONS" in config
