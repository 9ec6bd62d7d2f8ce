"""Checking a decoded event against its class: every field present, every value of its type.

eventsourcing rebuilds an event by setting its ``__dict__`` from the stored state, without
running a constructor: a message with a missing field, or a string where the class declares a
``Decimal``, would reach a projection or a handler as an event that breaks its own type. This
module checks the dataclass fields of the event class (eventsourcing events are dataclasses)
against the rebuilt values. A class that is not a dataclass validates itself (e.g. pydantic).

Checked: presence (fields without a default), and the type of each value as far as plain
classes, ``Optional``/unions, ``Literal`` and the container kind of generics go. Fields the
class does not declare are allowed: a newer writer may have added one.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any

from eventplatform.errors import DecodeError


def check_fields(event_class: type[Any], values: dict[str, Any], *, topic: str) -> None:
    """Raises :class:`DecodeError` naming the first field that is missing or mistyped.

    Args:
        event_class: the class the event was rebuilt as.
        values: the rebuilt event's attributes (its ``__dict__``).
        topic: the event's topic, for the message.
    """
    for name, expected, required in _fields(typing.cast(typing.Hashable, event_class)):
        if name not in values:
            if required:
                msg = f"{topic} lacks its field {name!r}"
                raise DecodeError(msg)
            continue
        value = values[name]
        if not _conforms(value, expected):
            msg = (
                f"{topic} field {name!r} must be {_describe(expected)}, got {type(value).__name__}"
            )
            raise DecodeError(msg)


@lru_cache(maxsize=512)
def _fields(event_class: Any) -> tuple[tuple[str, Any, bool], ...]:
    if not dataclasses.is_dataclass(event_class):
        return ()
    try:
        hints = typing.get_type_hints(event_class)
    except Exception:  # an annotation that cannot be resolved here: check presence only
        hints = {}
    return tuple(
        (
            f.name,
            hints.get(f.name, Any),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(event_class)
    )


def _conforms(value: Any, expected: Any) -> bool:
    if expected is Any or isinstance(expected, typing.TypeVar | str):
        return True
    if expected is None or expected is type(None):
        return value is None
    origin = typing.get_origin(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if origin is typing.ClassVar or origin is typing.Annotated:
        args = typing.get_args(expected)
        return _conforms(value, args[0]) if args else True
    if origin is not None:
        expected = origin
        if expected in (tuple, list, collections.abc.Sequence):  # JSON has lists only
            return isinstance(value, list | tuple)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        try:
            return isinstance(value, expected)
        except TypeError:  # a class that refuses isinstance checks
            return True
    return True


def _describe(expected: Any) -> str:
    return getattr(expected, "__name__", None) or str(expected)
