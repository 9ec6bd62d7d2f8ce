"""Turning a received CloudEvent back into the domain event, without trusting the message.

Only topics of classes the consumer declared are resolved: a message cannot make a consumer
import a module it names. The event is rebuilt exactly as the store rebuilds it
(:func:`~eventplatform.store.mapper.event_from_state`): upcast from the version its
``dataschema`` names (``class_version`` and ``upcast_vN_vN+1``), then validated strictly
against the class, so a field missing or of the wrong type is a :class:`DecodeError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventplatform.errors import DecodeError, UnknownEventType
from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.store.mapper import adapter, event_from_state, wire_topic


class EventDecoder:
    """Decodes CloudEvents into instances of the declared event classes.

    Args:
        event_classes: the domain event classes this consumer understands; their topics
            must be pinned (they are the CloudEvents ``type``).
        strict: raise :class:`UnknownEventType` for any other type; when false, such
            events come back as the :class:`CloudEvent` envelope itself.

    Raises:
        ConfigurationError: an event class has no pinned topic, or pydantic cannot
            describe it.
    """

    def __init__(self, event_classes: Iterable[type[Any]], *, strict: bool = False) -> None:
        self._classes = {wire_topic(cls): cls for cls in event_classes}
        for cls in self._classes.values():
            adapter(cls)  # a class pydantic cannot describe fails here, not per message
        self._strict = strict

    @property
    def topics(self) -> frozenset[str]:
        """The topics this decoder turns into domain events."""
        return frozenset(self._classes)

    def decode(self, event: CloudEvent) -> Any:
        """Returns the domain event for ``event``, or the envelope for an unknown type.

        Raises:
            UnknownEventType: the type is not declared and the decoder is strict.
            DecodeError: the data does not fit the event class (a field missing or of the
                wrong type, a version newer than the class, a missing upcaster).
        """
        cls = self._classes.get(event.type)
        if cls is None:
            if self._strict:
                msg = f"unknown event type {event.type!r} (known: {sorted(self._classes)})"
                raise UnknownEventType(msg)
            return event
        try:
            originator_id = UUID(event.subject)
        except ValueError as e:
            msg = f"CloudEvent subject {event.subject!r} is not an aggregate UUID"
            raise DecodeError(msg) from e
        state = dict(event.data)
        state.pop("timestamp", None)
        if event.time is not None:
            state["timestamp"] = event.time
        state["class_version"] = event.schema_version
        return event_from_state(
            cls, originator_id, event.aggregate_version, state, topic=event.type
        )
