"""Metadata that changes under a running producer, shown by the proxy (Tansu can neither add partitions nor
make a deleted topic look deleted to Produce): a topic's partition count grows, a topic is deleted and comes
back; and a Produce response that leaves out one of the partitions it was asked about."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer, errors
from aiokprod.admin import create_topics
from aiokprod.codec import key_partition
from fault_checks import Ledger, check_log, duplicates, read_log
from proxy_fixtures import kafka_proxy  # noqa: F401

GUARD = 30.0  # hang guard only


async def test_partition_count_grows_mid_stream(broker, kafka_proxy, topic_name):
    """The topic has 6 partitions but Metadata shows 2, then all 6 while keyed records keep flowing. Each
    record lands where murmur2 puts its key for the partition count the producer knew when it was sent:
    2 before the refresh, 6 after it (and every partition gets records); nothing is lost or reordered."""
    proxy = kafka_proxy
    await create_topics(broker.bootstrap, {topic_name: 6})
    proxy.limit_partitions(topic_name, 2)
    ledger = Ledger()
    known = {}  # index -> partition count the producer knew when the record was sent

    async def send_some(producer, count):
        for _ in range(count):
            index = len(ledger.records)
            known[index] = len(await producer.partitions_for(topic_name))
            ledger.add(await producer.send(topic_name, ledger.next_value(), key=b"key-%d" % (index % 97)))
        await asyncio.sleep(0.005)

    async with Producer(proxy.bootstrap, linger_ms=5, metadata_max_age_ms=200) as producer:
        await send_some(producer, 300)
        assert len(await producer.partitions_for(topic_name)) == 2
        proxy.limit_partitions(topic_name, None)
        for _ in range(400):
            await send_some(producer, 5)
            if len(await producer.partitions_for(topic_name)) == 6:
                break
        await send_some(producer, 300)
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert not ledger.failures()
    assert known[len(ledger.records) - 1] == 6
    for record in ledger.records:
        key = b"key-%d" % (record.index % 97)
        assert record.outcome.partition == key_partition(key, known[record.index]), record.index
    assert {r.outcome.partition for r in ledger.records} == set(range(6))
    check_log(ledger, await read_log(broker, topic_name, range(6)), idempotent=True)


async def test_deleted_topic_fails_its_records_and_leaves_others_alone(broker, kafka_proxy, topic_name):
    """The topic is deleted (Metadata answers UNKNOWN_TOPIC_OR_PARTITION, Produce too) while records for it
    and for another topic are in flight. Its records fail once delivery_timeout_ms is spent retrying, with
    the broker's error as the cause; the other topic's are delivered; when the topic is back, so are new
    records for it."""
    proxy = kafka_proxy
    other = topic_name + "-other"
    gone, kept = Ledger(), Ledger()
    async with Producer(proxy.bootstrap, linger_ms=5, retry_backoff_ms=50, request_timeout_ms=1000,
                        delivery_timeout_ms=2000) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        await producer.send_and_wait(other, b"warm", partition=0)
        proxy.delete_topic(topic_name)
        proxy.reset_counters()
        for _ in range(50):
            gone.add(await producer.send(topic_name, gone.next_value(), partition=0))
            kept.add(await producer.send(other, kept.next_value(), partition=0))
        await gone.settle(GUARD)
        await kept.settle(GUARD)
        assert proxy.events["deleted_topic"] >= 1
        proxy.restore_topic(topic_name)
        back = await asyncio.wait_for(producer.send_and_wait(topic_name, b"back", partition=0), GUARD)
    gone.assert_settled_once()
    kept.assert_settled_once()
    assert not kept.failures()
    assert len(gone.failures()) == 50
    for record in gone.failures():
        assert isinstance(record.outcome, errors.DeliveryTimeoutError), record.outcome
        assert f"{topic_name}-0" in str(record.outcome)
        assert isinstance(record.outcome.__cause__, errors.UnknownTopicOrPartitionError), record.outcome.__cause__
    assert back.offset == 1  # nothing of the deleted topic's records was written
    check_log(kept, {0: (await read_log(broker, other, [0]))[0][1:]}, idempotent=True)


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain"])
async def test_produce_response_missing_a_partition(broker, kafka_proxy, topic_name, idempotent):
    """Partitions 0 and 3 share a leader (node 1) and one request; the broker writes both but the answer
    leaves partition 0 out. Partition 3 is settled from the answer; partition 0's outcome is unknown and it
    is sent again: once in the log with idempotence, twice without (the proof the first write happened)."""
    proxy = kafka_proxy
    settings = dict(linger_ms=50, retry_backoff_ms=20)
    if not idempotent:
        settings.update(enable_idempotence=False, acks=1)
    ledger = Ledger()
    async with Producer(proxy.bootstrap, **settings) as producer:
        for partition in (0, 3):
            ledger.add(await producer.send(topic_name, ledger.next_value(), partition=partition))
        await producer.flush()
        proxy.omit_from_produce_response(topic_name, 0)
        proxy.reset_counters()
        for partition in (0, 3):
            ledger.add(await producer.send(topic_name, ledger.next_value(), partition=partition))
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert not ledger.failures()
    assert proxy.events["omitted_partition"] == 1
    first = proxy.produce_log[0][1]
    assert sorted(p for _, p, _ in first) == [0, 3]  # one request carried both
    assert proxy.produce_count(topic_name, 0) == 2 and proxy.produce_count(topic_name, 3) == 1
    log = await read_log(broker, topic_name, [0, 3])
    check_log(ledger, log, idempotent=idempotent)
    assert duplicates(log) == (0 if idempotent else 1)
