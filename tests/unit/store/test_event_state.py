"""The stored layout splits into time, class version and data by slicing, as parsing would."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventplatform.errors import DecodeError
from eventplatform.store import event_state

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
fields = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("timestamp", "class_version")),
    json_values,
    max_size=5,
)


@given(fields, st.integers(1, 2**31 - 1))
def test_slicing_the_stored_layout_gives_what_parsing_it_gives(data, version):
    state = event_state.join("2026-11-24T10:00:00.000001Z", version, data)
    sliced = event_state.split(state)
    assert sliced == event_state.WireState("2026-11-24T10:00:00.000001Z", version, sliced.data)
    assert orjson.loads(sliced.data) == data
    reordered = orjson.dumps({**data, "class_version": version, "timestamp": sliced.time})
    assert event_state.split(reordered) == event_state.split(event_state.plain(reordered))
    assert orjson.loads(event_state.split(reordered).data) == data


def test_a_state_that_only_looks_like_the_layout_is_parsed_instead():
    odd = b'{"timestamp":"2026-11-24T10:00:00Z","class_version":"2","a":1}'
    with pytest.raises(DecodeError, match="class_version must be a positive integer"):
        event_state.split(odd)


@pytest.mark.parametrize("state", [b"", b"[]", b"\x00cipher", b'{"timestamp":'])
def test_what_is_not_a_json_object_cannot_be_split(state):
    with pytest.raises(DecodeError):
        event_state.split(state)


def test_a_tagged_timestamp_without_offset_is_refused():
    tagged = b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-24T10:00:00"}}'
    with pytest.raises(DecodeError, match="has no UTC offset"):
        event_state.split(tagged)
