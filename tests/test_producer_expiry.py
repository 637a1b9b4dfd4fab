"""delivery_timeout_ms is a promise: every record is settled by its deadline, whatever the broker does.

Replays of issue 8's defects against the real broker: a frozen broker (its process stopped with SIGSTOP:
connections stay open, nothing answers), and a batch whose deadline passes while its request is in flight.
The competing timers (request timeout, the broker's answer) are set far from the deadline so that what the
tests see is the expiry itself: its error type, message, attempt count and cause, never elapsed time.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from aiokprod import Producer, errors
from aiokprod.testing import EmbeddedBroker
from log_reader import read_batches

NO_HANG = 60.0  # a guard against hangs, never a performance claim


class Frozen:
    """The broker's process stopped (SIGSTOP) for the block; always resumed (SIGCONT), even on failure."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.pid = broker._process.pid

    def __enter__(self) -> "Frozen":
        os.kill(self.pid, signal.SIGSTOP)
        # The signal is delivered asynchronously: until every thread is stopped the broker may still answer
        # a request or two. Wait until the kernel reports each of its threads stopped ("T").
        for _ in range(1000):
            if all(_thread_state(self.pid, tid) == "T" for tid in os.listdir(f"/proc/{self.pid}/task")):
                return self
            time.sleep(0.005)
        os.kill(self.pid, signal.SIGCONT)
        raise AssertionError(f"broker process {self.pid} did not stop")

    def __exit__(self, *exc_info) -> None:
        os.kill(self.pid, signal.SIGCONT)


def _thread_state(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # the thread ended meanwhile
        return "T"


def _assert_expired(exc: BaseException, topic: str) -> None:
    """``exc`` is the sender's expiry, not a request timeout or a connection cut passed through."""
    assert type(exc) is errors.DeliveryTimeoutError, repr(exc)
    text = str(exc)
    assert f"for {topic}-{exc.partition} not delivered within delivery_timeout_ms" in text, text
    if exc.attempts == 0:
        # Never sent: nothing can have reached the broker, and no attempt can have failed.
        assert "expired before it could be sent" in text, text
        assert exc.__cause__ is None and not exc.may_have_been_written, text
    elif exc.may_have_been_written:
        assert "may have written it" in text, text
    if exc.__cause__ is not None:
        # An earlier attempt's failure is kept as the cause; the error itself is still the expiry.
        assert isinstance(exc.__cause__, (errors.KafkaConnectionError, errors.KafkaTimeoutError,
                                          errors.BrokerResponseError)), repr(exc.__cause__)
        assert not isinstance(exc.__cause__, errors.DeliveryTimeoutError)
        assert f"last error: {exc.__cause__}" in text, text


@pytest.mark.parametrize("request_timeout_ms", [1500, 2900])
async def test_frozen_broker_every_record_expires(fresh_broker, topic_name, request_timeout_ms):
    """Issue 8, scaled down: an idempotent producer (which must re-initialise its producer id after a batch
    with a sequence expires) against a frozen broker, with thousands of records queued behind a full
    in-flight window. Every handle settles with the delivery-timeout error; then, once the broker is back,
    the producer delivers again under a new producer id."""
    async with Producer(fresh_broker.bootstrap, linger_ms=5, delivery_timeout_ms=3000,
                        request_timeout_ms=request_timeout_ms, batch_size=1024, retry_backoff_ms=50,
                        stop_timeout_ms=1000, max_block_ms=5000) as producer:
        warm = await producer.send_and_wait(topic_name, b"warm", partition=0)
        with Frozen(fresh_broker):
            handles = []
            for burst in range(10):  # deadlines spread over half a second
                for i in range(300):
                    handles.append(await producer.send(topic_name, b"v%05d" % (burst * 300 + i),
                                                       partition=i % 4))
                await asyncio.sleep(0.05)
            results = await asyncio.wait_for(asyncio.gather(*handles, return_exceptions=True), NO_HANG)
        for result in results:
            _assert_expired(result, topic_name)
        attempts = {result.attempts for result in results}
        assert 0 in attempts and max(attempts) >= 1, attempts  # some were in flight, most never left
        assert producer.metrics()["buffer_used_bytes"] == 0
        after = await asyncio.wait_for(producer.send_and_wait(topic_name, b"after", partition=0), NO_HANG)
    assert after.offset > warm.offset
    batches = await read_batches(fresh_broker.host, fresh_broker.port, topic_name, 0)
    assert [r.value for r in batches[0].records] == [b"warm"]
    assert [r.value for r in batches[-1].records] == [b"after"]
    # Sequences given to the expired batches were given up: "after" went under a new producer id.
    assert batches[-1].producer_id != batches[0].producer_id
    assert batches[-1].base_sequence == 0


@pytest.mark.parametrize("idempotent", [True, False])
async def test_batch_expiring_in_flight_fails_at_its_deadline(broker, topic_name, idempotent):
    """A batch held back by a full in-flight window goes out late, and its answer is slow: its deadline
    passes while it is in flight. It fails then (not when the answer comes, not at the request timeout)
    with an error saying the broker may have written it, which it did. Timers far apart: deadline ~4.0 s
    after the batch was made, answer at ~5.6 s, request timeout at ~5.8 s."""
    from kafka_proxy import KafkaProxy

    settings = dict(linger_ms=0, request_timeout_ms=3000, delivery_timeout_ms=4000, retry_backoff_ms=50,
                    max_in_flight_requests_per_connection=1)
    if not idempotent:
        settings.update(enable_idempotence=False)
    with KafkaProxy(broker.host, broker.port, num_brokers=1) as proxy:
        async with Producer(proxy.bootstrap, **settings) as producer:
            await producer.send_and_wait(topic_name, b"warm", partition=0)
            produced = proxy.count("Produce")
            proxy.delay_responses(2.8, api="Produce", count=2)
            first = await producer.send(topic_name, b"first", partition=0)
            assert await proxy.wait_for_async(lambda: proxy.count("Produce") > produced, NO_HANG)
            late = await producer.send(topic_name, b"late", partition=1)  # waits for the window
            await asyncio.wait_for(first, NO_HANG)
            with pytest.raises(errors.DeliveryTimeoutError) as caught:
                await asyncio.wait_for(late, NO_HANG)
            exc = caught.value
            _assert_expired(exc, topic_name)
            assert exc.attempts == 1 and exc.may_have_been_written
            assert "expired while attempt 1 was in flight with no answer yet" in str(exc)
            assert exc.__cause__ is None  # no request timeout, no cut: the deadline alone
            # The producer goes on (an idempotent one under a new producer id, its sequence given up).
            proxy.clear_faults()
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"next", partition=1), NO_HANG)
    # "May have been written": it was (the proxy delayed only the answer).
    batches = await read_batches(broker.host, broker.port, topic_name, 1)
    assert [r.value for b in batches for r in b.records] == [b"late", b"next"]
    if idempotent:
        assert batches[1].producer_id != batches[0].producer_id


async def test_records_expire_while_init_producer_id_is_pending(broker, topic_name):
    """Issue 8's first defect, with the competing timers far apart: the sender used to await InitProducerId
    inline, and nothing expired meanwhile; when the answer came it sent, in the same turn, batches whose
    deadline had passed, and they were delivered late instead of failing. Here the broker forgets the
    producer id (UNKNOWN_PRODUCER_ID, answered after 2.5 s) and then takes 3.5 s to give a new one: the
    records' deadlines (5 s after they were made) pass at ~5 s, the new id comes at ~6 s, and the
    InitProducerId request would time out at ~6.5 s."""
    from kafka_proxy import KafkaProxy

    with KafkaProxy(broker.host, broker.port, num_brokers=1) as proxy:
        async with Producer(proxy.bootstrap, linger_ms=0, request_timeout_ms=4000, delivery_timeout_ms=5000,
                            retry_backoff_ms=50, max_in_flight_requests_per_connection=1) as producer:
            await producer.send_and_wait(topic_name, b"warm", partition=0)
            produced, inits = proxy.count("Produce"), proxy.count("InitProducerId")
            proxy.fail_produce(topic_name, 0, 59, count=1)  # UNKNOWN_PRODUCER_ID
            proxy.delay_responses(2.5, api="Produce", count=1)
            proxy.delay_responses(3.5, api="InitProducerId", count=1)
            forgotten = await producer.send(topic_name, b"forgotten", partition=0)
            assert await proxy.wait_for_async(lambda: proxy.count("Produce") > produced, NO_HANG)
            queued = await producer.send(topic_name, b"queued", partition=1)  # waits for the window
            # Before the fix, this one was sent in the turn that got the new id, and delivered past its deadline.
            with pytest.raises(errors.DeliveryTimeoutError) as caught:
                await asyncio.wait_for(queued, NO_HANG)
            _assert_expired(caught.value, topic_name)
            assert caught.value.attempts == 0
            with pytest.raises(errors.DeliveryTimeoutError) as caught:
                await asyncio.wait_for(forgotten, NO_HANG)
            exc = caught.value
            _assert_expired(exc, topic_name)
            assert exc.attempts == 1 and not exc.may_have_been_written  # a definite "not written"
            assert "expired after 1 attempt(s)" in str(exc)
            assert isinstance(exc.__cause__, errors.UnknownProducerIdError)
            # Both expired while the one InitProducerId asked for was unanswered (it is answered, at ~6 s).
            assert proxy.count("InitProducerId") == inits + 1
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"next", partition=1), NO_HANG)
    # Never sent, never written; and the record after it went under the new producer id.
    [batch] = await read_batches(broker.host, broker.port, topic_name, 1)
    assert [r.value for r in batch.records] == [b"next"] and batch.base_sequence == 0
