"""The ``Product`` aggregate and its events.

Topics are pinned (``TOPIC``) because they cross process boundaries: they name the stored
events and the CloudEvents ``type`` on the wire, so moving or renaming these classes must not
break old events or other services' consumers.
"""

from __future__ import annotations

from decimal import Decimal

from eventsourcing.domain import Aggregate, event

from eventplatform.errors import CommandRejected


class ProductDiscontinued(CommandRejected):
    """The product is discontinued; it takes no more changes."""


class Product(Aggregate):
    """A product in the catalogue: it has a name, a SKU and a positive price."""

    TOPIC = "Product"

    class Created(Aggregate.Created):
        """A product was added to the catalogue."""

        TOPIC = "Product.Created"
        name: str
        sku: str
        price: Decimal

    class Renamed(Aggregate.Event):
        """The product's name changed."""

        TOPIC = "Product.Renamed"
        name: str

    class PriceChanged(Aggregate.Event):
        """The product's price changed."""

        TOPIC = "Product.PriceChanged"
        price: Decimal

    class Discontinued(Aggregate.Event):
        """The product was taken out of the catalogue for good."""

        TOPIC = "Product.Discontinued"

    @event(Created)
    def __init__(self, name: str, sku: str, price: Decimal) -> None:
        self.name = name
        self.sku = sku
        self.price = price
        self.discontinued = False

    @classmethod
    def create(cls, name: str, sku: str, price: Decimal) -> Product:
        """Creates a product, enforcing a non-empty name and a positive price."""
        _check_name(name)
        _check_price(price)
        return cls(name=name, sku=sku, price=price)

    def rename(self, name: str) -> None:
        """Renames the product.

        Raises:
            ProductDiscontinued: the product is discontinued.
            CommandRejected: the name is blank.
        """
        self._check_active("rename")
        _check_name(name)
        if name != self.name:
            self._renamed(name=name)

    @event(Renamed)
    def _renamed(self, name: str) -> None:
        self.name = name

    def change_price(self, price: Decimal) -> None:
        """Changes the price.

        Raises:
            ProductDiscontinued: the product is discontinued.
            CommandRejected: the price is not positive.
        """
        self._check_active("change the price of")
        _check_price(price)
        if price != self.price:
            self._price_changed(price=price)

    @event(PriceChanged)
    def _price_changed(self, price: Decimal) -> None:
        self.price = price

    def discontinue(self) -> None:
        """Discontinues the product.

        Raises:
            ProductDiscontinued: it already is.
        """
        self._check_active("discontinue")
        self._discontinued()

    @event(Discontinued)
    def _discontinued(self) -> None:
        self.discontinued = True

    def _check_active(self, action: str) -> None:
        if self.discontinued:
            msg = f"cannot {action} product {self.id}: it is discontinued"
            raise ProductDiscontinued(msg)


def _check_price(price: Decimal) -> None:
    if not price > 0:
        msg = f"price must be greater than 0, got {price}"
        raise CommandRejected(msg)


def _check_name(name: str) -> None:
    if not name.strip():
        msg = "name must not be blank"
        raise CommandRejected(msg)
