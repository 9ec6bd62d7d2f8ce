"""Rebuilding read models from the event store: replay into a shadow, verify, swap.

Offers :func:`rebuild` (whole table or one aggregate, with :class:`RebuildOptions` and a
:class:`RebuildReport`) and :func:`replay_log` (the bare replay, for new tables and
benchmarks). Inside: ``replay`` reads the store in large batches, ``verify`` compares tables,
``aggregate`` repairs one aggregate in place, ``progress`` reports on a terminal.
"""

from eventplatform.rebuild.rebuild import rebuild, shadow_table
from eventplatform.rebuild.replay import replay_log
from eventplatform.rebuild.report import (
    RebuildError,
    RebuildInterrupted,
    RebuildOptions,
    RebuildReport,
)

__all__ = [
    "RebuildError",
    "RebuildInterrupted",
    "RebuildOptions",
    "RebuildReport",
    "rebuild",
    "replay_log",
    "shadow_table",
]
