"""An application names its log explicitly; nothing of the sample leaks into the framework."""

import pytest

from eventplatform import ConfigurationError, EventSourcedApplication, create_schema
from eventplatform.settings import load_settings
from eventplatform.store import events_table

SETTINGS = load_settings({"APP_DSN": "postgresql://u@127.0.0.1:1/db"})


def test_an_application_that_sets_no_name_is_refused_saying_how_to_name_it():
    class Orders(EventSourcedApplication):
        pass

    with pytest.raises(
        ConfigurationError, match=r'Orders must set `name` \(e.g. name = "orders"\)'
    ):
        Orders(SETTINGS)


def test_a_name_inherited_from_a_named_base_does_not_count_for_a_subclass():
    class Orders(EventSourcedApplication):
        name = "orders"

    class UrgentOrders(Orders):
        pass

    with pytest.raises(ConfigurationError, match="UrgentOrders must set `name`"):
        UrgentOrders(SETTINGS)


@pytest.mark.parametrize("name", ["Orders", "orders-eu", "", "9lives", "x" * 42])
def test_a_name_that_cannot_be_a_log_is_refused_before_anything_connects(name):
    class Orders(EventSourcedApplication):
        pass

    Orders.name = name
    Orders._name_pinned = True
    with pytest.raises(ConfigurationError, match="is not a log name"):
        Orders(SETTINGS)


@pytest.mark.parametrize("log", ["", "Products", "a b", "x;drop"])
def test_a_log_that_cannot_name_a_table_is_refused_by_the_schema_and_every_reader(log):
    with pytest.raises(ConfigurationError, match="is not a log name"):
        events_table(log)
    with pytest.raises(ConfigurationError, match="is not a log name"):
        create_schema("postgresql://u@127.0.0.1:1/db", logs=[log])


def test_the_framework_has_no_default_log():
    assert EventSourcedApplication._name_pinned is False
    assert load_settings({}).log == ""
