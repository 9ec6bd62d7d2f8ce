"""The product application service: one method per command, each returns a CommandResult."""

from __future__ import annotations

from uuid import UUID

from domain.commands import ChangePrice, CreateProduct, DiscontinueProduct, RenameProduct
from domain.product import Product
from eventplatform.store.application import CommandResult, EventSourcedApplication


class Products(EventSourcedApplication):
    """Handles product commands; its events form the ``products`` log."""

    name = "products"

    def create(self, command: CreateProduct) -> CommandResult:
        """Creates a product."""
        return self.execute(Product.create(command.name, command.sku, command.price))

    def rename(self, command: RenameProduct) -> CommandResult:
        """Renames a product."""
        product = self._get(command)
        product.rename(command.name)
        return self.execute(product)

    def change_price(self, command: ChangePrice) -> CommandResult:
        """Changes a product's price."""
        product = self._get(command)
        product.change_price(command.price)
        return self.execute(product)

    def discontinue(self, command: DiscontinueProduct) -> CommandResult:
        """Discontinues a product."""
        product = self._get(command)
        product.discontinue()
        return self.execute(product)

    def get(self, product_id: UUID) -> Product:
        """Loads a product from its events."""
        product: Product = self.repository.get(product_id)
        return product

    def _get(self, command: RenameProduct | ChangePrice | DiscontinueProduct) -> Product:
        return self.get(command.product_id)
