"""End to end against the embedded broker: what the producer writes is what confluent-kafka's consumer reads.

Every record sent must be stored exactly once, at the partition and offset its metadata names, with its key,
value, headers and timestamp, for every codec and every acks level. Also: interceptors, serializers,
``stop()`` flushing, cancellation, and that the idempotent producer's batches carry a producer id and
sequences (read with a raw Fetch and the codec's decoder).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from aiokprod import Producer, errors
from aiokprod.codec import decode_record_batches
from aiokprod.interceptors import ProducerInterceptor, ProducerRecord
from aiokprod.metadata import RecordMetadata
from aiokprod.serializers import json_serializer, string_serializer
from helpers import no_tasks_left, read_back_async
from proxy_fixtures import kafka_proxy  # noqa: F401 - fixture

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
ACKS = [0, 1, "all"]
N = 200
NO_HANG = 20.0  # a guard against hangs, never a performance claim
BASE_TS = 1_700_000_000_000


def _records(n: int, tag: str):
    """Distinct keys (some None), values (some None, some empty), headers (some null values), timestamps."""
    out = []
    for i in range(n):
        key = None if i % 10 == 0 else f"{tag}-key-{i % 37}".encode()
        value = None if i % 50 == 7 else (b"" if i % 50 == 8 else f"{tag}-value-{i}-".encode() * (1 + i % 5))
        headers = [] if i % 3 == 0 else [("h1", f"v{i}".encode()), ("h-null", None), ("h1", b"dup")][: 1 + i % 3]
        out.append((key, value, headers, BASE_TS + i * 7))
    return out


def _stored_headers(headers):
    return tuple((k, v) for k, v in headers)


@pytest.mark.parametrize("acks", ACKS, ids=lambda a: f"acks={a}")
@pytest.mark.parametrize("codec", CODECS)
async def test_every_record_stored_exactly_once(broker, kafka_proxy, topic_name, codec, acks):
    """Through the proxy (three virtual brokers), which counts the records it forwarded: for acks=0 that is
    the proof the bytes left the client, whatever the broker then stores."""
    records = _records(N, codec)
    async with Producer(kafka_proxy.bootstrap, compression_type=codec, acks=acks, linger_ms=2,
                        batch_size=4096) as producer:
        partitions = await producer.partitions_for(topic_name)
        handles = [await producer.send(topic_name, value=v, key=k, headers=h, timestamp_ms=ts)
                   for k, v, h, ts in records]
        metas = await asyncio.gather(*handles)
        # Read back while the producer (and its connections) are still open: Tansu drops an acks=0 Produce
        # it has read but not yet stored when the client closes the connection (about one stop in six
        # under uvloop), and acks=0 gives the client no way to know when it was stored.
        stored = await read_back_async(broker.bootstrap, topic_name, partitions, N, timeout=10 if acks == 0 else 20)
        metrics = producer.metrics()
    assert len(partitions) > 1
    assert all(isinstance(m, RecordMetadata) and m.topic == topic_name for m in metas)
    assert {m.partition for m in metas} <= set(partitions)
    assert len({m.partition for m in metas}) > 1  # keyed records spread over partitions

    if acks == 0:
        assert all(m.offset == -1 for m in metas)
        expected = Counter((m.partition, k, v, _stored_headers(h), ts) for m, (k, v, h, ts) in zip(metas, records))
        got = Counter((s.partition, s.key, s.value, s.headers, s.timestamp) for s in stored)
        assert len({(s.partition, s.offset) for s in stored}) == len(stored)
        assert not got - expected, "stored records that were not sent (or sent once, stored twice)"
        # Every record left the client and reached the broker's socket: the proxy forwarded them all, and
        # none was refused on the way (a wrong leader would be refused silently under acks=0).
        forwarded = lambda: sum(kafka_proxy.forwarded_records[(topic_name, p)] for p in partitions)  # noqa: E731
        assert await kafka_proxy.wait_for_async(lambda: forwarded() == N), (
            f"{forwarded()} of {N} forwarded: {dict(kafka_proxy.forwarded_records)}, "
            f"sent per partition {Counter(m.partition for m in metas)}, stored {len(stored)}, "
            f"{kafka_proxy.count('Produce')} Produce requests, {metrics}")
        assert kafka_proxy.events["not_leader"] == 0
        # Tansu answers acks=0 Produce requests (it should not); the proxy drops those answers, which
        # the client does not expect (directly, our client takes one as a corrupt stream and reconnects).
        if len(stored) < N:
            # Seen about once per few hundred acks=0 cases under load (uvloop): the broker never confirms
            # an acks=0 write, and Tansu sometimes does not store one it was sent (proven above). Shown,
            # not hidden: a broker quirk noted for the team (acks=0 promises nothing).
            pytest.xfail(f"Tansu stored {len(stored)} of {N} acks=0 records (acks=0 has no delivery guarantee)")
        assert got == expected
        return

    assert len(stored) == N, f"{len(stored)} stored for {N} sent"
    # Exactly once: no (partition, offset) twice, and every sent record's content is there once.
    assert len({(s.partition, s.offset) for s in stored}) == N
    for s in stored:
        assert s.topic == topic_name

    by_position = {(s.partition, s.offset): s for s in stored}
    assert len({(m.partition, m.offset) for m in metas}) == N
    for meta, (key, value, headers, ts) in zip(metas, records):
        s = by_position.get((meta.partition, meta.offset))
        assert s is not None, f"nothing stored at {meta}"
        assert (s.key, s.value, s.headers, s.timestamp) == (key, value, _stored_headers(headers), ts), meta
        assert meta.timestamp == ts  # create time: the record's own timestamp


async def test_keys_keep_their_order_per_partition(broker, topic_name):
    keys = [f"order-{i}".encode() for i in range(8)]
    async with Producer(broker.bootstrap, linger_ms=1, batch_size=1024) as producer:
        handles = []
        for i in range(400):
            key = keys[i % len(keys)]
            handles.append(await producer.send(topic_name, value=b"%d" % i, key=key))
        metas = await asyncio.gather(*handles)
        partitions = await producer.partitions_for(topic_name)
    stored = await read_back_async(broker.bootstrap, topic_name, partitions, 400)
    assert len(stored) == 400
    per_key: dict[bytes, list[int]] = {}
    for s in stored:  # sorted by (partition, offset): log order
        per_key.setdefault(s.key, []).append(int(s.value))
    for key, values in per_key.items():
        assert values == sorted(values), f"key {key!r} out of order"
    # Offsets grow with send order within each partition.
    by_partition: dict[int, list[int]] = {}
    for meta in metas:
        by_partition.setdefault(meta.partition, []).append(meta.offset)
    for offsets in by_partition.values():
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


# -- interceptors and serializers -------------------------------------------------------------------------

class Upper(ProducerInterceptor):
    def on_send(self, record: ProducerRecord) -> ProducerRecord:
        return record._replace(value=record.value.upper(), headers=[("intercepted", b"1")])


class Recorder(ProducerInterceptor):
    def __init__(self):
        self.acks = []

    def on_acknowledgement(self, metadata, error):
        self.acks.append((metadata, error))


class Broken(ProducerInterceptor):
    def on_send(self, record):
        raise RuntimeError("on_send boom")

    def on_acknowledgement(self, metadata, error):
        raise RuntimeError("on_ack boom")


async def test_interceptors_modify_acknowledge_and_survive_errors(broker, topic_name, caplog):
    recorder = Recorder()
    caplog.set_level(logging.ERROR, logger="aiokprod.interceptors")
    async with Producer(broker.bootstrap, linger_ms=1, interceptors=[Broken(), Upper(), recorder]) as producer:
        handles = [await producer.send(topic_name, value=b"abc%d" % i, partition=0) for i in range(20)]
        metas = await asyncio.gather(*handles)
        await asyncio.sleep(0)  # done callbacks run soon after the handles resolve
        for _ in range(10):
            if len(recorder.acks) >= 20:
                break
            await asyncio.sleep(0.01)
    # Exactly one acknowledgement per record, with its metadata, no error.
    assert len(recorder.acks) == 20
    assert sorted(m.offset for m, _ in recorder.acks) == sorted(m.offset for m in metas)
    assert all(error is None for _, error in recorder.acks)
    # The raising interceptor was logged in both hooks and skipped.
    text = caplog.text
    assert "on_send boom" in text and "on_ack boom" in text
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 20)
    assert [s.value for s in stored] == [b"ABC%d" % i for i in range(20)]
    assert all(s.headers == (("intercepted", b"1"),) for s in stored)


async def test_interceptor_acknowledgement_reports_failures(kafka_proxy, topic_name):
    """The proxy holds the Produce answer, so stop() must fail the record; the interceptor hears of it."""
    recorder = Recorder()
    producer = Producer(kafka_proxy.bootstrap, linger_ms=1, interceptors=[recorder])
    await producer.start()
    try:
        await producer.partitions_for(topic_name)
        kafka_proxy.hold_responses(api="Produce", count=None)
        handle = await producer.send(topic_name, b"x", partition=0)
        assert await kafka_proxy.wait_for_async(lambda: kafka_proxy.held("Produce") == 1)
        await asyncio.wait_for(producer.stop(timeout=0), NO_HANG)
    finally:
        kafka_proxy.release_held()
    assert handle.done() and isinstance(handle.exception(), errors.ProducerClosedError)
    assert await kafka_proxy.wait_for_async(lambda: len(recorder.acks) >= 1)  # done callbacks run soon after
    [(metadata, error)] = recorder.acks
    assert metadata is None and isinstance(error, errors.ProducerClosedError)
    assert error is handle.exception()


async def test_str_value_needs_a_serializer(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        with pytest.raises(TypeError, match="value_serializer"):
            await producer.send(topic_name, value="text")
        with pytest.raises(TypeError, match="key_serializer"):
            await producer.send(topic_name, value=b"v", key="text")
        meta = await producer.send_and_wait(topic_name, value=b"still works", partition=0)
        assert meta.offset >= 0


async def test_serializers(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1, key_serializer=string_serializer(),
                        value_serializer=json_serializer) as producer:
        meta = await producer.send_and_wait(topic_name, value={"a": [1, 2]}, key="ключ", partition=1)
    stored = await read_back_async(broker.bootstrap, topic_name, [1], 1)
    assert [(s.offset, s.key, s.value) for s in stored] == [(meta.offset, "ключ".encode(), b'{"a":[1,2]}')]


# -- stop, acks=0, cancellation ---------------------------------------------------------------------------

async def test_stop_flushes_everything(broker, topic_name):
    producer = Producer(broker.bootstrap, linger_ms=60_000, batch_size=1 << 20)
    await producer.start()
    handles = [await producer.send(topic_name, b"%d" % i, partition=i % 2) for i in range(300)]
    assert not any(h.done() for h in handles)  # lingering for a minute
    await asyncio.wait_for(producer.stop(), 20)
    assert all(h.done() for h in handles)
    metas = [h.result() for h in handles]
    assert all(m.offset >= 0 for m in metas)
    assert await no_tasks_left() == set()
    stored = await read_back_async(broker.bootstrap, topic_name, [0, 1], 300)
    assert sorted(int(s.value) for s in stored) == list(range(300))
    with pytest.raises(errors.ProducerClosedError):
        await producer.send(topic_name, b"late")


async def test_stop_with_zero_timeout_resolves_every_handle(broker, topic_name):
    producer = Producer(broker.bootstrap, linger_ms=60_000, batch_size=1 << 20)
    await producer.start()
    handles = [await producer.send(topic_name, b"%d" % i, partition=0) for i in range(50)]
    await asyncio.wait_for(producer.stop(timeout=0), 10)
    for handle in handles:
        assert handle.done()
        if handle.exception() is not None:
            assert isinstance(handle.exception(), errors.ProducerClosedError)
        else:
            assert handle.result().offset >= 0
    assert await no_tasks_left() == set()


async def test_acks_zero_metadata(broker, topic_name):
    async with Producer(broker.bootstrap, acks=0, linger_ms=1) as producer:
        meta = await producer.send_and_wait(topic_name, b"fire and forget", partition=2, timestamp_ms=BASE_TS)
    assert meta == RecordMetadata(topic_name, 2, -1, meta.timestamp)
    stored = await read_back_async(broker.bootstrap, topic_name, [2], 1)
    assert [(s.value, s.timestamp) for s in stored] == [(b"fire and forget", BASE_TS)]


async def test_cancelling_waiters_does_not_corrupt_the_producer(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=5) as producer:
        # 1. Cancel tasks awaiting send_and_wait (the handle) at various points.
        tasks = [asyncio.ensure_future(producer.send_and_wait(topic_name, b"c%d" % i, partition=i % 3))
                 for i in range(60)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # 2. Cancel an await on a handle directly (a wait_for with a tiny timeout).
        handle = await producer.send(topic_name, b"awaited", partition=0)
        try:
            await asyncio.wait_for(asyncio.shield(handle), 0)
        except asyncio.TimeoutError:
            pass
        handle2 = await producer.send(topic_name, b"cancelled", partition=0)
        waiter = asyncio.ensure_future(_await(handle2))
        await asyncio.sleep(0)
        waiter.cancel()
        # 3. Then: everything works, flush completes.
        later = [await producer.send(topic_name, b"later%d" % i, partition=i % 3) for i in range(30)]
        await asyncio.wait_for(producer.flush(), 10)
        assert all(h.done() and h.result().offset >= 0 for h in later)
        assert (await handle).offset >= 0
        assert handle2.done()
    delivered = [r for r in results if isinstance(r, RecordMetadata)]
    cancelled = [r for r in results if isinstance(r, asyncio.CancelledError)]
    assert len(delivered) + len(cancelled) == 60 and len(delivered) >= 30
    # Records whose waiter was cancelled after send() appended them are still delivered (at-least: the
    # producer does not lose or duplicate): read back everything and check there are no duplicates.
    stored = await read_back_async(broker.bootstrap, topic_name, [0, 1, 2], len(delivered) + 32)
    values = [s.value for s in stored]
    assert len(values) == len(set(values))
    assert {b"c%d" % i for i in range(1, 60, 2)} <= set(values)
    assert {b"later%d" % i for i in range(30)} | {b"awaited"} <= set(values)


async def _await(handle):
    return await handle


# -- idempotence on the wire ------------------------------------------------------------------------------

async def _fetch_batches(host, port, topic, partition):
    """The raw record batches of one partition, by a Fetch of our own and the codec's decoder."""
    from aiokprod.connection import BrokerConnection
    from aiokprod.protocol import FetchRequest

    connection = await BrokerConnection.open(host, port)
    try:
        version = connection.version_for(FetchRequest, high=4)
        request = FetchRequest(
            replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
            topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                FetchRequest.FetchPartition(partition=partition, fetch_offset=0, partition_max_bytes=1 << 20)])])
        response = await connection.request(request, version)
    finally:
        connection.close()
    part = response.responses[0].partitions[0]
    assert part.error_code == 0
    return decode_record_batches(bytes(part.records or b""), allow_partial_tail=True)


async def test_idempotent_batches_carry_producer_id_and_sequences(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1, batch_size=512) as producer:
        assert producer.config.idempotent
        for round_ in range(5):
            handles = [await producer.send(topic_name, b"r%d-%d" % (round_, i), partition=0) for i in range(20)]
            await asyncio.gather(*handles)
    batches = await _fetch_batches(broker.host, broker.port, topic_name, 0)
    assert batches
    producer_ids = {b.producer_id for b in batches}
    assert len(producer_ids) == 1 and producer_ids.pop() >= 0
    expected = 0
    for batch in batches:
        assert batch.base_sequence == expected, batches
        expected += len(batch.records)
    assert expected == 100
