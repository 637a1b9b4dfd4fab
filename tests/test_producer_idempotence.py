"""Idempotence against the real broker: producer ids and sequences on the wire, no duplicates when an
acknowledgement is lost, and recovery when the broker forgets the producer (restart)."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer
from helpers import read_back_async
from log_reader import read_batches
from proxy_fixtures import kafka_proxy  # noqa: F401


async def test_batches_carry_producer_id_and_consecutive_sequences(broker, topic_name):
    async with Producer(broker.bootstrap, linger_ms=2, batch_size=2048) as producer:
        handles = [await producer.send(topic_name, b"v%05d" % i, partition=1) for i in range(300)]
        await producer.flush()
        offsets = [(await handle).offset for handle in handles]
    assert offsets == list(range(300))
    batches = await read_batches(broker.host, broker.port, topic_name, 1)
    assert len(batches) > 1, "batch_size=2048 should have split 300 records"
    producer_ids = {batch.producer_id for batch in batches}
    assert len(producer_ids) == 1 and producer_ids.pop() >= 0
    expected_sequence = 0
    for batch in batches:
        assert batch.base_sequence == expected_sequence
        assert batch.producer_epoch >= 0
        expected_sequence += len(batch.records)
    assert expected_sequence == 300


async def test_non_idempotent_batches_have_no_producer_id(broker, topic_name):
    async with Producer(broker.bootstrap, acks=1, linger_ms=1) as producer:
        assert not producer.config.idempotent
        await producer.send_and_wait(topic_name, b"x", partition=0)
    [batch] = await read_batches(broker.host, broker.port, topic_name, 0)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (-1, -1, -1)


@pytest.mark.parametrize("idempotent", [True, False])
async def test_lost_acknowledgement_is_retried_without_duplicates(broker, kafka_proxy, topic_name, idempotent):
    """The broker writes the batch but its answer is lost (connection cut after the write). The retry
    must not duplicate the records when idempotence is on; without it, the duplicate shows that this
    test can see one."""
    settings = dict(linger_ms=1, retry_backoff_ms=20, request_timeout_ms=3000)
    if not idempotent:
        settings.update(enable_idempotence=False, acks="all")
    async with Producer(kafka_proxy.bootstrap, **settings) as producer:
        await producer.send_and_wait(topic_name, b"warm-up", partition=0)
        kafka_proxy.lose_responses(topic=topic_name, partition=0, count=1, cut=True)
        metadata = await producer.send_and_wait(topic_name, b"lost-ack", partition=0)
        assert producer.metrics()["retries"] >= 1
    stored = await read_back_async(broker.bootstrap, topic_name, [0], expected=3, timeout=3, settle=0.5)
    values = [record.value for record in stored]
    if idempotent:
        assert values == [b"warm-up", b"lost-ack"]
        # Kafka answers a duplicate with the original offset; Tansu answers it without one (-1), which
        # the producer passes on as "offset unknown" rather than inventing one.
        assert metadata.offset in (1, -1)
    else:
        assert values == [b"warm-up", b"lost-ack", b"lost-ack"]


async def test_recovers_when_broker_forgets_the_producer(fresh_broker, topic_name):
    """A restart of the in-memory broker loses every producer id: produces get UNKNOWN_PRODUCER_ID and the
    producer must take a new id and renumber from 0 (librdkafka does not recover here)."""
    async with Producer(fresh_broker.bootstrap, linger_ms=1, request_timeout_ms=2000,
                        retry_backoff_ms=20, delivery_timeout_ms=20000) as producer:
        first = await producer.send_and_wait(topic_name, b"before", partition=0)
        old_id = producer._sender.manager.producer_id
        await asyncio.to_thread(fresh_broker.restart)  # not on the loop: the producer keeps running meanwhile
        after = await producer.send_and_wait(topic_name, b"after", partition=0)
        more = [await producer.send(topic_name, b"more-%d" % i, partition=0) for i in range(50)]
        await producer.flush()
        assert [(await h).offset for h in more] == list(range(1, 51))
    assert first.offset == 0 and after.offset == 0  # the restarted broker's log starts again
    batches = await read_batches(fresh_broker.host, fresh_broker.port, topic_name, 0)
    assert sum(len(b.records) for b in batches) == 51
    assert batches[0].base_sequence == 0
    assert all(b.producer_id == batches[0].producer_id for b in batches)
    assert old_id >= 0
