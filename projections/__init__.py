"""The sample read models: ``ProductView`` and its projection."""

from projections.product_view import ProductView, ProductViewProjection, ProductViews

__all__ = ["ProductView", "ProductViewProjection", "ProductViews"]
