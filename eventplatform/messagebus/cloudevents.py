"""The wire format: CloudEvents 1.0, JSON, structured mode.

:func:`encode` is THE function from a stored row to its message: the relay publishes with it,
consumers fill gaps with it, and verification compares messages with what it makes of the
stored row (through :func:`wire_state`, its reading of the stored state), so a message is
genuine exactly when it is what the relay would have made of the stored row.

Encoding is on the relay's hot path (its whole budget at 30k events/s is about 33 µs a
message). The stored state is plain JSON laid out for it (:mod:`eventplatform.store.event_state`):
its ``timestamp`` is sliced out as ``time``, its ``class_version`` names the ``dataschema``,
and the rest is spliced into the envelope as ``data`` with an ``orjson.Fragment``, never parsed
or re-serialised. A state stored before that layout (with eventsourcing's ``_type_``/``_data_``
tags) is converted to it first, the same way every time.

Attributes are typed as CloudEvents says. ``sequence`` is the documented Sequence extension, a
String: the notification id zero-padded to 19 digits, so it orders lexicographically (as that
extension requires) over the whole bigint range, which a CloudEvents Integer (32-bit) could not
hold. ``aggregateversion`` is an Integer extension of ours. ``dataschema`` names the JSON Schema
of ``data`` (:func:`schema_uri`).

Decoding is where untrusted bytes enter a consumer, so it is strict and every failure is a
:class:`DecodeError` that names what was wrong.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson

from eventplatform.errors import DecodeError
from eventplatform.store.event_state import WireState, split, split_fast

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
#: Namespace of the deterministic CloudEvents ids (uuid5 of "<aggregate id>:<version>").
EVENT_ID_NAMESPACE = uuid5(NAMESPACE_URL, "https://eventplatform.dev/event-id")
_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes
MSG_ID_HEADER = "Nats-Msg-Id"
#: Every ``dataschema`` starts with this; then the quoted type, ``:v`` and the class version.
SCHEMA_URI_PREFIX = "urn:eventplatform:schema:"


def event_id(aggregate_id: UUID | str, version: int) -> str:
    """The CloudEvents ``id`` of an event: the same on every republish.

    eventsourcing events carry no UUID of their own, but an aggregate id and a version name
    exactly one event, forever.
    """
    # uuid5 by hand: the same text as str(uuid.uuid5(...)) without building UUID objects,
    # version and variant set on the hex digits (a fifth of the relay's time per message
    # went to the object construction).
    name = _NAMESPACE_BYTES + f"{aggregate_id}:{version}".encode()
    h = hashlib.sha1(name, usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


#: The first hex digit of uuid byte 8 with the RFC 4122 variant bits (10xx) set.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def message_id(log: str, notification_id: int) -> str:
    """The ``Nats-Msg-Id`` of a notification: JetStream drops a repeat inside its window."""
    return f"{log}:{notification_id}"


def sequence_text(notification_id: int) -> str:
    """The ``sequence`` attribute of a notification: its id, zero-padded to 19 digits."""
    return f"{notification_id:019d}"


@lru_cache(maxsize=4096)
def schema_uri(topic: str, class_version: int) -> str:
    """The ``dataschema`` of an event type at a class version.

    It is also the ``$id`` of the JSON Schema ``eventplatform schemas --out`` writes, so a
    consumer in any language finds the schema of a message's ``data`` by this name.
    """
    return f"{SCHEMA_URI_PREFIX}{quote(topic, safe='')}:v{class_version}"


def wire_state(state: bytes) -> WireState:
    """What a stored state puts on the wire: ``time``, the schema version and ``data``.

    Raises:
        DecodeError: the state is not a JSON object.
    """
    return split(state)


def encode(
    *,
    log: str,
    notification_id: int,
    aggregate_id: UUID | str,
    version: int,
    topic: str,
    state: bytes,
    traceparent: str | None = None,
) -> bytes:
    """Encodes a stored event as a CloudEvents JSON message.

    Args:
        log: the log (application) name; becomes ``source``.
        notification_id: position in the log; the ``sequence`` extension.
        aggregate_id: becomes ``subject``.
        version: the aggregate version; the ``aggregateversion`` extension.
        topic: the event topic; becomes ``type``.
        state: the stored state (a JSON object; tagged older states are converted).
        traceparent: a W3C trace context to carry along, if tracing is on.

    Returns:
        The message body.

    Raises:
        DecodeError: the stored state is not a JSON object (e.g. encrypted or compressed
            state, which must not be published as such).
    """
    if not state.startswith(b"{"):
        msg = (
            f"stored state of {log}:{notification_id} ({topic}) is not a JSON object; "
            "encrypted or compressed stores cannot be relayed verbatim"
        )
        raise DecodeError(msg)
    time, class_version, data = split_fast(state)
    subject = str(aggregate_id)
    envelope: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id(subject, version),
        "source": log,
        "type": topic,
        "subject": subject,
    }
    if time is not None:
        envelope["time"] = time
    envelope["datacontenttype"] = CONTENT_TYPE
    envelope["dataschema"] = schema_uri(topic, class_version)
    envelope["sequence"] = f"{notification_id:019d}"
    envelope["aggregateversion"] = version
    if traceparent:
        envelope["traceparent"] = traceparent
    envelope["data"] = orjson.Fragment(data)
    return orjson.dumps(envelope)


def encode_tagged(
    *,
    log: str,
    notification_id: int,
    aggregate_id: UUID | str,
    version: int,
    topic: str,
    state: bytes,
) -> bytes | None:
    """The body relays published for a tagged stored state before the plain layout.

    They spliced the state as stored (tags and ``timestamp`` in ``data``), wrote ``sequence``
    as a JSON integer and had no ``dataschema``. Streams written then still hold such messages:
    the relay and the audit recognise them, byte for byte, as the stored event's (they are
    not forgeries), while consumers refuse them like any message not in today's format.

    Returns:
        That body, or None when the state is not in the tagged form (no relay wrote it so).
    """
    marker = b'"timestamp":{"_type_":"datetime_iso","_data_":"'
    start = state.find(marker)
    if not state.startswith(b"{") or start < 0:
        return None
    start += len(marker)
    end = state.find(b'"', start)
    envelope: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id(aggregate_id, version),
        "source": log,
        "type": topic,
        "subject": str(aggregate_id),
        "datacontenttype": CONTENT_TYPE,
        "sequence": notification_id,
        "aggregateversion": version,
    }
    if end > start:
        envelope["time"] = state[start:end].decode()
    envelope["data"] = orjson.Fragment(state)
    return orjson.dumps(envelope)


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """A decoded message: the envelope, with ``data`` as plain JSON.

    Attributes:
        id: deterministic event id (same on every republish).
        source: the log name.
        type: the event topic.
        subject: the aggregate id, as a string.
        sequence: the notification id in the log (an integer here; a string on the wire).
        aggregate_version: the aggregate's version after this event.
        data: the event's own fields (plain JSON; ``time`` and the version are apart).
        time: RFC 3339 time of the event, if it had one.
        traceparent: W3C trace context, if any.
        raw: the original message body.
        schema_version: the class version of the event's data, named by ``dataschema``.
    """

    id: str
    source: str
    type: str
    subject: str
    sequence: int
    aggregate_version: int
    data: dict[str, Any]
    time: str | None = None
    traceparent: str | None = None
    raw: bytes = field(default=b"", repr=False)
    schema_version: int = 1

    @property
    def dataschema(self) -> str:
        """The URI of the JSON Schema of ``data``."""
        return schema_uri(self.type, self.schema_version)


#: Largest value a PostgreSQL bigint holds: positions are stored as bigint.
MAX_BIGINT = 2**63 - 1
#: Largest CloudEvents Integer (signed 32-bit): the bound of ``aggregateversion``.
MAX_INTEGER = 2**31 - 1
#: Longest event type (topic) accepted; a topic names a class, it is never long.
MAX_TYPE_LENGTH = 255
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOG = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
#: Printable, no control characters: what a topic may hold.
_TYPE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_SEQUENCE = re.compile(r"^[0-9]{19}$")
_SCHEMA_VERSION = re.compile(r"^v([1-9][0-9]{0,9})$")


def decode(body: bytes) -> CloudEvent:
    """Decodes and checks a CloudEvents JSON message; the broker is not trusted for content.

    Every attribute is checked against what the relay publishes, before anything is stored
    or compared with it: ``id`` and ``subject`` are lowercase UUIDs, ``source`` is a log name,
    ``type`` is printable and short, ``sequence`` is 19 digits within a bigint,
    ``aggregateversion`` a CloudEvents Integer from 1, ``dataschema`` the schema of ``type``
    at a version, ``time`` is RFC 3339. A ``traceparent`` that is not W3C is dropped, as the
    W3C specification says, rather than failing the event.

    Args:
        body: the message payload.

    Returns:
        The decoded envelope.

    Raises:
        DecodeError: not JSON, not an object, not CloudEvents 1.0, or an attribute missing,
            of the wrong type or out of range; the message says which.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        msg = f"message is not JSON: {e}"
        raise DecodeError(msg) from e
    if not isinstance(doc, dict):
        msg = f"message is not a JSON object but {type(doc).__name__}"
        raise DecodeError(msg)
    if doc.get("specversion") != SPEC_VERSION:
        shown = _shown(doc.get("specversion"))
        msg = f"message is not CloudEvents {SPEC_VERSION}: specversion={shown}"
        raise DecodeError(msg)
    event_id = _text(doc, "id", _UUID, "a lowercase UUID")
    source = _text(doc, "source", _LOG, "a log name ([a-z][a-z0-9_]*, at most 41)")
    event_type = _text(doc, "type", _TYPE, f"printable text of at most {MAX_TYPE_LENGTH}")
    if len(event_type) > MAX_TYPE_LENGTH:
        msg = (
            f"CloudEvent attribute 'type' is {len(event_type)} characters long"
            f" (max {MAX_TYPE_LENGTH})"
        )
        raise DecodeError(msg)
    subject = _text(doc, "subject", _UUID, "an aggregate id (a lowercase UUID)")
    sequence = _sequence(doc)
    version = _integer(doc, "aggregateversion")
    schema_version = _schema_version(doc, event_type)
    data = doc.get("data")
    if not isinstance(data, dict):
        msg = f"CloudEvent 'data' must be a JSON object, got {type(data).__name__}"
        raise DecodeError(msg)
    content_type = doc.get("datacontenttype", CONTENT_TYPE)
    if content_type != CONTENT_TYPE:
        msg = f"CloudEvent 'datacontenttype' must be {CONTENT_TYPE!r}, got {_shown(content_type)}"
        raise DecodeError(msg)
    time = doc.get("time")
    if time is not None and not (isinstance(time, str) and _TIME.match(time)):
        msg = f"CloudEvent attribute 'time' must be an RFC 3339 timestamp, got {_shown(time)}"
        raise DecodeError(msg)
    traceparent = doc.get("traceparent")
    if not (isinstance(traceparent, str) and _TRACEPARENT.match(traceparent)):
        traceparent = None
    return CloudEvent(
        id=event_id,
        source=source,
        type=event_type,
        subject=subject,
        sequence=sequence,
        aggregate_version=version,
        data=data,
        time=time,
        traceparent=traceparent,
        raw=body,
        schema_version=schema_version,
    )


def _text(doc: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        msg = f"CloudEvent attribute {name!r} must be {what}, got {_shown(value)}"
        raise DecodeError(msg)
    return value


def _sequence(doc: dict[str, Any]) -> int:
    value = doc.get("sequence")
    if isinstance(value, str) and _SEQUENCE.match(value) and 1 <= int(value) <= MAX_BIGINT:
        return int(value)
    msg = (
        "CloudEvent extension 'sequence' must be a string of 19 digits within 1..2^63-1,"
        f" got {_shown(value)}"
    )
    raise DecodeError(msg)


def _integer(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INTEGER:
        msg = (
            f"CloudEvent extension {name!r} must be an integer within 1..2^31-1,"
            f" got {_shown(value)}"
        )
        raise DecodeError(msg)
    return value


def _schema_version(doc: dict[str, Any], event_type: str) -> int:
    value = doc.get("dataschema")
    prefix = schema_uri(event_type, 1)[:-2]  # '...:<type>:' without 'v1'
    if isinstance(value, str) and value.startswith(prefix):
        match = _SCHEMA_VERSION.match(value[len(prefix) :])
        if match and int(match.group(1)) <= MAX_INTEGER:
            return int(match.group(1))
    msg = (
        f"CloudEvent attribute 'dataschema' must be {prefix}v<version> for its type,"
        f" got {_shown(value)}"
    )
    raise DecodeError(msg)


def _shown(value: object, limit: int = 80) -> str:
    """A value for an error message: repr'd (so NUL and control characters show escaped),
    and cut short (a hostile message may carry megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
