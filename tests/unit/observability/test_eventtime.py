"""Event times are read as fast as the relay needs, and exactly as datetime reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventplatform.observability.eventtime import epoch_of


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    )
)
def test_eventsourcing_utc_times_read_exactly_like_fromisoformat(moment):
    text = moment.isoformat()
    assert epoch_of(text) == pytest.approx(datetime.fromisoformat(text).timestamp(), abs=1e-6)


def test_other_offsets_and_z_are_read_too():
    assert (
        epoch_of("2026-11-24T17:42:00Z") == datetime(2026, 11, 24, 17, 42, tzinfo=UTC).timestamp()
    )
    plus_one = datetime(2026, 11, 24, 18, 42, tzinfo=UTC) - timedelta(hours=1)
    assert epoch_of("2026-11-24T18:42:00+01:00") == plus_one.timestamp()


@pytest.mark.parametrize("junk", ["", "yesterday", "2026-11-24T17:4x:00+00:00", "2026-13-01T00:00"])
def test_what_is_not_a_time_has_no_epoch(junk):
    assert epoch_of(junk) is None
