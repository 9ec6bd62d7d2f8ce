"""A stored event and the message the relay makes of it: one definition for every part.

The relay publishes it (:func:`message_for`); the relay's tail check, the audit, the
consumers' verification and their gap fill all ask whether a message is that message
(:func:`difference`). Keeping both here means the question has one answer: when the wire
format changes, genuine messages cannot start to look forged to one part and not another.

What a stored state puts on the wire (``time``, the schema version, ``data``) is read by
:func:`~eventplatform.messagebus.cloudevents.wire_state`, the very function the relay's
encoder uses, so an event stored in the older tagged form compares as genuine too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from eventplatform.errors import DecodeError
from eventplatform.messagebus.cloudevents import (
    CloudEvent,
    encode,
    encode_tagged,
    event_id,
    wire_state,
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of a log's event table, as far as the wire is concerned.

    Attributes:
        log: the log (application) name.
        notification_id: its position in the log.
        aggregate_id: the aggregate's id.
        version: the aggregate's version after the event.
        topic: the event topic.
        state: the stored state (plain JSON, or the older tagged form).
    """

    log: str
    notification_id: int
    aggregate_id: Any
    version: int
    topic: str
    state: bytes


def message_for(event: StoredEvent) -> bytes:
    """The body the relay publishes for ``event``.

    Raises:
        DecodeError: the stored state is not a JSON object (encrypted or compressed stores
            cannot be relayed verbatim).
    """
    return encode(
        log=event.log,
        notification_id=event.notification_id,
        aggregate_id=event.aggregate_id,
        version=event.version,
        topic=event.topic,
        state=event.state,
    )


def message_before_plain(event: StoredEvent) -> bytes | None:
    """The body relays published for ``event`` before the plain layout, if it is stored in
    the tagged form (streams written then still hold such messages); else None."""
    return encode_tagged(
        log=event.log,
        notification_id=event.notification_id,
        aggregate_id=event.aggregate_id,
        version=event.version,
        topic=event.topic,
        state=event.state,
    )


def difference(envelope: CloudEvent, event: StoredEvent) -> str | None:
    """How a decoded message differs from the relay's message of ``event``; None when it is
    that message (the same attributes and data, whatever the JSON layout).

    The NATS subject is not part of it: a changed topic mapper must not make a log's own
    history look forged.
    """
    where = f"{event.log}:{event.notification_id}"
    claimed = (envelope.source, envelope.sequence)
    if claimed != (event.log, event.notification_id):
        return f"the message claims {envelope.source}:{envelope.sequence}, not {where}"
    aggregate = str(event.aggregate_id)
    if (envelope.subject, envelope.aggregate_version, envelope.type) != (
        aggregate,
        event.version,
        event.topic,
    ):
        return (
            f"{where} is {event.topic} v{event.version} of {aggregate} in the store, the "
            f"message claims {envelope.type} v{envelope.aggregate_version} of {envelope.subject}"
        )
    if envelope.id != event_id(aggregate, event.version):
        return f"the CloudEvents id of {where} is not {envelope.id}"
    try:
        wire = wire_state(event.state)
    except DecodeError as e:
        return f"the stored state of {where} cannot be published: {e}"
    if envelope.schema_version != wire.class_version:
        return f"the dataschema of {where} is not the stored event's"
    if not _same_data(envelope, wire.data):
        return f"the data of {where} differs from the stored event"
    if envelope.time != wire.time:
        return f"the time of {where} is not the stored event's"
    return None


def _same_data(envelope: CloudEvent, data: bytes) -> bool:
    # The relay writes '..., "data": <stored data>}' with the bytes spliced in verbatim.
    if envelope.raw and envelope.raw.endswith(b'"data":' + data + b"}"):
        return True
    return bool(orjson.loads(data) == envelope.data)
