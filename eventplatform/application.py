"""The write side: eventsourcing applications whose event table is also the outbox.

Each saved event gets a notification id from the recorder's table, in commit order. That id is
the outbox cursor the relay follows and the position a caller waits for to read its own write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, OperationalError, Recording
from eventsourcing.persistence import InterfaceError as ESInterfaceError

from eventplatform.errors import ConcurrencyConflict, StoreUnavailable
from eventplatform.postgres import eventsourcing_env
from eventplatform.settings import Settings


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command tells its caller.

    Attributes:
        aggregate_id: the aggregate the command changed.
        version: the aggregate's version after the command.
        position: the highest notification id the command's events got; pass it to
            ``wait_for`` to read your own write from a projection.
    """

    aggregate_id: UUID
    version: int
    position: int


class EventSourcedApplication(Application[UUID]):
    """An eventsourcing ``Application`` configured for the platform.

    Persistence is PostgreSQL (from ``APP_DSN``), tables are not created by workers, the
    snapshotting and caching defaults of eventsourcing are kept. The application's ``name``
    is the log name: its events live in ``<name>_events`` and the relay follows that table.

    Args:
        settings: platform settings; the DSN and pool size are taken from them.
        create_table: let eventsourcing create its tables (tests, demo); production runs the
            ``eventplatform schema`` command once instead.
        env: extra eventsourcing variables (they win over the ones derived from settings).
    """

    name = "products"

    def __init__(
        self,
        settings: Settings,
        *,
        create_table: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            env=eventsourcing_env(
                settings.require_dsn(),
                pool_size=settings.pool_size,
                create_table=create_table,
                extra=env,
            )
        )

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Saves aggregates atomically, translating store errors to platform errors.

        Raises:
            ConcurrencyConflict: another writer saved one of these aggregates first.
            StoreUnavailable: PostgreSQL could not be reached (after eventsourcing's retries).
        """
        try:
            return super().save(*objs, **kwargs)
        except IntegrityError as e:
            msg = f"concurrent update of the same aggregate in {self.name!r}: {e}"
            raise ConcurrencyConflict(msg) from e
        except (OperationalError, ESInterfaceError) as e:
            msg = f"event store unavailable while saving to {self.name!r}: {e}"
            raise StoreUnavailable(msg) from e

    def execute(self, aggregate: Any) -> CommandResult:
        """Saves one aggregate's pending events and reports where they landed.

        Args:
            aggregate: the changed aggregate (its pending events are collected).

        Returns:
            The aggregate's id, new version and the notification id of its last event.
        """
        recordings = self.save(aggregate)
        return CommandResult(
            aggregate_id=aggregate.id,
            version=aggregate.version,
            position=position_of(recordings),
        )


def position_of(recordings: Sequence[Recording[Any]]) -> int:
    """Returns the highest notification id among recordings (0 when nothing was saved)."""
    return max((r.notification.id for r in recordings), default=0)
