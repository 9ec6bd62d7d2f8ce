"""Projections the rebuild specs change on purpose, and reading a whole table back."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from domain import Product
from eventplatform.consumers.projection import Projection
from projections import ProductViewProjection


class ShoutingProductView(ProductViewProjection):
    """A deliberately changed projection: names in capitals (same version: a defect)."""

    aggregate_column = "id"
    # Event by event, through the apply() below (the view's own batch is set-based).
    apply_batch = Projection.apply_batch

    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        super().apply(cur, event)
        if isinstance(event, (Product.Created, Product.Renamed)):
            cur.execute(
                sql.SQL("UPDATE {} SET name = upper(name) WHERE id = %s").format(
                    sql.Identifier(self.table)
                ),
                (event.originator_id,),
            )


class ShoutingProductViewV2(ShoutingProductView):
    """The same change, declared as a new version: its differences are expected."""

    version = 2


def table_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table``, ordered by its first two columns."""
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(sql.Identifier(table))
        return list(conn.execute(query).fetchall())
