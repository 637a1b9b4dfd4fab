"""The test proxies work against the real broker: TLS proxy, SASL gateway, fault-injecting KafkaProxy.

Clients are confluent-kafka and kafka-python where they can show the behaviour (truth from outside), and a
raw asyncio client built on aiokprod.protocol and aiokprod.sasl where the exact frames matter.
"""
from __future__ import annotations

import asyncio
import ssl
import time
import uuid

import confluent_kafka
import kafka
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from aiokprod import protocol as proto
from aiokprod.sasl import create_mechanism
from kafka_frames import read_frame
from kafka_proxy import KafkaProxy
from proxy_fixtures import SASL_USERS, kafka_proxy, sasl_broker, tls_broker  # noqa: F401
from tls_proxy import TlsProxy

QUIET = {"log_level": 0}  # librdkafka logs every proxy shutdown as a failure; the tests check outcomes


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def produce(conf: dict, topic: str, values: list[bytes], partition: int | None = None, timeout: float = 20):
    """Produce with confluent-kafka; return the delivery reports as (error, partition, offset)."""
    producer = confluent_kafka.Producer({**QUIET, **conf})
    reports = []
    for value in values:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(topic, value=value, on_delivery=lambda e, m: reports.append((e, m.partition(), m.offset())),
                         **kwargs)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered in {timeout}s"
    return reports


def read_back(conf: dict, topic: str, partitions, expected: int, timeout: float = 20) -> list[bytes]:
    """Read ``expected`` values from the start of ``partitions`` with confluent-kafka's consumer."""
    consumer = confluent_kafka.Consumer({**QUIET, **conf, "group.id": unique_topic("g"),
                                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
        # a little longer, to catch duplicates that would make the count too high
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                values.append(message.value())
        return values
    finally:
        consumer.close()


class RawClient:
    """A minimal asyncio Kafka client on aiokprod.protocol: one request at a time, for exact frames."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.correlation_id = 0

    @classmethod
    async def connect(cls, host: str, port: int, **kwargs) -> "RawClient":
        reader, writer = await asyncio.open_connection(host, port, **kwargs)
        return cls(reader, writer)

    async def send(self, message, version: int) -> int:
        self.correlation_id += 1
        self.writer.write(proto.encode_request(message, version, self.correlation_id, "raw-test"))
        await self.writer.drain()
        return self.correlation_id

    async def request(self, message, version: int, response_cls=None):
        correlation_id = await self.send(message, version)
        payload = await asyncio.wait_for(read_frame(self.reader), 10)
        if payload is None:
            raise ConnectionError("connection closed instead of an answer")
        got, offset = proto.decode_response_header(
            payload, proto.response_header_version(message.API_KEY, version))
        assert got == correlation_id
        if response_cls is None:
            response_cls = getattr(proto, type(message).__name__.replace("Request", "Response"))
        return response_cls.decode(memoryview(payload)[offset:], version)

    async def closed_by_peer(self, timeout: float = 5) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except ConnectionError:
            return True

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


# ===================================================================================== TLS proxy

def test_tls_confluent_produces_and_reads_back(tls_broker):
    topic = unique_topic("tls")
    conf = {"bootstrap.servers": tls_broker.bootstrap, "security.protocol": "SSL",
            "ssl.ca.location": tls_broker.proxy.ca_file}
    values = [b"tls-%d" % i for i in range(10)]
    reports = produce(conf, topic, values, partition=0)
    assert [r[0] for r in reports] == [None] * 10
    assert read_back(conf, topic, [0], 10) == values
    assert tls_broker.proxy.connections >= 2  # producer and consumer both came through TLS
    assert tls_broker.proxy.errors == []


async def test_tls_python_client_verifies_hostname_and_ip(broker):
    # The session broker is enough here: one request, no reconnect to advertised addresses.
    async with TlsProxy(broker.host, broker.port) as tls:
        for server_hostname in ("localhost", "127.0.0.1"):
            client = await RawClient.connect(tls.host, tls.port, ssl=tls.client_ssl_context(),
                                             server_hostname=server_hostname)
            try:
                response = await client.request(proto.ApiVersionsRequest(), 0, proto.ApiVersionsResponse)
                assert response.error_code == 0
                assert any(k.api_key == 0 for k in response.api_keys)  # Produce is offered
            finally:
                await client.close()


async def test_tls_untrusted_certificate_is_refused(broker):
    async with TlsProxy(broker.host, broker.port) as tls:
        with pytest.raises(ssl.SSLCertVerificationError):
            await RawClient.connect(tls.host, tls.port, ssl=ssl.create_default_context(),
                                    server_hostname="localhost")
        # Trusted CA, wrong name: hostname verification must fail as well.
        with pytest.raises(ssl.SSLCertVerificationError):
            await RawClient.connect(tls.host, tls.port, ssl=tls.client_ssl_context(),
                                    server_hostname="not-this-host.example")


def test_tls_proxy_stops_cleanly(broker):
    proxy = TlsProxy(broker.host, broker.port).start()
    port, directory = proxy.port, proxy.certificates.directory
    proxy.stop()
    proxy.stop()  # idempotent
    proxy.raise_if_failed()
    import os
    import socket

    assert not os.path.exists(directory)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# ===================================================================================== SASL gateway

@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_confluent_produces_and_reads_back(sasl_broker, mechanism):
    topic = unique_topic("sasl")
    conf = {"bootstrap.servers": sasl_broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism, "sasl.username": "alice", "sasl.password": SASL_USERS["alice"]}
    values = [b"sasl-%d" % i for i in range(5)]
    reports = produce(conf, topic, values, partition=0)
    assert [r[0] for r in reports] == [None] * 5
    assert read_back(conf, topic, [0], 5) == values
    gateway = sasl_broker.proxy
    assert gateway.stats[f"auth_ok:{mechanism}"] >= 2
    assert gateway.stats.get(f"auth_failed:{mechanism}", 0) == 0
    assert set(gateway.authenticated_users) == {"alice"}
    assert gateway.errors == []


def test_sasl_confluent_wrong_password_fails(sasl_broker):
    errors = []
    producer = confluent_kafka.Producer({
        **QUIET, "bootstrap.servers": sasl_broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice", "sasl.password": "wrong",
        "error_cb": errors.append, "message.timeout.ms": 3000,
    })
    producer.produce(unique_topic("sasl-bad"), value=b"x")
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    assert errors and errors[0].code() == confluent_kafka.KafkaError._AUTHENTICATION
    assert "invalid credentials" in errors[0].str()
    assert sasl_broker.proxy.stats["auth_failed:SCRAM-SHA-256"] >= 1
    assert sasl_broker.proxy.stats.get("auth_ok:SCRAM-SHA-256", 0) == 0
    producer.purge()
    producer.flush(1)


def test_sasl_kafka_python_plain(sasl_broker):
    topic = unique_topic("sasl-kp")
    producer = kafka.KafkaProducer(
        bootstrap_servers=sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN", sasl_plain_username="bob", sasl_plain_password=SASL_USERS["bob"],
    )
    try:
        metadata = producer.send(topic, b"from kafka-python", partition=0).get(timeout=20)
        assert metadata.offset == 0
    finally:
        producer.close(timeout=5)
    conf = {"bootstrap.servers": sasl_broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "bob", "sasl.password": SASL_USERS["bob"]}
    assert read_back(conf, topic, [0], 1) == [b"from kafka-python"]
    assert "bob" in sasl_broker.proxy.authenticated_users


async def _sasl_login(client, mechanism_name, user, password, authenticate_version):
    handshake = await client.request(proto.SaslHandshakeRequest(mechanism=mechanism_name), 1)
    assert handshake.error_code == 0
    assert mechanism_name in handshake.mechanisms
    mechanism = create_mechanism(mechanism_name, user, password)
    token = mechanism.initial_response()
    while True:
        answer = await client.request(proto.SaslAuthenticateRequest(auth_bytes=token), authenticate_version)
        if answer.error_code:
            return answer
        token = mechanism.evaluate(bytes(answer.auth_bytes))
        if token is None:
            assert mechanism.complete
            return answer


@pytest.mark.parametrize("authenticate_version", [0, 1, 2])
async def test_sasl_our_client_then_metadata_is_forwarded(sasl_broker, authenticate_version):
    client = await RawClient.connect(sasl_broker.proxy.host, sasl_broker.proxy.port)
    try:
        versions = await client.request(proto.ApiVersionsRequest(), 0, proto.ApiVersionsResponse)
        offered = {k.api_key: (k.min_version, k.max_version) for k in versions.api_keys}
        assert offered[17][1] >= 1 and offered[36][1] >= 2  # relayed from the broker
        answer = await _sasl_login(client, "SCRAM-SHA-256", "alice", SASL_USERS["alice"], authenticate_version)
        assert answer.error_code == 0
        metadata = await client.request(proto.MetadataRequest(topics=[]), 1)
        assert [b.port for b in metadata.brokers] == [sasl_broker.proxy.port]  # came from the broker
    finally:
        await client.close()


async def test_sasl_failure_answers_58_then_closes(sasl_broker):
    client = await RawClient.connect(sasl_broker.proxy.host, sasl_broker.proxy.port)
    try:
        answer = await _sasl_login(client, "SCRAM-SHA-512", "alice", "not-her-password", 2)
        assert answer.error_code == 58
        assert "invalid credentials" in answer.error_message
        assert await client.closed_by_peer()
    finally:
        await client.close()


async def test_sasl_unknown_mechanism_and_early_requests_are_refused(sasl_broker):
    client = await RawClient.connect(sasl_broker.proxy.host, sasl_broker.proxy.port)
    try:
        handshake = await client.request(proto.SaslHandshakeRequest(mechanism="GSSAPI"), 1)
        assert handshake.error_code == 33  # UNSUPPORTED_SASL_MECHANISM
        assert set(handshake.mechanisms) == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
        assert await client.closed_by_peer()
    finally:
        await client.close()
    client = await RawClient.connect(sasl_broker.proxy.host, sasl_broker.proxy.port)
    try:
        await client.send(proto.MetadataRequest(topics=[]), 1)  # before authenticating
        assert await client.closed_by_peer()
    finally:
        await client.close()
    assert sasl_broker.proxy.stats["illegal_state"] == 1


async def test_sasl_handshake_v0_raw_tokens(sasl_broker):
    # Before KIP-152 the tokens followed a v0 handshake as bare size-prefixed frames.
    client = await RawClient.connect(sasl_broker.proxy.host, sasl_broker.proxy.port)
    try:
        handshake = await client.request(proto.SaslHandshakeRequest(mechanism="SCRAM-SHA-256"), 0)
        assert handshake.error_code == 0
        mechanism = create_mechanism("SCRAM-SHA-256", "bob", SASL_USERS["bob"])
        token = mechanism.initial_response()
        while token is not None:
            client.writer.write(len(token).to_bytes(4, "big") + token)
            token = mechanism.evaluate(await read_frame(client.reader))
        assert mechanism.complete
        metadata = await client.request(proto.MetadataRequest(topics=[]), 1)
        assert metadata.brokers
    finally:
        await client.close()


# ===================================================================================== KafkaProxy

def test_kafka_proxy_metadata_shows_three_brokers(kafka_proxy):
    topic = unique_topic("kp-md")
    producer = confluent_kafka.Producer({**QUIET, "bootstrap.servers": kafka_proxy.bootstrap})
    metadata = producer.list_topics(topic, timeout=10)  # auto-creates with 4 partitions
    assert {b.id: b.port for b in metadata.brokers.values()} == dict(zip([1, 2, 3], kafka_proxy.ports))
    assert metadata.controller_id == 1
    leaders = {p: m.leader for p, m in metadata.topics[topic].partitions.items()}
    assert leaders == {0: 1, 1: 2, 2: 3, 3: 1}


def test_kafka_proxy_routes_produce_to_leaders_kafka_python(kafka_proxy):
    topic = unique_topic("kp-route")
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_proxy.bootstrap)
    try:
        assert producer.partitions_for(topic) == {0, 1, 2, 3}
        for p in range(4):
            producer.send(topic, b"v%d" % p, partition=p).get(timeout=20)
    finally:
        producer.close(timeout=5)
    for p in range(4):
        leader = p % 3 + 1
        assert kafka_proxy.produce_count(topic, p, node_id=leader) == 1
        assert kafka_proxy.produce_count(topic, p) == 1  # nowhere else
    assert kafka_proxy.events["not_leader"] == 0


def test_kafka_proxy_leader_move_gives_not_leader_then_client_follows(kafka_proxy, broker):
    topic = unique_topic("kp-move")
    conf = {"bootstrap.servers": kafka_proxy.bootstrap, "topic.metadata.refresh.interval.ms": 60000}
    assert all(r[0] is None for r in produce(conf, topic, [b"a%d" % i for i in range(4)], partition=1))
    assert kafka_proxy.produce_count(topic, 1, node_id=2) >= 1
    kafka_proxy.set_leader_fn(lambda t, p: 3)
    kafka_proxy.reset_counters()
    # A fresh producer would learn the new leader from Metadata at once; to force the NOT_LEADER path,
    # keep one producer across the move.
    producer = confluent_kafka.Producer({**QUIET, **conf})
    producer.produce(topic, b"before", partition=1)
    assert producer.flush(20) == 0
    assert kafka_proxy.produce_count(topic, 1, node_id=3) >= 1
    kafka_proxy.set_leader_fn(lambda t, p: 1)
    reports = []
    producer.produce(topic, b"after", partition=1, on_delivery=lambda e, m: reports.append(e))
    assert producer.flush(20) == 0
    assert reports == [None]
    assert kafka_proxy.events["not_leader"] >= 1  # the old leader (3) refused it first
    assert kafka_proxy.produce_count(topic, 1, node_id=1) >= 1
    assert kafka_proxy.count("Metadata") >= 1  # the client refreshed to find node 1
    # Refused writes never reached the broker: read straight from it.
    values = read_back({"bootstrap.servers": broker.bootstrap}, topic, [1], 6)
    assert sorted(values) == sorted([b"a0", b"a1", b"a2", b"a3", b"before", b"after"])


def test_kafka_proxy_lost_ack_with_cut_duplicates_without_idempotence(kafka_proxy, broker):
    topic = unique_topic("kp-lost")
    kafka_proxy.lose_responses(api="Produce", topic=topic, count=1, cut=True)
    conf = {"bootstrap.servers": kafka_proxy.bootstrap, "enable.idempotence": False, "retries": 5,
            "retry.backoff.ms": 50}
    reports = produce(conf, topic, [b"once"], partition=0)
    assert reports[0][0] is None
    assert kafka_proxy.events["lost_response"] == 1
    # The first write happened although its ack was lost; the retry wrote it again.
    assert read_back({"bootstrap.servers": broker.bootstrap}, topic, [0], 2) == [b"once", b"once"]


def test_kafka_proxy_lost_ack_idempotent_retry_is_deduplicated(kafka_proxy, broker):
    # The idempotence scenario: the write lands, its ack is lost, the retry carries the same sequence,
    # and the broker must not write it twice. (Tansu does deduplicate; librdkafka then reports no offset.)
    topic = unique_topic("kp-idem")
    kafka_proxy.lose_responses(api="Produce", topic=topic, count=1, cut=True)
    conf = {"bootstrap.servers": kafka_proxy.bootstrap, "enable.idempotence": True, "retry.backoff.ms": 50}
    assert produce(conf, topic, [b"once"], partition=0)[0][0] is None
    assert kafka_proxy.events["lost_response"] == 1
    assert kafka_proxy.produce_count(topic, 0) == 2
    assert read_back({"bootstrap.servers": broker.bootstrap}, topic, [0], 1) == [b"once"]


async def test_kafka_proxy_lost_response_without_cut(kafka_proxy):
    # cut=False: the answer vanishes but the connection stays; later answers still arrive, in order.
    kafka_proxy.lose_responses(api="Metadata", count=1, cut=False)
    client = await RawClient.connect("127.0.0.1", kafka_proxy.port_of(2))
    try:
        await client.send(proto.MetadataRequest(topics=[]), 1)  # correlation id 1: lost
        response = await client.request(proto.MetadataRequest(topics=[]), 1)  # asserts correlation id 2
        assert len(response.brokers) == 3
        assert kafka_proxy.events["lost_response"] == 1
        assert kafka_proxy.count("Metadata", node_id=2) == 2
    finally:
        await client.close()


def test_kafka_proxy_cut_before_forwarding_writes_once(kafka_proxy, broker):
    topic = unique_topic("kp-cut")
    kafka_proxy.cut_before(api="Produce", topic=topic, count=1)
    conf = {"bootstrap.servers": kafka_proxy.bootstrap, "enable.idempotence": False, "retry.backoff.ms": 50}
    assert produce(conf, topic, [b"x"], partition=0)[0][0] is None
    assert kafka_proxy.events["cut_before"] == 1
    assert kafka_proxy.produce_count(topic, 0) == 2  # the cut attempt and the retry
    assert read_back({"bootstrap.servers": broker.bootstrap}, topic, [0], 1) == [b"x"]


def test_kafka_proxy_injected_errors(kafka_proxy, broker):
    topic = unique_topic("kp-err")
    conf = {"bootstrap.servers": kafka_proxy.bootstrap, "enable.idempotence": False, "retry.backoff.ms": 50}
    # Retriable (NOT_ENOUGH_REPLICAS, 19): the client retries and the second attempt goes through.
    kafka_proxy.fail_produce(topic, 0, 19)
    assert produce(conf, topic, [b"retried"], partition=0)[0][0] is None
    assert kafka_proxy.events["injected_error"] == 1
    # Not retriable (INVALID_RECORD, 87): the delivery report carries it.
    kafka_proxy.fail_produce(topic, 0, 87, message="proxy says no")
    (error, _, _), = produce(conf, topic, [b"refused"], partition=0)
    assert error is not None and error.code() == 87
    assert read_back({"bootstrap.servers": broker.bootstrap}, topic, [0], 1) == [b"retried"]


def test_kafka_proxy_delay(kafka_proxy):
    topic = unique_topic("kp-delay")
    conf = {"bootstrap.servers": kafka_proxy.bootstrap}
    produce(conf, topic, [b"warm-up"], partition=0)  # metadata and connections in place
    kafka_proxy.delay_responses(0.2, api="Produce")
    produce(conf, topic, [b"slow"], partition=0)
    assert kafka_proxy.events["delayed"] == 1  # the answer went through the delay, then arrived


def test_kafka_proxy_holds_an_answer_until_released(kafka_proxy):
    """While the proxy holds the Produce answer, the client has no delivery report; after release it does.
    (What a delay does, without measuring time.)"""
    topic = unique_topic("kp-hold")
    conf = {"bootstrap.servers": kafka_proxy.bootstrap}
    produce(conf, topic, [b"warm-up"], partition=0)  # metadata and connections in place
    kafka_proxy.hold_responses(api="Produce")
    producer = confluent_kafka.Producer({**QUIET, **conf})
    reports = []
    producer.produce(topic, value=b"held", partition=0, on_delivery=lambda e, m: reports.append((e, m.offset())))

    def held_once_polled():
        producer.poll(0.05)  # librdkafka sends from its own thread; poll serves callbacks meanwhile
        return kafka_proxy.held("Produce") == 1

    assert kafka_proxy.wait_for(held_once_polled)
    assert producer.flush(0.2) == 1 and reports == []  # the broker wrote it; the client does not know yet
    kafka_proxy.release_held("Produce")
    assert producer.flush(20) == 0
    assert [(e, o) for e, o in reports] == [(None, 1)]
    assert kafka_proxy.events["held"] == 1 and kafka_proxy.held() == 0


async def test_kafka_proxy_from_async_test_mixed_partitions(kafka_proxy):
    # The proxy runs on its own loop, so an async test (either loop) can talk to it without deadlock.
    # One Produce carrying partitions led by different nodes: the proxy forwards the one this node leads
    # and answers NOT_LEADER for the others, in a single merged response.
    topic = unique_topic("kp-async")
    client = await RawClient.connect("127.0.0.1", kafka_proxy.port_of(1))
    try:
        metadata = await client.request(
            proto.MetadataRequest(topics=[proto.MetadataRequest.MetadataRequestTopic(name=topic)],
                                  allow_auto_topic_creation=True), 9)
        assert len(metadata.brokers) == 3
        assert {p.partition_index: p.leader_id for p in metadata.topics[0].partitions} == {0: 1, 1: 2, 2: 3, 3: 1}
        batch = _one_record_batch()
        request = proto.ProduceRequest(acks=-1, timeout_ms=5000, topic_data=[
            proto.ProduceRequest.TopicProduceData(name=topic, partition_data=[
                proto.ProduceRequest.PartitionProduceData(index=p, records=batch) for p in range(4)])])
        for version in (9, 10):
            response = await client.request(request, version)
            errors = {p.index: p.error_code for t in response.responses for p in t.partition_responses}
            assert errors == {0: 0, 1: 6, 2: 6, 3: 0}
            if version >= 10:
                leaders = {p.index: p.current_leader.leader_id
                           for t in response.responses for p in t.partition_responses if p.error_code}
                assert leaders == {1: 2, 2: 3}
                assert {e.node_id for e in response.node_endpoints} == {2, 3}
    finally:
        await client.close()


def _one_record_batch() -> bytes:
    """One record in a magic-2 batch, built by hand so the test does not depend on the codec's API."""
    import struct

    import crc32c

    def varint(n):
        n = (n << 1) ^ (n >> 63)
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    value = b"hello"
    body = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(len(value)) + value + varint(0)
    record = varint(len(body)) + body
    now = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", 0, 0, now, now, -1, -1, -1, 1) + record
    crc = crc32c.crc32c(after_crc)
    after_length = struct.pack(">ibI", 0, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def test_kafka_proxy_stop_is_clean(broker):
    proxy = KafkaProxy(broker.host, broker.port, num_brokers=2).start()
    ports = list(proxy.ports)
    producer = confluent_kafka.Producer({**QUIET, "bootstrap.servers": proxy.bootstrap})
    producer.list_topics(timeout=10)
    proxy.stop()
    proxy.stop()
    import socket

    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    proxy.raise_if_failed()
    del producer


async def test_a_proxy_that_raised_fails_its_with_block(broker):
    """Every proxy fixture ends its ``with`` block; an exception in the proxy itself must fail the test
    there, not vanish into the proxy's thread. Here the leader function names a node that does not exist."""
    from aiokprod.connection import BrokerConnection
    from aiokprod.errors import KafkaConnectionError

    with pytest.raises(AssertionError, match=r"KafkaProxy raised 1 exception\(s\): ValueError: leader function returned node 9"):
        async with KafkaProxy(broker.host, broker.port, num_brokers=2) as proxy:
            proxy.set_leader_fn(lambda topic, partition: 9)
            connection = await BrokerConnection.open(proxy.host, proxy.ports[0], request_timeout_ms=5000)
            try:
                request = proto.MetadataRequest(topics=[proto.MetadataRequest.MetadataRequestTopic(name=unique_topic("kp-bad"))])
                with pytest.raises(KafkaConnectionError):  # the proxy's handler died and closed the connection
                    await asyncio.wait_for(connection.request(request, 12), 10)
            finally:
                connection.close()
            assert len(proxy.errors) == 1
