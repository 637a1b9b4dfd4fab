"""How the producer gives up, and on what: the ``retries`` cap and ``delivery_timeout_ms`` against a broker
that keeps failing and against one that answers too slowly; a batch whose deadline passes in flight;
InitProducerId refused retriably and fatally; requests split by ``max_request_size``; the broker's
MESSAGE_TOO_LARGE; a record larger than ``batch_size``. Faults come from the proxy; each test asserts the
error, its cause and the proxy's counters, never elapsed time."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer, errors
from aiokprod.admin import create_topics
from fault_checks import Ledger, check_log, read_log, value_of
from helpers import read_back_async
from kafka_proxy import KafkaProxy
from log_reader import read_batches
from proxy_fixtures import kafka_proxy  # noqa: F401

GUARD = 30.0  # hang guard only
NOT_ENOUGH_REPLICAS = 19
MESSAGE_TOO_LARGE = 10


async def test_retries_cap_with_a_broker_that_keeps_failing(broker, kafka_proxy, topic_name):
    """retries=2: three attempts (counted at the proxy), then an error saying the retries ran out, with the
    broker's error as its cause (not a delivery timeout: there is plenty of time left)."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, linger_ms=1, retries=2, retry_backoff_ms=10,
                        delivery_timeout_ms=60000) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        proxy.fail_produce(topic_name, 0, NOT_ENOUGH_REPLICAS, count=None)
        proxy.reset_counters()
        handle = await producer.send(topic_name, b"x", partition=0)
        with pytest.raises(errors.KafkaError, match=r"retries=2 reached after 3 attempt\(s\)") as failure:
            await asyncio.wait_for(handle, GUARD)
        assert not isinstance(failure.value, errors.KafkaTimeoutError)
        assert isinstance(failure.value.__cause__, errors.NotEnoughReplicasError)
        assert (failure.value.topic, failure.value.partition) == (topic_name, 0)
        assert proxy.produce_count(topic_name, 0) == 3
        assert proxy.events["injected_error"] == 3
        # The failed batch used a sequence: the partition goes on (new producer id) once the broker heals.
        proxy.clear_faults()
        after = await asyncio.wait_for(producer.send_and_wait(topic_name, b"after", partition=0), GUARD)
    assert after.offset == 1
    assert [r.value for r in await _records(broker, topic_name, 0)] == [b"warm", b"after"]


async def test_delivery_timeout_with_a_broker_that_keeps_failing(broker, kafka_proxy, topic_name):
    """No retries cap: the batch is retried until delivery_timeout_ms, then fails with a DeliveryTimeoutError
    that names the partition and carries the broker's last error as its cause."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, linger_ms=1, retry_backoff_ms=50, retry_backoff_max_ms=200,
                        request_timeout_ms=1000, delivery_timeout_ms=2000) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        proxy.fail_produce(topic_name, 0, NOT_ENOUGH_REPLICAS, count=None)
        proxy.reset_counters()
        handle = await producer.send(topic_name, b"x", partition=0)
        with pytest.raises(errors.DeliveryTimeoutError, match="delivery_timeout_ms") as failure:
            await asyncio.wait_for(handle, GUARD)
        attempts = proxy.produce_count(topic_name, 0)
    assert attempts >= 2 and proxy.events["injected_error"] == attempts
    assert failure.value.attempts == attempts
    assert isinstance(failure.value.__cause__, errors.NotEnoughReplicasError)
    assert (failure.value.topic, failure.value.partition) == (topic_name, 0)
    assert [r.value for r in await _records(broker, topic_name, 0)] == [b"warm"]


async def test_retries_cap_with_a_broker_that_answers_too_slowly(broker, kafka_proxy, topic_name):
    """Every answer is held longer than request_timeout_ms (the connection stays open; the client times
    the request out and closes it). retries=1: two attempts, then the retries cap, with the request timeout
    as its cause and the warning that the broker may have written the record. It did (the first attempt),
    and the second was its duplicate: the log holds it once."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, linger_ms=1, retries=1, retry_backoff_ms=10, request_timeout_ms=1000,
                        delivery_timeout_ms=60000) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        proxy.delay_responses(5.0, api="Produce", count=None)
        proxy.reset_counters()
        handle = await producer.send(topic_name, b"slow", partition=0)
        with pytest.raises(errors.KafkaError, match=r"retries=1 reached after 2 attempt\(s\)") as failure:
            await asyncio.wait_for(handle, GUARD)
        assert proxy.produce_count(topic_name, 0) == 2
        assert proxy.events["delayed"] >= 1
        proxy.clear_faults()
    assert not isinstance(failure.value, errors.DeliveryTimeoutError)  # the retries cap, not the deadline
    assert "may have written it" in str(failure.value)
    cause = failure.value.__cause__
    assert isinstance(cause, errors.KafkaTimeoutError) and "got no answer within" in str(cause)
    assert [r.value for r in await _records(broker, topic_name, 0)] == [b"warm", b"slow"]


async def test_batch_expires_while_in_flight_to_a_slow_broker(broker, kafka_proxy, topic_name):
    """request_timeout_ms 2 s, delivery_timeout_ms 3 s, answers held 10 s: the first attempt times out
    with time left, the retry is in flight when the deadline passes. The record fails once, with a
    delivery timeout saying the broker may have written it, after exactly those two attempts (no third
    is sent past the deadline); the log holds it once (the retry was the first write's duplicate)."""
    proxy = kafka_proxy
    ledger = Ledger()
    async with Producer(proxy.bootstrap, linger_ms=1, retry_backoff_ms=100, request_timeout_ms=2000,
                        delivery_timeout_ms=3000) as producer:
        ledger.add(await producer.send(topic_name, ledger.next_value(), partition=0))
        await producer.flush()
        proxy.delay_responses(10.0, api="Produce", count=None)
        proxy.reset_counters()
        ledger.add(await producer.send(topic_name, ledger.next_value(), partition=0))
        await ledger.settle(GUARD)
        proxy.clear_faults()
        attempts = proxy.produce_count(topic_name, 0)
        ledger.add(await producer.send(topic_name, ledger.next_value(), partition=0))
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    failure = ledger.records[1].outcome
    assert isinstance(failure, errors.DeliveryTimeoutError), failure
    assert "delivery_timeout_ms" in str(failure) and "may have written it" in str(failure)
    assert failure.may_have_been_written and failure.attempts == attempts == 2
    assert not ledger.records[2].failed
    log = await read_log(broker, topic_name, [0])
    check_log(ledger, log, idempotent=True)
    assert [v for _, v in log[0]] == [value_of(0), value_of(1), value_of(2)]


async def test_init_producer_id_refused_retriably_then_granted(broker, kafka_proxy, topic_name):
    """COORDINATOR_LOAD_IN_PROGRESS twice (answered by the proxy, the broker never sees them): the producer
    asks again and delivers with the id it finally gets."""
    proxy = kafka_proxy
    proxy.inject_error("InitProducerId", 14, count=2)
    async with Producer(proxy.bootstrap, linger_ms=1, retry_backoff_ms=20) as producer:
        metadata = await asyncio.wait_for(producer.send_and_wait(topic_name, b"x", partition=0), GUARD)
    assert proxy.injected["InitProducerId"] == 2
    assert proxy.count("InitProducerId") == 3
    [batch] = await read_batches(broker.host, broker.port, topic_name, 0)
    assert batch.producer_id >= 0 and batch.base_sequence == 0 and metadata.offset == 0


async def test_init_producer_id_refused_fatally(broker, kafka_proxy, topic_name):
    """The broker forgets the producer (UNKNOWN_PRODUCER_ID, injected), and the new InitProducerId gets
    CLUSTER_AUTHORIZATION_FAILED, which is not retriable: the pending record fails with it, the producer
    refuses new records naming it as the cause, it does not go on asking for an id, and stop() ends
    cleanly."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, linger_ms=1, retry_backoff_ms=20) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        proxy.inject_error("InitProducerId", 31, count=None)
        proxy.fail_produce(topic_name, 0, 59)  # UNKNOWN_PRODUCER_ID
        handle = await producer.send(topic_name, b"x", partition=0)
        with pytest.raises(errors.ClusterAuthorizationFailedError):
            await asyncio.wait_for(handle, GUARD)
        with pytest.raises(errors.KafkaError, match="must be stopped") as refused:
            await producer.send(topic_name, b"y", partition=0)
        assert isinstance(refused.value.__cause__, errors.ClusterAuthorizationFailedError)
        await asyncio.sleep(0.3)  # 15 retry back-offs: room for the repeated InitProducerIds this rules out
        assert proxy.count("InitProducerId") == 2  # the first (granted) and the refused one, no more
    assert [r.value for r in await _records(broker, topic_name, 0)] == [b"warm"]


async def test_requests_split_by_max_request_size(broker, topic_name):
    """Eight partitions on one broker, one ~1.6 KB batch each, max_request_size 4000: no request carries
    more than 4000 bytes of batches, so the eight are spread over several requests, each batch sent once."""
    await create_topics(broker.bootstrap, {topic_name: 8})
    ledger = Ledger()
    with KafkaProxy(broker.host, broker.port, num_brokers=1) as proxy:
        async with Producer(proxy.bootstrap, linger_ms=60000, batch_size=2000, max_request_size=4000) as producer:
            await producer.partitions_for(topic_name)
            proxy.reset_counters()
            for partition in range(8):
                for _ in range(10):
                    ledger.add(await producer.send(topic_name, ledger.next_value(b"." * 140), partition=partition))
            await asyncio.wait_for(producer.flush(), GUARD)  # linger is a minute: flush makes all 8 ready at once
            await ledger.settle(GUARD)
        requests = [parts for _, parts in proxy.produce_log]
    ledger.assert_settled_once()
    assert all(sum(size for _, _, size in parts) <= 4000 for parts in requests), requests
    assert len(requests) >= 4 and max(len(parts) for parts in requests) >= 2, requests
    assert sorted(p for parts in requests for _, p, _ in parts) == list(range(8))
    check_log(ledger, await read_log(broker, topic_name, range(8)), idempotent=True)


async def test_message_too_large_from_the_broker_with_batches_behind_it(broker, kafka_proxy, topic_name):
    """The broker refuses one batch with MESSAGE_TOO_LARGE while later batches of the partition are in
    flight with later sequences. The refused records fail with the broker's error naming the partition;
    every other record is delivered once and in order (the sequence gap makes the producer take a new id,
    it must not lose or duplicate what follows)."""
    proxy = kafka_proxy
    ledger = Ledger()
    async with Producer(proxy.bootstrap, linger_ms=2, batch_size=256, retry_backoff_ms=20) as producer:
        ledger.add(await producer.send(topic_name, ledger.next_value(), partition=0))
        await producer.flush()
        proxy.delay_responses(0.2, api="Produce", count=None)
        proxy.fail_produce(topic_name, 0, MESSAGE_TOO_LARGE, message="proxy: too large")
        for _ in range(60):
            ledger.add(await producer.send(topic_name, ledger.next_value(b"-" * 40), partition=0))
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
        assert proxy.max_outstanding == 5
    ledger.assert_settled_once()
    failed = ledger.failures()
    assert failed and all(isinstance(r.outcome, errors.MessageTooLargeError) for r in failed)
    assert {(r.outcome.topic, r.outcome.partition, r.outcome.broker_message) for r in failed} == {
        (topic_name, 0, "proxy: too large")}
    assert [r.index for r in failed] == list(range(1, 1 + len(failed)))  # the first batch after warm-up
    log = await read_log(broker, topic_name, [0])
    check_log(ledger, log, idempotent=True)
    assert [int(v[:7]) for _, v in log[0]] == [r.index for r in ledger.successes()]


async def test_record_larger_than_batch_size_is_delivered(broker, topic_name):
    """A 100 KB record with batch_size 1 KB gets a batch of its own, between small ones, in order; read back
    by confluent-kafka byte for byte."""
    big = b"B" * 100_000
    async with Producer(broker.bootstrap, linger_ms=5, batch_size=1024) as producer:
        handles = [await producer.send(topic_name, value, partition=0) for value in (b"before", big, b"after")]
        offsets = [(await asyncio.wait_for(h, GUARD)).offset for h in handles]
    assert offsets == [0, 1, 2]
    stored = await read_back_async(broker.bootstrap, topic_name, [0], expected=3)
    assert [r.value for r in stored] == [b"before", big, b"after"]


async def _records(broker, topic, partition):
    return [r for b in await read_batches(broker.host, broker.port, topic, partition) for r in b.records]
