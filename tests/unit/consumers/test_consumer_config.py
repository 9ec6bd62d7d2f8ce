"""Specification of consumer configuration: sane defaults, nonsense refused at start-up."""

from __future__ import annotations

import pytest

from eventplatform.consumers import ConsumerConfig
from eventplatform.consumers.worker import WorkerConfig
from eventplatform.errors import ConfigurationError
from eventplatform.settings import load_settings


def test_defaults_are_valid():
    config = ConsumerConfig(stream="EVENTS", subject_prefix="events")
    assert config.batch_size >= 1
    assert config.ack_wait > config.fetch_timeout


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"fetch_timeout": 0}, "fetch_timeout"),
        ({"ack_wait": 0.5, "fetch_timeout": 1.0}, "ack_wait"),
        ({"max_deliver": 1}, "max_deliver"),
        ({"max_ack_pending": 10, "batch_size": 100}, "max_ack_pending"),
        ({"durable": "has.dots"}, "durable"),
        ({"stream": ""}, "stream"),
    ],
)
def test_nonsense_is_refused_naming_the_field(kwargs, words):
    values = {"stream": "EVENTS", "subject_prefix": "events", **kwargs}
    with pytest.raises(ConfigurationError, match=words):
        ConsumerConfig(**values)


def test_from_settings_takes_app_consumer_variables():
    settings = load_settings(
        {"APP_CONSUMER_BATCH_SIZE": "50", "APP_CONSUMER_MAX_DELIVER": "7", "APP_STREAM": "S1"}
    )
    config = ConsumerConfig.from_settings(settings)
    assert (config.stream, config.batch_size, config.max_deliver) == ("S1", 50, 7)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APP_CONSUMER_MAX_DELIVER", "1"),
        ("APP_CONSUMER_MAX_DELIVER", "0"),
        ("APP_CONSUMER_BATCH_SIZE", "0"),
        ("APP_CONSUMER_FETCH_TIMEOUT", "-1"),
        ("APP_CONSUMER_MAX_ACK_PENDING", "0"),
        ("APP_RETRY_JITTER", "2"),
        ("APP_RETRY_ATTEMPTS", "0"),
    ],
)
def test_settings_refuse_nonsense_naming_the_variable(variable, value):
    with pytest.raises(ConfigurationError, match=variable):
        load_settings({variable: value})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"fetch_timeout": 0}, "fetch_timeout"),
        ({"ack_wait": 1.0, "fetch_timeout": 2.0}, "ack_wait"),
    ],
)
def test_a_projection_worker_refuses_nonsense_naming_the_field(kwargs, words):
    with pytest.raises(ConfigurationError, match=words):
        WorkerConfig(stream="EVENTS", filter_subject="events.>", **kwargs)


def test_a_projection_worker_derives_its_dead_letter_prefix_from_the_filter():
    assert WorkerConfig(stream="S", filter_subject="shop.events.>").prefix == "shop.events"
