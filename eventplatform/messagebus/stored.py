"""A stored event and the message the relay makes of it: one definition for every part.

The relay publishes it (:func:`message_for`); the relay's tail check, the audit, the
consumers' verification and their gap fill all ask whether a message is that message
(:func:`difference`). Keeping both here means the question has one answer: when the wire
format changes, genuine messages cannot start to look forged to one part and not another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from eventplatform.messagebus.cloudevents import CloudEvent, encode, event_id, time_of


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of a log's event table, as far as the wire is concerned.

    Attributes:
        log: the log (application) name.
        notification_id: its position in the log.
        aggregate_id: the aggregate's id.
        version: the aggregate's version after the event.
        topic: the event topic.
        state: the stored state, as eventsourcing wrote it.
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
    if not _same_data(envelope, event.state):
        return f"the data of {where} differs from the stored event"
    if envelope.time != time_of(event.state):
        return f"the time of {where} is not the stored event's"
    return None


def _same_data(envelope: CloudEvent, state: bytes) -> bool:
    # The relay writes '..., "data": <stored state>}' with the state spliced in verbatim.
    if envelope.raw and envelope.raw.endswith(b'"data":' + state + b"}"):
        return True
    try:
        return bool(orjson.loads(state) == envelope.data)
    except orjson.JSONDecodeError:
        return False
