"""Routing: which NATS subject an event topic is published on."""

from __future__ import annotations

import re
from typing import Protocol

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class TopicMapper(Protocol):
    """Maps an event topic to a NATS subject, or ``None`` when it has no route.

    A Protocol because any callable with this shape will do: a dict lookup, a regex table.
    """

    def __call__(self, topic: str) -> str | None:
        """Returns the subject for ``topic``, or ``None`` to leave it unrouted."""
        ...


class DefaultTopicMapper:
    """``<prefix>.<AggregateType>.<EventName>`` from a topic such as ``Product.Created``.

    The module part of an unpinned ``module:Qual.Name`` topic is dropped; characters NATS
    reserves (``.``, ``*``, ``>``, spaces) inside a token become ``_``. Results are cached:
    the relay calls this once per event.

    Args:
        prefix: first token(s) of every subject, e.g. ``events``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._cache: dict[str, str] = {}

    def __call__(self, topic: str) -> str:
        """Returns the subject for ``topic``."""
        try:
            return self._cache[topic]
        except KeyError:
            qualname = topic.rpartition(":")[2]
            parts = [p for p in qualname.split(".") if p] or ["unknown"]
            aggregate, name = parts[0], parts[-1]
            if len(parts) == 1:
                name = "Event"
            subject = ".".join((self.prefix, _UNSAFE.sub("_", aggregate), _UNSAFE.sub("_", name)))
            self._cache[topic] = subject
            return subject
