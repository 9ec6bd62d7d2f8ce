"""The message bus: the NATS JetStream adapter, the CloudEvents wire format and its schemas.

Offers :class:`NatsBroker` (connection, streams, acknowledged publishing), :class:`StreamSpec`,
the codec in ``cloudevents`` (:class:`CloudEvent`, ``encode``, ``decode``), and in ``schemas``
the published contract: a JSON Schema of ``data`` per event type and version, and the check
that refuses changes breaking it.
"""

from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage, StreamSpec

__all__ = ["CloudEvent", "NatsBroker", "OutgoingMessage", "StreamSpec"]
