"""``ProductView``: one row per product, for listing and lookup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from domain.product import Product
from eventplatform.consumers.projection import Projection


@dataclass(frozen=True, slots=True)
class ProductView:
    """A product as the catalogue shows it."""

    id: UUID
    name: str
    sku: str
    price: Decimal
    discontinued: bool
    version: int
    updated_at: datetime


class ProductViewProjection(Projection):
    """Keeps ``product_view`` up to date from ``Product`` events."""

    name = "product_view"
    version = 1
    default_table = "product_view"
    aggregate_column = "id"
    event_classes = (
        Product.Created,
        Product.Renamed,
        Product.PriceChanged,
        Product.Discontinued,
    )

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        """Creates the view table."""
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id uuid PRIMARY KEY,"
                " name text NOT NULL,"
                " sku text NOT NULL,"
                " price numeric(14, 2) NOT NULL,"
                " discontinued boolean NOT NULL DEFAULT false,"
                " version bigint NOT NULL,"
                " updated_at timestamptz NOT NULL)"
            ).format(sql.Identifier(self.table))
        )

    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        """Applies one ``Product`` event; other events are ignored."""
        table = sql.Identifier(self.table)
        if isinstance(event, Product.Created):
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (id, name, sku, price, version, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
                ).format(table),
                (
                    event.originator_id,
                    event.name,
                    event.sku,
                    event.price,
                    event.originator_version,
                    event.timestamp,
                ),
            )
        elif isinstance(event, Product.Renamed):
            self._update(cur, event, "name", event.name)
        elif isinstance(event, Product.PriceChanged):
            self._update(cur, event, "price", event.price)
        elif isinstance(event, Product.Discontinued):
            self._update(cur, event, "discontinued", True)

    def _update(self, cur: psycopg.Cursor[Any], event: Any, column: str, value: object) -> None:
        cur.execute(
            sql.SQL("UPDATE {} SET {} = %s, version = %s, updated_at = %s WHERE id = %s").format(
                sql.Identifier(self.table), sql.Identifier(column)
            ),
            (value, event.originator_version, event.timestamp, event.originator_id),
        )

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[Any]) -> None:
        """Applies a batch set-based: two statements whatever its size.

        Each product's events are folded in order into the row they produce, then one
        ``INSERT`` adds the products created in the batch and one ``UPDATE ... FROM unnest``
        changes the others. The result is the same as :meth:`apply` for each event in turn.
        """
        rows: dict[Any, dict[str, Any]] = {}
        for event in events:
            if not isinstance(event, _PRODUCT_EVENTS):
                continue
            row = rows.setdefault(event.originator_id, {"created": False})
            if isinstance(event, Product.Created):
                row.update(
                    created=True,
                    name=event.name,
                    sku=event.sku,
                    price=event.price,
                    discontinued=False,
                )
            elif isinstance(event, Product.Renamed):
                row["name"] = event.name
            elif isinstance(event, Product.PriceChanged):
                row["price"] = event.price
            elif isinstance(event, Product.Discontinued):
                row["discontinued"] = True
            row["version"], row["updated_at"] = event.originator_version, event.timestamp
        created = [(k, r) for k, r in rows.items() if r["created"]]
        changed = [(k, r) for k, r in rows.items() if not r["created"]]
        if created:
            cur.execute(self._insert_many(), _columns(created, _INSERTED))
        if changed:
            cur.execute(self._update_many(), _columns(changed, _UPDATED))

    def _insert_many(self) -> sql.Composed:
        # Composed once per table (a rebuild's copy of this projection writes another table).
        key = ("insert", self.table)
        if key not in _STATEMENTS:
            _STATEMENTS[key] = sql.SQL(
                "INSERT INTO {} (id, name, sku, price, discontinued, version, updated_at)"
                " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::numeric[],"
                " %s::boolean[], %s::bigint[], %s::timestamptz[]) ON CONFLICT (id) DO NOTHING"
            ).format(sql.Identifier(self.table))
        return _STATEMENTS[key]

    def _update_many(self) -> sql.Composed:
        key = ("update", self.table)
        if key not in _STATEMENTS:
            # NULL in a column means "not changed by this batch": keep the stored value.
            _STATEMENTS[key] = sql.SQL(
                "UPDATE {t} AS t SET name = coalesce(v.name, t.name),"
                " price = coalesce(v.price, t.price),"
                " discontinued = coalesce(v.discontinued, t.discontinued),"
                " version = v.version, updated_at = v.updated_at"
                " FROM unnest(%s::uuid[], %s::text[], %s::numeric[], %s::boolean[],"
                " %s::bigint[], %s::timestamptz[])"
                " AS v(id, name, price, discontinued, version, updated_at) WHERE t.id = v.id"
            ).format(t=sql.Identifier(self.table))
        return _STATEMENTS[key]


_STATEMENTS: dict[tuple[str, str], sql.Composed] = {}
_PRODUCT_EVENTS = (Product.Created, Product.Renamed, Product.PriceChanged, Product.Discontinued)
_INSERTED = ("name", "sku", "price", "discontinued", "version", "updated_at")
_UPDATED = ("name", "price", "discontinued", "version", "updated_at")


def _columns(rows: list[tuple[Any, dict[str, Any]]], names: tuple[str, ...]) -> list[list[Any]]:
    """Column arrays for ``unnest``: ids first, then each name (None where unchanged)."""
    return [[key for key, _ in rows], *([row.get(name) for _, row in rows] for name in names)]


class ProductViews:
    """Queries over ``product_view``.

    Args:
        pool: a connection pool on the read-model database.
        table: the table to read (default ``product_view``).
    """

    def __init__(self, pool: ConnectionPool[Any], *, table: str = "product_view") -> None:
        self._pool = pool
        self._table = sql.Identifier(table)

    def get(self, product_id: UUID) -> ProductView | None:
        """Returns the product, or None when it is not (yet) in the read model."""
        with (
            self._pool.connection() as conn,
            conn.cursor(row_factory=class_row(ProductView)) as cur,
        ):
            cur.execute(
                sql.SQL("SELECT * FROM {} WHERE id = %s").format(self._table), (product_id,)
            )
            row: ProductView | None = cur.fetchone()
            return row

    def list(self, *, include_discontinued: bool = False, limit: int = 100) -> list[ProductView]:
        """Returns products ordered by name."""
        query = sql.SQL("SELECT * FROM {} {} ORDER BY name, id LIMIT %s").format(
            self._table,
            sql.SQL("") if include_discontinued else sql.SQL("WHERE NOT discontinued"),
        )
        with (
            self._pool.connection() as conn,
            conn.cursor(row_factory=class_row(ProductView)) as cur,
        ):
            cur.execute(query, (limit,))
            rows: list[ProductView] = cur.fetchall()
            return rows
