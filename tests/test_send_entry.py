"""``producer.send`` / ``producer.send_and_wait`` are the appender's entries (``RecordAppender.send`` and
``.send_and_wait``, both twins): the fast path appends when they are called and returns a ``_Ready`` (a
coroutine to asyncio, with no frame), or the coroutine of ``Producer.send`` / ``send_and_wait`` (the general
path) when it declines. Whatever they return must work as today's coroutines did: awaited, given to
``create_task`` / ``ensure_future`` / ``gather`` / ``wait_for``, cancelled, never awaited (a RuntimeWarning),
and raise the same errors before start() and after stop(). On the real broker, read back by confluent-kafka's
consumer.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import warnings

import pytest

from aiokprod import Producer, _impl, errors
from aiokprod import producer as producer_module
from aiokprod.handle import DeliveryHandle
from aiokprod.metadata import RecordMetadata
from helpers import read_back_async
from starlette.background import BackgroundTask  # fastapi's, in the test extra

TWINS = [
    "python",
    pytest.param("native", marks=pytest.mark.skipif(_impl.NO_EXTENSIONS, reason="AIOKPROD_NO_EXTENSIONS=1")),
]

GUARD = 30.0  # asyncio.wait_for guards against hangs only


@pytest.fixture(params=TWINS)
def twin(request):
    return _impl.python_twin("appender") if request.param == "python" else _impl.native_twin("appender")


def make_producer(twin, bootstrap, **config):
    """A Producer whose appender (hence whose send entries) is ``twin``'s."""
    config.setdefault("linger_ms", 60_000)  # batches stay open until flush(): the fast path has one to use
    original = producer_module.RecordAppender
    producer_module.RecordAppender = twin.RecordAppender
    try:
        return Producer(bootstrap, **config)
    finally:
        producer_module.RecordAppender = original


def is_fast(twin, awaitable):
    """Returned by the fast path (the record is appended already), not the general path's coroutine."""
    return isinstance(awaitable, twin._Ready)


def is_general(awaitable):
    return inspect.iscoroutine(awaitable) and awaitable.cr_code.co_name in (
        "send", "send_and_wait", "_send_in_order", "_send_and_wait_in_order")


async def started(twin, broker, topic, **config):
    producer = make_producer(twin, broker.bootstrap, **config)
    await asyncio.wait_for(producer.start(), GUARD)
    await asyncio.wait_for(producer.partitions_for(topic), GUARD)
    # The first record of a partition opens its batch (general path); from then on the fast path takes them.
    await producer.send(topic, b"opener", partition=0)
    return producer


async def test_the_entries_are_the_appenders_and_a_subclass_keeps_its_own(twin):
    producer = make_producer(twin, "127.0.0.1:1")
    assert producer.send.__self__ is producer._appender and producer.send.__name__ == "send"
    assert producer.send_and_wait.__self__ is producer._appender
    assert Producer.send.__qualname__ == "Producer.send"  # the class keeps its typed, documented methods
    # Code that dispatches on "is it a coroutine function" (Starlette's BackgroundTasks: else it calls it in a
    # worker thread) still sees one: asyncio's test on every version, inspect's from 3.12.
    for entry in (producer.send, producer.send_and_wait):
        assert asyncio.iscoroutinefunction(entry)
        if sys.version_info >= (3, 12):
            assert inspect.iscoroutinefunction(entry)
        assert BackgroundTask(entry, "t", b"v").is_async  # Starlette awaits it on the loop

    class Mine(Producer):
        async def send(self, *args, **kwargs):
            return "mine"

    mine = Mine("127.0.0.1:1")
    assert await mine.send("t") == "mine"
    assert mine.send_and_wait.__self__ is mine._appender  # not overridden: the entry


@pytest.mark.parametrize("how", ["await", "create_task", "ensure_future", "gather", "wait_for"])
async def test_send_on_both_paths_works_with_asyncio(twin, broker, topic_name, how):
    producer = await started(twin, broker, topic_name)
    try:
        async def use(awaitable):
            assert asyncio.iscoroutine(awaitable) and inspect.isawaitable(awaitable)
            if how == "await":
                return await awaitable
            if how == "create_task":
                return await asyncio.create_task(awaitable)
            if how == "ensure_future":
                return await asyncio.ensure_future(awaitable)
            if how == "gather":
                return (await asyncio.gather(awaitable))[0]
            return await asyncio.wait_for(awaitable, GUARD)

        fast = producer.send(topic_name, b"fast", partition=0)
        assert is_fast(twin, fast)
        handles = [await use(fast)]
        general = producer.send(topic_name, bytearray(b"general"), partition=0)  # converted: the general path
        assert is_general(general)
        handles.append(await use(general))
        assert all(type(h) is DeliveryHandle for h in handles)
        fast_wait = producer.send_and_wait(topic_name, b"fast-wait", partition=0)
        assert is_fast(twin, fast_wait)
        general_wait = producer.send_and_wait(topic_name, b"general-wait", partition=0, headers={"h": b"1"})
        assert is_general(general_wait)
        waits = [asyncio.ensure_future(use(fast_wait)), asyncio.ensure_future(use(general_wait))]
        # Their tasks' first steps (and those of the tasks wait_for and gather make): the general one appends
        # there. Then flush() sends them (linger_ms is long) and the waits return.
        for _ in range(5):
            await asyncio.sleep(0)
        await asyncio.wait_for(producer.flush(), GUARD)
        metas = await asyncio.wait_for(asyncio.gather(*waits), GUARD)
        assert all(type(m) is RecordMetadata for m in metas)
        metas = [await asyncio.wait_for(h, GUARD) for h in handles] + metas
    finally:
        await producer.stop()
    # The fast ones were appended at the call, the general ones when their coroutine ran.
    assert [m.offset for m in metas] == [1, 2, 3, 4]
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 5)
    assert [(s.offset, s.value) for s in stored] == [
        (0, b"opener"), (1, b"fast"), (2, b"general"), (3, b"fast-wait"), (4, b"general-wait")]
    assert stored[4].headers == (("h", b"1"),)


async def test_a_record_that_does_not_fit_is_not_overtaken(twin, broker, topic_name):
    # The open batch refuses a big record (the general path will close the batch and open the next); the small
    # records sent after it, which would fit, must not go into the old batch ahead of it.
    producer = await started(twin, broker, topic_name, batch_size=1024)
    try:
        calls = [producer.send(topic_name, b"s%d" % i, partition=0) for i in range(5)]
        assert all(is_fast(twin, c) for c in calls)
        while is_fast(twin, call := producer.send(topic_name, b"f" * 100, partition=0)):
            calls.append(call)
        calls.append(call)  # the 100-byte record the batch refused: general path
        assert is_general(call)
        later = [producer.send(topic_name, b"after%d" % i, partition=0) for i in range(3)]
        assert all(is_general(c) for c in later)  # they would fit, but the batch refused an earlier record
        handles = await asyncio.wait_for(asyncio.gather(*calls, *later), GUARD)
        again = producer.send(topic_name, b"fast again", partition=0)
        assert is_fast(twin, again)  # into the next batch, which the refused record opened
        handles.append(await again)
        await asyncio.wait_for(producer.flush(), GUARD)
        metas = [await asyncio.wait_for(h, GUARD) for h in handles]
    finally:
        await producer.stop()
    assert [m.offset for m in metas] == list(range(1, len(metas) + 1))
    assert metas[len(calls)].partition == 0 and handles[len(calls) - 1].completion is not handles[0].completion
    stored = await read_back_async(broker.bootstrap, topic_name, [0], len(metas) + 1)
    values = [s.value for s in stored]
    assert values[-4:] == [b"after0", b"after1", b"after2", b"fast again"]
    assert values[-5] == b"f" * 100


async def test_cancelled_before_or_while_waiting_the_record_is_still_delivered(twin, broker, topic_name):
    producer = await started(twin, broker, topic_name)
    try:
        before = producer.send_and_wait(topic_name, b"cancelled before its first step", partition=0)
        assert is_fast(twin, before)
        task = asyncio.create_task(before)
        task.cancel()
        waiting = asyncio.create_task(producer.send_and_wait(topic_name, b"cancelled waiting", partition=0))
        await asyncio.sleep(0)  # its first step: it now waits for the handle
        assert not waiting.done()
        waiting.cancel()
        for cancelled in (task, waiting):
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        await asyncio.wait_for(producer.flush(), GUARD)
    finally:
        await producer.stop()
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 3)
    assert [s.value for s in stored] == [b"opener", b"cancelled before its first step", b"cancelled waiting"]


async def test_never_awaited_warns_as_a_coroutine_and_the_fast_record_is_sent_anyway(twin, broker, topic_name):
    producer = await started(twin, broker, topic_name)
    try:
        with pytest.warns(RuntimeWarning) as caught:
            producer.send(topic_name, b"fast, never awaited", partition=0)
            producer.send_and_wait(topic_name, b"fast wait, never awaited", partition=0)
            producer.send(topic_name, bytearray(b"general, never awaited"), partition=0)
            gc.collect()
        # (In asyncio debug mode CPython adds where the general path's coroutine was created.)
        messages = [str(w.message).split("\n")[0] for w in caught]
        assert sorted(messages) == [
            "coroutine 'Producer.send' was never awaited",
            "coroutine 'Producer.send' was never awaited (its record was appended anyway)",
            "coroutine 'Producer.send_and_wait' was never awaited (its record was appended anyway)",
        ]
        assert all(w.category is RuntimeWarning for w in caught)
        # The general path's coroutine never ran: its record is lost, as any unawaited coroutine's, and the
        # entries append nothing themselves from then on (they cannot tell it will never run), so later
        # records go through the general path, in order, and are not lost when awaited.
        assert producer._appender.pending_general == 1
        # Closed or thrown into before its first step: no warning, as for a coroutine.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            producer.send(topic_name, b"closed", partition=0).close()
            with pytest.raises(KeyError, match="thrown"):
                producer.send(topic_name, b"thrown into", partition=0).throw(KeyError("thrown"))
            gc.collect()
        later = producer.send(topic_name, b"awaited after", partition=0)
        assert is_general(later)
        handle = await asyncio.wait_for(later, GUARD)
        await asyncio.wait_for(producer.flush(), GUARD)
        assert (await handle).offset == 3
    finally:
        await producer.stop()
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 4)
    assert [s.value for s in stored] == [b"opener", b"fast, never awaited", b"fast wait, never awaited",
                                         b"awaited after"]


async def test_a_record_the_fast_path_declines_is_not_overtaken(twin, broker, topic_name):
    """gather() runs the coroutines it is given in order; the fast path appends at the call. A record it
    declines (a bytearray value, here) is the general path's when its coroutine runs: the records sent after
    it must not be appended before it."""
    producer = await started(twin, broker, topic_name)
    try:
        sends = [producer.send(topic_name, bytearray(b"first"), partition=0),
                 producer.send(topic_name, b"second", partition=0),
                 producer.send_and_wait(topic_name, b"third", partition=0)]
        assert is_general(sends[0]) and is_general(sends[1]) and is_general(sends[2])
        assert producer._appender.pending_general == 3
        first, second, third, _ = await asyncio.wait_for(asyncio.gather(*sends, producer.flush()), GUARD)
        assert (first.index, second.index) == (1, 2) and third.offset == 3  # in call order in their batch
        assert producer._appender.pending_general == 0
        await producer.send(topic_name, b"fourth", partition=0)  # opens the next batch (general path)
        fifth = producer.send(topic_name, b"fifth", partition=0)
        assert is_fast(twin, fifth)  # the fast path is back
        await fifth
        await asyncio.wait_for(producer.flush(), GUARD)
    finally:
        await producer.stop()
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 6)
    assert [s.value for s in stored] == [b"opener", b"first", b"second", b"third", b"fourth", b"fifth"]


async def test_send_from_another_thread_appends_on_the_loop(twin, broker, topic_name):
    """asyncio.run_coroutine_threadsafe(producer.send(...), loop) calls send() in the caller's thread: the
    record must be appended by the loop's thread when the coroutine runs, never beside the sender."""
    producer = await started(twin, broker, topic_name)
    loop = asyncio.get_running_loop()
    seen = {}

    def from_thread():
        awaitable = producer.send(topic_name, b"from a thread", partition=0)
        seen["general"] = is_general(awaitable)
        seen["pending"] = producer._appender.pending_general
        return asyncio.run_coroutine_threadsafe(awaitable, loop).result(GUARD)

    try:
        handle = await asyncio.wait_for(asyncio.to_thread(from_thread), GUARD)
        await asyncio.wait_for(producer.flush(), GUARD)
        assert (await handle).offset == 1
        assert seen == {"general": True, "pending": 1}
        assert producer._appender.pending_general == 0
    finally:
        await producer.stop()
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 2)
    assert [s.value for s in stored] == [b"opener", b"from a thread"]


async def test_the_ready_awaitable_behaves_as_a_coroutine(twin, broker, topic_name):
    producer = await started(twin, broker, topic_name)
    try:
        ready = producer.send(topic_name, b"x", partition=0)
        assert is_fast(twin, ready) and ready.__await__() is ready and not ready.cr_running
        assert "Producer.send()" in repr(asyncio.ensure_future(ready))  # asyncio names the task's coroutine
        refused = producer.send(topic_name, b"y", partition=0)
        with pytest.raises(TypeError, match="can't send non-None value to a just-started coroutine"):
            refused.send(1)
        refused.close()  # still not started: closing it, as a coroutine, is what keeps it from warning
        ready = producer.send(topic_name, b"z", partition=0)
        with pytest.raises(StopIteration) as stop:
            ready.send(None)
        assert type(stop.value.value) is DeliveryHandle
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await ready
        # send_and_wait's: its first step yields the handle to the Task (not done yet), then returns its result.
        ready = producer.send_and_wait(topic_name, b"w", partition=0)
        assert type(ready.send(None)) is DeliveryHandle
        with pytest.raises(ValueError, match="into the wait"):
            ready.throw(ValueError("into the wait"))
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            ready.send(None)
        await asyncio.wait_for(producer.flush(), GUARD)
    finally:
        await producer.stop()
    stored = await read_back_async(broker.bootstrap, topic_name, [0], 5)
    assert [s.value for s in stored] == [b"opener", b"x", b"y", b"z", b"w"]


async def test_before_start_and_after_stop_the_same_errors_as_before(twin, broker, topic_name):
    producer = make_producer(twin, broker.bootstrap)
    for call in (producer.send, producer.send_and_wait):
        awaitable = call(topic_name, b"v")
        assert is_general(awaitable)
        with pytest.raises(errors.ProducerClosedError, match=f"send\\(\\) to '{topic_name}' on a producer that is new"):
            await awaitable
    await producer.start()
    await producer.send(topic_name, b"v", partition=0)
    assert is_fast(twin, ready := producer.send(topic_name, b"v", partition=0))
    await ready
    await producer.stop()
    for call in (producer.send, producer.send_and_wait):
        with pytest.raises(errors.ProducerClosedError, match="on a producer that is closed"):
            await asyncio.create_task(call(topic_name, b"v", partition=0))
