"""The write side: eventsourcing applications whose event table is also the outbox.

Each saved event gets a notification id from the recorder's table, in commit order. That id is
the outbox cursor the relay follows and the position a caller waits for to read its own write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    Mapper,
    OperationalError,
    Recording,
)
from eventsourcing.persistence import InterfaceError as ESInterfaceError
from eventsourcing.postgres import PostgresFactory

from eventplatform.errors import ConcurrencyConflict, ConfigurationError, StoreUnavailable
from eventplatform.observability.tracing import save_span
from eventplatform.redaction import redact
from eventplatform.settings import LOG_NAME, Settings
from eventplatform.store.appender import PostgresEventAppender
from eventplatform.store.group_commit import GroupCommitter
from eventplatform.store.mapper import PlainJSONMapper
from eventplatform.store.postgres import connector, eventsourcing_env, why_unreachable
from eventplatform.store.recorder import GroupCommitRecorder

#: Most events one group transaction carries (a single larger save goes alone).
MAX_GROUP_EVENTS = 1000


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

    Subclasses must set ``name``: it names the log (and its table ``<name>_events``) that the
    relay follows and that consumers see as the CloudEvents ``source``. The class name is not
    used as a default, because renaming a class must not move its events.

    Persistence is PostgreSQL (from ``APP_DSN``), tables are not created by workers, the
    snapshotting and caching defaults of eventsourcing are kept. The application's ``name``
    is the log name: its events live in ``<name>_events`` and the relay follows that table.

    Saves from concurrent threads are group-committed (``store/group_commit.py``): the
    commands that arrive while one transaction is under way share the next, one table lock
    and one WAL flush for all of them, each still getting its own ids or its own conflict.
    Writes use one connection of their own beside eventsourcing's pool (which serves reads),
    so an application holds up to ``2 * pool_size + 1`` connections. Call :meth:`close`
    after the threads that save have stopped.

    Args:
        settings: platform settings; the DSN and pool size are taken from them.
        create_table: let eventsourcing create its tables (tests, demo); production runs the
            ``eventplatform schema`` command once instead.
        env: extra eventsourcing variables (they win over the ones derived from settings).
    """

    #: Whether this very class set ``name`` (eventsourcing otherwise uses the class name).
    _name_pinned: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Recorded before eventsourcing's hook fills in the class name as a default.
        cls._name_pinned = "name" in cls.__dict__
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        settings: Settings,
        *,
        create_table: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        check_log_name(type(self))
        dsn = self._dsn = settings.require_dsn()
        self._appender: PostgresEventAppender | None = None
        try:
            # eventsourcing connects here already (it registers its type adapters).
            super().__init__(
                env=eventsourcing_env(
                    dsn, pool_size=settings.pool_size, create_table=create_table, extra=env
                )
            )
        except (OperationalError, ESInterfaceError) as e:
            # Close the pool eventsourcing opened, now: left to the garbage collector, its
            # close may run on one of the pool's own threads and fail there.
            with contextlib.suppress(Exception):
                self.close()
            raise _unavailable(dsn, f"opening the event store {self.name!r}", e) from e

    def construct_mapper(self) -> Mapper[UUID]:
        """Events are stored as plain JSON (:class:`~eventplatform.store.mapper.PlainJSONMapper`).

        eventsourcing's transcoder (with the transcodings ``register_transcodings`` adds)
        still writes snapshots, and its cipher and compressor settings are kept.
        """
        tagged = super().construct_mapper()
        return PlainJSONMapper(tagged.transcoder, tagged.compressor, tagged.cipher)

    def construct_recorder(self) -> ApplicationRecorder:
        """eventsourcing's PostgreSQL recorder, its inserts going through a group commit."""
        factory = self.factory
        if not isinstance(factory, PostgresFactory):
            msg = (
                f"{type(self).__qualname__} stores its events in PostgreSQL: "
                "PERSISTENCE_MODULE must stay eventsourcing.postgres"
            )
            raise ConfigurationError(msg)
        datastore = factory.datastore
        table = f"{self.name.lower()}_events"
        self._appender = PostgresEventAppender(
            connector(self._dsn),
            table=(datastore.schema, table),
            channel=table,
            lock_timeout=float(datastore.lock_timeout or 5),
        )
        recorder = GroupCommitRecorder(
            datastore,
            events_table_name=table,
            committer=GroupCommitter(self._appender, weigh=len, max_weight=MAX_GROUP_EVENTS),
        )
        if factory.env_create_table():
            recorder.create_table()
        return recorder

    def close(self) -> None:
        """Closes the write connection and eventsourcing's pool."""
        appender = getattr(self, "_appender", None)  # absent if __init__ failed early
        if appender is not None:
            appender.close()
        super().close()

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Saves aggregates atomically, translating store errors to platform errors.

        Runs in a span ``save <log>`` when tracing is on; the span's W3C ``traceparent``
        (or, without an SDK, the current context's) is stored with the events.

        Raises:
            ConcurrencyConflict: another writer saved one of these aggregates first.
            StoreUnavailable: PostgreSQL could not be reached (after eventsourcing's retries).
        """
        with save_span(self.name) as traceparent:
            if traceparent is not None:
                kwargs["traceparent"] = traceparent
            return self._save(*objs, **kwargs)

    def _save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        try:
            return super().save(*objs, **kwargs)
        except IntegrityError as e:
            msg = f"concurrent update of the same aggregate in {self.name!r}: {e}"
            raise ConcurrencyConflict(msg) from e
        except (OperationalError, ESInterfaceError) as e:
            raise _unavailable(self._dsn, f"saving to {self.name!r}", e) from e

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


def _unavailable(dsn: str, what: str, e: Exception) -> StoreUnavailable:
    reason = why_unreachable(dsn) if "couldn't get a connection" in str(e) else ""
    detail = f"{e}: {reason}" if reason else str(e)
    return StoreUnavailable(redact(f"event store unavailable while {what}: {detail}"))


def position_of(recordings: Sequence[Recording[Any]]) -> int:
    """Returns the highest notification id among recordings (0 when nothing was saved)."""
    return max((r.notification.id for r in recordings), default=0)


def check_log_name(app_class: type[EventSourcedApplication]) -> str:
    """Returns the log name an application class pinned, or fails saying how to pin it.

    Raises:
        ConfigurationError: the class sets no ``name`` of its own, or not a valid log name.
    """
    if not app_class._name_pinned:
        msg = (
            f"{app_class.__qualname__} must set `name` (e.g. name = "
            f'"{app_class.__name__.lower()}"): it names the log and its table <name>_events'
        )
        raise ConfigurationError(msg)
    name = str(app_class.name)
    if not LOG_NAME.match(name):
        msg = (
            f"{app_class.__qualname__}.name = {name!r} is not a log name: it must start with a "
            "lowercase letter and hold only a-z, 0-9 and '_' (max 41)"
        )
        raise ConfigurationError(msg)
    return name
