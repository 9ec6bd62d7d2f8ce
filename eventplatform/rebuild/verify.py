"""Comparing a rebuilt table with the live one: row counts, an ordered checksum, differing keys.

Both tables are read in the caller's transaction, at the same log position (the rebuild makes
sure of that), so equal projections give byte-equal tables. Rows are compared by their text
form (``row::text``) in primary-key order; tables without a primary key are compared as
multisets of rows. A projection may replace all this with its own :meth:`Projection.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from eventplatform.consumers.projection import Projection


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a rebuilt table compares with the live one.

    Attributes:
        live_rows: rows in the live table.
        shadow_rows: rows in the rebuilt table.
        live_checksum: md5 over the live rows in key order ('' for a custom comparison).
        shadow_checksum: the same over the rebuilt rows.
        differing: keys of (up to the limit of) the rows that differ, as text.
        differing_count: how many rows differ in all (at least ``len(differing)``).
    """

    live_rows: int
    shadow_rows: int
    live_checksum: str = ""
    shadow_checksum: str = ""
    differing: list[str] = field(default_factory=list)
    differing_count: int = 0

    @property
    def equal(self) -> bool:
        """Whether the two tables hold the same rows."""
        return self.differing_count == 0 and self.live_checksum == self.shadow_checksum


def primary_key(cur: psycopg.Cursor[Any], table: str) -> list[str]:
    """The primary-key columns of ``table`` in key order (empty without a primary key)."""
    cur.execute(
        "SELECT a.attname FROM pg_index i"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY k.ord",
        (sql.Identifier(table).as_string(cur),),
    )
    return [str(r[0]) for r in cur.fetchall()]


def _count_and_checksum(cur: psycopg.Cursor[Any], table: str, key: list[str]) -> tuple[int, str]:
    order = sql.SQL(", ").join(sql.Identifier(c) for c in key) if key else sql.SQL("t::text")
    cur.execute(
        sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY {}), '')) FROM {} AS t"
        ).format(order, sql.Identifier(table))
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def compare_tables(
    cur: psycopg.Cursor[Any],
    projection: Projection,
    live: str,
    shadow: str,
    *,
    limit: int = 20,
) -> Comparison:
    """Compares ``shadow`` with ``live`` (the projection's own comparison when it has one).

    Args:
        cur: a cursor in the transaction that holds both tables at one position.
        projection: the projection (its :meth:`~Projection.compare` is asked first).
        live: the live table.
        shadow: the rebuilt table.
        limit: how many differing keys to list at most.
    """
    live_rows, live_sum = _count_and_checksum(cur, live, primary_key(cur, live))
    key = primary_key(cur, shadow)
    shadow_rows, shadow_sum = _count_and_checksum(cur, shadow, key)
    custom = projection.compare(cur, live, shadow, limit)
    if custom is not None:
        return Comparison(live_rows, shadow_rows, "", "", custom[:limit], len(custom))
    if live_sum == shadow_sum:
        return Comparison(live_rows, shadow_rows, live_sum, shadow_sum)
    differing, count = _differences(cur, live, shadow, key, limit)
    return Comparison(live_rows, shadow_rows, live_sum, shadow_sum, differing, max(count, 1))


def _differences(
    cur: psycopg.Cursor[Any], live: str, shadow: str, key: list[str], limit: int
) -> tuple[list[str], int]:
    lt, st = sql.Identifier(live), sql.Identifier(shadow)
    if key and key == primary_key(cur, live):
        on = sql.SQL(" AND ").join(
            sql.SQL("l.{c} = s.{c}").format(c=sql.Identifier(c)) for c in key
        )
        described = sql.SQL(" || ', ' || ").join(
            sql.SQL("{name} || '=' || coalesce(l.{c}, s.{c})::text").format(
                name=sql.Literal(c), c=sql.Identifier(c)
            )
            for c in key
        )
        base = sql.SQL(
            "FROM {lt} AS l FULL JOIN {st} AS s ON {on} WHERE l::text IS DISTINCT FROM s::text"
        ).format(lt=lt, st=st, on=on)
        cur.execute(sql.SQL("SELECT count(*) {}").format(base))
        row = cur.fetchone()
        cur.execute(
            sql.SQL(
                "SELECT {d} || CASE WHEN l IS NULL THEN ' (only rebuilt)' WHEN s IS NULL"
                " THEN ' (only live)' ELSE ' (changed)' END {b} ORDER BY 1 LIMIT %s"
            ).format(d=described, b=base),
            (limit,),
        )
    else:  # no common key: compare as multisets of rows
        base = sql.SQL(
            "FROM ((SELECT t::text AS r, 'only live' AS side FROM {lt} AS t EXCEPT ALL"
            " SELECT t::text, 'only live' FROM {st} AS t) UNION ALL"
            " (SELECT t::text, 'only rebuilt' FROM {st} AS t EXCEPT ALL"
            " SELECT t::text, 'only rebuilt' FROM {lt} AS t)) AS d"
        ).format(lt=lt, st=st)
        cur.execute(sql.SQL("SELECT count(*) {}").format(base))
        row = cur.fetchone()
        cur.execute(
            sql.SQL("SELECT r || ' (' || side || ')' {} ORDER BY 1 LIMIT %s").format(base),
            (limit,),
        )
    keys = [str(r[0]) for r in cur.fetchall()]
    return keys, int(row[0]) if row else len(keys)
