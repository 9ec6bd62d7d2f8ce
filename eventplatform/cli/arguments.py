"""Argument types of the command line: the same checks as the ``APP_*`` variables they stand for.

Each raises :class:`argparse.ArgumentTypeError`, so a bad flag ends in argparse's one-line usage
error (exit status 2), never in a traceback or, worse, in a quietly created table.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from datetime import timedelta

from eventplatform.settings import validate_log_name

#: The levels ``--log-level`` takes (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def positive_int(text: str) -> int:
    """An integer of at least 1 (``--limit``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a notification id: ``--position``, ``--from``)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"must be a non-negative integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds above 0 (``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        msg = f"must be a positive number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


_DURATION = re.compile(r"^(?P<amount>\d{1,9})(?P<unit>[smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest age ``duration`` takes (a century), far below timedelta's limits.
_LONGEST = 36_500 * 86_400


def duration(text: str) -> timedelta:
    """A positive age such as ``30d``, ``12h``, ``90m`` or ``3600s`` (``prune --older-than``)."""
    match = _DURATION.match(text.strip())
    seconds = int(match["amount"]) * _SECONDS[match["unit"]] if match else 0
    if not 0 < seconds <= _LONGEST:
        msg = f"must be a positive age up to 36500d, like 30d, 12h, 90m or 3600s, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return timedelta(seconds=seconds)


def log_name(text: str) -> str:
    """A log name, checked by the same rule as ``APP_LOG`` (it becomes a table name)."""
    try:
        return validate_log_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def log_level(text: str) -> int:
    """A logging level name (``DEBUG`` ... ``CRITICAL``, any case) as its number."""
    if text.upper() not in LOG_LEVELS:
        msg = f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(logging.getLevelNamesMapping()[text.upper()])
