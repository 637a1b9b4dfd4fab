"""Many batches in flight over many partitions when something breaks: a connection cut, a broker restart, a
retriable error on one batch with later batches of the same partition behind it. Every handle settles once,
nothing is written twice under idempotence, and each partition keeps the order records were sent in
(checked from the broker's log, see fault_checks)."""
from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from aiokprod import Producer
from aiokprod.admin import create_topics
from fault_checks import Ledger, check_log, duplicates, read_log
from kafka_proxy import KafkaProxy
from proxy_fixtures import kafka_proxy  # noqa: F401

GUARD = 60.0  # hang guard only
PARTITIONS = 12


def _settings(idempotent: bool, **extra) -> dict:
    settings = dict(linger_ms=2, batch_size=512, max_in_flight_requests_per_connection=5, retry_backoff_ms=20,
                    request_timeout_ms=10000, delivery_timeout_ms=60000)
    if not idempotent:
        settings.update(enable_idempotence=False, acks=1)
    settings.update(extra)
    return settings


async def _send(producer, ledger: Ledger, topic: str, count: int, partitions: int = PARTITIONS) -> None:
    for _ in range(count):
        index = len(ledger.records)
        ledger.add(await producer.send(topic, ledger.next_value(b"-" * 40), partition=index % partitions))


async def _warm_up(producer, ledger, topic, partitions=PARTITIONS):
    """One record per partition, delivered: every connection is open and the producer id taken."""
    await _send(producer, ledger, topic, partitions, partitions)
    await producer.flush()


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain"])
async def test_connection_cut_with_full_pipelines(broker, kafka_proxy, topic_name, idempotent):
    """Responses are held back so that every connection has 5 Produce requests in flight (the proxy saw
    them: max_outstanding), then every connection is cut, twice. The broker wrote what reached it, so
    every batch in flight has an unknown outcome and is sent again."""
    proxy = kafka_proxy
    await create_topics(broker.bootstrap, {topic_name: PARTITIONS})
    ledger = Ledger()
    async with Producer(proxy.bootstrap, **_settings(idempotent)) as producer:
        await _warm_up(producer, ledger, topic_name)
        proxy.delay_responses(0.2, api="Produce", count=None)
        proxy.reset_counters()
        sending = asyncio.ensure_future(_send(producer, ledger, topic_name, 3000))
        for _ in range(2):
            assert await proxy.wait_for_async(lambda: proxy.max_outstanding >= 5, 10), (dict(proxy.requests), dict(proxy.events), producer.metrics(), len(ledger.records), sending.done())
            proxy.cut_connections()
            proxy.reset_counters()
        proxy.clear_faults()
        await asyncio.wait_for(sending, GUARD)
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
        assert producer.metrics()["records_sent"] == len(ledger.records)  # one success per record, no more
        assert producer.metrics()["retries"] > 0
    ledger.assert_settled_once()
    assert not ledger.failures(), ledger.failures()[:3]
    log = await read_log(broker, topic_name, range(PARTITIONS))
    check_log(ledger, log, idempotent=idempotent)
    if not idempotent:
        # The writes in flight were made before the cut: without idempotence they are in the log twice.
        # (This shows the log check can see a duplicate.)
        assert duplicates(log) > 0


@pytest.fixture
def restartable(fresh_broker):
    """A broker of the test's own behind the proxy (3 virtual brokers), and a way to restart it."""
    with KafkaProxy(fresh_broker.host, fresh_broker.port, num_brokers=3) as proxy:
        yield fresh_broker, proxy


def restart_with_topic(broker, topic: str, partitions: int) -> None:
    """Restart the broker (memory storage: everything is lost) and create ``topic`` again, synchronously.

    Called from the test's coroutine, this blocks the producer's loop on purpose: when it runs again the
    broker is back with the topic (Tansu would otherwise auto-create it with 4 partitions on the first
    Metadata, and accepts writes to a topic it does not have)."""
    broker.restart()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create_topics(broker.bootstrap, {topic: partitions})).result(30)


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain"])
async def test_broker_restart_with_full_pipelines(restartable, topic_name, idempotent):
    """The broker is killed and restarted (forgetting every record and producer id) while every connection
    has 5 requests in flight. Every handle succeeds once; the restarted broker's log holds every record sent
    after the restart, each once (idempotence), in order, where its handle said; of the records in flight at
    the restart, those acknowledged by the old broker are gone with it, the others are in the new log."""
    broker, proxy = restartable
    await create_topics(broker.bootstrap, {topic_name: PARTITIONS})
    ledger = Ledger()
    async with Producer(proxy.bootstrap, **_settings(idempotent)) as producer:
        await _warm_up(producer, ledger, topic_name)
        proxy.delay_responses(0.2, api="Produce", count=None)
        await _send(producer, ledger, topic_name, 1500)
        assert await proxy.wait_for_async(lambda: proxy.max_outstanding >= 5, GUARD)
        sent_before = len(ledger.records)
        restart_with_topic(broker, topic_name, PARTITIONS)
        proxy.clear_faults()
        await _send(producer, ledger, topic_name, 1500)
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
        assert producer.metrics()["records_sent"] == len(ledger.records)
    ledger.assert_settled_once()
    assert not ledger.failures(), ledger.failures()[:3]
    log = await read_log(broker, topic_name, range(PARTITIONS))
    after = set(range(sent_before, len(ledger.records)))
    check_log(ledger, log, idempotent=idempotent, checked=after, may_be_absent=set(range(sent_before)))
    in_new_log = {int(v[:7]) for records in log.values() for _, v in records}
    assert after <= in_new_log
    # Some of what was in flight at the restart was sent again to the new broker (else this test would
    # not have exercised the restart with requests in flight).
    assert any(i < sent_before for i in in_new_log)


async def test_retriable_error_with_later_batches_in_flight(broker, kafka_proxy, topic_name):
    """One partition, small batches, 5 requests in flight to its leader: the first batch is refused
    (NOT_LEADER_OR_FOLLOWER, then separately NOT_ENOUGH_REPLICAS) while the four after it reach the broker
    with later sequences. Those are refused too (a sequence gap) and everything is sent again in order, with
    the same producer id (the gap is an echo of the retried batch, not lost broker state)."""
    proxy = kafka_proxy
    ledger = Ledger()
    async with Producer(proxy.bootstrap, **_settings(True, batch_size=256)) as producer:
        await _warm_up(producer, ledger, topic_name, partitions=1)
        for code in (6, 19):
            proxy.delay_responses(0.2, api="Produce", count=None)
            proxy.fail_produce(topic_name, 0, code)
            proxy.reset_counters()
            await _send(producer, ledger, topic_name, 60, partitions=1)
            await asyncio.wait_for(producer.flush(), GUARD)
            assert proxy.events["injected_error"] == 1
            assert proxy.max_outstanding == 5  # the refused batch had four more behind it
            proxy.clear_faults()
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert not ledger.failures(), ledger.failures()[:3]
    log = await read_log(broker, topic_name, [0])
    check_log(ledger, log, idempotent=True)
    assert [int(v[:7]) for _, v in log[0]] == list(range(len(ledger.records)))
    batches_ids = {b.producer_id for b in await _batches(broker, topic_name)}
    assert len(batches_ids) == 1, f"a new producer id was taken: {batches_ids}"


async def _batches(broker, topic):
    from log_reader import read_batches

    return await read_batches(broker.host, broker.port, topic, 0)
