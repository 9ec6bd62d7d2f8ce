"""Projections: read models built from events, with their position in the same transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg


class Projection(ABC):
    """A read model fed by events.

    Subclasses set ``name`` (the tracking key and durable consumer name), ``event_classes``
    (the domain events they decode; other types arrive as :class:`CloudEvent` envelopes),
    and implement :meth:`create_tables` and :meth:`apply`. The runner calls :meth:`apply_batch`
    inside one transaction, in pipeline mode, together with the tracking update: write with
    the given cursor only, and never commit.

    Args:
        table: the read-model table to write (default: ``default_table``); rebuilds pass a
            shadow table here.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    event_classes: ClassVar[Sequence[type[Any]]] = ()
    default_table: ClassVar[str] = ""

    def __init__(self, *, table: str | None = None) -> None:
        self.table = table or self.default_table or self.name

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
