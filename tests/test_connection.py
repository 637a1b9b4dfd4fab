"""BrokerConnection against the real embedded broker, its TLS and SASL fronts, and small misbehaving servers.

The misbehaving servers (``FakeBroker``) run on the test's own loop: they answer ApiVersions so that
``BrokerConnection.open`` completes, then do what the test needs (stay silent, hang up, send a garbage
length or the wrong correlation id). Everything the client does is the real code; only the peer is scripted.
"""
from __future__ import annotations

import asyncio
import ssl
import struct
import time

import pytest

from aiokprod import errors
from aiokprod.admin import create_topics
from aiokprod.connection import BrokerConnection
from aiokprod.protocol import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    CreateTopicsRequest,
    InitProducerIdRequest,
    MetadataRequest,
    MetadataResponse,
    ProduceRequest,
)
from aiokprod.testing import free_port
from helpers import read_back_async
from kafka_frames import RequestInfo, encode_response, frame, read_frame, response_payload
from proxy_fixtures import SASL_USERS, sasl_broker, tls_broker  # noqa: F401 - fixtures

# Generous bound for "it did not hang": every failure below is expected well inside it.
NO_HANG = 10.0

# What the fake brokers advertise: enough for open() and a Metadata request.
FAKE_VERSIONS = [ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=3),
                 ApiVersionsResponse.ApiVersion(api_key=3, min_version=0, max_version=12)]


def metadata_request(*names: str) -> MetadataRequest:
    return MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=n) for n in names],
                           allow_auto_topic_creation=False)


async def open_broker(broker, **kwargs) -> BrokerConnection:
    kwargs.setdefault("request_timeout_ms", 5000)
    return await BrokerConnection.open(broker.host, broker.port, **kwargs)


class FakeBroker:
    """An asyncio server on the test loop. ``after_handshake(reader, writer)`` runs once the client's
    ApiVersions has been answered; the default reads every request and ignores it (a black hole)."""

    def __init__(self, after_handshake=None, *, answer_api_versions: bool = True) -> None:
        self.after_handshake = after_handshake or self.ignore_everything
        self.answer_api_versions = answer_api_versions
        self.received: list[RequestInfo] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> "FakeBroker":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self._handlers.add(asyncio.current_task())
        try:
            if self.answer_api_versions:
                payload = await read_frame(reader)
                request = RequestInfo(payload)
                self.received.append(request)
                writer.write(encode_response(request, ApiVersionsResponse(api_keys=FAKE_VERSIONS)))
            await self.after_handshake(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def next_request(self, reader) -> RequestInfo:
        request = RequestInfo(await read_frame(reader))
        self.received.append(request)
        return request

    @staticmethod
    async def ignore_everything(fake, reader, writer) -> None:
        while await read_frame(reader) is not None:
            pass

    async def connect(self, **kwargs) -> BrokerConnection:
        kwargs.setdefault("request_timeout_ms", 5000)
        return await BrokerConnection.open("127.0.0.1", self.port, **kwargs)


# -- the real broker ----------------------------------------------------------------------------------------

async def test_negotiates_highest_common_versions(broker):
    connection = await open_broker(broker)
    try:
        # Tansu's advertised ranges (BROKER.md) arrive intact.
        assert connection.api_versions[3] == (0, 12)      # Metadata
        assert connection.api_versions[22] == (0, 5)      # InitProducerId
        for message_class in (MetadataRequest, ProduceRequest, InitProducerIdRequest, CreateTopicsRequest):
            broker_low, broker_high = connection.api_versions[message_class.API_KEY]
            client_low, client_high = message_class.VALID_VERSIONS
            assert connection.version_for(message_class) == min(broker_high, client_high)
        # InitProducerId v0-v2 always fail on Tansu: negotiation must land on v3 or later.
        assert connection.version_for(InitProducerIdRequest) >= 3
        # A cap is honoured, and a range with nothing in common is an error, not a silent bad choice.
        assert connection.version_for(MetadataRequest, high=4) == 4
        with pytest.raises(errors.UnsupportedVersionError, match="no common version of Metadata"):
            connection.version_for(MetadataRequest, low=13)
        # An API the broker does not advertise.
        connection.api_versions.pop(19)
        with pytest.raises(errors.UnsupportedVersionError, match="does not support CreateTopics"):
            connection.version_for(CreateTopicsRequest)
    finally:
        connection.close()


async def test_metadata_and_create_topics(broker, topic_name):
    counts = await create_topics(broker.bootstrap, {topic_name: 5, topic_name + "-d": -1})
    # -1 means "the broker's default": 3 on Tansu.
    assert counts == {topic_name: 5, topic_name + "-d": 3}
    connection = await open_broker(broker)
    try:
        response = await connection.request(metadata_request(topic_name, topic_name + "-missing"),
                                            connection.version_for(MetadataRequest))
        assert [(b.node_id, b.host, b.port) for b in response.brokers] == [(111, broker.host, broker.port)]
        by_name = {t.name: t for t in response.topics}
        created = by_name[topic_name]
        assert created.error_code == 0
        assert sorted(p.partition_index for p in created.partitions) == [0, 1, 2, 3, 4]
        assert {p.leader_id for p in created.partitions} == {111}
        assert by_name[topic_name + "-missing"].error_code == errors.UnknownTopicOrPartitionError.code
    finally:
        connection.close()
    # Creating again: fine with exist_ok (the default), the broker's error otherwise.
    assert await create_topics(broker.bootstrap, {topic_name: 5}) == {topic_name: 5}
    with pytest.raises(errors.TopicAlreadyExistsError) as info:
        await create_topics(broker.bootstrap, {topic_name: 5}, exist_ok=False)
    assert info.value.topic == topic_name


async def test_list_offsets_of_an_empty_topic(broker, topic_name):
    from aiokprod.admin import EARLIEST, list_offsets

    await create_topics(broker.bootstrap, {topic_name: 2})
    assert await list_offsets(broker.bootstrap, topic_name) == {0: 0, 1: 0}
    assert await list_offsets(broker.bootstrap, topic_name, [1], timestamp=EARLIEST) == {1: 0}
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        await list_offsets(broker.bootstrap, topic_name, [7])


async def test_pipelined_requests_are_matched_in_order(broker):
    connection = await open_broker(broker)
    try:
        version = connection.version_for(MetadataRequest)
        first_id = connection._next_correlation_id
        # 50 requests written back to back before any answer can be read (no await in between). Each
        # asks about a different topic, so a response matched to the wrong request would show.
        names = [f"pipelined-{i}" for i in range(50)]
        futures = [connection.request(metadata_request(name), version) for name in names]
        assert connection.in_flight == 50
        assert connection._next_correlation_id == first_id + 50
        responses = await asyncio.wait_for(asyncio.gather(*futures), NO_HANG)
        assert [r.topics[0].name for r in responses] == names
        assert connection.in_flight == 0 and not connection.closed
    finally:
        connection.close()


async def test_correlation_ids_on_the_wire_are_distinct_and_answered_in_order():
    """What the broker sees: 10 pipelined requests with consecutive correlation ids; answers echo them."""
    async def echo_metadata(fake, reader, writer):
        for _ in range(10):
            request = await fake.next_request(reader)
            # The topic list is the correlation id, so the client's decoded answer says which one it got.
            writer.write(encode_response(request, MetadataResponse(topics=[
                MetadataResponse.MetadataResponseTopic(name=str(request.correlation_id))])))
        await fake.ignore_everything(fake, reader, writer)

    async with FakeBroker(echo_metadata) as fake:
        connection = await fake.connect()
        try:
            futures = [connection.request(metadata_request("x"), 12) for _ in range(10)]
            responses = await asyncio.wait_for(asyncio.gather(*futures), NO_HANG)
            wire_ids = [r.correlation_id for r in fake.received[1:]]
            assert wire_ids == list(range(wire_ids[0], wire_ids[0] + 10))
            assert [int(r.topics[0].name) for r in responses] == wire_ids
        finally:
            connection.close()


# -- timeouts and closing -----------------------------------------------------------------------------------

async def test_unanswered_request_times_out_and_fails_everything_pending():
    async with FakeBroker() as fake:  # answers ApiVersions, then reads and ignores
        connection = await fake.connect(request_timeout_ms=500)
        futures = [connection.request(metadata_request("a"), 12) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), NO_HANG)
        assert all(isinstance(r, errors.KafkaTimeoutError) for r in results), results
        assert "got no answer within 0.5s" in str(results[0])  # the request timeout fired, nothing else
        assert connection.closed
        # A request on the closed connection fails at once with the same clear error.
        late = connection.request(metadata_request("a"), 12)
        with pytest.raises(errors.KafkaTimeoutError):
            await asyncio.wait_for(late, 1.0)


async def test_short_per_request_timeout_behind_a_long_one_fires_on_time():
    """The timer must follow the earliest deadline, not the head of the queue's."""
    async with FakeBroker() as fake:
        connection = await fake.connect(request_timeout_ms=30000)
        long_one = connection.request(metadata_request("slow"), 12)            # 30 s
        short_one = connection.request(metadata_request("fast"), 12, timeout=0.3)
        # The short request's own timer fired (its 0.3 s is in the message); had the timer followed the
        # 30 s request ahead of it, the hang guard, far below 30 s, would fail the test.
        with pytest.raises(errors.KafkaTimeoutError, match="within 0.3s"):
            await asyncio.wait_for(short_one, NO_HANG)
        # The stream is now unusable (the long request's answer could still arrive): it failed too.
        with pytest.raises(errors.KafkaTimeoutError):
            await long_one


async def test_open_times_out_when_the_peer_never_answers_api_versions():
    async with FakeBroker(answer_api_versions=False) as fake:
        with pytest.raises(errors.KafkaConnectionError, match=rf"timed out connecting to 127.0.0.1:{fake.port} after 0.4s"):
            await asyncio.wait_for(fake.connect(request_timeout_ms=400), NO_HANG)


async def test_close_fails_pending_requests(broker):
    connection = await open_broker(broker)
    futures = [connection.request(metadata_request("x"), 12) for _ in range(5)]
    connection.close()
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), NO_HANG)
    assert all(isinstance(r, errors.KafkaConnectionError) for r in results), results
    assert "closed" in str(results[0])
    assert connection.closed and connection.in_flight == 0
    with pytest.raises(errors.KafkaConnectionError):
        await connection.request(metadata_request("x"), 12)


async def test_close_with_a_reason_fails_pending_with_it():
    async with FakeBroker() as fake:
        connection = await fake.connect()
        pending = connection.request(metadata_request("x"), 12)
        reason = errors.KafkaConnectionError("shutting down for the test")
        connection.close(reason)
        with pytest.raises(errors.KafkaConnectionError, match="shutting down for the test"):
            await asyncio.wait_for(pending, NO_HANG)


async def test_peer_hanging_up_fails_pending_requests():
    async def hang_up_on_first_request(fake, reader, writer):
        await fake.next_request(reader)
        writer.close()

    async with FakeBroker(hang_up_on_first_request) as fake:
        connection = await fake.connect()
        closed = []
        connection.on_close = lambda conn, exc: closed.append(exc)
        futures = [connection.request(metadata_request("x"), 12) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), NO_HANG)
        assert all(isinstance(r, errors.KafkaConnectionError) for r in results), results
        assert "lost" in str(results[0])
        assert len(closed) == 1 and isinstance(closed[0], errors.KafkaConnectionError)


async def test_dead_port_fails_open_quickly():
    port = free_port()  # bound then released: nothing listens there
    with pytest.raises(errors.KafkaConnectionError, match=f"cannot connect to 127.0.0.1:{port}") as info:
        await asyncio.wait_for(BrokerConnection.open("127.0.0.1", port, request_timeout_ms=5000), NO_HANG)
    assert isinstance(info.value.__cause__, ConnectionRefusedError), repr(info.value.__cause__)  # refused, not timed out


# -- corrupt streams ----------------------------------------------------------------------------------------

def _answer_with(raw_for_request):
    """A FakeBroker behaviour: answer the first request with ``raw_for_request(request)`` bytes."""
    async def behaviour(fake, reader, writer):
        request = await fake.next_request(reader)
        writer.write(raw_for_request(request))
        await fake.ignore_everything(fake, reader, writer)
    return behaviour


@pytest.mark.parametrize("raw, message", [
    (lambda request: struct.pack(">i", -7), "impossible response size -7"),
    (lambda request: struct.pack(">i", 0x7FFFFFF0), "impossible response size"),
    (lambda request: struct.pack(">i", 2) + b"\0\0", "impossible response size 2"),
    (lambda request: frame(response_payload(request.correlation_id + 1000, 1,
                                            MetadataResponse().encode(request.api_version))),
     "correlation id"),
    (lambda request: frame(response_payload(request.correlation_id, 1, b"\x01\x02\x03")),
     "malformed MetadataResponse"),
], ids=["negative-size", "huge-size", "too-short", "wrong-correlation-id", "truncated-body"])
async def test_corrupt_frame_fails_and_closes(raw, message):
    async with FakeBroker(_answer_with(raw)) as fake:
        connection = await fake.connect()
        first = connection.request(metadata_request("x"), 12)
        second = connection.request(metadata_request("y"), 12)
        with pytest.raises(errors.CorruptFrameError, match=message):
            await asyncio.wait_for(first, NO_HANG)
        # Nothing after a corrupt frame can be trusted: the connection is closed and the rest fail too.
        with pytest.raises(errors.CorruptFrameError):
            await asyncio.wait_for(second, NO_HANG)
        assert connection.closed


async def test_unsolicited_response_is_corrupt():
    async def speak_first(fake, reader, writer):
        writer.write(frame(response_payload(99, 0, b"")))
        await fake.ignore_everything(fake, reader, writer)

    async with FakeBroker(speak_first) as fake:
        connection = await fake.connect()
        deadline = time.monotonic() + NO_HANG
        while not connection.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with pytest.raises(errors.CorruptFrameError, match="nothing pending"):
            await connection.request(metadata_request("x"), 12)


async def test_api_versions_falls_back_to_v0_on_a_pre_kip511_broker():
    """A broker that does not know ApiVersions v3 answers UNSUPPORTED_VERSION with a v0 body (KIP-511)."""
    class OldBroker(FakeBroker):
        async def _serve(self, reader, writer):
            self._handlers.add(asyncio.current_task())
            try:
                while True:
                    request = await self.next_request(reader)
                    body = ApiVersionsResponse(api_keys=FAKE_VERSIONS[1:] + [
                        ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=2)])
                    if request.api_version > 2:
                        body.error_code = 35
                    writer.write(frame(response_payload(request.correlation_id, 0, body.encode(0))))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

    async with OldBroker() as old:
        connection = await old.connect()
        try:
            assert [r.api_version for r in old.received] == [3, 0]
            assert connection.api_versions[3] == (0, 12)
        finally:
            connection.close()


# -- TLS and SASL -------------------------------------------------------------------------------------------

def _address(bootstrap: str) -> tuple[str, int]:
    host, port = bootstrap.rsplit(":", 1)
    return host, int(port)


async def test_tls_connect_negotiate_and_metadata(tls_broker):
    host, port = _address(tls_broker.bootstrap)
    connection = await BrokerConnection.open(host, port, ssl_context=tls_broker.proxy.client_ssl_context(),
                                             request_timeout_ms=5000)
    try:
        assert connection._transport.get_extra_info("ssl_object") is not None
        assert connection.version_for(InitProducerIdRequest) >= 3
        response = await connection.request(metadata_request(), connection.version_for(MetadataRequest))
        # The broker advertises the proxy, so clients that follow Metadata stay on TLS.
        assert [(b.host, b.port) for b in response.brokers] == [(host, port)]
    finally:
        connection.close()
    assert tls_broker.proxy.connections >= 1


async def test_tls_untrusted_certificate_fails_clearly(tls_broker):
    host, port = _address(tls_broker.bootstrap)
    untrusting = ssl.create_default_context()  # the system CAs: not the proxy's throwaway CA
    with pytest.raises(errors.KafkaConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await asyncio.wait_for(BrokerConnection.open(host, port, ssl_context=untrusting, request_timeout_ms=5000),
                               NO_HANG)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_login(sasl_broker, mechanism):
    host, port = _address(sasl_broker.bootstrap)
    connection = await BrokerConnection.open(host, port, sasl_mechanism=mechanism, sasl_username="alice",
                                             sasl_password=SASL_USERS["alice"], request_timeout_ms=5000)
    try:
        response = await connection.request(metadata_request(), connection.version_for(MetadataRequest))
        assert [b.node_id for b in response.brokers] == [111]
    finally:
        connection.close()
    assert sasl_broker.proxy.stats[f"auth_ok:{mechanism}"] == 1
    assert sasl_broker.proxy.authenticated_users == ["alice"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_wrong_password(sasl_broker, mechanism):
    host, port = _address(sasl_broker.bootstrap)
    with pytest.raises(errors.SaslAuthenticationFailedError) as info:  # an AuthenticationError
        await asyncio.wait_for(BrokerConnection.open(
            host, port, sasl_mechanism=mechanism, sasl_username="alice", sasl_password="not-the-password",
            request_timeout_ms=5000), NO_HANG)
    text = str(info.value)
    assert f"SASL {mechanism} authentication to {host}:{port} failed" in text
    assert sasl_broker.proxy.stats[f"auth_failed:{mechanism}"] == 1
    assert sasl_broker.proxy.authenticated_users == []


async def test_sasl_against_a_broker_without_sasl_is_not_a_hang(broker):
    """The real broker (no --authentication) refuses the handshake: a clear error, quickly."""
    with pytest.raises(errors.UnsupportedSaslMechanismError, match="refused SASL mechanism PLAIN"):
        await asyncio.wait_for(BrokerConnection.open(
            broker.host, broker.port, sasl_mechanism="PLAIN", sasl_username="alice", sasl_password="x",
            request_timeout_ms=2000), NO_HANG)


async def test_an_answer_to_an_acks0_produce_is_dropped_not_taken_for_corruption(broker, topic_name):
    """Kafka brokers send no answer to an acks=0 Produce; Tansu sends one anyway. The connection must drop it
    and stay open (closing it would lose the writes still in its buffer), and match later answers as usual."""
    from aiokprod.codec import RecordBatchBuilder
    from aiokprod.protocol import ProduceRequest
    from aiokprod.protocol.produce import encode_produce_request

    await create_topics(broker.bootstrap, {topic_name: 1})
    connection = await open_broker(broker)
    try:
        version = connection.version_for(ProduceRequest, 3)
        builder = RecordBatchBuilder("none")
        assert builder.append(0, None, b"acks0", None)
        batch = builder.build(0, -1, -1, -1, False)
        for _ in range(3):
            correlation_id = connection.next_correlation_id()
            buffers = encode_produce_request(version, correlation_id, "test", None, 0, 5000,
                                             [(topic_name, [(0, batch)])])
            sent = connection.send_frame(buffers, correlation_id, ProduceRequest.API_KEY, version,
                                         response_class=None)
            assert sent.done() and sent.result() is None
        # A request that does expect an answer, behind the three: matched to its own answer.
        response = await asyncio.wait_for(
            connection.request(metadata_request(topic_name), connection.version_for(MetadataRequest)), NO_HANG)
        assert [t.name for t in response.topics] == [topic_name]
        assert not connection.closed, connection._closed_exc
    finally:
        connection.close()
    # All three writes were stored, read back by confluent-kafka's consumer.
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 3)
    assert [m.value for m in stored] == [b"acks0"] * 3
