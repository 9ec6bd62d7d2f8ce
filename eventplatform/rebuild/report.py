"""What a rebuild is asked to do, what it reports, and how it fails."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from eventplatform.errors import ConfigurationError, ProjectionError
from eventplatform.rebuild.verify import Comparison


class RebuildError(ProjectionError):
    """A rebuild could not go on; the live read model is untouched."""


class RebuildInterrupted(RebuildError):
    """The rebuild was stopped; the shadow resumes from its last committed batch."""


class StopSignal(Protocol):
    """Asked between batches (a ``threading.Event`` fits)."""

    def is_set(self) -> bool:
        """Whether to stop."""
        ...


@dataclass(frozen=True, slots=True)
class RebuildOptions:
    """What to rebuild and how.

    Attributes:
        log: the log to replay.
        batch_size: stored events per transaction.
        verify_only: catch up and compare, never swap.
        accept: swap even when the rebuilt table differs from the live one.
        aggregate: rebuild only this aggregate's rows, in place.
        from_position: replay only events after this position (into a fresh shadow).
        restart: drop the shadow and its position instead of resuming.
        topics: read only stored events of these topics (default: all).
        handover_gap: hand over once the shadow is at most this many positions behind live.
        max_rounds: catch-up rounds before handing over anyway (the lock then covers more).
        lock_timeout: seconds to wait for the live table's lock before giving up.
        differences: differing keys to report at most.
    """

    log: str
    batch_size: int = 5000
    verify_only: bool = False
    accept: bool = False
    aggregate: UUID | None = None
    from_position: int | None = None
    restart: bool = False
    topics: Collection[str] | None = None
    handover_gap: int = 1000
    max_rounds: int = 20
    lock_timeout: float = 10.0
    differences: int = 20

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.batch_size <= 1_000_000:
            problems.append(f"batch_size must be within 1..1000000, got {self.batch_size}")
        if self.from_position is not None and self.from_position < 0:
            problems.append(f"from_position must be >= 0, got {self.from_position}")
        if self.aggregate is not None and self.from_position is not None:
            problems.append("aggregate and from_position cannot be combined")
        if self.handover_gap < 0 or self.max_rounds < 1 or self.lock_timeout <= 0:
            problems.append("handover_gap >= 0, max_rounds >= 1 and lock_timeout > 0 required")
        if problems:
            raise ConfigurationError("invalid rebuild options: " + "; ".join(problems))


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild did.

    Attributes:
        projection: the projection's name.
        live_table: the table that serves queries.
        shadow_table: the table rebuilt (the live one for an aggregate rebuild).
        position: the log position both tables were compared at.
        events: stored events applied by this run.
        comparison: the verification (None when it did not get that far).
        version: the rebuilt projection's version.
        serving_version: the version that served before (None when unrecorded).
        swapped: whether the rebuilt rows now serve.
        expected_differences: differences come from a version change, not from a defect.
    """

    projection: str
    live_table: str
    shadow_table: str
    position: int = 0
    events: int = 0
    comparison: Comparison | None = None
    version: int = 1
    serving_version: int | None = None
    swapped: bool = False
    expected_differences: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No unexpected difference (or it was accepted and swapped)."""
        if self.comparison is None:
            return False
        return self.comparison.equal or self.expected_differences or self.swapped

    def lines(self) -> list[str]:
        """A human-readable summary."""
        c = self.comparison
        out = [
            f"projection {self.projection} v{self.version}"
            f" (serving v{self.serving_version if self.serving_version is not None else '?'})"
            f": {self.events} events replayed, compared at position {self.position}",
        ]
        if c is not None:
            out.append(
                f"rows: live {c.live_rows}, rebuilt {c.shadow_rows}; checksums"
                f" {c.live_checksum or '-'} / {c.shadow_checksum or '-'}"
            )
            if c.equal:
                out.append("rebuilt read model equals the live one")
            else:
                kind = "expected (version changed)" if self.expected_differences else "UNEXPECTED"
                out.append(f"{c.differing_count} rows differ, {kind}; first {len(c.differing)}:")
                out += [f"  {k}" for k in c.differing]
        out += self.notes
        if self.swapped:
            out.append(f"swapped: {self.shadow_table} now serves as {self.live_table}")
        else:
            out.append(f"not swapped: {self.live_table} keeps serving")
        return out
