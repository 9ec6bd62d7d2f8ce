"""Real servers for tests and demos: throwaway local servers and a pytest plugin.

The servers (:class:`EmbeddedPostgres`, :class:`EmbeddedNats`) live in
:mod:`eventplatform.testing.embedded`. The plugin lives in :mod:`eventplatform.testing.plugin`
(load it with ``pytest_plugins = ["eventplatform.testing.plugin"]``); it is not imported here,
so the demo can start servers without pytest installed.
"""

from eventplatform.testing.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "EmbeddedServerError"]
