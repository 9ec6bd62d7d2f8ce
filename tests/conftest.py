"""Shared fixtures: real servers come from the eventplatform.testing plugin."""

pytest_plugins = ["eventplatform.testing.plugin"]
