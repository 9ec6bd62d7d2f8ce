"""eventplatform: event-sourced services with CQRS read models.

The PostgreSQL event store (eventsourcing) is the outbox; a relay publishes every event to NATS
JetStream in order; projections apply events to read models exactly once and can be rebuilt
from the store. The package is not named ``platform`` because that would shadow the standard
library module of that name.
"""

from eventplatform.application import CommandResult, EventSourcedApplication
from eventplatform.cloudevents import CloudEvent
from eventplatform.errors import (
    BrokerUnavailable,
    CommandRejected,
    ConcurrencyConflict,
    ConfigurationError,
    DecodeError,
    EventPlatformError,
    ProjectionError,
    PublishError,
    SchemaError,
    StoreUnavailable,
    UnknownEventType,
    WaitTimeout,
)
from eventplatform.projection import Projection
from eventplatform.settings import Settings, load_settings

__all__ = [
    "BrokerUnavailable",
    "CloudEvent",
    "CommandRejected",
    "CommandResult",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DecodeError",
    "EventPlatformError",
    "EventSourcedApplication",
    "Projection",
    "ProjectionError",
    "PublishError",
    "SchemaError",
    "Settings",
    "StoreUnavailable",
    "UnknownEventType",
    "WaitTimeout",
    "load_settings",
]
__version__ = "0.1.0"
