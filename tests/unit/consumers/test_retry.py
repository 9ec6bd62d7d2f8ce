"""Specification of the retry policy: the schedule, jitter bounds, and what is transient."""

from __future__ import annotations

import random

import psycopg
import psycopg.errors
import pytest

from eventplatform.consumers.retry import (
    PermanentError,
    RetryPolicy,
    is_transient,
    policy_from_settings,
)
from eventplatform.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    StoreUnavailable,
)
from eventplatform.settings import load_settings


def test_schedule_without_jitter_is_capped_exponential():
    policy = RetryPolicy(attempts=6, initial=0.1, multiplier=3.0, cap=2.0, jitter=0.0)
    assert policy.delays() == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])


def test_schedule_has_one_wait_per_retry():
    assert RetryPolicy(attempts=1).delays() == []
    assert len(RetryPolicy(attempts=4).delays()) == 3


def test_jitter_stays_within_the_fraction_below_the_base():
    policy = RetryPolicy(attempts=8, initial=1.0, multiplier=2.0, cap=10.0, jitter=0.25)
    rng = random.Random(7)
    for _ in range(200):
        for n, delay in enumerate(policy.delays(rng), start=1):
            base = policy.base_delay(n)
            assert base * 0.75 <= delay <= base


def test_jitter_is_reproducible_with_a_seeded_rng():
    policy = RetryPolicy(attempts=5, jitter=1.0)
    assert policy.delays(random.Random(1)) == policy.delays(random.Random(1))


def test_should_retry_until_attempts_are_used_up():
    policy = RetryPolicy(attempts=3)
    error = ConnectionError("reset")
    assert policy.should_retry(error, 1)
    assert policy.should_retry(error, 2)
    assert not policy.should_retry(error, 3)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("reset"),
        TimeoutError("slow"),
        psycopg.OperationalError("server closed the connection"),
        psycopg.errors.SerializationFailure("could not serialize"),
        psycopg.errors.DeadlockDetected("deadlock"),
        StoreUnavailable("down"),
        BrokerUnavailable("down"),
    ],
)
def test_connection_serialization_and_deadlock_errors_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("will never work"),
        DecodeError("bad bytes"),
        ValueError("a bug"),
        KeyError("missing"),
        psycopg.errors.UniqueViolation("duplicate key"),
    ],
)
def test_bugs_bad_data_and_permanent_errors_are_not_transient(error):
    assert not is_transient(error)


def test_a_transient_cause_makes_a_wrapping_error_transient():
    outer = RuntimeError("apply failed")
    outer.__cause__ = psycopg.errors.DeadlockDetected("deadlock")
    assert is_transient(outer)


def test_permanent_wins_over_a_transient_cause():
    outer = PermanentError("gave up")
    outer.__cause__ = ConnectionError("reset")
    assert not is_transient(outer)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"attempts": 0}, "attempts"),
        ({"initial": -1.0}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"initial": 5.0, "cap": 1.0}, "cap"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_a_nonsense_policy_is_refused_naming_the_field(kwargs, words):
    with pytest.raises(ConfigurationError, match=words):
        RetryPolicy(**kwargs)


def test_policy_from_settings_reads_app_retry_variables():
    settings = load_settings(
        {"APP_RETRY_ATTEMPTS": "3", "APP_RETRY_INITIAL": "0.5", "APP_RETRY_JITTER": "0"}
    )
    policy = policy_from_settings(settings)
    assert policy.attempts == 3
    assert policy.delays() == pytest.approx([0.5, 1.0])
