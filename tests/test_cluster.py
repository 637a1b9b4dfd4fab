"""Cluster: bootstrap, metadata cache, coalesced and periodic refresh, reconnects, TLS/SASL configuration.

Round trips are counted on the wire with the fault-injecting proxy (``kafka_proxy``: three virtual brokers
over the session broker), so "concurrent refreshes share one request" is what the broker saw, not what the
client believes it did.
"""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from aiokprod import errors
from aiokprod.admin import create_topics
from aiokprod.cluster import Cluster
from aiokprod.config import ProducerConfig
from aiokprod.producer import Producer
from aiokprod.protocol import MetadataRequest
from aiokprod.testing import free_port
from proxy_fixtures import SASL_USERS, kafka_proxy, sasl_broker, tls_broker  # noqa: F401 - fixtures

NO_HANG = 10.0


def make_cluster(bootstrap: str, clock=time.monotonic, **settings) -> Cluster:
    settings.setdefault("request_timeout_ms", 2000)
    settings.setdefault("retry_backoff_ms", 50)
    return Cluster(ProducerConfig(bootstrap_servers=bootstrap, **settings), clock=clock)


async def wait_until(predicate, timeout: float = NO_HANG) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_bootstrap_learns_the_cluster_and_topics(broker, topic_name):
    await create_topics(broker.bootstrap, {topic_name: 6})
    cluster = make_cluster(broker.bootstrap, allow_auto_create_topics=False)
    try:
        await cluster.bootstrap()
        assert cluster.brokers == {111: (broker.host, broker.port)}
        assert cluster.last_refresh > 0
        await cluster.refresh({topic_name})
        info = cluster.topics[topic_name]
        assert info.num_partitions == 6 and info.partitions == (0, 1, 2, 3, 4, 5)
        assert [cluster.leader(topic_name, p) for p in range(6)] == [111] * 6
        assert cluster.leader(topic_name, 6) == -1 and cluster.leader("never-heard-of", 0) == -1
        connection = await cluster.connection(111)
        assert connection.node_id == 111 and not connection.closed
        assert await cluster.connection(111) is connection  # one connection per broker
        assert cluster.connection_nowait(111) is connection
    finally:
        await cluster.close()
    assert connection.closed


async def test_auto_created_topic_appears(broker, topic_name):
    cluster = make_cluster(broker.bootstrap, allow_auto_create_topics=True)
    try:
        await cluster.bootstrap()
        info = await cluster.wait_for_topic(topic_name, 5.0)
        assert info.num_partitions == 4  # Tansu's default for auto-created topics
    finally:
        await cluster.close()


# -- failing fast -------------------------------------------------------------------------------------------

async def test_dead_bootstrap_fails_quickly():
    dead = [free_port(), free_port()]  # bound then released: nothing listens
    cluster = make_cluster(",".join(f"127.0.0.1:{p}" for p in dead), request_timeout_ms=30000)
    # The refusal, not the 30 s request timeout, ends it: the guard is far below that timeout.
    with pytest.raises(errors.KafkaConnectionError, match="could not connect to any bootstrap server") as info:
        await asyncio.wait_for(cluster.bootstrap(), NO_HANG)
    for port in dead:
        # every address tried, each named with the refusal as its reason
        assert re.search(rf"127\.0\.0\.1:{port}: cannot connect to 127\.0\.0\.1:{port}", str(info.value)), info.value
    await cluster.close()


async def test_producer_start_with_dead_bootstrap_fails_quickly():
    port = free_port()
    producer = Producer(f"127.0.0.1:{port}", request_timeout_ms=30000)
    with pytest.raises(errors.KafkaConnectionError, match=f"could not connect to any bootstrap server: 127.0.0.1:{port}"):
        await asyncio.wait_for(producer.start(), NO_HANG)  # the refusal, not the 30 s request timeout
    await producer.stop()  # a failed start leaves nothing to stop, and stop() must not hang on it


async def test_unknown_topic_without_auto_create_times_out(broker, topic_name):
    cluster = make_cluster(broker.bootstrap, allow_auto_create_topics=False)
    try:
        await cluster.bootstrap()
        with pytest.raises(errors.KafkaTimeoutError, match=r"not present in metadata .*\(max_block_ms=500\)") as info:
            await asyncio.wait_for(cluster.wait_for_topic(topic_name, 0.5), NO_HANG)
        # The cause says why: the broker does not know the topic.
        assert isinstance(info.value.__cause__, errors.UnknownTopicOrPartitionError)
        assert "UNKNOWN_TOPIC_OR_PARTITION" in str(info.value)
        assert topic_name not in cluster.topics
    finally:
        await cluster.close()


async def test_invalid_topic_name_fails_at_once(broker):
    cluster = make_cluster(broker.bootstrap, allow_auto_create_topics=True)
    try:
        await cluster.bootstrap()
        # The broker's INVALID_TOPIC_EXCEPTION ends the wait, not the 60 s max_block_ms (the guard is far
        # below it, so waiting it out would fail the test as a hang).
        with pytest.raises(errors.InvalidTopicError, match="bad/name"):
            await asyncio.wait_for(cluster.wait_for_topic("bad/name", 60.0), NO_HANG)
        assert cluster.topic_errors["bad/name"] == 17
    finally:
        await cluster.close()


async def test_wait_for_topic_is_bounded_when_the_broker_stops_answering(kafka_proxy, topic_name):
    """max_block_ms bounds the wait even when one metadata request would take request_timeout_ms."""
    cluster = make_cluster(kafka_proxy.bootstrap, request_timeout_ms=20000, allow_auto_create_topics=False)
    try:
        await cluster.bootstrap()
        kafka_proxy.hold_responses(api="Metadata", count=None)  # held until released: never in time
        with pytest.raises(errors.KafkaTimeoutError, match=r"not present in metadata .*\(max_block_ms=500\)") as info:
            await asyncio.wait_for(cluster.wait_for_topic(topic_name, 0.5), NO_HANG)
        # max_block_ms cut the round trip short: not the request timeout, not an answer.
        assert "the metadata request did not complete in time" in str(info.value)
        assert kafka_proxy.held("Metadata") >= 1
    finally:
        kafka_proxy.clear_faults()
        kafka_proxy.release_held()
        await cluster.close()


# -- refresh ------------------------------------------------------------------------------------------------

async def test_concurrent_refreshes_share_one_round_trip(kafka_proxy, topic_name):
    cluster = make_cluster(kafka_proxy.bootstrap)
    try:
        await cluster.bootstrap()
        assert set(cluster.brokers) == {1, 2, 3}
        kafka_proxy.reset_counters()
        # Slow the next Metadata answer so that every caller arrives while it is in flight.
        kafka_proxy.delay_responses(0.2, api="Metadata", count=1)
        await asyncio.wait_for(asyncio.gather(*(cluster.refresh() for _ in range(20))), NO_HANG)
        assert kafka_proxy.count("Metadata") == 1

        # Callers bringing topics the round trip in flight did not ask for get one more, shared by them.
        kafka_proxy.reset_counters()
        kafka_proxy.delay_responses(0.2, api="Metadata", count=1)
        first = asyncio.ensure_future(cluster.refresh())
        await wait_until(lambda: kafka_proxy.count("Metadata") == 1)
        late = [cluster.refresh({f"{topic_name}-{i}"}) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(first, *late), NO_HANG)
        assert kafka_proxy.count("Metadata") == 2
        assert all(f"{topic_name}-{i}" in cluster.topics for i in range(5))  # auto-created, now known
    finally:
        kafka_proxy.clear_faults()
        await cluster.close()


async def test_cancelled_caller_does_not_cancel_the_shared_refresh(kafka_proxy):
    cluster = make_cluster(kafka_proxy.bootstrap)
    try:
        await cluster.bootstrap()
        before = cluster.last_refresh
        kafka_proxy.delay_responses(0.3, api="Metadata", count=1)
        impatient = asyncio.ensure_future(cluster.refresh())
        patient = asyncio.ensure_future(cluster.refresh())
        await asyncio.sleep(0.05)
        impatient.cancel()
        await asyncio.wait_for(patient, NO_HANG)  # completes, not CancelledError
        assert impatient.cancelled()
        assert cluster.last_refresh > before
    finally:
        kafka_proxy.clear_faults()
        await cluster.close()


async def test_request_refresh_runs_in_the_background_and_coalesces(kafka_proxy):
    """The Cluster side of metadata_max_age_ms: the sender calls request_refresh() when last_refresh is
    older than that; each call starts at most one round trip, which moves last_refresh forward."""
    cluster = make_cluster(kafka_proxy.bootstrap)
    try:
        await cluster.bootstrap()
        before = cluster.last_refresh
        kafka_proxy.reset_counters()
        kafka_proxy.delay_responses(0.1, api="Metadata", count=1)
        for _ in range(10):
            cluster.request_refresh()  # returns at once; joins the one in flight
        await wait_until(lambda: cluster.last_refresh > before)
        assert kafka_proxy.count("Metadata") == 1
    finally:
        kafka_proxy.clear_faults()
        await cluster.close()


async def test_producer_refreshes_metadata_when_it_is_older_than_max_age(kafka_proxy):
    producer = Producer(kafka_proxy.bootstrap, metadata_max_age_ms=100, request_timeout_ms=2000)
    await producer.start()
    try:
        kafka_proxy.reset_counters()
        # Idle: nothing to send, so only the age of the metadata makes the sender ask.
        await wait_until(lambda: kafka_proxy.count("Metadata") >= 3, timeout=NO_HANG)
    finally:
        await producer.stop()


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_background_refresh_backs_off_while_the_cluster_is_down(fresh_broker):
    """A failed background refresh is not retried before retry_backoff_ms has passed on the cluster's clock,
    however often it is asked; once it has, the next ask dials again. Connects counted at a proxy."""
    from kafka_proxy import KafkaProxy

    clock = FakeClock()
    with KafkaProxy(fresh_broker.host, fresh_broker.port, num_brokers=1) as proxy:
        cluster = make_cluster(proxy.bootstrap, retry_backoff_ms=100, clock=clock)
        try:
            await cluster.bootstrap()
            await cluster.connection(1)
            fresh_broker.stop()
            await wait_until(lambda: (cluster._bootstrap_connection.closed
                                      and all(c.closed for c in cluster._connections.values())))
            # The closed connections asked for a refresh themselves; that round trip failed and set the
            # back-off. The clock stands still: 200 asks (the sender asks on every wake-up while leaders
            # are unknown) dial nothing more.
            await wait_until(lambda: not cluster._refreshing())
            dialled = proxy.connections_accepted
            for _ in range(200):
                cluster.request_refresh()
                await asyncio.sleep(0.001)
            assert proxy.connections_accepted == dialled
            assert not cluster._refreshing()
            # The back-off over, the next ask makes one more round trip (the known broker, then the
            # bootstrap address), and the one after it waits out its own back-off again.
            for _ in range(2):
                clock.now += 0.101
                cluster.request_refresh()
                assert cluster._refreshing()
                await wait_until(lambda: not cluster._refreshing())
                assert proxy.connections_accepted == dialled + 2, (dialled, proxy.connections_accepted)
                dialled = proxy.connections_accepted
                cluster.request_refresh()
                assert not cluster._refreshing()
            # And it keeps trying by itself: once the broker is back, a pending delayed refresh succeeds.
            before = cluster.last_refresh
            fresh_broker.start()
            clock.now += 0.101
            cluster.request_refresh()
            await wait_until(lambda: cluster.last_refresh > before)
        finally:
            await cluster.close()


# -- reconnecting -------------------------------------------------------------------------------------------

async def test_reconnects_after_the_connection_is_closed(broker):
    cluster = make_cluster(broker.bootstrap)
    try:
        await cluster.bootstrap()
        first = await cluster.connection(111)
        first.close()
        second = await cluster.connection(111)
        assert second is not first and not second.closed
        await cluster.refresh()
        # Close everything the cluster holds: the next refresh dials again on its own.
        second.close()
        cluster._bootstrap_connection.close()
        before = cluster.last_refresh
        await cluster.refresh()
        assert cluster.last_refresh > before
    finally:
        await cluster.close()


async def test_reconnects_after_a_broker_restart(fresh_broker, topic_name):
    cluster = make_cluster(fresh_broker.bootstrap, allow_auto_create_topics=False)
    try:
        await cluster.bootstrap()
        await create_topics(fresh_broker.bootstrap, {topic_name: 2})
        await cluster.refresh({topic_name})
        old = await cluster.connection(111)
        assert cluster.topics[topic_name].num_partitions == 2

        fresh_broker.restart()  # memory storage: the topic is gone after this
        # No sleep: the first refresh may write to the dead socket before the loop has read its EOF; it
        # must still succeed (the dead connection is dropped and a fresh one made).
        await asyncio.wait_for(cluster.refresh(), NO_HANG)
        assert old.closed
        new = await cluster.connection(111)
        assert new is not old and not new.closed
        assert topic_name not in cluster.topics  # the restarted broker does not know it
        await create_topics(fresh_broker.bootstrap, {topic_name: 3})
        info = await cluster.wait_for_topic(topic_name, 5.0)
        assert info.num_partitions == 3
    finally:
        await cluster.close()


async def test_unreachable_node_reports_why(broker):
    cluster = make_cluster(broker.bootstrap)
    try:
        await cluster.bootstrap()
        dead_port = free_port()
        cluster.brokers[7] = ("127.0.0.1", dead_port)
        with pytest.raises(errors.KafkaConnectionError, match=f"node 7.*cannot connect to 127.0.0.1:{dead_port}"):
            await cluster.connection(7)
        # The failed node is in back-off: connection_nowait does not dial it again at once.
        assert cluster.connection_nowait(7) is None and 7 not in cluster._connecting
    finally:
        await cluster.close()


# -- TLS and SASL through the configuration -----------------------------------------------------------------

async def test_tls_cluster(tls_broker, topic_name):
    cluster = make_cluster(tls_broker.bootstrap, security_protocol="SSL",
                           ssl_context=tls_broker.proxy.client_ssl_context())
    try:
        await cluster.bootstrap()
        info = await cluster.wait_for_topic(topic_name, 5.0)
        assert info.num_partitions == 4
        connection = await cluster.connection(111)
        assert connection._transport.get_extra_info("ssl_object") is not None
    finally:
        await cluster.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_cluster(sasl_broker, mechanism):
    cluster = make_cluster(sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                           sasl_plain_username="bob", sasl_plain_password=SASL_USERS["bob"])
    try:
        await cluster.bootstrap()
        connection = await cluster.connection(111)
        await connection.request(MetadataRequest(topics=[]), connection.version_for(MetadataRequest))
        # Two logins: the bootstrap connection, then node 111's. (The gateway counts a login just after
        # answering it, so count once a request has gone through the second connection.)
        assert sasl_broker.proxy.stats[f"auth_ok:{mechanism}"] == 2
        assert sasl_broker.proxy.authenticated_users == ["bob", "bob"]
    finally:
        await cluster.close()


async def test_sasl_wrong_password_is_not_retried_as_a_connection_error(sasl_broker):
    cluster = make_cluster(sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                           sasl_plain_username="bob", sasl_plain_password="wrong")
    try:
        with pytest.raises(errors.AuthenticationError, match="authentication to .* failed"):
            await asyncio.wait_for(cluster.bootstrap(), NO_HANG)
    finally:
        await cluster.close()


async def test_authentication_failure_on_a_broker_connection_is_kept_and_backed_off(sasl_broker):
    """A leader connection that fails SASL: connection() raises AuthenticationError (not a retriable
    connection error), and connection_nowait(), which the sender calls on every wake-up, does not log in
    again and again."""
    cluster = make_cluster(sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                           sasl_plain_username="bob", sasl_plain_password="wrong", retry_backoff_ms=200,
                           clock=(clock := FakeClock()))
    host, port = sasl_broker.bootstrap.rsplit(":", 1)
    cluster.brokers = {111: (host, int(port))}  # as if a bootstrap had told us (it cannot: bad password)
    try:
        with pytest.raises(errors.SaslAuthenticationFailedError):
            await cluster.connection(111)
        assert sasl_broker.proxy.stats["auth_failed:PLAIN"] == 1
        # The clock stands still: asked again and again, it does not log in again (back-off).
        for _ in range(50):
            assert cluster.connection_nowait(111) is None
            await asyncio.sleep(0.001)
        await wait_until(lambda: not cluster._connecting)
        assert sasl_broker.proxy.stats["auth_failed:PLAIN"] == 1
        # The back-off over, one more try, which fails the same way and backs off again.
        clock.now += 0.201
        assert cluster.connection_nowait(111) is None
        await wait_until(lambda: not cluster._connecting)
        assert cluster.connection_nowait(111) is None
        await wait_until(lambda: not cluster._connecting)
        assert sasl_broker.proxy.stats["auth_failed:PLAIN"] == 2
        with pytest.raises(errors.AuthenticationError):  # a refresh says so too, not "no broker reachable"
            await cluster.refresh()
    finally:
        await cluster.close()


async def test_start_against_a_silent_address_gives_up_after_the_setup_timeout():
    """A peer that accepts TCP but never answers must not hold start() for request_timeout_ms (30 s)."""
    accepted = []

    async def swallow(reader, writer):
        accepted.append(writer)
        await reader.read()  # read and never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        producer = Producer(f"127.0.0.1:{port}", request_timeout_ms=30000,
                            socket_connection_setup_timeout_ms=300)
        # The 300 ms setup timeout ends it, named in the error; the 30 s request timeout is far beyond the
        # guard, so waiting for that would fail the test as a hang.
        with pytest.raises(errors.KafkaConnectionError, match=f"127.0.0.1:{port}") as info:
            await asyncio.wait_for(producer.start(), NO_HANG)
        assert f"timed out connecting to 127.0.0.1:{port} after 0.3s" in str(info.value)
        assert accepted, "the client should have reached the silent server"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
