"""Bad input, dead brokers and full buffers: the producer fails fast and clearly, never hangs, and stays usable.

After every refused send a following send succeeds. A broker that dies after start makes sends fail within
``delivery_timeout_ms`` and ``stop()`` return within its timeout, leaving no task behind. ``buffer_memory``
is never exceeded, blocked senders get through in FIFO order, and cancelling them corrupts nothing.
"""
from __future__ import annotations

import asyncio
import enum

import pytest

from aiokprod import Producer, errors
from aiokprod.testing import free_port
from helpers import no_tasks_left, read_back_async
from proxy_fixtures import kafka_proxy  # noqa: F401

# Generous "nothing hangs" bound, never a performance claim.
NO_HANG = 20.0


async def _still_usable(producer, topic):
    handle = await asyncio.wait_for(producer.send(topic, b"after the error", partition=0), NO_HANG)
    await asyncio.wait_for(producer.flush(), NO_HANG)  # some tests linger for a minute
    meta = handle.result()
    assert meta.topic == topic and meta.offset >= 0


# -- bad input --------------------------------------------------------------------------------------------

async def test_record_over_max_request_size(broker, topic_name):
    async with Producer(broker.bootstrap, max_request_size=1000, linger_ms=1) as producer:
        with pytest.raises(errors.RecordTooLargeError, match=r"is \d+ bytes serialized, over the limit of 1000") as info:
            await producer.send(topic_name, value=b"x" * 2000, partition=0)
        assert f"{topic_name}-0" in str(info.value)
        size = int(str(info.value).split(" is ")[1].split()[0])
        assert size > 2000
        await _still_usable(producer, topic_name)
        assert producer.metrics()["buffer_used_bytes"] == 0  # nothing reserved by the refused record


async def test_record_over_buffer_memory(broker, topic_name):
    async with Producer(broker.bootstrap, buffer_memory=4096, batch_size=1024, linger_ms=1) as producer:
        with pytest.raises(errors.RecordTooLargeError, match="buffer_memory=4096"):
            await producer.send(topic_name, value=b"x" * 5000, partition=0)
        await _still_usable(producer, topic_name)


@pytest.mark.parametrize("value", [123, "text", 1.5, {"a": 1}, [b"x"]], ids=["int", "str", "float", "dict", "list"])
async def test_wrong_value_type(broker, topic_name, value):
    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        with pytest.raises(TypeError, match=type(value).__name__):
            await producer.send(topic_name, value=value, partition=0)
        with pytest.raises(TypeError):
            await producer.send(topic_name, value=b"v", key=value, partition=0)
        await _still_usable(producer, topic_name)
        assert producer.metrics()["buffer_used_bytes"] == 0


async def test_bad_headers_and_topic(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        with pytest.raises(TypeError):
            await producer.send(topic_name, value=b"v", partition=0, headers=[("k", 5)])
        with pytest.raises(TypeError):
            await producer.send(topic_name, value=b"v", partition=0, headers="nope")
        with pytest.raises(TypeError):
            await producer.send(b"bytes-topic", value=b"v")
        with pytest.raises(TypeError):
            await producer.send("", value=b"v")
        await _still_usable(producer, topic_name)
        assert producer.metrics()["buffer_used_bytes"] == 0


async def test_unknown_topic_without_auto_create(broker, topic_name):
    async with Producer(broker.bootstrap, allow_auto_create_topics=False, max_block_ms=300,
                        linger_ms=1) as producer:
        # It waited max_block_ms for the topic to appear (the message says so), and the cause is the
        # broker's answer that it does not know the topic.
        with pytest.raises(errors.KafkaTimeoutError,
                           match=rf"topic '{topic_name}' not present in metadata .*\(max_block_ms=300\)") as info:
            await asyncio.wait_for(producer.send(topic_name, value=b"v"), NO_HANG)
        assert isinstance(info.value.__cause__, errors.UnknownTopicOrPartitionError), repr(info.value.__cause__)
        # Still usable for a topic that exists (the session broker auto-creates for other producers).
        async with Producer(broker.bootstrap, linger_ms=1) as other:
            await other.send_and_wait(topic_name + "-exists", b"create it")
        meta = await asyncio.wait_for(producer.send_and_wait(topic_name + "-exists", b"v", partition=0), NO_HANG)
        assert meta.offset >= 0


@pytest.mark.parametrize("partition", [4, 99, -1])
async def test_partition_out_of_range(broker, topic_name, partition):
    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        assert len(await producer.partitions_for(topic_name)) == 4  # Tansu auto-creates 4
        with pytest.raises(ValueError, match=rf"partition {partition}\b.*{topic_name}"):
            await producer.send(topic_name, value=b"v", partition=partition)
        await _still_usable(producer, topic_name)


async def test_partitioner_out_of_range_is_refused(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1, partitioner=lambda t, k, parts: len(parts)) as producer:
        with pytest.raises(ValueError, match=topic_name):
            await producer.send(topic_name, value=b"v")
        await _still_usable(producer, topic_name)


# Each bad argument once where send()'s fast path would otherwise take the record (an open batch on the
# partition, or on the sticky one for keyless records): it must decline, and the general path refuse by name.
BAD_ARGUMENTS = [
    ("timestamp negative", dict(timestamp_ms=-5), ValueError, r"timestamp_ms for topic '.*' must be >= 0 .*got -5"),
    ("timestamp int64 overflow", dict(timestamp_ms=1 << 63), ValueError, r"timestamp_ms .*does not fit .*int64"),
    ("timestamp str", dict(timestamp_ms="1700000000000"), TypeError,
     r"timestamp_ms for topic '.*' must be an int or None, got str '1700000000000'"),
    ("timestamp float", dict(timestamp_ms=1.7e12), TypeError, r"timestamp_ms .*got float 1700000000000.0"),
    ("timestamp bool", dict(timestamp_ms=True), TypeError, r"timestamp_ms .*got bool True"),
    ("partition str", dict(partition="0"), TypeError, r"partition for topic '.*' must be an int or None, got str '0'"),
    ("partition float", dict(partition=0.0), TypeError, r"partition .*got float 0.0"),
    ("partition bool", dict(partition=False), TypeError, r"partition .*got bool False"),
    ("headers not a list", dict(headers={"k": b"v"}), TypeError,
     r"headers for topic '.*' must be a list or tuple of \(str, bytes \| None\) pairs, got dict"),
    ("header value int", dict(headers=[("ok", b"1"), ("k", 5)]), TypeError, r"headers\[1\] .*\('k', 5\)"),
    ("header not a pair", dict(headers=[("k",)]), TypeError, r"headers\[0\] .*\('k',\)"),
    ("header key int", dict(headers=[(7, b"v")]), TypeError, r"headers\[0\] .*\(7, b'v'\): header key"),
]


@pytest.mark.parametrize("keyless", [False, True], ids=["partition-0", "keyless"])
async def test_bad_arguments_are_refused_by_name_and_nothing_is_written(broker, topic_name, keyless):
    good = dict(timestamp_ms=1_700_000_000_000) if keyless else dict(partition=0, timestamp_ms=1_700_000_000_000)
    async with Producer(broker.bootstrap, linger_ms=60_000) as producer:
        n = len(await producer.partitions_for(topic_name))
        sent = [b"good"]
        partition = (await producer.send(topic_name, sent[0], **good)).completion.partition
        for name, bad, error, message in BAD_ARGUMENTS:
            if keyless and "partition" in bad:
                continue
            # The fast path would take a plain record right now: the partition's batch is open.
            assert producer._appender.open_batch(topic_name, partition) is not None
            with pytest.raises(error, match=message):
                await producer.send(topic_name, b"bad: " + name.encode(), **{**good, **bad})
            sent.append(b"good after " + name.encode())
            await producer.send(topic_name, sent[-1], **good)
        await asyncio.wait_for(producer.flush(), NO_HANG)
        assert producer.metrics()["buffer_used_bytes"] == 0
    stored = await read_back_async(broker.bootstrap, topic_name, range(n), len(sent))
    assert [s.value for s in stored] == sent  # one partition, in order; no refused record among them
    assert {(s.partition, s.timestamp) for s in stored} == {(partition, 1_700_000_000_000)}


async def test_integer_types_are_taken_for_partition_and_timestamp(broker, topic_name):
    """Int subclasses (and other operator.index types) are taken as their value; only bool is refused."""
    class Partition(enum.IntEnum):
        THIRD = 2

    class Millis(int):
        pass

    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        meta = await producer.send_and_wait(topic_name, b"v", partition=Partition.THIRD,
                                            timestamp_ms=Millis(1_700_000_000_123))
    assert meta.partition == 2 and meta.timestamp == 1_700_000_000_123
    stored = await read_back_async(broker.bootstrap, topic_name, [2], 1)
    assert [(s.partition, s.value, s.timestamp) for s in stored] == [(2, b"v", 1_700_000_000_123)]


async def test_send_after_stop(broker, topic_name):
    producer = Producer(broker.bootstrap, linger_ms=1)
    await producer.start()
    await producer.send_and_wait(topic_name, b"before", partition=0)
    await producer.stop()
    with pytest.raises(errors.ProducerClosedError):
        await producer.send(topic_name, b"after")
    with pytest.raises(errors.ProducerClosedError):
        await producer.flush()
    await producer.stop()  # a second stop is harmless
    # A closed producer cannot be restarted, but a new one works.
    with pytest.raises(errors.IllegalStateError):
        await producer.start()
    async with Producer(broker.bootstrap, linger_ms=1) as again:
        await _still_usable(again, topic_name)


async def test_send_before_start():
    producer = Producer("127.0.0.1:1")
    with pytest.raises(errors.ProducerClosedError):
        await producer.send("t", b"v")
    await producer.stop()


async def test_start_against_dead_address_fails_fast():
    producer = Producer(f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    with pytest.raises(errors.KafkaConnectionError):
        await asyncio.wait_for(producer.start(), 30)
    assert await no_tasks_left() == set()
    with pytest.raises(errors.ProducerClosedError):
        await producer.send("t", b"v")
    await producer.stop()


# -- broker down ------------------------------------------------------------------------------------------

async def test_broker_down_fails_within_delivery_timeout(fresh_broker, topic_name):
    producer = Producer(fresh_broker.bootstrap, linger_ms=1, delivery_timeout_ms=2000, request_timeout_ms=1000,
                        retry_backoff_ms=50, max_block_ms=1000)
    await producer.start()
    try:
        await producer.send_and_wait(topic_name, b"up", partition=0)
        await asyncio.to_thread(fresh_broker.stop)  # not on the loop: the producer keeps running meanwhile
        with pytest.raises(errors.KafkaTimeoutError, match=f"{topic_name}-0"):
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"down", partition=0), NO_HANG)
        # Several records in flight or queued: all fail, none hangs.
        handles = [await producer.send(topic_name, b"down%d" % i, partition=i % 4) for i in range(20)]
        results = await asyncio.wait_for(asyncio.gather(*handles, return_exceptions=True), NO_HANG)
        assert all(isinstance(r, errors.KafkaTimeoutError) for r in results), results
        assert producer.metrics()["buffer_used_bytes"] == 0
        pending = await producer.send(topic_name, b"never", partition=1)
    finally:
        await asyncio.wait_for(producer.stop(timeout=1), NO_HANG)
    assert pending.done()
    assert isinstance(pending.exception(), (errors.ProducerClosedError, errors.KafkaTimeoutError))
    assert await no_tasks_left() == set()


async def test_broker_down_before_first_send_of_new_topic(fresh_broker, topic_name):
    producer = Producer(fresh_broker.bootstrap, linger_ms=1, delivery_timeout_ms=2000, request_timeout_ms=1000,
                        max_block_ms=800)
    await producer.start()
    await asyncio.to_thread(fresh_broker.stop)  # not on the loop: the producer keeps running meanwhile
    with pytest.raises(errors.KafkaError):
        await asyncio.wait_for(producer.send(topic_name, b"v"), NO_HANG)
    await asyncio.wait_for(producer.stop(timeout=1), NO_HANG)
    assert await no_tasks_left() == set()


# -- memory -----------------------------------------------------------------------------------------------

BUFFER = 8192


async def test_buffer_memory_bounded_with_a_slow_broker(kafka_proxy, broker, topic_name):
    kafka_proxy.delay_responses(0.05, api="Produce", count=None)
    seen = []
    async with Producer(kafka_proxy.bootstrap, buffer_memory=BUFFER, batch_size=1024, linger_ms=1,
                        max_block_ms=int(NO_HANG * 1000)) as producer:
        stop_sampling = asyncio.Event()

        async def sample():
            while not stop_sampling.is_set():
                seen.append(producer.metrics()["buffer_used_bytes"])
                await asyncio.sleep(0.001)

        sampler = asyncio.ensure_future(sample())

        async def sender(worker):
            handles = []
            for i in range(40):
                handles.append(await producer.send(topic_name, b"w%d-%d-" % (worker, i) + b"x" * 200))
                seen.append(producer.metrics()["buffer_used_bytes"])
            return await asyncio.gather(*handles)

        results = await asyncio.wait_for(asyncio.gather(*(sender(w) for w in range(5))), 60)
        stop_sampling.set()
        await sampler
        assert producer.metrics()["buffer_used_bytes"] == 0
        metrics = producer.metrics()
    kafka_proxy.clear_faults()
    assert max(seen) <= BUFFER
    assert max(seen) > BUFFER // 2  # the buffer really filled up: the bound was tested
    assert metrics["buffer_total_bytes"] == BUFFER
    metas = [m for batch in results for m in batch]
    stored = await read_back_async(broker.bootstrap, topic_name, range(4), 200)
    assert len(stored) == 200 == len({(m.partition, m.offset) for m in metas})


async def _fill_buffer(producer, topic, size=1000):
    """Append records to partition 0 (lingering for a minute) until the buffer is used up; return their
    handles. A new batch reserves batch_size (here the whole buffer), so after this any record that needs a
    new batch (another partition) blocks, while records that fit the open batch still go in."""
    handles = []
    while producer.metrics()["buffer_available_bytes"] >= size + 200:
        handles.append(await producer.send(topic, b"f" * size, partition=0))
    return handles


async def test_blocked_senders_get_through_in_fifo_order(broker, topic_name):
    async with Producer(broker.bootstrap, buffer_memory=BUFFER, batch_size=BUFFER, linger_ms=60_000,
                        max_block_ms=int(NO_HANG * 1000)) as producer:
        await producer.partitions_for(topic_name)
        filler = await _fill_buffer(producer, topic_name)
        order = []

        async def blocked(i):
            handle = await producer.send(topic_name, b"%04d" % i + b"b" * 996, partition=1)
            order.append(i)
            return handle

        tasks = []
        for i in range(30):
            tasks.append(asyncio.ensure_future(blocked(i)))
            await asyncio.sleep(0)  # each task queues before the next one starts
        await asyncio.sleep(0.05)
        assert order == []  # all blocked on the full buffer
        async def drain():
            while not all(t.done() for t in tasks):
                await producer.flush(NO_HANG)  # frees memory; the granted waiters fill it again, and so on
                assert producer.metrics()["buffer_used_bytes"] <= BUFFER
                await asyncio.sleep(0)

        await asyncio.wait_for(drain(), NO_HANG)  # a guard against a hang only
        handles = await asyncio.gather(*tasks)
        await producer.flush()
        assert order == list(range(30))
        assert all(h.result().offset >= 0 for h in handles + filler)
    stored = await read_back_async(broker.bootstrap, topic_name, [1], 30)
    assert [int(s.value[:4]) for s in stored] == list(range(30))  # and stored in that order


async def test_max_block_ms_on_full_buffer(broker, topic_name):
    async with Producer(broker.bootstrap, buffer_memory=BUFFER, batch_size=BUFFER, linger_ms=60_000,
                        max_block_ms=200) as producer:
        await producer.partitions_for(topic_name)
        filler = await _fill_buffer(producer, topic_name)
        with pytest.raises(errors.KafkaTimeoutError, match=r"no room for a \d+-byte record.*max_block_ms \(200 ms\)"):
            await asyncio.wait_for(producer.send(topic_name, b"z" * 1000, partition=1), NO_HANG)
        assert producer.metrics()["buffer_used_bytes"] <= BUFFER
        await producer.flush()
        assert all(h.result().offset >= 0 for h in filler)
        assert producer.metrics()["buffer_used_bytes"] == 0
        await _still_usable(producer, topic_name)


async def test_cancelled_blocked_senders_leave_no_trace(broker, topic_name):
    async with Producer(broker.bootstrap, buffer_memory=BUFFER, batch_size=BUFFER, linger_ms=60_000,
                        max_block_ms=int(NO_HANG * 1000)) as producer:
        await producer.partitions_for(topic_name)
        await _fill_buffer(producer, topic_name)
        tasks = [asyncio.ensure_future(producer.send(topic_name, b"c%d" % i + b"c" * 998, partition=2))
                 for i in range(10)]
        await asyncio.sleep(0.02)
        for task in tasks[::2]:
            task.cancel()
        # Cancel one just as memory frees up too: flush, then cancel before it resumes.
        flush = asyncio.ensure_future(producer.flush(NO_HANG))
        await asyncio.sleep(0)
        tasks[1].cancel()
        await flush
        while not all(t.done() for t in tasks):
            await producer.flush(NO_HANG)
            await asyncio.sleep(0)
        # 0, 2, 4, 6 and 8 were cancelled while blocked; 1 was cancelled as memory freed (it may have got
        # its memory and appended first, then its cancel() came too late). Their neighbours went on.
        assert all(tasks[i].cancelled() for i in (0, 2, 4, 6, 8))
        survivors = [i for i, t in enumerate(tasks) if not t.cancelled()]
        assert survivors in ([3, 5, 7, 9], [1, 3, 5, 7, 9]), survivors
        handles = [tasks[i].result() for i in survivors]
        await producer.flush(NO_HANG)
        assert producer.metrics()["buffer_used_bytes"] == 0  # cancelled reservations were given back
        metas = [h.result() for h in handles]
        assert all(m.partition == 2 and m.offset >= 0 for m in metas)
        await _still_usable(producer, topic_name)
    # In the log: the survivors' records, in their order, at the offsets they were told; no cancelled one.
    stored = await read_back_async(broker.bootstrap, topic_name, [2], len(survivors))
    assert [s.value for s in stored] == [b"c%d" % i + b"c" * 998 for i in survivors]
    assert [s.offset for s in stored] == [m.offset for m in metas]
