"""Leadership, without a database: a fake lease store and a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from eventplatform.errors import ConfigurationError
from eventplatform.leases.leadership import Leadership, Lease, LeaseConfig, LeaseHolder, LeaseLost


class InMemoryLeases:
    """One lease per log, expiring on the injected clock, a new token per acquisition."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rows: dict[str, tuple[str, int, float]] = {}  # name -> (holder, token, expires)

    async def try_acquire(self, log: str, holder: str, ttl: float) -> Lease | None:
        now = self.clock()
        row = self.rows.get(log)
        if row is not None and row[2] > now and row[0] != holder:
            return None
        token = row[1] + 1 if row else 1
        self.rows[log] = (holder, token, now + ttl)
        return Lease(log, holder, token, datetime.now(UTC))

    async def renew(self, lease: Lease, ttl: float) -> bool:
        row = self.rows.get(lease.name)
        if row is None or row[1] != lease.token:
            return False
        self.rows[lease.name] = (row[0], row[1], self.clock() + ttl)
        return True

    async def release(self, lease: Lease) -> None:
        row = self.rows.get(lease.name)
        if row is not None and row[1] == lease.token:
            self.rows[lease.name] = (row[0], row[1], self.clock())

    async def current(self, log: str) -> LeaseHolder | None:
        row = self.rows.get(log)
        if row is None:
            return None
        now = datetime.now(UTC)
        return LeaseHolder(row[0], row[1], now, now, row[2] <= self.clock())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def leases(clock) -> InMemoryLeases:
    return InMemoryLeases(clock)


@pytest.mark.asyncio
async def test_a_leader_stops_trusting_its_lease_once_the_ttl_passed_without_renewal(leases, clock):
    leader = Leadership(leases, "products", holder="a", config=LeaseConfig(ttl=3), clock=clock)
    assert await leader.acquire(asyncio.Event()) is not None
    clock.now += 2.9
    leader.check()
    clock.now += 0.2
    with pytest.raises(LeaseLost, match="not renewed within its ttl"):
        leader.check()


@pytest.mark.asyncio
async def test_a_standby_gets_the_lease_only_after_it_expired_and_with_a_new_token(leases, clock):
    config = LeaseConfig(ttl=3, poll=0.001)
    leader = Leadership(leases, "products", holder="a", config=config, clock=clock)
    standby = Leadership(leases, "products", holder="b", config=config, clock=clock)
    first = await leader.acquire(asyncio.Event())
    assert first is not None
    waiting = asyncio.create_task(standby.acquire(asyncio.Event()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    clock.now += 3
    second = await asyncio.wait_for(waiting, timeout=5)
    assert second is not None
    assert second.token == first.token + 1
    assert second.holder == "b"


@pytest.mark.asyncio
async def test_a_deposed_leader_learns_it_at_its_next_renewal(leases, clock):
    config = LeaseConfig(ttl=0.09)
    leader = Leadership(leases, "products", holder="a", config=config)
    assert await leader.acquire(asyncio.Event()) is not None
    keeper = asyncio.create_task(leader.keep())
    leases.rows["products"] = ("b", 2, clock() + 60)  # someone else took over
    await asyncio.wait_for(keeper, timeout=5)
    with pytest.raises(LeaseLost, match="taken over"):
        leader.check()


@pytest.mark.asyncio
async def test_a_standby_told_to_stop_returns_without_a_lease(leases, clock):
    await Leadership(leases, "products", holder="a", clock=clock).acquire(asyncio.Event())
    stop = asyncio.Event()
    stop.set()
    standby = Leadership(leases, "products", holder="b", clock=clock)
    assert await standby.acquire(stop) is None
    with pytest.raises(LeaseLost, match=r"no lease .* held"):
        standby.check()


@pytest.mark.asyncio
async def test_a_released_lease_is_free_at_once(leases, clock):
    leader = Leadership(leases, "products", holder="a", clock=clock)
    await leader.acquire(asyncio.Event())
    await leader.release()
    standby = Leadership(leases, "products", holder="b", clock=clock)
    assert await standby.acquire(asyncio.Event()) is not None


def test_the_default_takeover_bound_is_at_most_five_seconds():
    assert LeaseConfig().takeover_bound <= 5


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"ttl": 0}, "lease ttl must be > 0"),
        ({"ttl": 3, "renew_interval": 3}, "renew_interval must be within"),
        ({"ttl": 3, "poll": -1}, "lease poll must be > 0"),
    ],
)
def test_a_bad_lease_setting_is_refused_naming_it(kwargs, named):
    with pytest.raises(ConfigurationError, match=named):
        LeaseConfig(**kwargs)
