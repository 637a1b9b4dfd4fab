"""Batches whose outcome is unknown (the broker may have written them) are never renumbered under a new
producer identity: replays, against the real broker behind the fault-injecting proxy, of two defects found
while reading the sender (issue 9).

In each test another partition's batch fails for good (INVALID_RECORD), which forces the idempotent producer
to reset its identity (a sequence that will never be acknowledged). The reset must wait until every batch of
unknown outcome has been settled with its old identity, or that batch is written twice.

Both tests failed against the sender as it was (each batch written twice; see the commit that added them
as strict xfails), and pass now that the sender reports outcomes to the TransactionManager."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer, errors
from log_reader import read_batches
from proxy_fixtures import kafka_proxy  # noqa: F401

NO_HANG = 20.0
INVALID_RECORD = 87


async def _values(broker, topic, partition):
    return [r.value for b in await read_batches(broker.host, broker.port, topic, partition) for r in b.records]


@pytest.mark.parametrize("code", [7, 20], ids=["REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS_AFTER_APPEND"])
async def test_unsure_answer_keeps_the_batch_in_doubt(broker, kafka_proxy, topic_name, code):
    """The broker writes p0's batch but answers REQUEST_TIMED_OUT / NOT_ENOUGH_REPLICAS_AFTER_APPEND: an
    answer that does not say whether it was written (the Java client and franz-go treat both as "unsure if
    produced"). Taking it for "not written" let the reset renumber it: written twice."""
    proxy = kafka_proxy
    # The retry waits 300 ms, so the reset forced by p1 comes before it: the window the defect needs.
    async with Producer(proxy.bootstrap, linger_ms=1, retry_backoff_ms=300, request_timeout_ms=3000) as producer:
        await producer.send_and_wait(topic_name, b"warm0", partition=0)  # p0 -> node 1
        await producer.send_and_wait(topic_name, b"warm1", partition=1)  # p1 -> node 2
        proxy.inject_error("Produce", code, after_write=True, topic=topic_name, partition=0)
        proxy.fail_produce(topic_name, 1, INVALID_RECORD)
        once = await producer.send(topic_name, b"ONCE", partition=0)
        bad = await producer.send(topic_name, b"bad", partition=1)
        results = await asyncio.wait_for(asyncio.gather(once, bad, return_exceptions=True), NO_HANG)
    assert proxy.injected["Produce"] == 1
    assert isinstance(results[1], errors.InvalidRecordError)
    assert results[0].partition == 0
    assert await _values(broker, topic_name, 0) == [b"warm0", b"ONCE"]


async def test_in_doubt_batch_behind_a_known_retry_blocks_the_reset(broker, kafka_proxy, topic_name):
    """A and B of p0 are both written, both answers lost (in doubt). Their retries go out together: A's is
    refused (NOT_ENOUGH_REPLICAS, a definite "not written" for that attempt), B's answer is lost again.
    Requeued in drain order, the queue's head (A) now looks settled while B, behind it, is in doubt.
    Looking only at queue heads, the reset forced by p1 went ahead and renumbered both: written twice.

    (That A's first attempt is in the log whatever its retry was told is the other half of the rule: a
    batch once in doubt stays in doubt until the broker acknowledges it.)"""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, linger_ms=0, retry_backoff_ms=300, request_timeout_ms=3000) as producer:
        await producer.send_and_wait(topic_name, b"warm0", partition=0)  # p0 -> node 1
        await producer.send_and_wait(topic_name, b"warm1", partition=1)  # p1 -> node 2
        # First attempts: A's answer held half a second, then the connection is cut; B is written meanwhile.
        proxy.delay_responses(0.5, api="Produce", node_id=1, count=1)
        proxy.lose_responses(topic=topic_name, partition=0, count=1, cut=True)
        a = await producer.send(topic_name, b"A", partition=0)
        assert await proxy.wait_for_async(lambda: proxy.produce_count(topic_name, 0) >= 2)
        b = await producer.send(topic_name, b"B", partition=0)
        assert await proxy.wait_for_async(lambda: proxy.produce_count(topic_name, 0) >= 3)
        proxy.fail_produce(topic_name, 1, INVALID_RECORD)  # forces the reset (once A and B are back)
        bad = await producer.send(topic_name, b"bad", partition=1)
        assert await proxy.wait_for_async(lambda: proxy.events["lost_response"] == 1)
        # Retries: A refused by the proxy (held, so that B is sent while A is out), B's answer lost again.
        proxy.fail_produce(topic_name, 0, 19)
        proxy.delay_responses(0.3, api="Produce", node_id=1, count=1)
        proxy.lose_responses(topic=topic_name, partition=0, count=1, cut=True)
        results = await asyncio.wait_for(asyncio.gather(a, b, bad, return_exceptions=True), NO_HANG)
    assert proxy.events["lost_response"] == 2
    assert isinstance(results[2], errors.InvalidRecordError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[1], BaseException), results
    log = [(b.producer_id, b.base_sequence, [r.value for r in b.records])
           for b in await read_batches(broker.host, broker.port, topic_name, 0)]
    values = [v for _, _, vs in log for v in vs]
    assert values == [b"warm0", b"A", b"B"], log
