"""aiokprod.web (the lifespan, the fire-and-forget tracker, errors as HTTP answers) and what it relies on in
the producer: ``Producer.connected`` and ``BufferExhaustedError`` for back-pressure."""
from __future__ import annotations

import asyncio
import logging

import pytest

from aiokprod import Producer, errors
from aiokprod.web import DeliveryTracker, HttpError, http_error, producer_lifespan
from helpers import no_tasks_left, read_back_async

NO_HANG = 30.0


# -- http_error: plain function, on the exceptions the producer raises -------------------------------------------
@pytest.mark.parametrize("exc, status", [
    (errors.RecordTooLargeError("record for t-0 is 2000000 bytes serialized"), 413),
    (errors.for_code(10, "too big", "t", 0), 413),  # the broker's MESSAGE_TOO_LARGE
    (errors.KafkaTimeoutError("3 record(s) for t-1 not delivered within delivery_timeout_ms"), 503),
    (errors.KafkaConnectionError("could not connect to any bootstrap server"), 503),
    (errors.ProducerClosedError("send() to 't' on a producer that is closing"), 503),
    (errors.for_code(6, topic="t", partition=0), 503),  # retriable broker error
    (errors.for_code(17, topic="bad/name"), 400),  # INVALID_TOPIC_EXCEPTION: the client named it
    (errors.for_code(29, topic="t"), 502),  # TOPIC_AUTHORIZATION_FAILED: the service's problem, not the client's
    (errors.KafkaError("the producer's sender failed"), 502),
])
def test_http_error_status(exc, status):
    answer = http_error(exc)
    assert answer == HttpError(status, f"{type(exc).__name__}: {exc}", {})
    assert "Retry-After" not in answer.headers


@pytest.mark.parametrize("retry_after, header", [(0.2, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_back_pressure_is_503_with_retry_after_in_whole_seconds(retry_after, header):
    exc = errors.BufferExhaustedError("no room for a 100-byte record")
    assert isinstance(exc, errors.KafkaTimeoutError)  # what code catching the old type still catches
    answer = http_error(exc, retry_after=retry_after)
    assert (answer.status, dict(answer.headers)) == (503, {"Retry-After": header})


@pytest.mark.parametrize("exc", [ValueError("partition 9 out of range"), TypeError("value must be bytes"),
                                 asyncio.CancelledError()])
def test_non_producer_errors_are_left_to_the_framework(exc):
    assert http_error(exc) is None


# -- the producer's side ------------------------------------------------------------------------------------------
async def test_full_buffer_raises_buffer_exhausted_and_metadata_wait_does_not(broker, topic_name):
    """Both waits are bounded by max_block_ms; only the wait for buffer room is back-pressure."""
    async with Producer(broker.bootstrap, buffer_memory=4096, batch_size=4096, linger_ms=60_000,
                        max_block_ms=200, allow_auto_create_topics=False) as producer:
        with pytest.raises(errors.KafkaTimeoutError, match="not present in metadata") as info:
            await asyncio.wait_for(producer.send(topic_name + "-missing", b"x"), NO_HANG)
        assert not isinstance(info.value, errors.BufferExhaustedError)
        assert "Retry-After" not in http_error(info.value).headers
    async with Producer(broker.bootstrap, buffer_memory=4096, batch_size=4096, linger_ms=60_000,
                        max_block_ms=200) as producer:
        first = await producer.send(topic_name, b"a" * 1000, partition=0)  # its batch reserves all 4096 bytes
        with pytest.raises(errors.BufferExhaustedError, match=r"no room for a \d+-byte record.*max_block_ms \(200 ms\)"):
            await asyncio.wait_for(producer.send(topic_name, b"b" * 1000, partition=1), NO_HANG)
        await producer.flush()
        assert (await first).offset >= 0


async def test_connected_follows_the_connections(fresh_broker):
    producer = Producer(fresh_broker.bootstrap, retry_backoff_ms=50)
    assert producer.connected is False  # not started
    await producer.start()
    try:
        assert producer.connected is True
        fresh_broker.stop()
        deadline = asyncio.get_running_loop().time() + NO_HANG
        while producer.connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert producer.connected is False  # the broker's side closed: connection_lost reached us
    finally:
        await producer.stop()
    assert producer.connected is False


# -- producer_lifespan and DeliveryTracker --------------------------------------------------------------------------
async def test_lifespan_flushes_then_stops_and_says_so(broker, topic_name, caplog):
    caplog.set_level(logging.INFO, logger="aiokprod.web")
    producer = Producer(broker.bootstrap, linger_ms=60_000)  # nothing leaves before the flush
    deliveries = DeliveryTracker()
    async with producer_lifespan(producer, deliveries=deliveries) as running:
        assert running is producer and producer.connected
        handles = [deliveries.track(await producer.send(topic_name, b"v%d" % i, partition=0)) for i in range(5)]
        assert not any(handle.done() for handle in handles)
        assert deliveries.as_dict() == {"accepted": 5, "delivered": 0, "failed": 0, "pending": 5}
    assert [handle.result().offset for handle in handles] == list(range(5))
    assert deliveries.as_dict() == {"accepted": 5, "delivered": 5, "failed": 0, "pending": 0}
    assert not producer.connected
    assert await no_tasks_left() == set()
    assert ("producer stopped: 5 record(s) delivered, 0 failed; fire-and-forget: 5 accepted, 5 delivered, "
            "0 failed, 0 pending") in caplog.messages
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 5)
    assert [record.value for record in stored] == [b"v%d" % i for i in range(5)]


async def test_lifespan_stops_even_when_the_app_fails(broker, topic_name):
    producer = Producer(broker.bootstrap, linger_ms=60_000)
    with pytest.raises(RuntimeError, match="handler bug"):
        async with producer_lifespan(producer):
            handle = await producer.send(topic_name, b"accepted before the failure", partition=0)
            raise RuntimeError("handler bug")
    assert (await handle).offset >= 0  # flushed on the way out all the same
    assert not producer.connected


async def test_tracker_logs_and_counts_failed_deliveries(fresh_broker, topic_name, caplog):
    caplog.set_level(logging.WARNING, logger="aiokprod.web")
    deliveries = DeliveryTracker()
    async with Producer(fresh_broker.bootstrap, delivery_timeout_ms=800, request_timeout_ms=300,
                        retry_backoff_ms=50, linger_ms=0, stop_timeout_ms=1000) as producer:
        await producer.send_and_wait(topic_name, b"warm", partition=0)
        fresh_broker.stop()
        handle = deliveries.track(await producer.send(topic_name, b"lost", partition=0))
        with pytest.raises(errors.KafkaTimeoutError):
            await asyncio.wait_for(asyncio.shield(handle), NO_HANG)
        await asyncio.sleep(0)  # the tracker's done-callback runs on the loop, after the awaiter's wakeup
    assert deliveries.as_dict() == {"accepted": 1, "delivered": 0, "failed": 1, "pending": 0}
    [message] = [r.getMessage() for r in caplog.records if r.name == "aiokprod.web"]
    assert message.startswith("fire-and-forget record not delivered: DeliveryTimeoutError: 1 record(s) for ")
