"""The message bus: the NATS JetStream adapter and the CloudEvents wire format.

Offers :class:`NatsBroker` (connection, streams, acknowledged publishing; build it with
``NatsBroker.from_settings``), :class:`StreamSpec`, the connect options every process uses
(:func:`nats_options`: credentials and TLS from settings), and the codec in ``cloudevents``
(:class:`CloudEvent`, ``encode``, ``decode``).
"""

from eventplatform.messagebus.cloudevents import CloudEvent
from eventplatform.messagebus.nats_broker import NatsBroker, OutgoingMessage, StreamSpec
from eventplatform.messagebus.nats_options import NatsConnectOptions, nats_options

__all__ = [
    "CloudEvent",
    "NatsBroker",
    "NatsConnectOptions",
    "OutgoingMessage",
    "StreamSpec",
    "nats_options",
]
