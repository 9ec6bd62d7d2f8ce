"""The one error root of eventplatform and its branches.

Infrastructure errors (psycopg, nats-py, pydantic) are translated at the adapter boundary
with ``raise ... from e``, so callers catch ``EventPlatformError`` (or a branch) and still
see the original cause in the traceback.
"""

from __future__ import annotations


class EventPlatformError(Exception):
    """Root of every error raised by eventplatform."""


class ConfigurationError(EventPlatformError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


class SchemaError(EventPlatformError):
    """Creating or checking the database schema failed."""


class CommandRejected(EventPlatformError, ValueError):
    """A command was refused because it breaks a domain rule; nothing was written."""


class ConcurrencyConflict(EventPlatformError):
    """Another writer saved the same aggregate first; reload and retry the command."""


class StoreUnavailable(EventPlatformError, ConnectionError):
    """The event store (PostgreSQL) could not be reached.

    A command that fails with exactly this class wrote nothing and may be retried; see
    :class:`CommitOutcomeUnknown` for the one case where that cannot be told.
    """


class CommitOutcomeUnknown(StoreUnavailable):
    """The connection was lost while a commit was under way and could not be re-established
    in time to find out whether it happened: the events may or may not be stored.

    Unlike its parent, retrying the command blindly may apply it twice; read the aggregate
    first (its version tells whether the command's events are there).
    """


class StoreError(EventPlatformError):
    """PostgreSQL refused a command's events for a reason retrying will not fix (a data error,
    a missing privilege); nothing was written."""


class BrokerUnavailable(EventPlatformError, ConnectionError):
    """The broker (NATS JetStream) could not be reached or did not acknowledge."""


class PublishError(EventPlatformError):
    """The broker refused or did not acknowledge a message."""


class DecodeError(EventPlatformError, ValueError):
    """A message could not be decoded into an event; it names what was wrong."""


class UnknownEventType(DecodeError):
    """A message carries an event type that no class is registered for."""


class WaitTimeout(EventPlatformError, TimeoutError):
    """A read-your-writes wait ended before the read model reached the position."""


class ProjectionError(EventPlatformError):
    """A projection failed to apply a batch of events."""
