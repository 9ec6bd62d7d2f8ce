"""Loading application code named ``module:attribute``, the way uvicorn and celery do."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from eventplatform.consumers.projection import Projection
from eventplatform.errors import ConfigurationError


def load_target(reference: str, *, what: str = "object") -> Any:
    """Imports ``module`` or ``module:attribute`` with the working directory on ``sys.path``.

    Raises:
        ConfigurationError: the module or attribute does not load.
    """
    if ":" in reference:
        return load(reference, what=what)
    _working_directory_on_path()
    try:
        return importlib.import_module(reference)
    except ImportError as e:
        msg = f"cannot import module {reference!r} of {what}: {e}"
        raise ConfigurationError(msg) from e


def _working_directory_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def load(reference: str, *, what: str = "object") -> Any:
    """Imports ``module:attribute`` with the working directory on ``sys.path``.

    Args:
        reference: e.g. ``projections:ProductViewProjection``.
        what: what is being loaded, for the error message.

    Raises:
        ConfigurationError: malformed reference, missing module or attribute.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        msg = f"{what} reference {reference!r} must look like 'module:attribute'"
        raise ConfigurationError(msg)
    _working_directory_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        msg = f"cannot import module {module_name!r} of {what} {reference!r}: {e}"
        raise ConfigurationError(msg) from e
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            msg = f"module {module_name!r} has no attribute {attribute!r} ({what})"
            raise ConfigurationError(msg) from e
    return obj


def load_projection(reference: str) -> Projection:
    """Loads a projection named ``module:attribute`` (a Projection subclass or instance).

    Raises:
        ConfigurationError: it does not load, or is not a projection.
    """
    obj = load(reference, what="projection")
    if isinstance(obj, type) and issubclass(obj, Projection):
        return obj()
    if isinstance(obj, Projection):
        return obj
    msg = f"{reference!r} is not a Projection subclass or instance"
    raise ConfigurationError(msg)
