"""Turning a received CloudEvent back into the domain event, without trusting the message.

Only topics of classes the consumer declared are resolved: a message cannot make a consumer
import a module it names. Upcasting (``class_version`` and ``upcast_vN_vN+1``) happens here,
through eventsourcing's own mapper, exactly as when the aggregate is loaded from the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

from eventplatform.consumers.fields import check_fields
from eventplatform.errors import DecodeError, UnknownEventType
from eventplatform.messagebus.cloudevents import CloudEvent


class EventDecoder:
    """Decodes CloudEvents into instances of the declared event classes.

    Args:
        event_classes: the domain event classes this consumer understands.
        strict: raise :class:`UnknownEventType` for any other type; when false, such
            events come back as the :class:`CloudEvent` envelope itself.
        transcoder: the writer's transcoder, when it registers custom transcodings;
            default: eventsourcing's JSON transcoder with its standard transcodings.
    """

    def __init__(
        self,
        event_classes: Iterable[type[Any]],
        *,
        strict: bool = False,
        transcoder: Transcoder | None = None,
    ) -> None:
        self._classes = {get_topic(cls): cls for cls in event_classes}
        self._strict = strict
        self._mapper: Mapper[UUID] = Mapper(transcoder=transcoder or default_transcoder())

    @property
    def topics(self) -> frozenset[str]:
        """The topics this decoder turns into domain events."""
        return frozenset(self._classes)

    def decode(self, event: CloudEvent) -> Any:
        """Returns the domain event for ``event``, or the envelope for an unknown type.

        Raises:
            UnknownEventType: the type is not declared and the decoder is strict.
            DecodeError: the data does not fit the event class (bad ids, broken tags,
                missing upcaster, a field missing or of the wrong type).
        """
        if event.type not in self._classes:
            if self._strict:
                msg = f"unknown event type {event.type!r} (known: {sorted(self._classes)})"
                raise UnknownEventType(msg)
            return event
        try:
            originator_id = UUID(event.subject)
        except ValueError as e:
            msg = f"CloudEvent subject {event.subject!r} is not an aggregate UUID"
            raise DecodeError(msg) from e
        stored = StoredEvent(
            originator_id=originator_id,
            originator_version=event.aggregate_version,
            topic=event.type,
            state=orjson.dumps(event.data),
        )
        try:
            domain_event = self._mapper.to_domain_event(stored)
        except MapperDeserialisationError as e:
            raise DecodeError(str(e)) from e
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            msg = f"cannot rebuild {event.type!r} from its data: {e!r}"
            raise DecodeError(msg) from e
        check_fields(self._classes[event.type], vars(domain_event), topic=event.type)
        return domain_event


def default_transcoder() -> JSONTranscoder:
    """eventsourcing's JSON transcoder with the transcodings an Application registers."""
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    return transcoder
