"""NATS credentials beyond the URL, and an authorisation that lets only the relay publish events.

A real nats-server runs the permissions docker-compose deploys (deploy/nats/permissions.conf),
with an account, a relay user (password in the URL), a consumers' user (NKEY seed) and mutual
TLS with a CA made in the test. Every process builds its connection from the same settings
(``NatsBroker.from_settings``), so what works here works for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
import pytest_asyncio

from eventplatform.errors import BrokerUnavailable
from eventplatform.messagebus.nats_broker import (
    NatsBroker,
    OutgoingMessage,
    StreamSpec,
    stream_spec,
)
from eventplatform.messagebus.nats_options import nats_options
from eventplatform.settings import Settings, load_settings
from tests.support.nats_auth import RELAY_PASSWORD, SecuredNats, secured_nats

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[SecuredNats]:
    with secured_nats(tmp_path_factory.mktemp("nats-auth")) as server:
        yield server


def settings_for(secured: SecuredNats, **values: str) -> Settings:
    tls = {
        "APP_NATS_TLS_CA": str(secured.tls.ca),
        "APP_NATS_TLS_CERT": str(secured.tls.cert),
        "APP_NATS_TLS_KEY": str(secured.tls.key),
    }
    return load_settings({**tls, **values})


def relay_settings(secured: SecuredNats) -> Settings:
    return settings_for(secured, APP_NATS_URL=secured.relay_url)


def consumer_settings(secured: SecuredNats) -> Settings:
    return settings_for(
        secured, APP_NATS_URL=secured.url, APP_NATS_NKEY_SEED=str(secured.consumer_seed)
    )


@pytest_asyncio.fixture
async def relay(secured) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker.from_settings(relay_settings(secured), name="relay-spec")
    await broker.connect()
    await broker.ensure_stream(stream_spec(relay_settings(secured)))
    try:
        yield broker
    finally:
        await broker.close()


async def last_sequence(broker: NatsBroker) -> int:
    info = await broker.js.stream_info("EVENTS")
    return int(info.state.last_seq)


def event(n: int) -> OutgoingMessage:
    return OutgoingMessage(subject="events.Product.Created", body=b'{"n": %d}' % n, msg_id=f"p:{n}")


@pytest.mark.asyncio
async def test_the_relays_user_publishes_events_over_mutual_tls(relay):
    before = await last_sequence(relay)
    acks = await relay.publish_batch([event(1), event(2)])
    assert [a.seq for a in acks] == [before + 1, before + 2]
    # The server demands TLS with a client certificate (tls { verify: true }): being
    # connected is the proof; the specs below show it refusing clients without them.


@pytest.mark.asyncio
async def test_a_consumer_reads_and_acks_events_with_its_nkey(secured, relay):
    await relay.publish_batch([event(10)])
    consumer = NatsBroker.from_settings(consumer_settings(secured), name="consumer-spec")
    await consumer.connect()
    try:
        sub = await consumer.js.pull_subscribe("events.>", durable="spec", stream="EVENTS")
        messages = await sub.fetch(1, timeout=5)
        await messages[0].ack()
        assert messages[0].subject == "events.Product.Created"
    finally:
        await consumer.close()


@pytest_asyncio.fixture
async def dead_letter_stream(relay, secured) -> None:
    consumer = NatsBroker.from_settings(consumer_settings(secured), name="dlq-setup")
    await consumer.connect()
    try:
        await consumer.ensure_stream(StreamSpec(name="EVENTS_DLQ", subjects=("events_dlq.>",)))
    finally:
        await consumer.close()


@pytest.mark.asyncio
@pytest.mark.usefixtures("dead_letter_stream")
async def test_a_consumer_may_announce_its_dead_letters_in_their_own_stream(secured):
    consumer = NatsBroker.from_settings(consumer_settings(secured), name="consumer-dlq")
    await consumer.connect()
    try:
        ack = await consumer.js.publish("events_dlq.spec", b"{}", timeout=5)
        assert ack.stream == "EVENTS_DLQ"
    finally:
        await consumer.close()


@pytest.mark.asyncio
async def test_a_consumers_forged_event_is_refused_by_the_server_and_never_stored(secured, relay):
    before = await last_sequence(relay)
    violations: list[str] = []

    async def on_error(e: Exception) -> None:
        violations.append(str(e))

    tls = nats_options(consumer_settings(secured)).tls
    forger = await nats.connect(
        secured.url, nkeys_seed=str(secured.consumer_seed), error_cb=on_error, tls=tls
    )
    try:
        js = forger.jetstream()
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("events.Product.Created", b'{"forged": true}', timeout=1)
        await forger.publish("events.Product.PriceChanged", b"forged too")
        await forger.flush()
        await asyncio.sleep(0.2)  # the server's -ERR arrives asynchronously
    finally:
        await forger.close()
    refused = [v for v in violations if "permissions violation for publish" in v.lower()]
    assert len(refused) == 2, violations
    assert await last_sequence(relay) == before


@pytest.mark.asyncio
async def test_a_consumer_may_not_purge_or_delete_the_event_stream(secured, relay):
    consumer = NatsBroker.from_settings(consumer_settings(secured), name="vandal")
    await consumer.connect()
    try:
        js = consumer.nc.jetstream(timeout=1)
        with pytest.raises(nats.errors.TimeoutError):
            await js.purge_stream("EVENTS")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream("EVENTS")
    finally:
        await consumer.close()
    assert (await relay.js.stream_info("EVENTS")).state.messages > 0


@pytest.mark.asyncio
async def test_a_wrong_password_fails_in_bounded_time_naming_the_cause_not_the_password(secured):
    url = secured.relay_url.replace(RELAY_PASSWORD, "Wrong-Pass-4242")
    broker = NatsBroker.from_settings(settings_for(secured, APP_NATS_URL=url), name="wrong")
    with pytest.raises(BrokerUnavailable) as excinfo:
        await asyncio.wait_for(broker.connect(), timeout=10)
    assert "Authorization" in str(excinfo.value)
    assert "Wrong-Pass-4242" not in str(excinfo.value)
    assert RELAY_PASSWORD not in str(excinfo.value)


@pytest.mark.asyncio
async def test_a_client_without_the_ca_does_not_trust_the_server(secured):
    settings = load_settings(
        {"APP_NATS_URL": secured.relay_url, "APP_NATS_TLS_CERT": str(secured.tls.cert),
         "APP_NATS_TLS_KEY": str(secured.tls.key)}
    )  # fmt: skip
    broker = NatsBroker.from_settings(settings, name="no-ca")
    with pytest.raises(BrokerUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        await asyncio.wait_for(broker.connect(), timeout=10)


@pytest.mark.asyncio
async def test_a_client_without_a_certificate_is_refused_by_the_server(secured):
    settings = load_settings(
        {"APP_NATS_URL": secured.relay_url, "APP_NATS_TLS_CA": str(secured.tls.ca)}
    )
    broker = NatsBroker.from_settings(settings, name="no-cert")
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(broker.connect(), timeout=10)
