"""send()'s fast path, ``RecordAppender``, in both twins: it must do exactly what send()'s general path does.

The reference is the general path itself: the same random records go through a Producer whose fast path is
switched off and one whose fast path is on (both twins), with the same seeded sticky RNG, and every record
must land in the same partition, batch and place, with the same memory accounting. Then the rules one by one:
each reason to decline returns None with nothing changed (no append, no sticky bytes, no memory); the open
batch is forgotten when it fills, is drained, expires or settles; and on the real broker what went through
the fast path is read back where and in the order it was sent.
"""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from aiokprod import Producer, _impl
from aiokprod import producer as producer_module
from aiokprod.accumulator import RecordAccumulator
from aiokprod.cluster import TopicInfo
from aiokprod.codec import decode_record_batches, key_partition, record_size_upper_bound
from aiokprod.handle import BatchCompletion
from aiokprod.partitioner import DefaultPartitioner
from aiokprod.producer import State
from helpers import JAVA_MURMUR2, java_partition, read_back_async
from kip794 import BATCH_HEADER, JavaSticky, record_size

TWINS = [
    "python",
    pytest.param("native", marks=pytest.mark.skipif(_impl.NO_EXTENSIONS, reason="AIOKPROD_NO_EXTENSIONS=1")),
]


@pytest.fixture(params=TWINS)
def twin(request):
    return _impl.python_twin("appender") if request.param == "python" else _impl.native_twin("appender")


class FakeLoop:
    """Enough of a loop for BatchCompletion: call_soon queues, run() runs them."""

    def __init__(self):
        self.callbacks = []

    def call_soon(self, fn, *args, context=None):
        self.callbacks.append((fn, args))

    def run(self):
        while self.callbacks:
            fn, args = self.callbacks.pop(0)
            fn(*args)


def topic_infos(**partitions):
    return {name: TopicInfo(name, {i: 0 for i in range(n)}) for name, n in partitions.items()}


def wired_producer(twin, *, seed=1, fast=True, topics=None, **config):
    """A Producer in state RUNNING with start()'s wiring but no network: metadata cached for ``topics``, the
    accumulator sharing the producer's appender (of ``twin``, its sticky RNG seeded), no sender."""
    config.setdefault("linger_ms", 60_000)
    original = producer_module.RecordAppender
    producer_module.RecordAppender = lambda batch_size: twin.RecordAppender(batch_size, random.Random(seed))
    try:
        producer = Producer("127.0.0.1:1", **config)
    finally:
        producer_module.RecordAppender = original
    loop = FakeLoop()
    producer._topics = topic_infos(**(topics or {"a": 5, "b": 3}))
    cfg = producer.config
    producer._accumulator = RecordAccumulator(
        batch_size=cfg.batch_size, compression=cfg.compression_type, compression_level=cfg.compression_level,
        linger_ms=cfg.linger_ms, buffer_memory=cfg.buffer_memory, delivery_timeout_ms=cfg.delivery_timeout_ms,
        completion_factory=lambda topic, partition: BatchCompletion(loop, topic, partition),
        appender=producer._appender)
    producer._appender.bind(producer._topics, producer._accumulator.waiters, producer._max_record_size,
                            producer._own_partitioner)
    producer._set_state(State.RUNNING)
    producer.fake_loop = loop
    producer.slow_calls = 0
    if not fast:
        # The general path alone: send()/send_and_wait() the class's methods, without the compiled entries.
        producer._fast_append = lambda *args: None
        del producer.send, producer.send_and_wait
    accumulator = producer._accumulator
    general_append = accumulator.append

    def counting_append(*args):  # send()'s general path calls it once per record it handles
        producer.slow_calls += 1
        return general_append(*args)

    accumulator.append = counting_append
    return producer


def drain_all(producer, offset=[0]):
    """What the sender does to every queued batch: freeze, pop, mark drained, then settle it."""
    accumulator = producer._accumulator
    for queue in accumulator.queues.values():
        while queue.batches:
            batch = queue.batches[0]
            batch.freeze(-1, -1, -1, False)
            queue.batches.popleft()
            accumulator.mark_drained(batch)
            accumulator.batch_done(batch)
            batch.completion.resolve(offset[0])
            offset[0] += len(batch.builder)
    producer.fake_loop.run()


def stored(batches):
    """(key, value, headers, timestamp) of every record of the batches, in order."""
    out = []
    for batch in batches:
        for decoded in decode_record_batches(batch.builder.build()):
            out += [(r.key, r.value, tuple(r.headers), r.timestamp_ms) for r in decoded.records]
    return out


# -- the general path is the reference ------------------------------------------------------------------

def random_records(rng, count):
    keys = [b"", b"k", b"key-123", b"another key", None] + list(JAVA_MURMUR2)
    records = []
    for i in range(count):
        topic = rng.choice(["a", "a", "b"])
        kind = rng.random()
        key = None if kind < 0.5 else rng.choice(keys)
        partition = rng.randrange(5 if topic == "a" else 3) if 0.85 < kind < 0.95 else None
        size = rng.choice([0, 1, 10, 100, 100, 100, 700, 3000])
        value = None if rng.random() < 0.05 else bytes([i % 251]) * size
        headers = None
        if rng.random() < 0.1:
            headers = rng.choice([[], [("h", b"v")], (("h", None), (b"raw", b"x" * 30))])
        records.append((topic, value, key, partition, 1_700_000_000_000 + i, headers))
    return records


async def run_records(producer, records, drain_every):
    placed = []
    for i, (topic, value, key, partition, ts, headers) in enumerate(records):
        handle = await producer.send(topic, value, key=key, partition=partition, timestamp_ms=ts,
                                     headers=headers)
        placed.append((handle.completion.topic, handle.completion.partition, handle.index))
        if drain_every and i % drain_every == drain_every - 1:
            drain_all(producer)
            placed.append(("used after drain", producer._accumulator.used))
    per_partition = {tp: stored(queue.batches) for tp, queue in producer._accumulator.queues.items()}
    return placed, per_partition, producer._accumulator.used


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("drain_every", [0, 97])
async def test_fast_path_places_every_record_as_the_general_path(twin, seed, drain_every):
    rng = random.Random(seed)
    records = random_records(rng, 3000)
    # Small batches: the sticky partition switches every few records and batches fill all the time.
    config = dict(batch_size=4096, buffer_memory=1 << 30, seed=seed * 7)
    slow = wired_producer(_impl.python_twin("appender"), fast=False, **config)
    fast = wired_producer(twin, fast=True, **config)
    expected = await run_records(slow, records, drain_every)
    got = await run_records(fast, records, drain_every)
    assert got[0] == expected[0]  # partition and index of every record, memory after every drain
    assert got[1] == expected[1]  # what every open/unsent batch holds, in order
    assert got[2] == expected[2]  # buffer_memory used
    assert slow.slow_calls == len(records)
    # Most records did take the fast path (only new batches, waits and the unusual go the general way).
    assert fast.slow_calls < len(records) // 3, fast.slow_calls
    for topic in ("a", "b"):
        assert fast._appender.sticky_state(topic) == slow._appender.sticky_state(topic)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
async def test_keyless_switching_counts_bytes_appended_as_java_does(twin, fast):
    """KIP-794: 100-byte values at one timestamp take 109 bytes each in a batch (kafka-python's encoder), a
    batch 61 more. With batch_size 1000 a batch holds 8 of them (933 bytes). Java counts what each record added:
    from a fresh partition 61 + 8 x 109 = 933, then the 9th record opens a new batch (+61 +109): 1103, switch.
    Returning to a partition whose batch holds r records, 8 - r fill it, one opens the next batch, and the
    count is again 61 + 9 x 109 after 9 records: every run is 9 records. (Counting each record's upper bound,
    186 bytes with the batch header, switched after 6: batches two-thirds full.)"""
    batch_size, n = 1000, 6
    producer = wired_producer(twin, fast=fast, batch_size=batch_size, buffer_memory=1 << 30, topics={"t": n})
    partitioner = producer._partitioner
    assert isinstance(partitioner, DefaultPartitioner) and partitioner.sticky is producer._appender
    size = record_size(0, 0, None, b"v" * 100)
    assert size == record_size(7, 0, None, b"v" * 100) == 109
    fit = (batch_size - BATCH_HEADER) // size
    assert fit == 8
    run = next(k for k in range(1, 100) if BATCH_HEADER * (1 + (k > fit)) + k * size >= batch_size)
    assert run == fit + 1 == 9
    assert record_size_upper_bound(None, b"v" * 100, None) == 186  # what was counted before
    placed = []
    for _ in range(400):
        expected = partitioner.partition("t", None, n)  # the state the fast path places from
        handle = await producer.send("t", b"v" * 100, timestamp_ms=1_700_000_000_000)
        assert handle.completion.partition == expected
        placed.append(expected)
    runs = [1]
    for previous, current in zip(placed, placed[1:]):
        if current == previous:
            runs[-1] += 1
        else:
            runs.append(1)
    assert runs[:-1] == [run] * (len(runs) - 1) and runs[-1] <= run, runs
    if fast:
        assert producer.slow_calls <= len(runs) + 400 // fit  # a new batch per run and per full batch


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_keyless_sticky_bytes_follow_the_java_model(twin, fast, seed):
    """Records of mixed sizes, timestamps and headers, drained now and then: after every record the sticky
    state is what the Java model (tests/kip794.py, sizes from kafka-python) says, in both paths of send()."""
    batch_size, n = 2000, 5
    producer = wired_producer(twin, fast=fast, seed=seed, batch_size=batch_size, buffer_memory=1 << 30,
                              topics={"t": n})
    partitioner = producer._partitioner
    rng = random.Random(seed)
    java = JavaSticky(batch_size)
    clock, switches = 1_700_000_000_000, 0
    for i in range(1500):
        clock += rng.choice([0, 0, 1, 70, 9000])  # timestamp deltas of 1, 2 and 3 varint bytes
        value = rng.choice([None, b"", b"v" * 10, b"v" * 100, b"v" * 100, b"v" * 700, b"v" * 2500])
        headers = rng.choice([None] * 8 + [[("h", b"x" * rng.randrange(200))], (("a", None), (b"b", b"c"))])
        expected = partitioner.partition("t", None, n)
        handle = await producer.send("t", value, timestamp_ms=clock, headers=headers)
        assert handle.completion.partition == expected
        if java.keyless(expected, clock, value, headers):
            switches += 1
            sticky, counted = producer._appender.sticky_state("t")
            assert sticky != expected and counted == 0, (i, sticky, counted)
        else:
            assert producer._appender.sticky_state("t") == (expected, java.counted), i
        if i % 211 == 210:
            drain_all(producer)
            java.drained()
    assert switches > 100  # the test did exercise switching


async def test_keyed_records_follow_java_murmur2(twin):
    for n in (1, 2, 3, 7, 12, 100):
        producer = wired_producer(twin, buffer_memory=1 << 30, topics={"t": n})
        for _ in range(2):  # the first round opens the batches, the second goes the fast way
            for key in JAVA_MURMUR2:
                handle = await producer.send("t", b"v", key=key)
                assert handle.completion.partition == java_partition(key, n)
        assert producer.slow_calls <= len(JAVA_MURMUR2)
    rng = random.Random(5)
    producer = wired_producer(twin, buffer_memory=1 << 30, topics={"t": 37})
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(0, 40))
        handle = await producer.send("t", b"v", key=key)
        assert handle.completion.partition == key_partition(key, 37)


# -- declining changes nothing ----------------------------------------------------------------------------

def snapshot(producer, topic="a"):
    accumulator = producer._accumulator
    return ([(tp, [(len(b.builder), len(b.completion), b.closed) for b in q.batches])
             for tp, q in sorted(accumulator.queues.items())],
            accumulator.used, producer._appender.sticky_state(topic))


async def open_sticky_batch(producer):
    """Send one keyless record (opening the sticky partition's batch); return that partition."""
    handle = await producer.send("a", b"first", timestamp_ms=1)
    return handle.completion.partition


@pytest.mark.parametrize("case", [
    "disabled", "unknown topic", "topic not str", "metadata dropped", "key not bytes", "value not bytes",
    "partition out of range", "partition negative", "partition huge", "partition bool", "partition float",
    "partition str", "no open batch there", "headers not a list", "header not a pair", "header key not str",
    "header value not bytes", "timestamp float", "timestamp str", "timestamp bool", "timestamp negative",
    "timestamp huge", "too large", "waiter queued", "full",
])
async def test_declines_without_a_trace(twin, case):
    producer = wired_producer(twin, batch_size=1024, buffer_memory=4096, max_request_size=2000)
    sticky = await open_sticky_batch(producer)
    appender = producer._appender
    args = dict(topic="a", value=b"v", key=None, partition=None, timestamp_ms=2, headers=None)
    if case == "disabled":
        appender.enabled = False
    elif case == "unknown topic":
        args["topic"] = "zzz"
    elif case == "topic not str":
        args["topic"] = b"a"
    elif case == "metadata dropped":
        del producer._topics["a"]
    elif case == "key not bytes":
        args["key"] = bytearray(b"k")
    elif case == "value not bytes":
        args["value"] = memoryview(b"v")
    elif case == "partition out of range":
        args["partition"] = 5
    elif case == "partition negative":
        args["partition"] = -1
    elif case == "partition huge":
        args["partition"] = 1 << 80
    elif case == "partition bool":
        args["partition"] = True
    elif case == "partition float":
        args["partition"] = float(sticky)
    elif case == "partition str":
        args["partition"] = str(sticky)
    elif case == "no open batch there":
        args["partition"] = (sticky + 1) % 5
    elif case == "headers not a list":
        args["headers"] = {"h": b"v"}
    elif case == "header not a pair":
        args["headers"] = [("h", b"1"), ("h",)]
    elif case == "header key not str":
        args["headers"] = [(5, b"1")]
    elif case == "header value not bytes":
        args["headers"] = [("h", 5)]
    elif case == "timestamp float":
        args["timestamp_ms"] = 2.0
    elif case == "timestamp str":
        args["timestamp_ms"] = "2"
    elif case == "timestamp bool":
        args["timestamp_ms"] = True
    elif case == "timestamp negative":
        args["timestamp_ms"] = -5
    elif case == "timestamp huge":
        args["timestamp_ms"] = 1 << 63
    elif case == "too large":
        args["value"] = b"x" * 2000
    elif case == "waiter queued":
        # 1024 of 4096 bytes are the open batch's; a waiter for 3500 cannot be granted and stays queued.
        producer._accumulator.enqueue_waiter(3500, asyncio.get_running_loop().create_future())
        assert producer._accumulator.waiters
    elif case == "full":
        args["partition"], args["value"] = sticky, b"x" * 100
        while appender.append("a", b"x" * 100, None, sticky, 3, None) is not None:
            pass
    before = snapshot(producer)
    assert appender.append(*args.values()) is None
    assert snapshot(producer) == before


async def test_bad_arguments_are_declined_and_refused_by_the_general_path(twin):
    producer = wired_producer(twin)
    await open_sticky_batch(producer)
    before = snapshot(producer)
    cases = [
        (dict(headers=[("h", 5)]), TypeError, r"headers\[0\] for topic 'a' is refused: \('h', 5\)"),
        (dict(headers=[("h", b"1"), ("h",)]), TypeError, r"headers\[1\] .*\('h',\)"),
        (dict(headers=[(5, b"v")]), TypeError, r"headers\[0\] .*\(5, b'v'\): header key must be str or bytes"),
        (dict(headers={"h", b"v"}), TypeError, r"headers for topic 'a' must be a list or tuple .* got set"),
        (dict(headers={"h": 5}), TypeError, r"headers for topic 'a': header 'h': value must be bytes or None"),
        (dict(timestamp_ms=-5), ValueError, r"timestamp_ms for topic 'a' must be >= 0 .* got -5"),
        (dict(timestamp_ms=1 << 63), ValueError, r"timestamp_ms .* does not fit"),
        (dict(timestamp_ms="2"), TypeError, r"timestamp_ms for topic 'a' must be an int or None, got str '2'"),
        (dict(timestamp_ms=2.5), TypeError, r"timestamp_ms .* got float 2.5"),
        (dict(timestamp_ms=True), TypeError, r"timestamp_ms .* got bool True"),
        (dict(partition="0"), TypeError, r"partition for topic 'a' must be an int or None, got str '0'"),
        (dict(partition=True), TypeError, r"partition .* got bool True"),
        (dict(partition=0.0), TypeError, r"partition .* got float 0.0"),
    ]
    for kwargs, error, message in cases:
        args = {**dict(topic="a", value=b"v", key=None, partition=None, timestamp_ms=2, headers=None), **kwargs}
        assert producer._appender.append(*args.values()) is None
        with pytest.raises(error, match=message):
            await producer.send("a", b"v", **kwargs)
        assert snapshot(producer) == before


async def test_headers_and_default_timestamp(twin):
    producer = wired_producer(twin, topics={"a": 1})
    await open_sticky_batch(producer)
    appender = producer._appender
    before = int(time.time() * 1000)
    assert appender.append("a", b"now", None, None, None, None) is not None
    after = int(time.time() * 1000)
    assert appender.append("a", b"h", b"k", 0, 7, [("h", b"1"), (b"raw", None)]) is not None
    assert appender.append("a", None, None, 0, 8, (("t", b"2"),)) is not None
    assert appender.append("a", b"e", None, 0, 9, []) is not None
    records = stored(producer._accumulator.queues[("a", 0)].batches)
    assert records[0][:3] == (None, b"first", ())
    assert records[1][:3] == (None, b"now", ()) and before <= records[1][3] <= after
    assert records[2] == (b"k", b"h", (("h", b"1"), ("raw", None)), 7)
    assert records[3] == (None, None, (("t", b"2"),), 8)
    assert records[4] == (None, b"e", (), 9)
    assert producer.slow_calls == 1


# -- the open batch -----------------------------------------------------------------------------------------

async def test_open_batch_follows_the_queue(twin):
    producer = wired_producer(twin, batch_size=1024, topics={"a": 1})
    appender, accumulator = producer._appender, producer._accumulator
    queue_of = lambda: accumulator.queues[("a", 0)]  # noqa: E731
    await producer.send("a", b"x", partition=0)
    first = queue_of().batches[-1]
    assert appender.open_batch("a", 0) is first
    # Full: the fast path declines, the general path closes it and opens the next one.
    while (await producer.send("a", b"x" * 100, partition=0)).completion is first.completion:
        pass
    second = queue_of().batches[-1]
    assert first.closed and appender.open_batch("a", 0) is second
    # Drained (as the sender does it): forgotten, nothing more goes into it.
    drain_all(producer)
    assert appender.open_batch("a", 0) is None
    assert appender.append("a", b"late", None, 0, 1, None) is None
    assert len(second.builder) == len(second.completion)
    # Requeued for a retry into an empty queue: the tail again, but closed, and not open for the fast path.
    handle = await producer.send("a", b"y", partition=0)
    third = queue_of().batches[-1]
    third.freeze(-1, -1, -1, False)
    queue_of().batches.popleft()
    accumulator.mark_drained(third)
    accumulator.requeue(third, 0.0)
    assert appender.open_batch("a", 0) is None and appender.append("a", b"z", None, 0, 1, None) is None
    assert len(third.builder) == 1 and handle.index == 0
    # Expired: forgotten.
    fourth_handle = await producer.send("a", b"w", partition=0)
    assert appender.open_batch("a", 0) is fourth_handle_batch(queue_of(), fourth_handle)
    for batch in accumulator.expired(float("inf")):
        accumulator.batch_done(batch)
    assert appender.open_batch("a", 0) is None and not queue_of().batches


def fourth_handle_batch(queue, handle):
    return next(b for b in queue.batches if b.completion is handle.completion)


async def test_a_queue_changed_behind_the_accumulators_back_is_noticed(twin):
    producer = wired_producer(twin, topics={"a": 1})
    await producer.send("a", b"x", partition=0)
    batch = producer._accumulator.queues[("a", 0)].batches.popleft()  # no mark_drained, no batch_done
    assert producer._appender.open_batch("a", 0) is batch
    assert producer._appender.append("a", b"y", None, 0, 1, None) is None
    assert len(batch.builder) == 1


async def test_fast_path_off_when_not_running_or_with_interceptors_serializers_or_foreign_partitioners(
        twin):
    producer = wired_producer(twin)
    assert producer._appender.enabled
    producer._sender_failed()
    assert not producer._appender.enabled
    producer = wired_producer(twin, value_serializer=lambda v: v)
    assert not producer._appender.enabled
    producer = wired_producer(twin, partitioner="round_robin")
    assert producer._appender.enabled and not producer._appender.own_partitioner
    await producer.send("a", b"x", partition=2)
    assert producer._appender.append("a", b"y", None, 2, 1, None) is not None
    assert producer._appender.append("a", b"y", None, None, 1, None) is None
    assert producer._appender.append("a", b"y", b"k", None, 1, None) is None

    class Mine:
        def partition(self, topic, key, n):
            return 0

        def record_appended(self, *args):
            pass

    producer = wired_producer(twin, partitioner=Mine())
    assert not producer._appender.enabled


def test_sticky_state_api_matches_the_old_partitioner(twin):
    """The former DefaultPartitioner's dict-of-lists state, kept here as the reference."""
    class Reference:
        def __init__(self, batch_size, rng):
            self.batch_size, self.rng, self.sticky = batch_size, rng, {}

        def partition(self, topic, n):
            state = self.sticky.get(topic)
            if state is None or state[0] >= n:
                state = self.sticky[topic] = [self.rng.randrange(n), 0]
            return state[0]

        def record_appended(self, topic, partition, num_bytes, n):
            state = self.sticky.get(topic)
            if state is None or state[0] != partition:
                return
            state[1] += num_bytes
            if state[1] >= self.batch_size:
                state[1] = 0
                if n > 1:
                    choice = self.rng.randrange(n - 1)
                    state[0] = choice if choice < partition else choice + 1

    rng = random.Random(9)
    reference = Reference(500, random.Random(3))
    appender = twin.RecordAppender(500, random.Random(3))
    for _ in range(5000):
        topic = rng.choice("xyz")
        n = rng.choice([1, 2, 5, 5, 5, 8])
        if rng.random() < 0.5:
            assert appender.sticky_partition(topic, n) == reference.partition(topic, n)
        else:
            partition, size, m = rng.randrange(8), rng.randrange(300), rng.choice([1, 5, 8])
            appender.record_appended(topic, partition, size, m)
            reference.record_appended(topic, partition, size, m)
        for name in "xyz":
            state = reference.sticky.get(name)
            assert appender.sticky_state(name) == (None if state is None else tuple(state))


# -- on the real broker -------------------------------------------------------------------------------------

async def test_fast_path_records_read_back_in_place_and_order(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=5, batch_size=2048) as producer:
        n = len(await producer.partitions_for(topic_name))
        sent = []
        for i in range(600):
            key = None if i % 3 else b"key-%d" % (i % 7)
            partition = 1 if i % 10 == 5 else None
            handle = await producer.send(topic_name, b"%d" % i, key=key, partition=partition)
            sent.append((handle, key, partition))
            if i % 150 == 149:
                await producer.flush()  # drains the open batches: later records need new ones
        metas = await asyncio.gather(*(h for h, _, _ in sent))
    for (_, key, partition), meta in zip(sent, metas):
        if partition is not None:
            assert meta.partition == partition
        elif key is not None:
            assert meta.partition == key_partition(key, n)
    stored_records = await read_back_async(broker.bootstrap, topic_name, range(n), len(sent))
    assert len(stored_records) == len(sent)
    by_value = {s.value: s for s in stored_records}
    for i, meta in enumerate(metas):
        record = by_value[b"%d" % i]
        assert (record.partition, record.offset) == (meta.partition, meta.offset)
    for p in range(n):  # per partition, offsets follow send order
        values = [int(s.value) for s in sorted(stored_records, key=lambda s: s.offset) if s.partition == p]
        assert values == sorted(values)
