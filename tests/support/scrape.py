"""Reading a process's metrics endpoint the way Prometheus does."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_URL = re.compile(r"metrics, /healthz and /readyz on (http://\S+)")


def endpoint_in(log: Callable[[], str]) -> Callable[[], str | None]:
    """A condition: the URL a process logged for its metrics endpoint (port 0: its own)."""

    def found() -> str | None:
        match = _URL.search(log())
        return match.group(1) if match else None

    return found


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer too, and no answer at all
    (nothing listening yet) is status 0."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError) as e:
        return 0, str(e)


def scrape(url: str) -> Samples:
    """Every sample of ``url``/metrics, by name and labels."""
    status, body = get(url + "/metrics")
    assert status == 200, body
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when absent."""
    return samples.get((name, frozenset(labels.items())))
