"""flush() and stop() when the broker is frozen (SIGSTOP: connections stay open, nothing answers) with
requests in flight; cancelling them; flush() racing send()s from other tasks."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from aiokprod import Producer, errors
from fault_checks import Ledger, check_log, read_log
from helpers import no_tasks_left
from kafka_proxy import KafkaProxy

GUARD = 30.0  # hang guard only


@pytest.fixture
def freezable(fresh_broker):
    """A broker of the test's own behind the proxy (whose counters show what was sent), and freeze/thaw."""
    pid = fresh_broker._process.pid

    def freeze():
        os.kill(pid, signal.SIGSTOP)

    def thaw():
        os.kill(pid, signal.SIGCONT)

    with KafkaProxy(fresh_broker.host, fresh_broker.port, num_brokers=1) as proxy:
        try:
            yield fresh_broker, proxy, freeze, thaw
        finally:
            thaw()


async def _frozen_with_requests_in_flight(producer, proxy, freeze, ledger, topic, count=200):
    for partition in range(2):
        ledger.add(await producer.send(topic, ledger.next_value(), partition=partition))
    await producer.flush()  # warm: connections open, producer id taken
    freeze()
    before = proxy.count("Produce")
    for i in range(count):
        ledger.add(await producer.send(topic, ledger.next_value(b"-" * 30), partition=i % 2))
    # The proxy received them: they are in flight to a broker that will not answer.
    assert await proxy.wait_for_async(lambda: proxy.count("Produce") > before, GUARD)


async def test_flush_against_a_frozen_broker_times_out_then_completes(freezable, topic_name):
    """flush(timeout) gives up with TimeoutError and leaves the records alone (they are still within
    delivery_timeout_ms); once the broker runs again a flush delivers every one of them, once."""
    broker, proxy, freeze, thaw = freezable
    ledger = Ledger()
    async with Producer(proxy.bootstrap, linger_ms=5, batch_size=1024, request_timeout_ms=20000,
                        delivery_timeout_ms=60000) as producer:
        await _frozen_with_requests_in_flight(producer, proxy, freeze, ledger, topic_name)
        with pytest.raises(asyncio.TimeoutError):
            await producer.flush(timeout=0.5)
        assert not any(r.handle.done() for r in ledger.records[2:])
        thaw()
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert not ledger.failures()
    check_log(ledger, await read_log(broker, topic_name, [0, 1]), idempotent=True)


async def test_stop_against_a_frozen_broker_fails_what_is_in_flight(freezable, topic_name):
    """stop(timeout) with requests in flight to a frozen broker: it returns, every record not delivered
    fails with ProducerClosedError, no task is left behind."""
    broker, proxy, freeze, thaw = freezable
    ledger = Ledger()
    producer = Producer(proxy.bootstrap, linger_ms=5, batch_size=1024, request_timeout_ms=20000,
                        delivery_timeout_ms=60000)
    await producer.start()
    await _frozen_with_requests_in_flight(producer, proxy, freeze, ledger, topic_name)
    await asyncio.wait_for(producer.stop(timeout=0.5), GUARD)
    assert all(r.handle.done() for r in ledger.records)
    await ledger.settle(GUARD)
    ledger.assert_settled_once()
    undelivered = ledger.records[2:]
    assert all(isinstance(r.outcome, errors.ProducerClosedError) for r in undelivered), undelivered[0].outcome
    assert not await no_tasks_left()
    with pytest.raises(errors.ProducerClosedError):
        await producer.send(topic_name, b"late")


async def test_cancelled_flush_leaves_delivery_alone(freezable, topic_name):
    """Cancelling a flush() waiting on a frozen broker cancels the wait, not the records: once the broker
    runs again they are delivered and read back, and the producer flushes again normally."""
    broker, proxy, freeze, thaw = freezable
    ledger = Ledger()
    async with Producer(proxy.bootstrap, linger_ms=5, batch_size=1024, request_timeout_ms=20000,
                        delivery_timeout_ms=60000) as producer:
        await _frozen_with_requests_in_flight(producer, proxy, freeze, ledger, topic_name)
        flushing = asyncio.ensure_future(producer.flush())
        await asyncio.sleep(0.1)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert producer._accumulator.flushing == 0  # the flush's "send now" request is withdrawn
        thaw()
        ledger.add(await producer.send(topic_name, ledger.next_value(), partition=0))
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert not ledger.failures()
    check_log(ledger, await read_log(broker, topic_name, [0, 1]), idempotent=True)


async def test_cancelled_stop_still_closes_the_producer(freezable, topic_name):
    """Cancelling stop() while it flushes to a frozen broker: the caller gets CancelledError, but the
    producer is closed all the same (records failed with ProducerClosedError, no task left), and another
    stop() returns at once."""
    broker, proxy, freeze, thaw = freezable
    ledger = Ledger()
    producer = Producer(proxy.bootstrap, linger_ms=5, batch_size=1024, request_timeout_ms=20000,
                        delivery_timeout_ms=60000)
    await producer.start()
    await _frozen_with_requests_in_flight(producer, proxy, freeze, ledger, topic_name)
    stopping = asyncio.ensure_future(producer.stop(timeout=20))
    await asyncio.sleep(0.1)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, GUARD)
    await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert all(isinstance(r.outcome, errors.ProducerClosedError) for r in ledger.records[2:])
    assert not await no_tasks_left()
    await asyncio.wait_for(producer.stop(), GUARD)
    with pytest.raises(errors.ProducerClosedError):
        await producer.send(topic_name, b"late")


async def test_flush_racing_concurrent_sends(broker, topic_name):
    """Four tasks send without pause while the main task flushes again and again: each flush returns (it
    does not chase records sent after it began), and when it does, every record sent before it began is
    settled. Everything is delivered once, in order."""
    ledger = Ledger()
    stop = asyncio.Event()

    async def sender(partition: int) -> None:
        while not stop.is_set():
            ledger.add(await producer.send(topic_name, ledger.next_value(), partition=partition))
            if len(ledger.records) % 50 == 0:
                await asyncio.sleep(0)  # the fast path never yields: let the others (and flush) run

    async with Producer(broker.bootstrap, linger_ms=20, batch_size=2048) as producer:
        await producer.partitions_for(topic_name)
        senders = [asyncio.ensure_future(sender(p)) for p in range(4)]
        flushes = 0
        try:
            while flushes < 30:
                await asyncio.sleep(0.01)
                sent_before = list(ledger.records)
                await asyncio.wait_for(producer.flush(), GUARD)
                flushes += 1
                unsettled = [r.index for r in sent_before if not r.handle.done()]
                assert not unsettled, f"flush {flushes} returned with {len(unsettled)} earlier records pending"
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.gather(*senders)
        await asyncio.wait_for(producer.flush(), GUARD)
        await ledger.settle(GUARD)
    ledger.assert_settled_once()
    assert not ledger.failures()
    assert len(ledger.records) > 1000
    check_log(ledger, await read_log(broker, topic_name, range(4)), idempotent=True)
