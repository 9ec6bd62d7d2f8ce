"""Where untrusted message bytes become an event, or a reason to dead-letter them.

Consumers must never crash on a message, whatever its bytes: a bug in a decoder raising
something other than :class:`DecodeError` would otherwise stop (or endlessly retry) a batch.
So every failure here, expected or not, becomes a reason string, and the message is
dead-lettered with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventplatform.consumers.decoding import EventDecoder
from eventplatform.errors import DecodeError
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.cloudevents import CloudEvent


@dataclass(frozen=True, slots=True)
class Intake:
    """The outcome of reading one message.

    Attributes:
        envelope: the CloudEvent envelope, None when even that could not be read.
        event: the decoded event (None when ``error`` is set).
        error: why the message cannot be processed, None when it can.
    """

    envelope: CloudEvent | None
    event: Any
    error: str | None


def read_message(body: bytes, decoder: EventDecoder) -> Intake:
    """Decodes ``body`` into envelope and event; never raises.

    Args:
        body: the message payload, untrusted.
        decoder: the consumer's event decoder.

    Returns:
        The envelope and event, or the error that makes it a dead letter.
    """
    try:
        envelope = cloudevents.decode(body)
    except DecodeError as e:
        return Intake(None, None, str(e))
    except Exception as e:  # a decoder bug must not stop the consumer
        return Intake(None, None, f"unexpected error reading the envelope: {e!r}")
    try:
        return Intake(envelope, decoder.decode(envelope), None)
    except DecodeError as e:
        return Intake(envelope, None, str(e))
    except Exception as e:
        return Intake(envelope, None, f"unexpected error decoding {envelope.type!r}: {e!r}")
