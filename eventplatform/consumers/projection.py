"""Projections: read models built from events, with their position in the same transaction."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar
from uuid import UUID

import psycopg
from psycopg import sql

from eventplatform.errors import ConfigurationError


class Projection(ABC):
    """A read model fed by events.

    Subclasses set ``name`` (the tracking key and durable consumer name), ``event_classes``
    (the domain events they decode; other types arrive as :class:`CloudEvent` envelopes),
    and implement :meth:`create_tables` and :meth:`apply`. The runner calls :meth:`apply_batch`
    inside one transaction, in pipeline mode, together with the tracking update: write with
    the given cursor only, and never commit.

    Rebuilds (:mod:`eventplatform.rebuild.rebuild`) drive a copy of the projection made with
    :meth:`for_table` into a shadow table, with :attr:`replaying` set: a projection that
    does anything besides writing its tables (metrics, caches) asks it and stays quiet.
    ``version`` names the read model's shape and meaning; raise it when ``apply`` changes
    what it writes, and rebuild (``eventplatform rebuild``) to serve the new version.

    Args:
        table: the read-model table to write (default: ``default_table``); rebuilds pass a
            shadow table here.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    event_classes: ClassVar[Sequence[type[Any]]] = ()
    default_table: ClassVar[str] = ""
    #: Column holding the aggregate id of each row: enables ``rebuild --aggregate``.
    aggregate_column: ClassVar[str] = ""
    #: True while a rebuild replays the event store into this instance.
    replaying: bool = False

    def __init__(self, *, table: str | None = None) -> None:
        self.table = table or self.default_table or self.name

    def for_table(self, table: str, *, replaying: bool = True) -> Projection:
        """A shallow copy of this projection writing ``table`` (how rebuilds get a shadow).

        :meth:`create_tables` must then create everything under names derived from
        ``self.table`` (indexes included, or left to PostgreSQL to name): a fixed index name
        would already exist on the live table, and ``IF NOT EXISTS`` would silently leave the
        shadow without it.
        """
        twin = copy.copy(self)
        twin.table = table
        twin.replaying = replaying
        return twin

    def delete_aggregate(self, cur: psycopg.Cursor[Any], aggregate_id: UUID) -> None:
        """Deletes one aggregate's rows before ``rebuild --aggregate`` replays its events.

        The default deletes the rows of :attr:`table` whose :attr:`aggregate_column` equals
        ``aggregate_id``; override it for read models spread over several tables.

        Raises:
            ConfigurationError: the projection declares no ``aggregate_column``.
        """
        if not self.aggregate_column:
            msg = (
                f"projection {self.name!r} declares no aggregate_column: it cannot rebuild "
                "one aggregate's rows (set aggregate_column or override delete_aggregate)"
            )
            raise ConfigurationError(msg)
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                sql.Identifier(self.table), sql.Identifier(self.aggregate_column)
            ),
            (aggregate_id,),
        )

    def compare(
        self, cur: psycopg.Cursor[Any], live: str, shadow: str, limit: int
    ) -> list[str] | None:
        """A user-supplied comparison of a rebuilt table with the live one, at one position.

        Returns:
            None to use the default (row counts and an ordered checksum); otherwise the keys
            (described as text) of up to ``limit`` rows that differ, empty when equal.
        """
        return None

    @abstractmethod
    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        """Creates the read-model tables if missing (idempotent: ``IF NOT EXISTS``)."""

    @abstractmethod
    def apply(self, cur: psycopg.Cursor[Any], event: Any) -> None:
        """Applies one event (a domain event, or a CloudEvent for undeclared types)."""

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[Any]) -> None:
        """Applies events in order; override for set-based writes.

        Args:
            cur: cursor of the batch's transaction.
            events: decoded events, in log order, none at or below the tracked position.
        """
        for event in events:
            self.apply(cur, event)
