"""Events are stored as plain JSON, read back validated, and tagged old states still load."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.domain import Aggregate, Snapshot, event
from eventsourcing.persistence import StoredEvent
from pydantic import BaseModel, ConfigDict

from domain import Product
from eventplatform.errors import ConfigurationError, DecodeError
from eventplatform.store import event_state
from eventplatform.store.mapper import PlainJSONMapper, tagged_transcoder

MAPPER = PlainJSONMapper()


def stored_events(product: Product) -> list[StoredEvent]:
    return [MAPPER.to_stored_event(e) for e in product.collect_events()]


def test_a_stored_event_is_plain_json_with_the_timestamp_first_and_no_tags():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    (created,) = stored_events(product)
    state = orjson.loads(created.state)
    assert created.topic == "Product.Created"
    assert list(state) == ["timestamp", "originator_topic", "name", "sku", "price"]
    assert state["price"] == "9.50"
    assert state["timestamp"].endswith("Z")
    assert b"_type_" not in created.state


def test_every_event_reads_back_equal_to_what_was_written():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    product.rename("Big mug")
    product.change_price(Decimal("11.00"))
    product.discontinue()
    events = product.collect_events()
    assert [MAPPER.to_domain_event(MAPPER.to_stored_event(e)) for e in events] == events


def test_an_event_stored_tagged_by_eventsourcing_still_loads():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    (created,) = product.collect_events()
    tagged = tagged_transcoder().encode(
        {k: v for k, v in vars(created).items() if not k.startswith("originator_v")}
        | {"originator_id": None}
    )
    tagged = tagged.replace(b',"originator_id":null', b"")
    assert b'"_type_":"decimal_str"' in tagged
    old = StoredEvent(created.originator_id, 1, "Product.Created", tagged)
    assert MAPPER.to_domain_event(old) == created


def test_the_old_and_new_forms_of_an_event_publish_the_same_bytes():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    (created,) = product.collect_events()
    state = {
        k: v for k, v in vars(created).items() if k not in ("originator_id", "originator_version")
    }
    tagged = tagged_transcoder().encode(state)
    plain = MAPPER.to_stored_event(created).state
    assert event_state.plain(tagged) == plain
    assert event_state.split(tagged) == event_state.split(plain)


def test_a_stored_field_of_the_wrong_type_is_a_decode_error_naming_it():
    state = b'{"timestamp":"2026-01-01T00:00:00Z","price":"cheap"}'
    with pytest.raises(DecodeError, match=r"Product\.PriceChanged field 'price'"):
        MAPPER.to_domain_event(StoredEvent(uuid4(), 2, "Product.PriceChanged", state))


class Unpinned(Aggregate):
    """An aggregate that pins nothing: its topics are module paths."""

    class Created(Aggregate.Created):
        name: str

    @event(Created)
    def __init__(self, name: str) -> None:
        self.name = name


class HalfPinned(Aggregate):
    """Its Created event pins a topic, the aggregate does not."""

    class Created(Aggregate.Created):
        TOPIC = "HalfPinned.Created"

    @event(Created)
    def __init__(self) -> None:
        pass


def test_an_event_whose_topic_is_a_module_path_is_refused_saying_how_to_pin_it():
    (created,) = Unpinned(name="x").collect_events()
    with pytest.raises(ConfigurationError, match=r"a Python module path.*TOPIC = "):
        MAPPER.to_stored_event(created)


def test_a_created_event_naming_its_aggregate_by_module_path_is_refused():
    (created,) = HalfPinned().collect_events()
    with pytest.raises(
        ConfigurationError, match=r'module path.*TOPIC = "HalfPinned" on the aggregate'
    ):
        MAPPER.to_stored_event(created)


class Gadget(Aggregate):
    """Version 3 of the code: v1 had no colour, v2 no size."""

    TOPIC = "Gadget"

    class Created(Aggregate.Created):
        TOPIC = "Gadget.Created"
        class_version: ClassVar[int] = 3
        colour: str
        size: int

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["colour"] = "grey"

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["size"] = 1

    @event(Created)
    def __init__(self, colour: str, size: int) -> None:
        self.colour = colour
        self.size = size


def test_a_versioned_event_is_stored_with_its_class_version_after_the_timestamp():
    (created,) = Gadget(colour="red", size=2).collect_events()
    state = MAPPER.to_stored_event(created).state
    assert list(orjson.loads(state))[:2] == ["timestamp", "class_version"]
    assert event_state.split(state).class_version == 3


def test_an_old_version_is_upcast_on_read_plain_or_tagged():
    v1_plain = b'{"timestamp":"2026-01-01T00:00:00Z","originator_topic":"Gadget"}'
    v2_tagged = tagged_transcoder().encode(
        {
            "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
            "originator_topic": "Gadget",
            "colour": "red",
            "class_version": 2,
        }
    )
    for state, colour in ((v1_plain, "grey"), (v2_tagged, "red")):
        got = MAPPER.to_domain_event(StoredEvent(uuid4(), 1, "Gadget.Created", state))
        assert (got.colour, got.size) == (colour, 1)


class Money(BaseModel):
    model_config = ConfigDict(frozen=True)
    amount: Decimal
    currency: str


class Account(Aggregate):
    """A pydantic value object inside a dataclass event: pydantic describes both."""

    TOPIC = "Account"

    class Created(Aggregate.Created):
        TOPIC = "Account.Created"
        limit: Money
        owner: UUID

    @event(Created)
    def __init__(self, limit: Money, owner: UUID) -> None:
        self.limit = limit


def test_nested_values_are_plain_json_too():
    owner = uuid4()
    (opened,) = Account(
        limit=Money(amount=Decimal("100.00"), currency="EUR"), owner=owner
    ).collect_events()
    stored = MAPPER.to_stored_event(opened)
    state = orjson.loads(stored.state)
    assert state["limit"] == {"amount": "100.00", "currency": "EUR"}
    assert state["owner"] == str(owner)
    assert MAPPER.to_domain_event(stored) == opened


def test_snapshots_never_leave_the_database_and_keep_eventsourcings_form():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    product.collect_events()
    snapshot = Snapshot.take(product)
    stored = MAPPER.to_stored_event(snapshot)
    assert b"_type_" in stored.state
    restored = MAPPER.to_domain_event(stored).mutate(None)
    assert (restored.price, restored.name) == (Decimal("9.50"), "Mug")
