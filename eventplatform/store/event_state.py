"""The stored form of an event's state: plain JSON, with the envelope's part up front.

Every event is stored as one JSON object laid out so that the relay can publish it without
parsing it::

    {"timestamp":"<RFC 3339>"[,"class_version":N],<the event's own fields>}

``timestamp`` becomes the CloudEvents ``time``, ``class_version`` (written only from 2 on)
names the ``dataschema``, and the rest, re-opened with ``{``, is ``data``: the same bytes in
the store and on the wire. Values are plain JSON (decimals as strings, datetimes RFC 3339,
UUIDs as strings); nothing is tagged.

Events stored before this layout carry eventsourcing's transcoder tags
(``{"_type_":"decimal_str","_data_":"9.50"}``). :func:`plain` turns such a state into the
layout above, the same way every time, so old events load, publish and verify like new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import orjson
from pydantic import TypeAdapter, ValidationError

from eventplatform.errors import DecodeError

_PREFIX: Final = b'{"timestamp":"'
_VERSION: Final = b',"class_version":'
_DATETIME: Final = TypeAdapter(datetime)


@dataclass(frozen=True, slots=True)
class WireState:
    """A stored state split the way the wire carries it.

    Attributes:
        time: the event's RFC 3339 timestamp (the CloudEvents ``time``), if it has one.
        class_version: the version of the event's class that wrote it (1 when unsaid).
        data: the event's own fields as a JSON object (the CloudEvents ``data``).
    """

    time: str | None
    class_version: int
    data: bytes


def join(timestamp: str | None, class_version: int, fields: dict[str, Any]) -> bytes:
    """The stored state of an event: the layout of this module.

    Args:
        timestamp: RFC 3339 (None only for a state that never had one).
        class_version: the event class's version.
        fields: the event's own fields, plain JSON values only.
    """
    head: dict[str, Any] = {} if timestamp is None else {"timestamp": timestamp}
    if class_version != 1:
        head["class_version"] = class_version
    return orjson.dumps({**head, **fields})


def split(state: bytes) -> WireState:
    """Splits a stored state into ``time``, class version and ``data``.

    A state in this module's layout is split by slicing, without parsing. Any other JSON
    object (a tagged state written before, or a hand-made one) is made :func:`plain` first,
    so every stored event splits the same way every time.

    Raises:
        DecodeError: the state is not a JSON object.
    """
    return WireState(*split_fast(state))


def split_fast(state: bytes) -> tuple[str | None, int, bytes]:
    """:func:`split` as a tuple ``(time, class_version, data)``: the relay's hot path.

    Raises:
        DecodeError: the state is not a JSON object.
    """
    if state.startswith(_PREFIX):
        end = state.find(b'"', 14)
        if end > 14:
            after = state[end + 1 : end + 2]
            if after == b",":
                if state.startswith(_VERSION, end + 1):
                    return _split_versioned(state, end)
                return state[14:end].decode(), 1, b"{" + state[end + 2 :]
            if after == b"}" and len(state) == end + 2:
                return state[14:end].decode(), 1, b"{}"
    parsed_time, parsed_version, fields = _parsed(_load(state))
    return parsed_time, parsed_version, orjson.dumps(fields)


def time_of(state: bytes) -> str | None:
    """The stored time of a state (RFC 3339), None when it has none or is not a JSON object.

    By slicing for this module's layout: the relay measures every event's age with it.
    """
    if state.startswith(_PREFIX):
        end = state.find(b'"', 14)
        if end > 14:
            return state[14:end].decode()
    try:
        return split_fast(state)[0]
    except DecodeError:
        return None


def _split_versioned(state: bytes, end: int) -> tuple[str | None, int, bytes]:
    digits = end + 1 + len(_VERSION)
    stop = digits
    while state[stop : stop + 1].isdigit():
        stop += 1
    version = int(state[digits:stop]) if stop > digits else 0
    rest = state[stop : stop + 1]
    if version >= 1 and rest == b",":
        return state[14:end].decode(), version, b"{" + state[stop + 1 :]
    if version >= 1 and rest == b"}" and len(state) == stop + 1:
        return state[14:end].decode(), version, b"{}"
    parsed_time, parsed_version, fields = _parsed(_load(state))
    return parsed_time, parsed_version, orjson.dumps(fields)


def plain(state: bytes) -> bytes:
    """The stored state in this module's layout; a state already in it is returned as is.

    Raises:
        DecodeError: the state is not a JSON object, or its timestamp or class version is
            malformed.
    """
    if state.startswith(_PREFIX):
        return state
    return join(*_parsed(_load(state)))


def rfc3339(moment: datetime) -> str:
    """A datetime as the stored layout writes it (pydantic's JSON form: ``...Z`` for UTC)."""
    text: str = _DATETIME.dump_python(moment, mode="json")
    return text


def _load(state: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(state)
    except orjson.JSONDecodeError as e:
        msg = f"stored state is not JSON: {e}"
        raise DecodeError(msg) from e
    if not isinstance(doc, dict):
        msg = f"stored state is not a JSON object but {type(doc).__name__}"
        raise DecodeError(msg)
    return doc


def _parsed(doc: dict[str, Any]) -> tuple[str | None, int, dict[str, Any]]:
    fields = {k: _untagged(v) for k, v in doc.items()}
    timestamp = fields.pop("timestamp", None)
    version = fields.pop("class_version", 1)
    if timestamp is not None:
        timestamp = _canonical_time(timestamp)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        msg = f"stored class_version must be a positive integer, got {version!r}"
        raise DecodeError(msg)
    return timestamp, version, fields


def _canonical_time(value: object) -> str:
    if not isinstance(value, str):
        msg = f"stored timestamp must be an RFC 3339 string, got {type(value).__name__}"
        raise DecodeError(msg)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as e:
        msg = f"stored timestamp {value!r} is not ISO 8601"
        raise DecodeError(msg) from e
    if moment.tzinfo is None:
        msg = f"stored timestamp {value!r} has no UTC offset"
        raise DecodeError(msg)
    try:
        return rfc3339(moment)
    except ValidationError as e:  # pragma: no cover - a datetime always serialises
        raise DecodeError(str(e)) from e


def _untagged(value: Any) -> Any:
    """A value with eventsourcing's transcoder tags replaced by their plain JSON form."""
    if isinstance(value, dict):
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            kind, data = value["_type_"], value["_data_"]
            if kind == "datetime_iso":
                return _canonical_time(data)
            if kind == "uuid_hex" and isinstance(data, str):
                try:
                    return str(UUID(hex=data))
                except ValueError as e:
                    msg = f"stored uuid_hex {data!r} is not a UUID"
                    raise DecodeError(msg) from e
            # decimal_str is already the plain form; custom transcodings keep their data.
            return _untagged(data)
        return {k: _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value
