"""The relay: follows a log's notifications and publishes every event to JetStream, in order.

Offers :func:`run_relay` (a relay process: leads a log or stands by), :class:`Relay` (the
follower itself), and routing (:class:`TopicMapper`, :class:`DefaultTopicMapper`). Inside:
``event_log`` reads the outbox, ``positions`` records how far the broker acknowledged,
``fencing`` keeps JetStream from appending out of order, ``tail`` and ``genuine`` check what
the stream holds against the store, ``audit`` compares a whole stream with the store.
"""

from eventplatform.relay.relay import (
    ForeignDuplicate,
    Relay,
    RelayConfig,
    RelayedBatch,
    StreamAheadOfLog,
)
from eventplatform.relay.routing import DefaultTopicMapper, TopicMapper
from eventplatform.relay.runner import run_relay

__all__ = [
    "DefaultTopicMapper",
    "ForeignDuplicate",
    "Relay",
    "RelayConfig",
    "RelayedBatch",
    "StreamAheadOfLog",
    "TopicMapper",
    "run_relay",
]
