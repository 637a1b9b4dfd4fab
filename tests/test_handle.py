"""Delivery handles and batch completions: both twins, both event loops (tests/conftest.py), same tests.

The compiled twin must behave exactly like the Python one; ``test_twins_trace_identically`` replays one
scenario on each and compares the full trace of observable events.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import weakref

import pytest

from aiokprod import _impl
from aiokprod.metadata import RecordMetadata

try:
    import uvloop
except ImportError:
    uvloop = None

TWINS = [
    pytest.param("native", marks=pytest.mark.skipif(_impl.NO_EXTENSIONS, reason="AIOKPROD_NO_EXTENSIONS=1")),
    "python",
]


def _twin(name):
    return _impl.native_twin("handle") if name == "native" else _impl.python_twin("handle")


@pytest.fixture(params=TWINS)
def hm(request):
    """The handle module under test (native or python twin)."""
    return _twin(request.param)


def _batch(hm, loop, n=3, first_ts=1000, topic="t", partition=2):
    completion = hm.BatchCompletion(loop, topic, partition)
    handles = [completion.add(first_ts + i) for i in range(n)]
    return completion, handles


class CountingLoop:
    """Wraps the running loop to count call_soon calls (uvloop's Loop cannot be patched in place)."""

    def __init__(self, loop):
        self._loop = loop
        self.scheduled = []

    def call_soon(self, callback, *args, context=None):
        self.scheduled.append(callback)
        return self._loop.call_soon(callback, *args, context=context)

    def call_exception_handler(self, context):
        return self._loop.call_exception_handler(context)


async def _turn():
    """Let the loop run the callbacks scheduled so far (call_soon callbacks run in FIFO order)."""
    await asyncio.sleep(0)


# ---- selection -------------------------------------------------------------------------------------------

def test_selector_reports_implementation():
    import aiokprod.handle as selected

    assert selected.IMPLEMENTATION == ("python" if _impl.NO_EXTENSIONS else "native")
    assert selected.BatchCompletion.__module__.endswith("handle")
    assert selected.RecordMetadata is RecordMetadata
    for name in ("native", "python"):
        if name == "native" and _impl.NO_EXTENSIONS:
            continue
        assert _twin(name).RecordMetadata is RecordMetadata


def test_public_names_match_between_twins():
    if _impl.NO_EXTENSIONS:
        pytest.skip("AIOKPROD_NO_EXTENSIONS=1")
    native, python = _twin("native"), _twin("python")
    assert native.__all__ == python.__all__
    protocol = {"_asyncio_future_blocking", "_cancel_message", "_make_cancelled_error"}
    for cls in ("BatchCompletion", "DeliveryHandle"):
        public = lambda c: {n for n in dir(c) if not n.startswith("_") or n in protocol}  # noqa: E731
        assert public(getattr(native, cls)) == public(getattr(python, cls)), cls


# ---- success ---------------------------------------------------------------------------------------------

async def test_await_gives_offsets_and_create_timestamps(hm):
    loop = asyncio.get_running_loop()
    completion, handles = _batch(hm, loop, n=4, first_ts=1_700_000_000_000, topic="orders", partition=7)
    assert len(completion) == 4
    assert completion.resolve(500) is True
    results = [await h for h in handles]
    assert results == [RecordMetadata("orders", 7, 500 + i, 1_700_000_000_000 + i) for i in range(4)]
    assert all(type(r) is RecordMetadata for r in results)
    assert completion.done and completion.exception is None
    assert [completion.metadata(i) for i in range(4)] == results


async def test_log_append_time_replaces_every_timestamp(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=3)
    completion.resolve(10, 99_999)
    assert await asyncio.gather(*handles) == [RecordMetadata("t", 2, 10 + i, 99_999) for i in range(3)]


async def test_acks_zero_gives_offset_minus_one(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=3, first_ts=5)
    completion.resolve(-1)
    assert await asyncio.gather(*handles) == [RecordMetadata("t", 2, -1, 5 + i) for i in range(3)]


async def test_empty_batch_resolves(hm):
    completion = hm.BatchCompletion(asyncio.get_running_loop(), "t", 0)
    seen = []
    completion.add_batch_callback(seen.append)
    assert completion.resolve(0)
    await _turn()
    assert completion.done and seen == [completion] and len(completion) == 0


async def test_await_in_task_before_resolution(hm):
    loop = asyncio.get_running_loop()
    completion, handles = _batch(hm, loop, n=2)
    tasks = [asyncio.create_task(_await(h)) for h in handles]
    await _turn()
    assert not any(t.done() for t in tasks)
    loop.call_later(0.001, completion.resolve, 42)
    assert [await t for t in tasks] == [RecordMetadata("t", 2, 42, 1000), RecordMetadata("t", 2, 43, 1001)]


async def _await(awaitable):
    return await awaitable


# ---- failure ---------------------------------------------------------------------------------------------

class DeliveryError(Exception):
    pass


async def test_failure_raises_the_same_exception_everywhere(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=3)
    error = DeliveryError("topic authorization failed")
    assert completion.fail(error) is True
    for h in handles:
        with pytest.raises(DeliveryError) as info:
            await h
        assert info.value is error
        assert h.exception() is error
        assert h.done() and not h.cancelled()
    results = await asyncio.gather(*handles, return_exceptions=True)
    assert all(r is error for r in results)
    assert completion.exception is error
    with pytest.raises(asyncio.InvalidStateError):
        completion.metadata(0)


async def test_failure_traceback_does_not_grow_per_awaiter(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=50)
    error = DeliveryError("boom")
    completion.fail(error)
    await _turn()
    depths = []
    for h in handles:
        try:
            h.result()
        except DeliveryError as exc:
            tb, depth = exc.__traceback__, 0
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    assert len(set(depths)) == 1


async def test_fail_accepts_an_exception_class_and_rejects_stopiteration(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=1)
    with pytest.raises(TypeError):
        completion.fail(StopIteration())
    with pytest.raises(TypeError):
        completion.fail("not an exception")
    assert not completion.settled
    completion.fail(DeliveryError)
    with pytest.raises(DeliveryError):
        await handles[0]


async def test_settle_twice_is_ignored(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=2)
    assert completion.resolve(7)
    assert completion.resolve(100) is False  # before the loop turned
    assert completion.fail(DeliveryError()) is False
    await _turn()
    assert completion.resolve(200) is False  # after it turned
    assert completion.fail(DeliveryError()) is False
    assert [h.result().offset for h in handles] == [7, 8]
    with pytest.raises(asyncio.InvalidStateError):
        completion.add(1)


async def test_failed_then_resolve_is_ignored(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=1)
    error = DeliveryError()
    assert completion.fail(error)
    assert completion.resolve(1) is False
    with pytest.raises(DeliveryError):
        await handles[0]
    assert handles[0].cancel() is False  # done handles cannot be cancelled


# ---- future protocol -------------------------------------------------------------------------------------

async def test_isfuture_and_protocol_attributes(hm):
    loop = asyncio.get_running_loop()
    completion, (h,) = _batch(hm, loop, n=1)
    assert asyncio.isfuture(h)
    assert hasattr(type(h), "_asyncio_future_blocking")
    assert h._asyncio_future_blocking is False
    h._asyncio_future_blocking = True  # asyncio's Task writes it per instance
    assert h._asyncio_future_blocking is True
    h._asyncio_future_blocking = False
    assert h.get_loop() is loop
    assert h.completion is completion and h.index == 0
    assert not h.done() and not h.cancelled()
    assert h._cancel_message is None


async def test_result_and_exception_before_done(hm):
    completion, (h,) = _batch(hm, asyncio.get_running_loop(), n=1)
    with pytest.raises(asyncio.InvalidStateError):
        h.result()
    with pytest.raises(asyncio.InvalidStateError):
        h.exception()
    completion.resolve(0)
    # Settled but the batch's loop callback has not run: still not done (done flips with the callbacks).
    assert completion.settled and not completion.done and not h.done()
    with pytest.raises(asyncio.InvalidStateError):
        h.result()
    await _turn()
    assert h.done() and h.exception() is None and h.result().offset == 0


async def test_await_outside_a_task_protocol(hm):
    """Drive __await__ by hand the way a Task does: it yields the handle once, then returns the result."""
    completion, (h,) = _batch(hm, asyncio.get_running_loop(), n=1)
    it = h.__await__()
    assert next(it) is h
    assert h._asyncio_future_blocking is True
    with pytest.raises(RuntimeError, match="await wasn't used with future"):
        next(it)
    it = iter(h)
    assert next(it) is h
    completion.resolve(3)
    await _turn()
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value == RecordMetadata("t", 2, 3, 1000)


async def test_await_iterator_send_throw_like_a_generator(hm):
    """send()/throw() on what __await__ returns behave as on the Python twin's generator."""
    completion, (h, h2) = _batch(hm, asyncio.get_running_loop(), n=2)
    it = h.__await__()
    with pytest.raises(TypeError, match="just-started"):
        it.send(3)
    assert next(it) is h
    completion.resolve(7)
    await _turn()
    with pytest.raises(StopIteration) as stop:
        it.send("ignored once started")
    assert stop.value.value == RecordMetadata("t", 2, 7, 1000)
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value is None
    it = h2.__await__()
    with pytest.raises(KeyError):
        it.throw(KeyError("raised where the handle is awaited"))


def test_run_until_complete_on_both_loops(hm):
    factories = [asyncio.new_event_loop] + ([uvloop.new_event_loop] if uvloop else [])
    for factory in factories:
        loop = factory()
        try:
            completion, (h,) = _batch(hm, loop, n=1)
            loop.call_soon(completion.resolve, 11)
            assert loop.run_until_complete(h) == RecordMetadata("t", 2, 11, 1000)
            completion, (h,) = _batch(hm, loop, n=1)
            loop.call_soon(completion.fail, DeliveryError("x"))
            with pytest.raises(DeliveryError):
                loop.run_until_complete(h)
        finally:
            loop.close()


# ---- asyncio combinators ---------------------------------------------------------------------------------

async def test_gather_across_batches(hm):
    loop = asyncio.get_running_loop()
    a, ha = _batch(hm, loop, n=2, partition=0)
    b, hb = _batch(hm, loop, n=2, partition=1)
    gathered = asyncio.gather(*ha, *hb)
    loop.call_soon(b.resolve, 100)
    loop.call_soon(a.resolve, 0)
    assert [(r.partition, r.offset) for r in await gathered] == [(0, 0), (0, 1), (1, 100), (1, 101)]


async def test_gather_fails_with_the_batch_error(hm):
    loop = asyncio.get_running_loop()
    a, ha = _batch(hm, loop, n=2)
    error = DeliveryError()
    loop.call_soon(a.fail, error)
    with pytest.raises(DeliveryError) as info:
        await asyncio.gather(*ha)
    assert info.value is error


async def test_cancelling_gather_cancels_handles_not_the_batch(hm):
    loop = asyncio.get_running_loop()
    completion, handles = _batch(hm, loop, n=3)
    gathered = asyncio.gather(*handles)
    await _turn()
    gathered.cancel("stop waiting")
    with pytest.raises(asyncio.CancelledError):
        await gathered
    assert all(h.cancelled() for h in handles)
    with pytest.raises(asyncio.CancelledError):
        handles[0].result()
    assert completion.resolve(0) is True
    await _turn()
    assert completion.done and completion.metadata(2).offset == 2


async def test_gather_return_exceptions_with_a_cancelled_handle(hm):
    loop = asyncio.get_running_loop()
    completion, handles = _batch(hm, loop, n=2)
    gathered = asyncio.gather(*handles, return_exceptions=True)
    handles[0].cancel("bye")
    completion.resolve(5)
    first, second = await gathered
    assert isinstance(first, asyncio.CancelledError) and first.args == ("bye",)
    assert second == RecordMetadata("t", 2, 6, 1001)


async def test_wait_for_success_and_timeout(hm):
    loop = asyncio.get_running_loop()
    completion, (slow, sibling) = _batch(hm, loop, n=2)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(slow, 0.01)
    assert slow.cancelled()
    # The record is still delivered: the batch and the sibling's awaiter are unaffected.
    loop.call_soon(completion.resolve, 9)
    assert await asyncio.wait_for(sibling, 1) == RecordMetadata("t", 2, 10, 1001)
    assert completion.metadata(0).offset == 9


async def test_shield_keeps_the_handle_alive(hm):
    loop = asyncio.get_running_loop()
    completion, (h,) = _batch(hm, loop, n=1)
    outer = asyncio.shield(h)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not h.cancelled()
    completion.resolve(1)
    assert await asyncio.shield(h) == RecordMetadata("t", 2, 1, 1000)  # done: shield returns it as is
    assert await h == RecordMetadata("t", 2, 1, 1000)


async def test_as_completed_and_wait(hm):
    loop = asyncio.get_running_loop()
    a, ha = _batch(hm, loop, n=2, partition=0)
    b, hb = _batch(hm, loop, n=1, partition=1)
    loop.call_soon(b.resolve, 50)
    loop.call_later(0.01, a.resolve, 0)
    order = [(await f).partition for f in asyncio.as_completed([*ha, *hb])]
    assert order == [1, 0, 0]
    c, hc = _batch(hm, loop, n=2)
    loop.call_soon(c.resolve, 0)
    done, pending = await asyncio.wait(hc)
    assert done == set(hc) and not pending


async def test_cancelling_one_awaiting_task_leaves_siblings(hm):
    loop = asyncio.get_running_loop()
    completion, handles = _batch(hm, loop, n=3)
    tasks = [asyncio.create_task(_await(h)) for h in handles]
    await _turn()
    tasks[1].cancel("user gave up")
    await _turn()
    assert handles[1].cancelled()
    assert handles[1]._cancel_message == "user gave up"
    assert completion.resolve(0) is True
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0].offset == 0 and results[2].offset == 2
    assert isinstance(results[1], asyncio.CancelledError)
    assert handles[1].cancel() is False  # already cancelled


# ---- callbacks -------------------------------------------------------------------------------------------

async def test_one_call_soon_per_batch_and_nothing_runs_inline(hm):
    real = asyncio.get_running_loop()
    counting = CountingLoop(real)
    completion = hm.BatchCompletion(counting, "t", 0)
    handles = [completion.add(i) for i in range(100)]
    ran = []
    for h in handles:
        h.add_done_callback(lambda fut: ran.append(("a", fut.index)))
        h.add_done_callback(lambda fut: ran.append(("b", fut.index)))
    completion.add_batch_callback(lambda c: ran.append(("batch", len(c))))
    assert counting.scheduled == []
    completion.resolve(0)
    assert len(counting.scheduled) == 1  # one loop callback for the whole batch ...
    assert ran == [] and not handles[0].done()  # ... and nothing ran inline
    await _turn()
    expected = [("batch", 100)] + [(tag, i) for i in range(100) for tag in ("a", "b")]
    assert ran == expected  # batch callbacks first, then record order, each once
    assert len(counting.scheduled) == 1
    await _turn()
    assert ran == expected


async def test_callbacks_run_in_record_order_whatever_the_registration_order(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=5)
    ran = []
    for i in (3, 0, 4, 1, 2):
        handles[i].add_done_callback(lambda fut: ran.append(fut.index))
    completion.fail(DeliveryError())
    await _turn()
    assert ran == [0, 1, 2, 3, 4]


async def test_callback_added_after_done_is_scheduled(hm):
    completion, (h,) = _batch(hm, asyncio.get_running_loop(), n=1)
    completion.resolve(0)
    await _turn()
    ran = []
    h.add_done_callback(ran.append)
    completion.add_batch_callback(ran.append)
    assert ran == []
    await _turn()
    assert ran == [h, completion]


async def test_callbacks_added_to_done_handles_share_one_loop_callback(hm):
    """gather() over handles that are done already: their callbacks wait in one queue run by ONE loop
    callback, in the order they were added (across handles and batches), none inside add_done_callback."""
    counting = CountingLoop(asyncio.get_running_loop())
    first, second = hm.BatchCompletion(counting, "t", 0), hm.BatchCompletion(counting, "t", 1)
    a = [first.add(i) for i in range(3)]
    b = [second.add(i) for i in range(3)]
    first.resolve(0)
    second.resolve(10)
    assert len(counting.scheduled) == 1  # batches settled in one loop iteration: one loop callback
    await _turn()
    assert first.done and second.done
    ran = []
    for h in (b[2], a[0], b[0], a[2], a[0]):
        h.add_done_callback(lambda fut: ran.append((fut.completion.partition, fut.index)))
    assert ran == [] and len(counting.scheduled) == 2  # one loop callback for the five
    await _turn()
    assert ran == [(1, 2), (0, 0), (1, 0), (0, 2), (0, 0)]
    assert len(counting.scheduled) == 2


async def test_late_callbacks_keep_context_errors_and_loop_turns(hm):
    """Each late callback runs in its own context, an error goes to the loop's exception handler and the
    next one still runs, and a callback added while the queue runs waits for the next loop iteration."""
    loop = asyncio.get_running_loop()
    var = contextvars.ContextVar("var", default="unset")
    completion, handles = _batch(hm, loop, n=3)
    completion.resolve(0)
    await _turn()
    reported, ran = [], []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))

    def broken(fut):
        raise ValueError("bad late callback")

    def record(fut):
        ran.append((fut.index, var.get()))
        var.set("changed")  # must reach neither the registering context nor the next callback
        if fut.index == 1:
            handles[2].add_done_callback(record)  # added while the queue runs: the next turn

    try:
        token = var.set("captured")
        handles[0].add_done_callback(record)
        var.reset(token)
        handles[0].add_done_callback(broken)
        explicit = contextvars.copy_context()
        explicit.run(var.set, "explicit")
        handles[1].add_done_callback(record, context=explicit)
        handles[1].add_done_callback(record)
        await _turn()
        assert ran == [(0, "captured"), (1, "explicit"), (1, "unset")]
        await _turn()
        # Each of the two callbacks on handles[1] added one, from its own context (where var is "changed").
        assert ran == [(0, "captured"), (1, "explicit"), (1, "unset"), (2, "changed"), (2, "changed")]
    finally:
        loop.set_exception_handler(previous)
    assert var.get() == "unset" and explicit[var] == "changed"
    assert [(type(ctx["exception"]), str(ctx["exception"]), ctx["handle"]) for ctx in reported] == [
        (ValueError, "bad late callback", handles[0])]


async def test_late_callbacks_of_two_loops_keep_their_order_and_loop(hm):
    """A callback for another loop opens that loop's own queue; the order of addition still holds."""
    real = asyncio.get_running_loop()
    one, two = CountingLoop(real), CountingLoop(real)
    c1, (h1,) = _batch(hm, one, n=1)
    c2, (h2,) = _batch(hm, two, n=1)
    c1.resolve(0)
    c2.resolve(0)
    await _turn()
    ran = []
    for h in (h1, h2, h1):
        h.add_done_callback(lambda fut: ran.append(fut.completion))
    # Besides each batch's own: two queues on the first loop (h2's queue closed h1's), one on the second.
    assert [len(one.scheduled), len(two.scheduled)] == [1 + 2, 1 + 1]
    await _turn()
    assert ran == [c1, c2, c1]


async def test_system_exit_in_a_late_callback_does_not_lose_the_others(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=2)
    completion.resolve(0)
    await _turn()
    ran = []

    def stop(fut):
        raise SystemExit(3)

    real = asyncio.get_running_loop()
    counting = CountingLoop(real)
    late_completion, (late,) = _batch(hm, counting, n=1)
    late_completion.resolve(0)
    late_completion._run()  # done now, without a loop turn
    late.add_done_callback(stop)
    late.add_done_callback(lambda fut: ran.append("after stop"))
    queue_run = counting.scheduled[-1]  # the queue's loop callback: run by hand, SystemExit would end the loop
    with pytest.raises(SystemExit):
        queue_run()
    assert ran == []
    await _turn()
    await _turn()
    assert ran == ["after stop"]


async def test_cancel_schedules_callbacks_through_the_late_queue(hm):
    counting = CountingLoop(asyncio.get_running_loop())
    completion, handles = _batch(hm, counting, n=3)
    ran = []
    for h in handles:
        h.add_done_callback(lambda fut: ran.append((fut.index, fut.cancelled())))
    handles[1].add_done_callback(lambda fut: ran.append(("second", fut.index)))
    handles[2].cancel()
    handles[1].cancel()
    assert ran == [] and len(counting.scheduled) == 1
    assert handles[1].remove_done_callback(lambda fut: None) == 0
    completion.resolve(0)
    await _turn()
    assert ran == [(2, True), (1, True), ("second", 1), (0, False)]


async def test_result_twice_gives_the_same_object(hm):
    """A Task's wakeup calls result() and then its await does: the second call builds nothing new."""
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=2)
    completion.resolve(5)
    await _turn()
    first = handles[1].result()
    assert handles[1].result() is first
    assert handles[0].result() == RecordMetadata("t", 2, 5, 1000)
    assert handles[1].result() == first == RecordMetadata("t", 2, 6, 1001)


async def test_remove_done_callback(hm):
    completion, (h,) = _batch(hm, asyncio.get_running_loop(), n=1)
    ran = []

    def first(fut):
        ran.append("first")

    def second(fut):
        ran.append("second")

    def third(fut):
        ran.append("third")

    h.add_done_callback(first)
    h.add_done_callback(second)
    h.add_done_callback(first)
    h.add_done_callback(third)
    assert h.remove_done_callback(first) == 2
    assert h.remove_done_callback(first) == 0
    h.add_done_callback(first)
    assert h.remove_done_callback(third) == 1
    completion.resolve(0)
    await _turn()
    assert ran == ["second", "first"]
    assert h.remove_done_callback(second) == 0


async def test_callback_error_is_reported_and_others_still_run(hm):
    loop = asyncio.get_running_loop()
    reported = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))
    try:
        completion, handles = _batch(hm, loop, n=2)
        ran = []

        def broken(fut):
            raise ValueError("bad callback")

        handles[0].add_done_callback(broken)
        handles[0].add_done_callback(lambda fut: ran.append(fut.index))
        handles[1].add_done_callback(lambda fut: ran.append(fut.index))
        completion.add_batch_callback(broken)
        completion.resolve(0)
        await _turn()
    finally:
        loop.set_exception_handler(previous)
    assert ran == [0, 1]
    assert [type(ctx["exception"]) for ctx in reported] == [ValueError, ValueError]


async def test_context_propagation(hm):
    var = contextvars.ContextVar("var", default="unset")
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=2)
    seen = []

    def record(fut):
        seen.append((fut.index, var.get()))
        var.set("changed-in-callback")  # must not leak into the registering context

    token = var.set("captured")
    handles[0].add_done_callback(record)  # context=None: a copy of the current context, as asyncio does
    var.reset(token)
    explicit = contextvars.copy_context()
    explicit.run(var.set, "explicit")
    handles[1].add_done_callback(record, context=explicit)
    completion.resolve(0)
    await _turn()
    assert seen == [(0, "captured"), (1, "explicit")]
    assert var.get() == "unset"
    assert explicit[var] == "changed-in-callback"


async def test_callbacks_registered_in_an_empty_context_each_run_in_their_own(hm):
    """Registered from a context with no variables, every callback still gets a context of its own (the
    compiled twin makes it when the callback runs): what one sets, no other sees."""
    var = contextvars.ContextVar("var", default="unset")
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=2)
    seen = []

    def record(fut):
        seen.append((fut.index, var.get()))
        var.set(f"set-by-{fut.index}-{len(seen)}")

    empty = contextvars.Context()
    empty.run(handles[0].add_done_callback, record)
    empty.run(handles[0].add_done_callback, record)
    empty.run(handles[1].add_done_callback, record)
    completion.resolve(0)
    await _turn()
    assert seen == [(0, "unset"), (0, "unset"), (1, "unset")]
    assert len(empty) == 0
    # Cancelled before its batch is done: the callback is scheduled right away, in a context of its own too.
    completion, (h,) = _batch(hm, asyncio.get_running_loop(), n=1)
    seen.clear()
    empty.run(h.add_done_callback, lambda fut: seen.append(var.get()) or var.set("x"))
    empty.run(h.add_done_callback, lambda fut: seen.append(var.get()))
    h.cancel()
    await _turn()
    assert seen == ["unset", "unset"] and len(empty) == 0


async def test_awaiting_task_keeps_its_context(hm):
    var = contextvars.ContextVar("request_id", default=None)
    loop = asyncio.get_running_loop()
    completion, handles = _batch(hm, loop, n=2)

    async def sender(h, request_id):
        var.set(request_id)
        await h
        return var.get()

    tasks = [asyncio.create_task(sender(h, f"req-{i}")) for i, h in enumerate(handles)]
    await _turn()
    completion.resolve(0)
    assert await asyncio.gather(*tasks) == ["req-0", "req-1"]


async def test_system_exit_in_a_callback_does_not_lose_the_others(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=3)
    ran = []

    def stop(fut):
        raise SystemExit(3)

    handles[0].add_done_callback(stop)
    handles[0].add_done_callback(lambda fut: ran.append(("h0", fut.index)))
    handles[2].add_done_callback(lambda fut: ran.append(("h2", fut.index)))
    completion.resolve(0)
    # Run the batch callback by hand (a SystemExit out of the running loop would end the test's loop).
    with pytest.raises(SystemExit):
        completion._run()
    assert ran == []
    await _turn()
    await _turn()
    assert sorted(ran) == [("h0", 0), ("h2", 2)]


async def test_unawaited_handles_make_no_reference_cycle(hm):
    completion, handles = _batch(hm, asyncio.get_running_loop(), n=3)
    handles[0].add_done_callback(lambda fut: None)
    completion.resolve(0)
    await _turn()
    del handles
    gc.collect()
    # The completion is held by this frame only: the handles went away without the cycle collector.
    assert sys.getrefcount(completion) == 2


async def test_a_cycle_through_a_pending_handle_is_collected(hm):
    """A callback that leads back to its handle makes a cycle the collector must still see and break."""
    completion = hm.BatchCompletion(asyncio.get_running_loop(), "t", 0)
    handle = completion.add(1000)

    class Holder:
        def callback(self, fut):
            pass

    holder = Holder()
    holder.handle = handle
    handle.add_done_callback(holder.callback)  # holder -> handle -> bound method -> holder
    gone = weakref.ref(holder)
    del holder, handle, completion
    gc.collect()
    assert gone() is None


async def test_native_handle_is_tracked_by_the_gc_only_while_it_holds_callbacks():
    if _impl.NO_EXTENSIONS:
        pytest.skip("AIOKPROD_NO_EXTENSIONS=1")
    hm = _twin("native")
    completion, (plain, awaited, cancelled) = _batch(hm, asyncio.get_running_loop(), n=3)
    assert not gc.is_tracked(plain)  # refers to its completion only: on no cycle
    awaited.add_done_callback(lambda fut: None)
    assert gc.is_tracked(awaited)
    cancelled.add_done_callback(lambda fut: None)
    cancelled.cancel("a message may lead back")
    assert gc.is_tracked(cancelled)
    completion.resolve(0)
    await _turn()
    assert not gc.is_tracked(awaited)  # its callback ran and was dropped
    assert [plain.result().offset, awaited.result().offset] == [0, 1]


async def test_native_results_of_one_millisecond_share_the_timestamp_int():
    if _impl.NO_EXTENSIONS:
        pytest.skip("AIOKPROD_NO_EXTENSIONS=1")
    hm = _twin("native")
    completion = hm.BatchCompletion(asyncio.get_running_loop(), "t", 0)
    stamps = [int(text) for text in ("1700000000000", "1700000000000", "1700000000001", "1700000000000")]
    handles = [completion.add(ts) for ts in stamps]
    completion.resolve(7)
    await _turn()
    results = [h.result() for h in handles]
    assert [tuple(r) for r in results] == [("t", 0, 7 + i, ts) for i, ts in enumerate(stamps)]
    assert results[0].timestamp is results[1].timestamp  # one int for a run of equal timestamps
    appended = hm.BatchCompletion(asyncio.get_running_loop(), "t", 0)
    handles = [appended.add(ts) for ts in stamps]
    appended.resolve(0, 1700000000999)  # LogAppendTime: one timestamp for the whole batch
    await _turn()
    results = [h.result() for h in handles]
    assert {r.timestamp for r in results} == {1700000000999}
    assert all(r.timestamp is results[0].timestamp for r in results)


# ---- both twins ------------------------------------------------------------------------------------------

async def _scenario(hm):
    """A scripted run touching every observable behaviour; returns its trace."""
    loop = asyncio.get_running_loop()
    trace = []

    def note(*item):
        trace.append(item)

    def describe(h):
        if h.cancelled():
            return ("cancelled", h._cancel_message)
        exc = h.exception()
        return ("error", type(exc).__name__, str(exc)) if exc is not None else ("ok", tuple(h.result()))

    ok = hm.BatchCompletion(loop, "a", 0)
    bad = hm.BatchCompletion(loop, "b", 1)
    ok_handles = [ok.add(100 + i) for i in range(4)]
    bad_handles = [bad.add(200 + i) for i in range(2)]
    for h in (*ok_handles, *bad_handles):
        h.add_done_callback(lambda fut: note("cb", fut.completion.topic, fut.index, describe(fut)))
    ok.add_batch_callback(lambda c: note("batch", c.topic, len(c), c.done, c.exception))
    note("cancel", ok_handles[2].cancel("mine"), ok_handles[2].cancel())
    note("resolve", ok.resolve(10, -1), ok.resolve(11), ok.done, ok.settled, ok_handles[0].done())
    note("fail", bad.fail(DeliveryError("nope")), bad.fail(ValueError()), repr(bad))
    await _turn()
    await _turn()
    note("after", ok.done, bad.done, [describe(h) for h in ok_handles], [describe(h) for h in bad_handles])
    note("repr", repr(ok), repr(ok_handles[1]), repr(ok_handles[2]))
    acks0 = hm.BatchCompletion(loop, "c", 3)
    hs = [acks0.add(7), acks0.add(8)]
    acks0.resolve(-1, 77)
    note("acks0", [tuple(r) for r in await asyncio.gather(*hs)])
    return trace


async def test_twins_trace_identically():
    if _impl.NO_EXTENSIONS:
        pytest.skip("AIOKPROD_NO_EXTENSIONS=1")
    native = await _scenario(_twin("native"))
    python = await _scenario(_twin("python"))
    assert native == python
    assert ("cancel", True, False) in native
