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
    """The event store (PostgreSQL) could not be reached."""


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
