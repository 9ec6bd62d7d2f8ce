"""Consumers: projections (read models, exactly once) and idempotent handlers (side effects).

Offers :class:`Projection` (subclass it: ``create_tables``, ``apply``) run by
:func:`run_projection`, and :class:`IdempotentEventHandler` / :func:`idempotent` run by
:func:`run_handler`; :class:`RetryPolicy` and :class:`PermanentError` shape retries. Inside:
``worker`` (batch + position in one transaction), ``handler_consumer``, ``tracking``,
``intake`` and ``decoding`` (untrusted bytes to events), ``dead_letters``, ``parking``,
``acking``, ``versions``.
"""

from eventplatform.consumers.handler_consumer import ConsumerConfig, HandlerBatch, HandlerConsumer
from eventplatform.consumers.handlers import (
    HandlerFailed,
    IdempotentEventHandler,
    idempotent,
    retry_dead_letter,
)
from eventplatform.consumers.projection import Projection
from eventplatform.consumers.retry import PermanentError, RetryPolicy, is_transient
from eventplatform.consumers.runner import ensure_consumer_streams, run_handler, run_projection
from eventplatform.consumers.worker import BatchResult, ProjectionWorker, WorkerConfig

__all__ = [
    "BatchResult",
    "ConsumerConfig",
    "HandlerBatch",
    "HandlerConsumer",
    "HandlerFailed",
    "IdempotentEventHandler",
    "PermanentError",
    "Projection",
    "ProjectionWorker",
    "RetryPolicy",
    "WorkerConfig",
    "ensure_consumer_streams",
    "idempotent",
    "is_transient",
    "retry_dead_letter",
    "run_handler",
    "run_projection",
]
