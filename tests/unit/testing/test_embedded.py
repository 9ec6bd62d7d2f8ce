"""Throwaway-server decisions that need no server: port clashes, where servers come from."""

from __future__ import annotations

import pytest

from eventplatform.testing.embedded import address_in_use
from eventplatform.testing.plugin import DSN_VARIABLE, NATS_VARIABLE, select_source


@pytest.mark.parametrize(
    "log",
    [
        'LOG:  could not bind IPv4 address "127.0.0.1": Address already in use',
        "[FTL] Error listening on port: 127.0.0.1:4222, "
        '"listen tcp 127.0.0.1:4222: bind: address already in use"',
    ],
)
def test_a_lost_port_race_is_recognised_in_either_servers_log(log):
    assert address_in_use(log)


def test_other_start_failures_are_not_taken_for_a_port_clash():
    assert not address_in_use("FATAL:  data directory has wrong ownership")
    assert not address_in_use("")


class Probe:
    """A fake probe that answers a fixed value and counts how often it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


@pytest.mark.parametrize("variable", [DSN_VARIABLE, NATS_VARIABLE])
def test_a_configured_server_wins_and_nothing_is_probed(variable):
    binaries, docker = Probe(True), Probe(True)
    source = select_source(
        {variable: "postgresql://db/x"}, variable, binaries_found=binaries, docker_answers=docker
    )
    assert source == "external"
    assert (binaries.calls, docker.calls) == (0, 0)


def test_a_blank_variable_counts_as_unset():
    assert (
        select_source(
            {DSN_VARIABLE: "  "},
            DSN_VARIABLE,
            binaries_found=Probe(True),
            docker_answers=Probe(True),
        )
        == "embedded"
    )


def test_local_binaries_are_preferred_over_docker_which_is_not_asked():
    docker = Probe(True)
    source = select_source({}, DSN_VARIABLE, binaries_found=Probe(True), docker_answers=docker)
    assert source == "embedded"
    assert docker.calls == 0


def test_without_binaries_a_container_is_used_when_docker_answers():
    source = select_source(
        {}, NATS_VARIABLE, binaries_found=Probe(False), docker_answers=Probe(True)
    )
    assert source == "testcontainers"


def test_without_binaries_or_docker_the_source_is_unavailable():
    source = select_source(
        {}, NATS_VARIABLE, binaries_found=Probe(False), docker_answers=Probe(False)
    )
    assert source == "unavailable"
