"""Commands: what a caller asks the product service to do, validated at the edge by pydantic."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class CreateProduct(_Command):
    """Add a product to the catalogue."""

    name: str = Field(min_length=1, max_length=200)
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    price: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class RenameProduct(_Command):
    """Give a product a new name."""

    product_id: UUID
    name: str = Field(min_length=1, max_length=200)


class ChangePrice(_Command):
    """Set a product's price."""

    product_id: UUID
    price: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class DiscontinueProduct(_Command):
    """Take a product out of the catalogue for good."""

    product_id: UUID
