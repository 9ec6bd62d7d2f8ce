"""Subjects: <prefix>.<AggregateType>.<EventName> by default."""

import pytest

from eventplatform.relay.routing import DefaultTopicMapper


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("Product.Created", "events.Product.Created"),
        ("shop.catalog:Product.PriceChanged", "events.Product.PriceChanged"),
        ("Order", "events.Order.Event"),
        ("Weird Name.Ev*nt>", "events.Weird_Name.Ev_nt_"),
    ],
)
def test_topics_map_to_subjects_nats_accepts(topic, subject):
    assert DefaultTopicMapper("events")(topic) == subject


def test_the_prefix_may_have_several_tokens():
    assert DefaultTopicMapper("acme.prod")("Product.Created") == "acme.prod.Product.Created"
