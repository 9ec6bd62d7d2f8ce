"""The ``eventplatform`` command: one sub-command per process or operator task.

``main`` parses the command line and dispatches; ``dlq``, ``rebuild``, ``status`` and ``demo``
hold their sub-commands; ``loader`` imports application code named ``module:attribute``.
"""

from eventplatform.cli.main import main

__all__ = ["main"]
