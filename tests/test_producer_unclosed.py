"""A producer left running when its event loop ends (no stop()) says so, as asyncio does for a task
destroyed while pending: the loop's exception handler hears which producer and how many records were never
delivered, and the producer, once collected, gives a ResourceWarning like an unclosed socket. A stopped
producer says nothing. (Sync tests: each runs its own loop to the end, on asyncio's loop and on uvloop.)"""
from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from aiokprod import Producer, errors

try:
    import uvloop
except ImportError:  # uvloop is in the test extra; without it only asyncio runs
    uvloop = None

LOOPS = {"asyncio": asyncio.new_event_loop}
if uvloop is not None:
    LOOPS["uvloop"] = uvloop.new_event_loop


def _run_to_the_end(factory, main):
    """Run ``main(contexts)`` as asyncio.run does (the runner cancels every task left when it closes)."""
    contexts: list = []

    async def wrapper():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: contexts.append(context))
        return await main()

    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(wrapper())
    return result, contexts


def _warnings_when_collected(holder: list) -> list:
    """Drop the last references (in ``holder``) and collect: the ResourceWarnings that came of it. The
    producer sits in reference cycles, so only the collector finalises it, and that may run at any
    allocation: references are dropped inside the recording block, never before."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        holder.clear()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_producer_not_stopped_when_the_loop_ends_reports_its_lost_records(broker, topic_name, loop_name):
    async def main():
        producer = Producer(broker.bootstrap, client_id="left-running", linger_ms=60_000)
        await producer.start()
        delivered = await producer.send(topic_name, b"delivered", partition=0)
        await producer.flush()
        assert delivered.result().offset >= 0
        handles = [await producer.send(topic_name, b"buffered %d" % i, partition=i % 2) for i in range(7)]
        return producer, handles  # no stop(): the runner ends the loop with the records buffered

    (producer, handles), contexts = _run_to_the_end(LOOPS[loop_name], main)
    lost = [c for c in contexts if c.get("producer") is producer]
    assert len(lost) == 1, contexts
    assert lost[0]["message"].startswith(
        "<aiokprod.Producer client_id='left-running' bootstrap='%s' failed> was not stopped before its event "
        "loop ended: 7 record(s) were never delivered" % broker.bootstrap), lost[0]["message"]
    # Nothing is left pending: whoever still held a handle learns why it failed.
    for handle in handles:
        assert handle.done()
        assert isinstance(handle.exception(), errors.ProducerClosedError)
        assert "before stop(); 7 record(s) never delivered" in str(handle.exception())
    holder = [producer]
    contexts.clear()  # the loop's handler (reachable from the handles) holds this list
    del producer, handles, handle, lost
    resource = _warnings_when_collected(holder)
    assert [m for m in resource if m.startswith("unclosed producer <aiokprod.Producer client_id='left-running'")], \
        resource


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_producer_not_stopped_with_nothing_buffered_gives_only_the_resource_warning(broker, topic_name, loop_name):
    async def main():
        producer = Producer(broker.bootstrap, client_id="idle-left-running", linger_ms=1)
        await producer.start()
        await producer.send_and_wait(topic_name, b"delivered", partition=0)
        return producer

    producer, contexts = _run_to_the_end(LOOPS[loop_name], main)
    assert not [c for c in contexts if c.get("producer") is producer], contexts
    holder = [producer]
    contexts.clear()
    del producer
    resource = _warnings_when_collected(holder)
    assert [m for m in resource if m.startswith("unclosed producer <aiokprod.Producer client_id='idle-left-running'")], \
        resource


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_stopped_and_never_started_producers_say_nothing(broker, topic_name, loop_name):
    async def main():
        async with Producer(broker.bootstrap, client_id="stopped", linger_ms=60_000) as producer:
            handle = await producer.send(topic_name, b"flushed by stop", partition=0)
        stopped_early = Producer(broker.bootstrap, client_id="stopped")
        await stopped_early.start()
        await stopped_early.stop()
        never_started = Producer(broker.bootstrap, client_id="stopped")
        return [producer, stopped_early, never_started], handle

    (producers, handle), contexts = _run_to_the_end(LOOPS[loop_name], main)
    assert handle.result().offset >= 0
    assert contexts == []
    holder = [producers]
    del producers
    assert [m for m in _warnings_when_collected(holder) if "unclosed producer" in m] == []
