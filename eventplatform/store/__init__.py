"""The write side: applications whose event table is the outbox, the schema, read-your-writes.

Offers :class:`EventSourcedApplication` and :class:`CommandResult` (commands in, events stored
with commit-ordered notification ids), :func:`create_schema` (every table, once, safely from
several processes) and :func:`wait_for` (block until a projection has applied a position).
Events are stored as plain JSON by :class:`PlainJSONMapper` (``mapper``), in the layout of
``event_state``, which the wire format is derived from. Saves go through ``group_commit``
(concurrent commands share a transaction), ``appender`` (one group, one round trip,
per-command outcomes, recovery from lost connections) and ``recorder`` (eventsourcing's
recorder with that insert path). The modules ``postgres`` (DSN translation,
connections, error mapping) and ``schema`` (table names) are plumbing the other parts share.
"""

from eventplatform.store.application import CommandResult, EventSourcedApplication
from eventplatform.store.mapper import PlainJSONMapper
from eventplatform.store.schema import TableOwner, create_schema, events_table
from eventplatform.store.waiting import wait_for

__all__ = [
    "CommandResult",
    "EventSourcedApplication",
    "PlainJSONMapper",
    "TableOwner",
    "create_schema",
    "events_table",
    "wait_for",
]
