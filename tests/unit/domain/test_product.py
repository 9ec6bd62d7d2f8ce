"""The sample Product aggregate enforces its rules and records what happened."""

from decimal import Decimal

import pytest
from pydantic import ValidationError

from domain import ChangePrice, CreateProduct, Product, ProductDiscontinued
from eventplatform.errors import CommandRejected


def new_product():
    return Product.create("Mug", "MUG-1", Decimal("9.50"))


def test_a_new_product_has_its_name_sku_and_price():
    product = new_product()
    assert (product.name, product.sku, product.price, product.discontinued) == (
        "Mug",
        "MUG-1",
        Decimal("9.50"),
        False,
    )
    assert [type(e).__name__ for e in product.collect_events()] == ["Created"]


def test_events_carry_stable_topics_that_do_not_depend_on_the_module():
    from eventsourcing.utils import get_topic

    assert get_topic(Product.Created) == "Product.Created"
    assert get_topic(Product.PriceChanged) == "Product.PriceChanged"


@pytest.mark.parametrize("price", [Decimal(0), Decimal("-1")])
def test_the_price_must_be_positive(price):
    with pytest.raises(CommandRejected, match="price must be greater than 0"):
        Product.create("Mug", "MUG-1", price)
    product = new_product()
    product.collect_events()
    with pytest.raises(CommandRejected):
        product.change_price(price)
    assert product.collect_events() == []


def test_a_discontinued_product_takes_no_more_changes():
    product = new_product()
    product.discontinue()
    product.collect_events()
    with pytest.raises(ProductDiscontinued, match="discontinued"):
        product.change_price(Decimal(10))
    with pytest.raises(ProductDiscontinued):
        product.rename("Cup")
    with pytest.raises(ProductDiscontinued):
        product.discontinue()
    assert product.collect_events() == []


def test_a_change_to_the_same_value_records_nothing():
    product = new_product()
    product.collect_events()
    product.rename("Mug")
    product.change_price(Decimal("9.50"))
    assert product.collect_events() == []


def test_commands_are_validated_at_the_edge():
    with pytest.raises(ValidationError, match="price"):
        CreateProduct(name="Mug", sku="MUG-1", price=Decimal(0))
    with pytest.raises(ValidationError, match="sku"):
        CreateProduct(name="Mug", sku="has space", price=Decimal(1))
    with pytest.raises(ValidationError, match="product_id"):
        ChangePrice(product_id="not-a-uuid", price=Decimal(1))  # type: ignore[arg-type]
