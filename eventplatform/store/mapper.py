"""Events to stored plain JSON and back, through pydantic: one mechanism for every event class.

eventsourcing lets an application choose its mapper (``construct_mapper``). This one turns an
event into the stored layout of :mod:`eventplatform.store.event_state` with pydantic's JSON
mode (decimals as strings, datetimes RFC 3339, UUIDs as strings, no tags), and rebuilds events
by validating that JSON against the event class, strictly: a field missing or of the wrong
type is a :class:`DecodeError` naming it, never an event that breaks its own type.

pydantic describes eventsourcing's dataclass events (the declarative ``Aggregate.Event``
style) and pydantic-model events alike, so both work, and both give the JSON Schema the
contract is published as (:mod:`eventplatform.messagebus.schemas`).

Topics cross process and language boundaries (the stored topic is the CloudEvents ``type``,
a Created event's ``originator_topic`` names the aggregate type), so both must be pinned
(``TOPIC = "Product.Created"``): a module path (``shop.orders:Order``) is refused on save.

Snapshots never leave the database: they keep eventsourcing's own tagged form.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import orjson
import pydantic_core
from eventsourcing.domain import CanSnapshotAggregate
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import TypeAdapter, ValidationError
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from eventplatform.errors import ConfigurationError, DecodeError
from eventplatform.store import event_state

#: Event classes are few and live as long as the process: a plain dict caches their adapters.
_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}
_ZONED = re.compile(r"(Z|[+-]\d\d:\d\d)$")
#: Attributes every stored event carries outside ``data``: the row's columns and the prefix.
ENVELOPE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "class_version"})


class PlainJSONMapper(Mapper[UUID]):
    """eventsourcing's ``Mapper`` writing plain JSON and validating on read.

    Args:
        transcoder: eventsourcing's tagged transcoder, used for snapshots only (default:
            :func:`tagged_transcoder`).
        compressor: as eventsourcing's (a compressed store cannot be relayed).
        cipher: as eventsourcing's (an encrypted store cannot be relayed).
    """

    def __init__(
        self,
        transcoder: Transcoder | None = None,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        super().__init__(transcoder or tagged_transcoder(), compressor, cipher)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        """The stored event: plain JSON in the layout of :mod:`~eventplatform.store.event_state`.

        Raises:
            ConfigurationError: the event's topic or its aggregate's is a module path, or
                its class cannot be written as JSON.
        """
        cls = type(domain_event)
        if issubclass(cls, CanSnapshotAggregate):
            return super().to_stored_event(domain_event)
        topic = wire_topic(cls)
        try:
            fields: dict[str, Any] = adapter(cls).dump_python(domain_event, mode="json")
        except (ValueError, pydantic_core.PydanticSerializationError) as e:
            msg = f"{topic} cannot be written as JSON: {e}"
            raise ConfigurationError(msg) from e
        fields.pop("originator_id", None)
        fields.pop("originator_version", None)
        timestamp = fields.pop("timestamp", None)
        if not isinstance(timestamp, str) or not _ZONED.search(timestamp):
            msg = f"{topic} needs a timezone-aware timestamp, got {timestamp!r}"
            raise ConfigurationError(msg)
        _check_aggregate_topic(topic, fields.get("originator_topic"))
        state = event_state.join(timestamp, getattr(cls, "class_version", 1), fields)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic,
            state=state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The event, validated against its class; tagged (older) states are upcast first.

        Raises:
            DecodeError: the state does not fit the class (names the field), or an upcaster
                is missing.
        """
        cls = resolve_topic(stored_event.topic)
        if isinstance(cls, type) and issubclass(cls, CanSnapshotAggregate):
            return super().to_domain_event(stored_event)
        state = stored_event.state
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        return event_from_state(
            cls,
            stored_event.originator_id,
            stored_event.originator_version,
            orjson.loads(event_state.plain(state)),
            topic=stored_event.topic,
        )


def event_from_state(
    cls: type[Any],
    originator_id: UUID | str,
    originator_version: int,
    state: dict[str, Any],
    *,
    topic: str,
) -> Any:
    """Rebuilds an event from its plain JSON state: upcast, then validated strictly.

    Used for stored rows and for received messages alike, so both are held to one rule.

    Args:
        cls: the event class.
        originator_id: the aggregate id.
        originator_version: the aggregate version.
        state: ``timestamp``, ``class_version`` (absent: 1) and the event's fields, as plain
            JSON values; upcasters (``upcast_vN_vN+1``) change it in place.
        topic: the event's topic, for messages.

    Raises:
        DecodeError: a field is missing or of the wrong type, the state is of a newer
            version than the class, or an upcaster is missing.
    """
    state = dict(state)
    version = state.pop("class_version", 1)
    current = getattr(cls, "class_version", 1)
    if not isinstance(version, int) or version > current:
        msg = (
            f"{topic} is version {version!r} but this code's class is version {current}: "
            "deploy the code that wrote it"
        )
        raise DecodeError(msg)
    while version < current:
        upcast = getattr(cls, f"upcast_v{version}_v{version + 1}", None)
        if upcast is None:
            msg = (
                f"{topic} v{version} cannot be read: {cls.__qualname__} has no "
                f"upcast_v{version}_v{version + 1}"
            )
            raise DecodeError(msg)
        try:
            upcast(state)
        except Exception as e:  # user code, run on data that may come from anyone
            msg = f"{topic}: upcast_v{version}_v{version + 1} failed on this data: {e!r}"
            raise DecodeError(msg) from e
        version += 1
    state["originator_id"] = originator_id
    state["originator_version"] = originator_version
    try:
        return adapter(cls).validate_json(pydantic_core.to_json(state), strict=True)
    except ValidationError as e:
        raise DecodeError(_describe(topic, e)) from e
    except pydantic_core.PydanticSerializationError as e:
        msg = f"{topic}: an upcaster left a value that is not JSON: {e}"
        raise DecodeError(msg) from e


def adapter(cls: type[Any]) -> TypeAdapter[Any]:
    """pydantic's view of an event class (a dataclass or a pydantic model), cached.

    Raises:
        ConfigurationError: pydantic cannot describe the class.
    """
    try:
        return _ADAPTERS[cls]
    except KeyError:
        pass
    try:
        found = _ADAPTERS[cls] = TypeAdapter(cls)
    except (PydanticSchemaGenerationError, PydanticUserError, NameError, TypeError) as e:
        msg = (
            f"event class {cls.__qualname__} cannot be described as JSON ({e}); give its "
            "fields types pydantic knows (str, int, Decimal, datetime, UUID, enums, "
            "dataclasses, pydantic models, lists and dicts of these)"
        )
        raise ConfigurationError(msg) from e
    return found


def wire_topic(cls: type[Any]) -> str:
    """The topic of an event class, which must be pinned: it names the event on the wire.

    Raises:
        ConfigurationError: the topic is a Python module path (``module:QualName``).
    """
    topic = get_topic(cls)
    if ":" in topic:
        msg = (
            f"{cls.__qualname__} has the topic {topic!r}, a Python module path, which would "
            f"be stored and published as the event's type: pin it, e.g. "
            f'TOPIC = "{cls.__qualname__}" on the class'
        )
        raise ConfigurationError(msg)
    return topic


def _check_aggregate_topic(topic: str, originator_topic: object) -> None:
    if isinstance(originator_topic, str) and ":" in originator_topic:
        aggregate = originator_topic.rpartition(":")[2]
        msg = (
            f"{topic} names its aggregate by the Python module path {originator_topic!r}, "
            f'which would be stored and published: pin it, TOPIC = "{aggregate}" on the '
            "aggregate class (eventsourcing then asks every event class in it to pin its own)"
        )
        raise ConfigurationError(msg)


def _describe(topic: str, error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(the state)"
    if first["type"] == "missing":
        return f"{topic} lacks its field {field!r}"
    got = type(first.get("input")).__name__
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{topic} field {field!r}: {first['msg']}, got {got}{more}"


def tagged_transcoder() -> JSONTranscoder:
    """eventsourcing's JSON transcoder with the transcodings an Application registers.

    It wrote every event before the plain layout; the platform keeps it for snapshots.
    """
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    return transcoder
