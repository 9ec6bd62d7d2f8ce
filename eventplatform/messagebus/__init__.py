"""The message bus: the NATS JetStream adapter and the CloudEvents wire format.

Offers :class:`NatsBroker` (connection, streams, acknowledged publishing), :class:`StreamSpec`,
and the codec in ``cloudevents`` (:class:`CloudEvent`, ``encode``, ``decode``).
"""

from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage, StreamSpec

__all__ = ["CloudEvent", "NatsBroker", "OutgoingMessage", "StreamSpec"]
