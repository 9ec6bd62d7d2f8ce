"""eventplatform: event-sourced services with CQRS read models.

The PostgreSQL event store (eventsourcing) is the outbox; a relay publishes every event to NATS
JetStream in order; projections apply events to read models exactly once and can be rebuilt
from the store. The package is not named ``platform`` because that would shadow the standard
library module of that name.

Everything a library user needs is importable from here. The subpackages, by part of the data
path: ``store`` (write side), ``relay`` (outbox follower), ``leases`` (one holder, fenced),
``consumers`` (projections, handlers), ``rebuild``, ``messagebus`` (NATS, CloudEvents), ``cli``,
``testing`` and ``observability`` (metrics, health endpoints, tracing). Names not listed in
``__all__`` (here or in a subpackage) are internal.
"""

from eventplatform.consumers import (
    ConsumerConfig,
    HandlerFailed,
    IdempotentEventHandler,
    PermanentError,
    Projection,
    RetryPolicy,
    idempotent,
    run_handler,
    run_projection,
)
from eventplatform.errors import (
    BrokerUnavailable,
    CommandRejected,
    CommitOutcomeUnknown,
    ConcurrencyConflict,
    ConfigurationError,
    DecodeError,
    EventPlatformError,
    ProjectionError,
    PublishError,
    SchemaError,
    StoreError,
    StoreUnavailable,
    UnknownEventType,
    WaitTimeout,
)
from eventplatform.messagebus import CloudEvent
from eventplatform.observability import Observability
from eventplatform.rebuild import (
    RebuildError,
    RebuildOptions,
    RebuildReport,
    rebuild,
    replay_log,
)
from eventplatform.redaction import RedactingFormatter, redact, register_secret
from eventplatform.relay import DefaultTopicMapper, TopicMapper, run_relay
from eventplatform.settings import Settings, load_settings
from eventplatform.store import CommandResult, EventSourcedApplication, create_schema, wait_for

__all__ = [
    "BrokerUnavailable",
    "CloudEvent",
    "CommandRejected",
    "CommandResult",
    "CommitOutcomeUnknown",
    "ConcurrencyConflict",
    "ConfigurationError",
    "ConsumerConfig",
    "DecodeError",
    "DefaultTopicMapper",
    "EventPlatformError",
    "EventSourcedApplication",
    "HandlerFailed",
    "IdempotentEventHandler",
    "Observability",
    "PermanentError",
    "Projection",
    "ProjectionError",
    "PublishError",
    "RebuildError",
    "RebuildOptions",
    "RebuildReport",
    "RedactingFormatter",
    "RetryPolicy",
    "SchemaError",
    "Settings",
    "StoreError",
    "StoreUnavailable",
    "TopicMapper",
    "UnknownEventType",
    "WaitTimeout",
    "create_schema",
    "idempotent",
    "load_settings",
    "rebuild",
    "redact",
    "register_secret",
    "replay_log",
    "run_handler",
    "run_projection",
    "run_relay",
    "wait_for",
]
__version__ = "0.1.0"
