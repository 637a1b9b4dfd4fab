"""Where records go: partitioners against the real broker, and leaders through the 3-broker KafkaProxy.

Keyed records land where the Java client puts them (partition = (murmur2(key) & 0x7fffffff) % n, with the Java
test vectors as the oracle, not our own murmur2); keyless ones spread (uniform sticky); round robin, a custom
callable and an explicit partition are honoured. Through the proxy, each partition's batches go to its
leader's port, and when leaders move (NOT_LEADER_OR_FOLLOWER) the producer refreshes metadata and follows,
losing and duplicating nothing (read back with confluent-kafka from the real broker).
"""
from __future__ import annotations

import asyncio

from aiokprod import Producer
from helpers import java_partition, JAVA_MURMUR2, read_back_async
from kip794 import JavaSticky
from log_reader import read_batches
from proxy_fixtures import kafka_proxy  # noqa: F401

async def test_keyed_records_land_where_java_puts_them(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1) as producer:
        n = len(await producer.partitions_for(topic_name))
        handles = [await producer.send(topic_name, value=b"%d" % i, key=key)
                   for i in range(5) for key in JAVA_MURMUR2]
        metas = await asyncio.gather(*handles)
    expected = {key: java_partition(key, n) for key in JAVA_MURMUR2}
    assert len(set(expected.values())) > 1  # the vectors do exercise several partitions
    keys = [key for _ in range(5) for key in JAVA_MURMUR2]
    assert [m.partition for m in metas] == [expected[k] for k in keys]
    stored = await read_back_async(broker.bootstrap, topic_name, range(n), len(keys))
    assert len(stored) == len(keys)
    for s in stored:
        assert s.partition == expected[s.key]
    # Order per key is send order.
    for key in JAVA_MURMUR2:
        assert [s.value for s in stored if s.key == key] == [b"%d" % i for i in range(5)]


async def test_keyless_records_spread_over_partitions(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1, batch_size=512) as producer:
        n = len(await producer.partitions_for(topic_name))
        handles = [await producer.send(topic_name, value=b"v" * 100) for _ in range(300)]
        metas = await asyncio.gather(*handles)
    counts = {p: 0 for p in range(n)}
    for m in metas:
        counts[m.partition] += 1
    # 4 records of 109 bytes fill a 512-byte batch, the 5th opens the next: a switch every 5 records (KIP-794,
    # see test_keyless_cadence_is_javas), ~60 switches, each to another partition chosen uniformly: all 4 are
    # used (the chance that one is never picked is about 4 * (2/3)^60).
    assert all(c > 0 for c in counts.values()), counts
    # Sticky: consecutive records mostly stay together (not one record per partition in turn).
    changes = sum(1 for a, b in zip(metas, metas[1:]) if a.partition != b.partition)
    assert changes < len(metas) // 2


async def test_round_robin_partitioner(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=1, partitioner="round_robin") as producer:
        n = len(await producer.partitions_for(topic_name))
        handles = [await producer.send(topic_name, value=b"%d" % i, key=b"same key") for i in range(4 * n)]
        metas = await asyncio.gather(*handles)
    assert [m.partition for m in metas] == [i % n for i in range(4 * n)]


async def test_custom_callable_partitioner_and_explicit_partition(broker, topic_name):
    calls = []

    def last_partition(topic, key, partitions):
        calls.append((topic, key, list(partitions)))
        return partitions[-1]

    async with Producer(broker.bootstrap, linger_ms=1, partitioner=last_partition) as producer:
        n = len(await producer.partitions_for(topic_name))
        custom = await producer.send_and_wait(topic_name, value=b"custom", key=b"k1")
        explicit = await producer.send_and_wait(topic_name, value=b"explicit", key=b"k1", partition=0)
    assert calls == [(topic_name, b"k1", list(range(n)))]  # not called for the explicit partition
    assert custom.partition == n - 1 and explicit.partition == 0
    stored = await read_back_async(broker.bootstrap, topic_name, range(n), 2)
    assert {(s.partition, s.offset, s.value) for s in stored} == {
        (n - 1, custom.offset, b"custom"), (0, explicit.offset, b"explicit")}


# -- several brokers, through the proxy ------------------------------------------------------------------

async def _send_round(producer, topic, tag, n_partitions, per_partition):
    handles = [await producer.send(topic, value=b"%s-%d-%d" % (tag, p, i), partition=p)
               for i in range(per_partition) for p in range(n_partitions)]
    return await asyncio.wait_for(asyncio.gather(*handles), 30)


async def test_batches_go_to_each_partitions_leader(kafka_proxy, broker, topic_name):
    async with Producer(kafka_proxy.bootstrap, linger_ms=1) as producer:
        n = len(await producer.partitions_for(topic_name))
        metas = await _send_round(producer, topic_name, b"a", n, 20)
    assert n == 4
    for p in range(n):
        leader = kafka_proxy.default_leader(topic_name, p)
        assert kafka_proxy.produce_count(topic_name, p, node_id=leader) >= 1
        assert kafka_proxy.produce_count(topic_name, p) == kafka_proxy.produce_count(topic_name, p, node_id=leader)
    assert kafka_proxy.events["not_leader"] == 0
    # Three brokers really were used (partitions 0 and 3 share node 1).
    assert {node for node in kafka_proxy.node_ids if kafka_proxy.count("Produce", node_id=node)} == {1, 2, 3}
    stored = await read_back_async(broker.bootstrap, topic_name, range(n), len(metas))
    assert {(s.partition, s.offset) for s in stored} == {(m.partition, m.offset) for m in metas}


async def test_leader_move_is_followed_without_loss_or_duplicates(kafka_proxy, broker, topic_name):
    async with Producer(kafka_proxy.bootstrap, linger_ms=1, retry_backoff_ms=20) as producer:
        n = len(await producer.partitions_for(topic_name))
        before = await _send_round(producer, topic_name, b"before", n, 10)
        # Every partition moves to the next broker; the producer's metadata is now stale.
        kafka_proxy.set_leader_fn(lambda topic, p: (p + 1) % 3 + 1)
        kafka_proxy.reset_counters()
        after = await _send_round(producer, topic_name, b"after", n, 10)
        # And once more while records are in flight.
        pending = [await producer.send(topic_name, value=b"moving-%d" % i, partition=i % n) for i in range(40)]
        kafka_proxy.set_leader_fn(lambda topic, p: 2)
        moving = await asyncio.wait_for(asyncio.gather(*pending), 30)
        tail = await _send_round(producer, topic_name, b"tail", n, 5)
        metrics = producer.metrics()
    assert kafka_proxy.events["not_leader"] >= 1  # the stale leaders said so
    assert metrics["retries"] >= 1
    # After the last move every partition's writes end at node 2.
    for p in range(n):
        assert kafka_proxy.produce_count(topic_name, p, node_id=2) >= 1
    metas = before + after + moving + tail
    assert len({(m.partition, m.offset) for m in metas}) == len(metas)
    stored = await read_back_async(broker.bootstrap, topic_name, range(n), len(metas))
    assert len(stored) == len(metas)
    assert {(s.partition, s.offset) for s in stored} == {(m.partition, m.offset) for m in metas}
    values = [s.value for s in stored]
    assert len(values) == len(set(values))
    # Per partition, the log is in send order.
    for p in range(n):
        mine = [s.value for s in stored if s.partition == p]
        sent = [v for tag, count in ((b"before", 10), (b"after", 10)) for v in
                (b"%s-%d-%d" % (tag, p, i) for i in range(count))]
        sent += [b"moving-%d" % i for i in range(40) if i % n == p]
        sent += [b"tail-%d-%d" % (p, i) for i in range(5)]
        assert mine == sent


async def test_keyed_records_do_not_move_the_sticky_partition(broker, topic_name):
    """KIP-794: only records the sticky partitioner placed (keyless, no partition given) count toward its
    switch; keyed records landing on the same partition do not."""
    from aiokprod.codec import key_partition

    async with Producer(broker.bootstrap, batch_size=1024, linger_ms=60_000) as producer:
        n = len(await producer.partitions_for(topic_name))
        first = await producer.send(topic_name, b"k0" + b"s" * 98)
        await producer.flush()
        sticky = first.result().partition
        keys = [k for k in (b"key-%d" % i for i in range(500)) if key_partition(k, n) == sticky][:40]
        keyed = [await producer.send(topic_name, b"v" * 100, key=k) for k in keys]  # ~5 KB on the sticky one
        after = await producer.send(topic_name, b"k1" + b"s" * 98)
        await producer.flush()
        assert {h.result().partition for h in keyed} == {sticky}
        assert after.result().partition == sticky  # keyed bytes did not trigger a switch
        moved = [await producer.send(topic_name, b"s" * 100) for _ in range(12)]  # keyless bytes do
        await producer.flush()
        assert len({h.result().partition for h in moved}) > 1


async def test_keyless_cadence_is_javas(broker, topic_name):
    """KIP-794 as the Java client counts: keyless records stay on a partition until the bytes they added to
    its batches (a new batch's header included) reach batch_size. The partitions the broker reported and the
    batches in its log are replayed through tests/kip794.py (record sizes from kafka-python's encoder): every
    switch happens on the record the model switches after, and every batch holds what the model put in it."""
    import random

    rng = random.Random(794)
    batch_size, timestamp = 2048, 1_700_000_000_000
    values = [b"v" * rng.choice([0, 10, 10, 60, 100, 300]) for _ in range(1500)]
    async with Producer(broker.bootstrap, batch_size=batch_size, linger_ms=60_000,
                        buffer_memory=64 << 20) as producer:
        n = len(await producer.partitions_for(topic_name))
        # No await that yields in this loop (metadata is cached, memory plentiful): the sender drains
        # nothing until flush(), so every batch is as the appends left it.
        handles = [await producer.send(topic_name, value, timestamp_ms=timestamp) for value in values]
        await asyncio.wait_for(producer.flush(), 30)
    partitions = [h.result().partition for h in handles]
    java = JavaSticky(batch_size)
    switches = 0
    for i, (partition, value) in enumerate(zip(partitions, values)):
        switched = java.keyless(partition, timestamp, value)
        if i + 1 < len(values):
            assert switched == (partitions[i + 1] != partition), (i, partition, partitions[i + 1])
        switches += switched
    assert switches > 20  # ~1500 x 85 bytes / 2048
    for p in range(n):
        batches = await read_batches(broker.host, broker.port, topic_name, p)
        assert [len(b.records) for b in batches] == java.batches.get(p, []), p
