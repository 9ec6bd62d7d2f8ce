"""Argument types of the command line: the same checks as the ``APP_*`` variables they stand for.

Each raises :class:`argparse.ArgumentTypeError`, so a bad flag ends in argparse's one-line usage
error (exit status 2), never in a traceback or, worse, in a quietly created table.
"""

from __future__ import annotations

import argparse
import logging
import math

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
