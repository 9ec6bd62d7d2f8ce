"""A process is alive while its loop turns, ready while every required check is ok."""

from __future__ import annotations

from eventplatform.observability.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_process_is_not_ready_until_every_required_check_reported_ok():
    health = Health(("postgres", "nats", "role"))
    assert health.ready()[0] is False
    health.report("postgres", True)
    health.report("nats", True)
    ready, checks = health.ready()
    assert not ready
    assert checks["role"].detail == "not reported yet"
    health.report("role", True, "standby")
    assert health.ready()[0] is True


def test_one_failing_check_makes_it_unready_and_says_why():
    health = Health(("postgres",))
    health.report("postgres", False, "connection refused")
    ready, checks = health.ready()
    assert not ready
    assert checks["postgres"].detail == "connection refused"


def test_a_process_whose_loop_stopped_beating_is_not_alive():
    clock = Clock()
    health = Health(stall_after=10, clock=clock)
    assert health.alive()[0]
    clock.now += 9
    health.beat()
    clock.now += 9
    assert health.alive()[0]
    clock.now += 2
    alive, detail = health.alive()
    assert not alive
    assert "11.0s ago" in detail
