"""The sample bounded context: a product catalogue, event-sourced.

Loaded like an app server loads apps (``domain:Products``), from the working directory.
"""

from domain.commands import ChangePrice, CreateProduct, DiscontinueProduct, RenameProduct
from domain.product import Product, ProductDiscontinued
from domain.service import Products

__all__ = [
    "ChangePrice",
    "CreateProduct",
    "DiscontinueProduct",
    "Product",
    "ProductDiscontinued",
    "Products",
    "RenameProduct",
]
