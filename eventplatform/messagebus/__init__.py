"""The message bus: the NATS JetStream adapter, the CloudEvents wire format and its schemas.

Offers :class:`NatsBroker` (connection, streams, acknowledged publishing; build it with
``NatsBroker.from_settings``), :class:`StreamSpec`, the connect options every process uses
(:func:`nats_options`: credentials and TLS from settings), the codec in ``cloudevents``
(:class:`CloudEvent`, ``encode``, ``decode``), ``stored`` (a stored event and the message the
relay makes of it), and in ``schemas`` the published contract: a JSON Schema of ``data`` per
event type and version, and the check that refuses changes breaking it.
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
