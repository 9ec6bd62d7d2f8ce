"""Whether a message in the stream is the one the relay publishes for a stored event.

The broker is not trusted for content (DESIGN, invariant 8): whoever may publish on the event
subjects can send any body under any ``Nats-Msg-Id``. So the relay and the audit never take a
``<log>:<notification id>`` message id at its word; they compare the message with the stored
event it claims to carry. Three verdicts:

* **genuine**: the relay's CloudEvent of that stored event (same bytes, or the same envelope
  attributes and the same ``data``: a relay of another version may lay the JSON out otherwise;
  or, for an event stored in the tagged form, the very bytes relays published before the
  plain layout: :func:`~eventplatform.messagebus.stored.message_before_plain`);
* **from a relay, for another event** (foreign): a consistent CloudEvent of this log
  (``source`` is the log, ``sequence`` the claimed id, ``id`` the deterministic id of its
  ``subject`` and ``aggregateversion``) of another event than the stored one: what another
  database's relay, or this log before a reset, published. It tells a foreign history from a
  forgery;
* **forged**: anything else, a tampered copy of the stored event (same event id, other
  content) included.

The NATS subject is not compared: a changed topic mapper must not make the log's own history
look foreign. Keeping strangers off the event subjects is NATS authorisation's job.
"""

from __future__ import annotations

import enum

from eventplatform.errors import DecodeError
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.stored import (
    StoredEvent,
    difference,
    message_before_plain,
    message_for,
)
from eventplatform.relay.event_log import Notification


class Verdict(enum.Enum):
    """What a message that claims a notification turned out to be."""

    GENUINE = "genuine"
    FOREIGN = "foreign"  # a relay's message of this log, but not of the stored event
    FORGED = "forged"


def stored_event(log: str, notification: Notification) -> StoredEvent:
    """``notification`` of ``log`` as the wire sees it."""
    return StoredEvent(
        log=log,
        notification_id=notification.id,
        aggregate_id=notification.originator_id,
        version=notification.originator_version,
        topic=notification.topic,
        state=notification.state,
    )


def expected_body(log: str, notification: Notification) -> bytes:
    """The body the relay publishes for ``notification``.

    Raises:
        DecodeError: the stored state is not a JSON object (it cannot be relayed at all).
    """
    return message_for(stored_event(log, notification))


def judge(body: bytes, log: str, claimed: int, stored: Notification | None) -> Verdict:
    """Judges a message whose id claims ``<log>:<claimed>``.

    Args:
        body: the message's payload.
        log: the log it claims.
        claimed: the notification id it claims.
        stored: the stored event with that id, None when the log has none.
    """
    if stored is not None and carries(body, log, stored):
        return Verdict.GENUINE
    event = _relayed(body, log, claimed)
    if event is None:
        return Verdict.FORGED
    if stored is not None and event.id == cloudevents.event_id(
        stored.originator_id, stored.originator_version
    ):
        return Verdict.FORGED  # the stored event's id with other content: tampered
    return Verdict.FOREIGN


def carries(body: bytes, log: str, stored: Notification) -> bool:
    """Whether ``body`` is the relay's CloudEvent of the stored event ``stored``."""
    event = stored_event(log, stored)
    try:
        if body == message_for(event):
            return True  # the usual case: this very encoder wrote it
        if body == message_before_plain(event):
            return True  # a relay from before the plain layout published it
        return difference(cloudevents.decode(body), event) is None
    except DecodeError:
        return False


def looks_relayed(body: bytes, log: str, claimed: int) -> bool:
    """Whether ``body`` is a consistent CloudEvent of ``log`` at ``claimed``, as relays write."""
    return _relayed(body, log, claimed) is not None


def _relayed(body: bytes, log: str, claimed: int) -> cloudevents.CloudEvent | None:
    try:
        event = cloudevents.decode(body)
    except DecodeError:
        return None
    consistent = (
        event.source == log
        and event.sequence == claimed
        and event.id == cloudevents.event_id(event.subject, event.aggregate_version)
    )
    return event if consistent else None
