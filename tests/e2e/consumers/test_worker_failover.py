"""Projection workers as processes: hung, cut off and restarted under load, exactly once.

Two workers per projection, a relay, and a writer. Every applied event is audited (an
``AuditedProjection`` row per apply, in order), so a double apply, a skip or an out-of-order
apply shows when the rows are compared with the event store.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from eventplatform.leases import projection_lease
from eventplatform.settings import Settings, load_settings
from eventplatform.store import create_schema
from projections import ProductViewProjection
from tests.support.audit import (
    AuditedProjection,
    audit,
    create_effects_table,
    effects_audit,
)
from tests.support.processes import Load, Processes, lease_holder, wait_until

pytestmark = [pytest.mark.e2e]

TTL = 1.5
AUDITED = "tests.support.audit:AuditedProjection"
VIEW = "projections:ProductViewProjection"
HANDLER = "tests.support.audit:AUDITED_HANDLER"


def settings_on(dsn: str, nats_url: str, name: str) -> Settings:
    create_schema(
        dsn, logs=["products"], projections=[AuditedProjection(), ProductViewProjection()]
    )
    return load_settings(
        {}, dsn=dsn, nats_url=nats_url, log="products", stream=name.upper(), subject_prefix=name
    )


def processes(settings: Settings) -> Processes:
    return Processes(
        settings,
        APP_PROJECTION_LEASE_TTL=str(TTL),
        APP_RELAY_LEASE_TTL=str(TTL),
        APP_RETRY_CAP="0.5",
    )


def head(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM products_events")
        return int(row.fetchone()[0])  # type: ignore[index]


def position(dsn: str, projection: str) -> int:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT position FROM eventplatform_tracking WHERE projection = %s", (projection,)
        ).fetchone()
    return int(row[0]) if row else 0


def caught_up(dsn: str, *projections: str) -> bool:
    target = head(dsn)
    return target > 0 and all(position(dsn, p) >= target for p in projections)


def view_matches_the_store(dsn: str) -> list[str]:
    """product_view rows that differ from replaying each product's stored events."""
    from domain import Products

    app = Products(load_settings({}, dsn=dsn))
    try:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT id, price, version FROM product_view").fetchall()
            ids = [r[0] for r in conn.execute("SELECT DISTINCT originator_id FROM products_events")]
        found = {r[0]: (r[1], r[2]) for r in rows}
        problems = []
        for aggregate in ids:
            product = app.get(aggregate)
            if found.get(aggregate) != (product.price, product.version):
                problems.append(f"{aggregate}: view {found.get(aggregate)}, store {product.price}")
        return problems
    finally:
        app.close()


def test_a_hung_worker_is_replaced_within_the_lease_time_and_cannot_commit_when_it_wakes(
    database_dsn, nats_url, unique_name, tmp_path
):
    settings = settings_on(database_dsn, nats_url, unique_name)
    procs = processes(settings)
    procs.spawn("relay", log_dir=tmp_path)
    first = procs.spawn("project", AUDITED, log_dir=tmp_path)
    lease = projection_lease(AuditedProjection.name)
    try:
        with Load(settings):
            leader, token = wait_until(
                lambda: lease_holder(database_dsn, lease), timeout=20, what="a first leader"
            )
            assert leader == first.pid
            second = procs.spawn("project", AUDITED, log_dir=tmp_path)
            wait_until(lambda: position(database_dsn, "audited") > 0, timeout=20, what="progress")

            first.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            taken = wait_until(
                lambda: (h := lease_holder(database_dsn, lease)) and h[0] == second.pid and h,
                timeout=20,
                what="a takeover",
            )
            took = time.monotonic() - stopped
            assert taken[1] > token
            # ttl + a standby's poll (ttl/3), and slack for a loaded two-core machine.
            assert took < TTL * 4 / 3 + 3.0, f"takeover took {took:.1f} s"
            moved = position(database_dsn, "audited")
            wait_until(
                lambda: position(database_dsn, "audited") > moved, timeout=20, what="progress"
            )

            first.send_signal(signal.SIGCONT)  # wakes up with a batch it may not commit
            time.sleep(TTL)
        wait_until(lambda: caught_up(database_dsn, "audited"), timeout=60, what="catching up")
        assert procs.exited() == []
        log = procs.log_of(first)
    finally:
        codes = procs.stop_all()

    assert audit(database_dsn) == []
    assert "steps down" in log or "standing by" in log
    assert codes == [0, 0, 0]


def test_postgres_restarts_and_killed_sessions_under_load_apply_every_event_once_in_order(
    embedded_postgres, nats_url, unique_name, tmp_path
):
    settings = settings_on(embedded_postgres.dsn, nats_url, unique_name)
    dsn = settings.dsn
    create_effects_table(dsn)
    procs = processes(settings)
    procs.spawn("relay", log_dir=tmp_path)
    for _ in range(2):
        procs.spawn("project", AUDITED, log_dir=tmp_path)
        procs.spawn("project", VIEW, log_dir=tmp_path)
    procs.spawn("handle", HANDLER, log_dir=tmp_path)
    try:
        with Load(settings) as load:
            for round_ in range(3):
                wait_until(
                    lambda: position(dsn, "audited") > 0 and position(dsn, "product_view") > 0,
                    timeout=30,
                    what=f"progress before fault {round_}",
                )
                if round_ % 2 == 0:
                    embedded_postgres.restart()  # fast shutdown: admin shutdown everywhere
                else:
                    with psycopg.connect(dsn) as conn:  # kill every other session, locks too
                        conn.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
                        )
                wait_until(load.resumed(), timeout=30, what="writes resume")
        wait_until(
            lambda: caught_up(dsn, "audited", "product_view"), timeout=90, what="catching up"
        )
        wait_until(lambda: effects_audit(dsn) == [], timeout=90, what="every effect")
        assert procs.exited() == []
    finally:
        codes = procs.stop_all()

    assert audit(dsn) == []
    assert view_matches_the_store(dsn) == []
    assert effects_audit(dsn) == []
    assert codes == [0] * 6


def test_nats_restarted_under_load_every_consumer_goes_on_and_nothing_applies_twice(
    database_dsn, embedded_nats, unique_name, tmp_path
):
    settings = settings_on(database_dsn, embedded_nats.url, unique_name)
    dsn = settings.dsn
    create_effects_table(dsn)
    procs = processes(settings)
    procs.spawn("relay", log_dir=tmp_path)
    for _ in range(2):
        procs.spawn("project", AUDITED, log_dir=tmp_path)
    procs.spawn("handle", HANDLER, log_dir=tmp_path)
    try:
        with Load(settings) as load:
            for round_ in range(2):
                wait_until(
                    lambda: position(dsn, "audited") > 0, timeout=30, what=f"progress {round_}"
                )
                embedded_nats.restart()  # the stream's store survives; connections do not
                wait_until(load.resumed(), timeout=30, what="writes resume")
        wait_until(lambda: caught_up(dsn, "audited"), timeout=90, what="catching up")
        wait_until(lambda: effects_audit(dsn) == [], timeout=90, what="every effect")
        assert procs.exited() == []
    finally:
        codes = procs.stop_all()

    assert audit(dsn) == []
    assert codes == [0] * 4


def test_workers_killed_and_started_while_partitions_rebalance_apply_every_event_once_in_order(
    database_dsn, nats_url, unique_name, tmp_path
):
    settings = settings_on(database_dsn, nats_url, unique_name)
    dsn = settings.dsn
    procs = processes(settings)
    procs.env["APP_PARTITIONS"] = "4"
    procs.spawn("relay", log_dir=tmp_path)
    workers = [procs.spawn("project", AUDITED, log_dir=tmp_path) for _ in range(2)]
    killed = []
    try:
        with Load(settings) as load:
            for round_ in range(4):
                wait_until(
                    lambda: position_anywhere(dsn) > 0, timeout=30, what=f"progress {round_}"
                )
                victim = workers.pop(0)
                wait_until(
                    holds_partitions(dsn, victim.pid),
                    timeout=30,
                    what=f"worker {victim.pid} holding a partition",
                )
                victim.kill()  # SIGKILL: its partitions are taken over when their leases expire
                killed.append(victim)
                workers.append(procs.spawn("project", AUDITED, log_dir=tmp_path))
                wait_until(load.resumed(), timeout=30, what="writes resume")
        wait_until(lambda: all_caught_up(dsn), timeout=90, what="catching up")
        assert [p for p in procs.exited() if p[0] not in {k.pid for k in killed}] == []
    finally:
        procs.stop_all()

    assert audit(dsn) == []


def holds_partitions(dsn: str, pid: int) -> Callable[[], bool]:
    """A condition: the worker ``pid`` holds a partition lease."""
    return lambda: partitions_held_by(dsn, pid) > 0


def partitions_held_by(dsn: str, pid: int) -> int:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT count(*) FROM eventplatform_leases WHERE name LIKE 'projection:audited#%%'"
            " AND expires_at > now() AND split_part(holder, ':', 2) = %s",
            (str(pid),),
        ).fetchone()
    return int(row[0]) if row else 0


def position_anywhere(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT coalesce(max(position), 0) FROM eventplatform_tracking"
            " WHERE projection LIKE 'audited#%'"
        ).fetchone()
    return int(row[0]) if row else 0


def all_caught_up(dsn: str) -> bool:
    from eventplatform.store.waiting import applied_up_to

    target = head(dsn)
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        return target > 0 and applied_up_to(conn, "audited", "products", target) >= target
