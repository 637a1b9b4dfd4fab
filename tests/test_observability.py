"""Hooks, metrics and actionable errors against the real broker (faults from the proxy): what the producer
tells its operators, and that a failed delivery is never silent."""
from __future__ import annotations

import asyncio
import gc
import json

import pytest

from aiokprod import Producer, ProducerInterceptor, errors
from helpers import read_back_async
from proxy_fixtures import kafka_proxy  # noqa: F401

NO_HANG = 30.0
JAVA_CORE = (
    "record_send_rate", "record_send_total", "record_error_rate", "record_error_total", "record_retry_rate",
    "record_retry_total", "batch_size_avg", "batch_size_max", "records_per_request_avg", "compression_rate_avg",
    "request_latency_avg", "request_latency_max", "produce_throttle_time_avg", "produce_throttle_time_max",
    "requests_in_flight", "buffer_total_bytes", "buffer_available_bytes", "buffer_exhausted_total",
    "waiting_senders", "metadata_refresh_total", "connection_count", "errors_by_code",
)


class Recorder:
    """A hook that implements every per-batch event and writes down what it saw."""

    def __init__(self):
        self.events = []

    def _add(self, name, *args):
        self.events.append((name, args))

    def on_producer_start(self, producer):
        self._add("start", producer)

    def on_batch_drained(self, *args):
        self._add("drained", *args)

    def on_request_sent(self, *args):
        self._add("sent", *args)

    def on_request_answered(self, *args):
        self._add("answered", *args)

    def on_batch_acknowledged(self, *args):
        self._add("acked", *args)

    def on_batch_retry(self, *args):
        self._add("retry", *args)

    def on_batch_failed(self, *args):
        self._add("failed", *args)

    def on_metadata_refresh(self, *args):
        self._add("metadata", *args)

    def on_connection_opened(self, *args):
        self._add("opened", *args)

    def on_connection_lost(self, *args):
        self._add("lost", *args)

    def on_buffer_wait(self, *args):
        self._add("buffer_wait", *args)

    def on_buffer_wait_done(self, *args):
        self._add("buffer_wait_done", *args)

    def named(self, name):
        return [args for event, args in self.events if event == name]


async def test_hooks_see_batches_requests_connections_and_metadata(broker, topic_name):
    recorder = Recorder()
    async with Producer(broker.bootstrap, linger_ms=5, hooks=[recorder], compression_type="gzip") as producer:
        # A hook without on_record_send leaves send()'s compiled fast path on.
        assert producer._appender.enabled
        handles = [await producer.send(topic_name, b"v%d" % i, partition=i % 2) for i in range(200)]
        await producer.flush()
        metas = [h.result() for h in handles]
    assert recorder.named("start")[0][0] is producer
    acked = recorder.named("acked")
    assert sum(records for _t, _p, records, _o, _b in acked) == 200
    assert {(t, p) for t, p, *_ in acked} == {(topic_name, 0), (topic_name, 1)}
    # Each acknowledged batch's base offset is its first record's offset.
    first_offsets = {(m.partition, m.offset) for m in metas}
    assert all((p, base) in first_offsets for _t, p, _r, base, _b in acked)
    drained = recorder.named("drained")
    assert sum(r for _t, _p, r, _u, _w, attempt in drained if attempt == 1) == 200
    assert all(wire < uncompressed for _t, _p, _r, uncompressed, wire, _a in drained)  # gzip of b"v..." x N
    sent, answered = recorder.named("sent"), recorder.named("answered")
    assert len(sent) == len(answered) >= 1 and sum(r for _n, _b, r, _w in sent) == 200
    assert all(error is None and latency >= 0 and throttle == 0 for _n, latency, throttle, error in answered)
    assert recorder.named("metadata") and all(args == (None,) for args in recorder.named("metadata"))
    opened = recorder.named("opened")
    assert opened and all(port == broker.port for _n, _h, port in opened)
    assert len(recorder.named("lost")) == len(opened)  # stop() closed every one
    assert recorder.named("failed") == [] and recorder.named("retry") == []


async def test_metrics_have_the_java_core_set_after_producing(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=2, compression_type="lz4") as producer:
        handles = [await producer.send(topic_name, b"x" * 100, key=b"k%d" % (i % 7)) for i in range(500)]
        await producer.flush()
        assert all(h.result().offset >= 0 for h in handles)
        metrics = producer.metrics()
    assert set(JAVA_CORE) <= set(metrics)
    assert metrics["record_send_total"] == 500 and metrics["record_send_rate"] > 0
    assert metrics["record_error_total"] == 0 and metrics["record_retry_total"] == 0
    assert 0 < metrics["batch_size_avg"] <= metrics["batch_size_max"]
    assert metrics["records_per_request_avg"] >= 1
    assert 0 < metrics["compression_rate_avg"] < 1  # lz4 of repeated bytes
    assert 0 < metrics["request_latency_avg"] <= metrics["request_latency_max"]
    assert metrics["produce_throttle_time_max"] == 0
    assert metrics["requests_in_flight"] == 0
    assert metrics["buffer_available_bytes"] == metrics["buffer_total_bytes"]
    assert metrics["buffer_exhausted_total"] == 0 and metrics["waiting_senders"] == 0
    assert metrics["metadata_refresh_total"] >= 1 and metrics["connection_count"] >= 1
    assert metrics["errors_by_code"] == {}


async def test_errors_by_code_and_retries_count_what_the_broker_answered(kafka_proxy, topic_name):
    async with Producer(kafka_proxy.bootstrap, linger_ms=1, retry_backoff_ms=10) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        kafka_proxy.fail_produce(topic_name, 0, 19, count=2)  # NOT_ENOUGH_REPLICAS, retriable
        meta = await asyncio.wait_for(producer.send_and_wait(topic_name, b"after two refusals", partition=0), NO_HANG)
        assert meta.offset >= 1
        metrics = producer.metrics()
    assert metrics["errors_by_code"] == {"NOT_ENOUGH_REPLICAS": 2}
    assert metrics["record_retry_total"] == 2 and metrics["record_error_total"] == 0


async def test_retries_cap_says_so_and_carries_the_broker_s_last_error(kafka_proxy, topic_name):
    recorder = Recorder()
    async with Producer(kafka_proxy.bootstrap, linger_ms=1, retries=2, retry_backoff_ms=5,
                        hooks=[recorder]) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=1)
        kafka_proxy.fail_produce(topic_name, 1, 19, count=None, message="only 1 in sync")
        with pytest.raises(errors.RetriesExhaustedError) as caught:
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"doomed", partition=1), NO_HANG)
        kafka_proxy.clear_faults()
        metrics = producer.metrics()
    exc = caught.value
    assert "retries=2 reached after 3 attempt(s)" in str(exc) and "delivery_timeout_ms" not in str(exc)
    assert isinstance(exc.last_error, errors.NotEnoughReplicasError) and exc.__cause__ is exc.last_error
    assert exc.last_error.broker_message == "only 1 in sync"
    assert (exc.topic, exc.partition, exc.attempts) == (topic_name, 1, 3)
    assert len(recorder.named("retry")) == 2
    assert [(t, p, n, type(e)) for t, p, n, e in recorder.named("failed")] == [
        (topic_name, 1, 1, errors.RetriesExhaustedError)]
    # Three answers, each counted once: two retried, the last as the cause of the failure.
    assert metrics["errors_by_code"] == {"NOT_ENOUGH_REPLICAS": 3}
    assert metrics["record_error_total"] == 1


async def test_delivery_timeout_keeps_its_own_message(kafka_proxy, topic_name):
    async with Producer(kafka_proxy.bootstrap, linger_ms=1, retry_backoff_ms=20, delivery_timeout_ms=400,
                        request_timeout_ms=300) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        kafka_proxy.fail_produce(topic_name, 0, 19, count=None)
        with pytest.raises(errors.KafkaTimeoutError, match="delivery_timeout_ms") as caught:
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"late", partition=0), NO_HANG)
        kafka_proxy.clear_faults()
    assert not isinstance(caught.value, errors.RetriesExhaustedError)
    assert "retries" not in str(caught.value)


async def test_on_delivery_error_gets_every_failed_record_with_its_fields(kafka_proxy, topic_name):
    failed = []
    reports = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
    recorder = Recorder()
    async with Producer(kafka_proxy.bootstrap, linger_ms=50, hooks=[recorder],
                        on_delivery_error=lambda error, record: failed.append((error, record))) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=2)
        kafka_proxy.fail_produce(topic_name, 2, 87, count=1, message="rejected by policy")  # INVALID_RECORD
        sent = []
        for i in range(5):  # fire and forget: nobody looks at these handles
            key, value = b"k%d" % i, b"order-%d" % i
            headers = [("source", b"test"), ("n", str(i).encode())]
            await producer.send(topic_name, value, key=key, partition=2, timestamp_ms=1_700_000_000_000 + i,
                                headers=headers)
            sent.append((key, value, headers, 1_700_000_000_000 + i))
        await producer.flush()
    assert len(failed) == 5
    assert all(isinstance(error, errors.InvalidRecordError) and error.broker_message == "rejected by policy"
               for error, _ in failed)
    got = [(r.key, r.value, r.headers, r.timestamp_ms) for _, r in failed]
    assert got == sent
    assert {(r.topic, r.partition) for _, r in failed} == {(topic_name, 2)}
    # The hooks saw the fire-and-forget failure too; the callback took it, so nothing says "never retrieved".
    assert [(t, p, n) for t, p, n, _e in recorder.named("failed")] == [(topic_name, 2, 5)]
    gc.collect()
    assert [r for r in reports if "never retrieved" in r.get("message", "")] == []


async def test_a_fire_and_forget_failure_nobody_retrieved_is_reported_once_per_batch(kafka_proxy, topic_name):
    reports = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
    async with Producer(kafka_proxy.bootstrap, linger_ms=50) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        await producer.send_and_wait(topic_name, b"warm", partition=1)
        kafka_proxy.fail_produce(topic_name, 0, 87, count=1)
        kafka_proxy.fail_produce(topic_name, 1, 87, count=1)
        for i in range(4):
            await producer.send(topic_name, b"lost-%d" % i, partition=0)  # dropped handles
        watched = [await producer.send(topic_name, b"seen-%d" % i, partition=1) for i in range(3)]
        await producer.flush()
        assert isinstance(watched[0].exception(), errors.InvalidRecordError)  # seen: not reported
    del watched
    gc.collect()
    await asyncio.sleep(0)
    never = [r for r in reports if "never retrieved" in r.get("message", "")]
    assert len(never) == 1, reports
    assert never[0]["message"].startswith(f"4 record(s) for {topic_name}-0 failed")
    assert isinstance(never[0]["exception"], errors.InvalidRecordError)


class Acks(ProducerInterceptor):
    def __init__(self):
        self.acks = []

    def on_acknowledgement(self, metadata, error):
        self.acks.append((metadata, error))


async def test_send_rejections_reach_interceptors_and_serializer_errors_name_the_field(broker, topic_name):
    interceptor = Acks()

    def value_serializer(value):
        return json.dumps(value).encode()

    async with Producer(broker.bootstrap, linger_ms=1, interceptors=[interceptor], max_request_size=2000,
                        value_serializer=value_serializer, key_serializer=lambda k: k.encode()) as producer:
        with pytest.raises(errors.SerializationError) as caught:
            await producer.send(topic_name, {"not", "json"}, key="k")
        assert caught.value.topic == topic_name and caught.value.field == "value"
        assert isinstance(caught.value.__cause__, TypeError)
        with pytest.raises(errors.SerializationError, match="key serializer"):
            await producer.send(topic_name, {"ok": 1}, key=123)
        with pytest.raises(errors.RecordTooLargeError):
            await producer.send(topic_name, "x" * 5000, key="k")
        meta = await producer.send_and_wait(topic_name, {"ok": 2}, key="k")
    assert [type(e) for _, e in interceptor.acks] == [errors.SerializationError, errors.SerializationError,
                                                     errors.RecordTooLargeError, type(None)]
    assert interceptor.acks[-1][0] == meta


async def test_headers_as_a_mapping_are_read_back(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        first = await producer.send_and_wait(topic_name, b"m", partition=0, headers={"a": b"1", "b": b"two"})
        await producer.send_and_wait(topic_name, b"l", partition=0, headers=[("c", b"3")])
        with pytest.raises(TypeError, match="header 'a': value must be bytes"):
            await producer.send(topic_name, b"bad", partition=0, headers={"a": "str"})
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 2)
    assert [(s.value, s.headers) for s in stored] == [(b"m", (("a", b"1"), ("b", b"two"))), (b"l", (("c", b"3"),))]
    assert first.offset == 0


async def test_java_signature_partitioner_routes_on_the_value_and_sees_leaders(kafka_proxy, broker, topic_name):
    seen_views = []

    def priority(topic, key, key_bytes, value, value_bytes, cluster):
        """Urgent orders to partition 0, the rest spread over the other partitions that have a leader."""
        available = [p.partition for p in cluster.available_partitions_for_topic(topic)]
        seen_views.append((len(cluster.partitions_for_topic(topic)), available))
        if value["urgent"]:
            return 0
        others = [p for p in available if p != 0]
        return others[int.from_bytes(key_bytes, "big") % len(others)]

    async with Producer(kafka_proxy.bootstrap, linger_ms=1, partitioner=priority, key_serializer=str.encode,
                        value_serializer=lambda v: json.dumps(v).encode()) as producer:
        metas = [await producer.send_and_wait(topic_name, {"id": i, "urgent": i % 3 == 0}, key=f"c{i}")
                 for i in range(9)]
    assert [m.partition == 0 for m in metas] == [i % 3 == 0 for i in range(9)]
    assert all(n == 4 and available == [0, 1, 2, 3] for n, available in seen_views)
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 3)
    assert sorted(json.loads(s.value)["id"] for s in stored) == [0, 3, 6]


async def test_simple_partitioner_keeps_working(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1, partitioner=lambda topic, key, partitions: partitions[-1]) as p:
        meta = await p.send_and_wait(topic_name, b"v", key=b"k")
    assert meta.partition == 3


async def test_a_raising_hook_never_breaks_delivery(broker, topic_name, caplog):
    class Broken:
        def on_batch_acknowledged(self, *args):
            raise RuntimeError("dashboard down")

    async with Producer(broker.bootstrap, linger_ms=1, hooks=[Broken()]) as producer:
        meta = await asyncio.wait_for(producer.send_and_wait(topic_name, b"v", partition=0), NO_HANG)
    assert meta.offset == 0
    assert "raised in on_batch_acknowledged" in caplog.text


async def test_buffer_exhaustion_is_counted_and_waits_are_reported(broker, topic_name):
    recorder = Recorder()
    async with Producer(broker.bootstrap, linger_ms=10_000, batch_size=1024, buffer_memory=2048,
                        max_block_ms=100, hooks=[recorder]) as producer:
        await producer.send(topic_name, b"a" * 900, partition=0)
        await producer.send(topic_name, b"b" * 900, partition=1)  # the buffer is full: two batches of 1024
        with pytest.raises(errors.BufferExhaustedError):
            await producer.send(topic_name, b"c" * 900, partition=2)
        metrics = producer.metrics()
    assert metrics["buffer_exhausted_total"] == 1 and metrics["buffer_available_bytes"] == 0
    assert recorder.named("buffer_wait") == [(topic_name, 2, 1024)]
    assert [exhausted for _waited, exhausted in recorder.named("buffer_wait_done")] == [True]
