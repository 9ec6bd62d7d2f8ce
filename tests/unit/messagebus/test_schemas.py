"""A JSON Schema per event type, from the classes, and a check that refuses breaking changes."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import orjson
import pytest
from eventsourcing.domain import Aggregate

import domain
from domain import Product
from eventplatform.messagebus import cloudevents
from eventplatform.messagebus.schemas import (
    check,
    event_classes_in,
    event_schema,
    export,
    file_name,
)
from eventplatform.store.mapper import PlainJSONMapper


def data_of(event: Any) -> dict[str, Any]:
    """The ``data`` the relay publishes for an event."""
    stored = PlainJSONMapper().to_stored_event(event)
    return dict(orjson.loads(cloudevents.wire_state(stored.state).data))


def test_the_schema_describes_data_and_is_named_by_the_dataschema():
    schema = event_schema(Product.Created).schema
    assert schema["$id"] == "urn:eventplatform:schema:Product.Created:v1"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "Product.Created"
    assert schema["description"] == "A product was added to the catalogue."
    assert set(schema["properties"]) == {"originator_topic", "name", "sku", "price"}
    assert set(schema["required"]) == {"originator_topic", "name", "sku", "price"}
    assert schema["properties"]["price"]["type"] == "string"


def test_what_the_relay_publishes_fits_the_schema_and_a_number_for_a_decimal_does_not():
    product = Product.create("Mug", "MUG-1", Decimal("9.50"))
    product.change_price(Decimal("1E+2"))
    for event in product.collect_events():
        schema = event_schema(type(event)).schema
        jsonschema.Draft202012Validator(schema).validate(data_of(event))
    price_schema = event_schema(Product.PriceChanged).schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(price_schema).validate({"price": 9.5})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(price_schema).validate({"price": "9,50"})


def test_the_event_classes_of_a_module_are_its_aggregates_events_without_the_base_event():
    found = {cls.TOPIC for cls in event_classes_in(domain)}
    assert found == {
        "Product.Created",
        "Product.Renamed",
        "Product.PriceChanged",
        "Product.Discontinued",
    }
    assert event_classes_in(Product.Renamed) == [Product.Renamed]


def test_export_writes_one_file_per_type_and_keeps_other_versions(tmp_path):
    older = tmp_path / file_name("Product.Created", 0)
    older.write_text("{}")
    written = export(event_classes_in(domain), tmp_path)
    assert {p.name for p in written} == {
        "Product.Created.v1.schema.json",
        "Product.Discontinued.v1.schema.json",
        "Product.PriceChanged.v1.schema.json",
        "Product.Renamed.v1.schema.json",
    }
    assert older.exists()
    assert json.loads((tmp_path / "Product.Renamed.v1.schema.json").read_text())["$id"] == (
        "urn:eventplatform:schema:Product.Renamed:v1"
    )


# Each spec publishes an "old" class's schema under the topic of the "new" one, as if the
# class had been edited in place since the schemas were exported.


class Before(Aggregate.Event):
    TOPIC = "Spec.Before"
    name: str
    price: Decimal
    note: str | None = None


def published_as(tmp_path: Path, old: type[Any], new: type[Any]) -> Path:
    schema = event_schema(old).schema
    version = getattr(new, "class_version", 1) if old is new else getattr(old, "class_version", 1)
    topic = new.TOPIC
    schema.update({"$id": cloudevents.schema_uri(topic, version), "title": topic})
    (tmp_path / file_name(topic, version)).write_text(json.dumps(schema))
    return tmp_path


def test_an_unchanged_class_is_compatible(tmp_path):
    export([Product.Created], tmp_path)
    result = check([Product.Created], tmp_path)
    assert (result.problems, result.new) == ([], [])


class Removed(Aggregate.Event):
    TOPIC = "Spec.Removed"
    name: str


class Renamed(Aggregate.Event):
    TOPIC = "Spec.Renamed"
    title: str
    price: Decimal


class Retyped(Aggregate.Event):
    TOPIC = "Spec.Retyped"
    name: str
    price: float


class Required(Aggregate.Event):
    TOPIC = "Spec.Required"
    name: str
    price: Decimal
    colour: str


class MadeOptional(Aggregate.Event):
    TOPIC = "Spec.Optional"
    name: str
    price: Decimal | None = None


class Added(Aggregate.Event):
    TOPIC = "Spec.Added"
    name: str
    price: Decimal
    note: str | None = None
    colour: str = "grey"


@pytest.mark.parametrize(
    ("new", "complaint"),
    [
        (Removed, "field 'price' was removed or renamed"),
        (Renamed, "field 'name' was removed or renamed"),
        (Retyped, "field 'price' changed type"),
        (Required, "field 'colour' is new and required"),
        (MadeOptional, "field 'price' became optional"),
    ],
)
def test_a_change_that_breaks_consumers_fails_the_check_saying_how_to_version_it(
    tmp_path, new, complaint
):
    result = check([new], published_as(tmp_path, Before, new))
    [problem] = [p for p in result.problems if complaint in p]
    assert problem.startswith(f"{new.TOPIC} v1: ")
    assert "class_version = 2 and upcast_v1_v2" in problem


def test_a_new_optional_field_is_compatible(tmp_path):
    assert check([Added], published_as(tmp_path, Before, Added)).problems == []


class Versioned(Aggregate.Event):
    TOPIC = "Spec.Versioned"
    class_version: ClassVar[int] = 2
    name: str
    colour: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["colour"] = "grey"


class VersionedWithoutUpcaster(Aggregate.Event):
    TOPIC = "Spec.VersionedWithoutUpcaster"
    class_version: ClassVar[int] = 2
    colour: str


def test_a_breaking_change_versioned_with_an_upcaster_passes_and_the_new_version_is_new(tmp_path):
    result = check([Versioned], published_as(tmp_path, Before, Versioned))
    assert result.problems == []
    assert result.new == ["Spec.Versioned v2 (Spec.Versioned.v2.schema.json)"]


def test_a_new_version_without_its_upcaster_fails(tmp_path):
    result = check(
        [VersionedWithoutUpcaster], published_as(tmp_path, Before, VersionedWithoutUpcaster)
    )
    assert result.problems == [
        "Spec.VersionedWithoutUpcaster: v1 is published but VersionedWithoutUpcaster has no "
        "upcast_v1_v2"
    ]


def test_a_published_type_that_no_class_has_any_more_fails(tmp_path):
    export([Product.Created, Product.Renamed], tmp_path)
    [problem] = check([Product.Created], tmp_path).problems
    assert problem.startswith("Product.Renamed: published (v1) but no event class has this type")


def test_the_published_schemas_of_the_sample_are_its_contract():
    """``schemas/`` in the repository is what ``eventplatform schemas domain --out`` wrote:
    the sample's classes must stay compatible with it."""
    published = Path(__file__).parents[3] / "schemas"
    result = check(event_classes_in(domain), published)
    assert (result.problems, result.new) == ([], [])
