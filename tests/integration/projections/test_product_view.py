"""The sample view's set-based batch leaves exactly what applying each event in turn leaves."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import Product
from projections import ProductViewProjection

pytestmark = [pytest.mark.integration]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Any], list[int]]:
    """Events of a few products, interleaved as concurrent commands would, cut into batches."""
    queues = []
    for n in range(draw(st.integers(1, 5))):
        product = Product.create(f"p{n}", f"S{n}", Decimal(n + 1))
        for step in draw(st.lists(st.sampled_from(["rename", "price", "stop"]), max_size=6)):
            if product.discontinued:
                break
            if step == "rename":
                product.rename(draw(st.sampled_from(["a", "b", "c"])) + str(n))
            elif step == "price":
                product.change_price(Decimal(draw(st.integers(1, 999))) / 100)
            else:
                product.discontinue()
        queues.append(list(product.collect_events()))
    events = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        events.append(queue.pop(0))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(events) - 1, 1)), max_size=4)))
    return events, cuts


@pytest.fixture(scope="module")
def tables(postgres_dsn):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS ep_view_property WITH (FORCE)")
        conn.execute("CREATE DATABASE ep_view_property")
    dsn = psycopg.conninfo.make_conninfo(postgres_dsn, dbname="ep_view_property")
    batched, single = (ProductViewProjection().for_table(t) for t in ("batched", "single"))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        batched.create_tables(cur)
        single.create_tables(cur)
    yield dsn, batched, single
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS ep_view_property WITH (FORCE)")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=histories())
def test_a_batch_applied_set_based_equals_each_event_applied_in_turn(tables, history):
    dsn, batched, single = tables
    events, cuts = history
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE batched, single")
        for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
            with conn.pipeline():
                batched.apply_batch(cur, events[start:end])
        for event in events:
            single.apply(cur, event)
        cur.execute("SELECT * FROM batched ORDER BY id")
        got = cur.fetchall()
        cur.execute("SELECT * FROM single ORDER BY id")
        assert got == cur.fetchall()
        assert len(got) == len({e.originator_id for e in events})
