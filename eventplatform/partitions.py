"""Partitions: which of ``n`` partitions an aggregate's events belong to, and their subjects.

With ``APP_PARTITIONS = n > 1`` the relay puts the partition right after the subject prefix,
``<prefix>.<k>.<AggregateType>.<EventName>``, so the broker routes: the consumer of partition
``k`` filters on ``<prefix>.<k>.>`` and is sent nothing else. All events of one aggregate are
in one partition, so a partition applied in order keeps every aggregate in order; order across
aggregates (and so across partitions) is not promised.

The partition of an aggregate is the low 28 bits of its UUID modulo ``n``: stable across
processes and languages, uniform for random and name-based UUIDs, and computable in SQL
(:func:`partition_sql`) exactly as in Python (:func:`partition_of`), which the consumers' gap
fill and the rebuild need. 28 bits keep the SQL cast within a positive 32-bit integer.
"""

from __future__ import annotations

from uuid import UUID

from psycopg import sql

from eventplatform.errors import ConfigurationError

#: The most partitions a stream may have (each is a JetStream consumer per projection).
MAX_PARTITIONS = 1024


def check_partitions(n: int) -> int:
    """Returns ``n`` when it is a partition count (1..1024).

    Raises:
        ConfigurationError: it is not.
    """
    if not 1 <= n <= MAX_PARTITIONS:
        msg = f"partitions must be within 1..{MAX_PARTITIONS}, got {n}"
        raise ConfigurationError(msg)
    return n


def partition_of(aggregate_id: UUID | str, n: int) -> int:
    """The partition (``0..n-1``) of an aggregate's events."""
    if n == 1:
        return 0
    text = aggregate_id.hex if isinstance(aggregate_id, UUID) else UUID(str(aggregate_id)).hex
    return int(text[-7:], 16) % n


def partition_sql(column: str, n: int) -> sql.Composable:
    """The SQL expression of :func:`partition_of` over a uuid ``column``."""
    if n == 1:
        return sql.SQL("0")
    return sql.SQL(
        "(('x' || lpad(right(replace({}::text, '-', ''), 7), 8, '0'))::bit(32)::int %% {})"
    ).format(sql.Identifier(column), sql.Literal(n))


def partitioned_subject(subject: str, prefix: str, partition: int) -> str | None:
    """``<prefix>.<partition>.<rest>`` for a subject ``<prefix>.<rest>``; None when the subject
    does not start with the prefix (a partitioned stream cannot route it)."""
    head = prefix + "."
    if not subject.startswith(head):
        return None
    return f"{head}{partition}.{subject[len(head) :]}"


def partition_filter(prefix: str, partition: int | None) -> str:
    """The subjects a consumer of ``partition`` takes (every subject when None)."""
    return f"{prefix}.>" if partition is None else f"{prefix}.{partition}.>"


def partition_label(name: str, partition: int | None, n: int) -> str:
    """How a consumer's partition is named in tracking, leases and logs: ``name#k/n``."""
    return name if partition is None else f"{name}#{partition}/{n}"
