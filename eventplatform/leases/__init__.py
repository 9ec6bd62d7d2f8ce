"""Leases: one holder at a time, with a fencing token, through any connection pooler.

Offers :class:`Leadership` (stand by, lead, renew, notice the loss) over a
:class:`LeaseStore` (the PostgreSQL one is :class:`PostgresLeases`). Leadership saves work;
what keeps writes exactly-once is the token every position-moving commit is conditional on:
:class:`LeaseFence` checks it inside the committing transaction.
"""

from eventplatform.leases.fence import Fence, FencedOff, LeaseFence, NoFence
from eventplatform.leases.leadership import (
    Leadership,
    Lease,
    LeaseConfig,
    LeaseHolder,
    LeaseLost,
    LeaseStore,
    PostgresLeases,
    new_holder_id,
    projection_lease,
    relay_lease,
)

__all__ = [
    "Fence",
    "FencedOff",
    "Leadership",
    "Lease",
    "LeaseConfig",
    "LeaseFence",
    "LeaseHolder",
    "LeaseLost",
    "LeaseStore",
    "NoFence",
    "PostgresLeases",
    "new_holder_id",
    "projection_lease",
    "relay_lease",
]
