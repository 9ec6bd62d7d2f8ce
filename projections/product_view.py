"""``ProductView``: one row per product, for listing and lookup."""

from __future__ import annotations

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
