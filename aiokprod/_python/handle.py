"""Per-record delivery handles and the per-batch completion that settles them (pure-Python twin).

Same names and behaviour as ``aiokprod/_native/handle.pyx``; read its module docstring for the design (one
outcome per batch, a cheap ``(completion, index)`` handle per record, ONE loop callback per batch that
marks the batch done and runs every callback; the batches settled in one loop iteration share a call_soon).
``tests/test_handle.py`` runs both twins through the same tests.

A failed batch whose error nobody retrieved is logged once, when the completion is finalized (see the
compiled twin's docstring: ``log_unretrieved``, cleared by any handle's ``result()``/``exception()``).
"""
from __future__ import annotations

import contextvars
import logging
from asyncio import CancelledError, InvalidStateError
from types import TracebackType
from typing import Any, Callable, Generator, Optional

from aiokprod.metadata import RecordMetadata

__all__ = ["BatchCompletion", "DeliveryHandle", "RecordMetadata"]

# Skips the NamedTuple's Python-level __new__; builds the same object.
_tuple_new = tuple.__new__
_copy_context = contextvars.copy_context

_PENDING = 0  # accepting records
_SETTLED = 1  # resolve()/fail() called, the loop callback has not run yet
_DONE = 2  # the loop callback ran: every handle reports done()


def _handle_index(handle: DeliveryHandle) -> int:
    return handle._index


def _run_callback(loop: Any, fn: Callable[[Any], Any], context: Any, arg: Any) -> None:
    """Run one callback as asyncio's Handle._run does: errors go to the loop's exception handler and do
    not stop later callbacks; SystemExit/KeyboardInterrupt propagate (callers reschedule the rest)."""
    try:
        if context is None:
            fn(arg)
        else:
            context.run(fn, arg)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler(
            {"message": "Exception in delivery callback %r" % (fn,), "exception": exc, "handle": arg}
        )


class _LateCallbacks:
    """Callbacks of handles that were already done (or cancelled) when they were added, and the loop
    callbacks of settled batches, run from ONE loop callback instead of a ``loop.call_soon`` each (see the
    compiled twin's ``_LateCallbacks`` for why and for the guarantees kept: added order across handles,
    own context each, errors to the loop's handler, what is added while the queue runs waits for the next
    loop iteration)."""

    __slots__ = ("loop", "_items", "_cursor")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._items: list[Any] = []  # fn, context, handle, fn, context, handle, ...
        self._cursor = 0  # where _run() resumes after a SystemExit/KeyboardInterrupt

    def _run(self) -> None:
        global _late
        if _late is self:
            _late = None  # closed: what is added from now on runs on the next loop iteration
        items = self._items
        try:
            while self._cursor < len(items):
                i = self._cursor
                self._cursor = i + 3
                if items[i] is None:  # a settled batch: its _run, in the context it was settled in
                    items[i + 1].run(items[i + 2]._run)
                else:
                    _run_callback(self.loop, items[i], items[i + 1], items[i + 2])
        except BaseException:
            self.loop.call_soon(self._run)  # SystemExit/KeyboardInterrupt: the rest on a later loop turn
            raise
        self._items = []  # drops the callbacks and their handles


# The open queue of late callbacks, or None (one at a time; another loop's callback opens its own).
_late: _LateCallbacks | None = None


def _schedule_late(loop: Any, fn: Optional[Callable[[Any], Any]], context: Any, handle: Any) -> None:
    """Have ``fn(handle)`` called from the loop soon, in ``context``, after the late callbacks before it
    (``fn`` None: ``handle`` is a settled BatchCompletion, whose _run is called)."""
    global _late
    late = _late
    if late is None or late.loop is not loop:
        late = _LateCallbacks(loop)
        loop.call_soon(late._run)  # raises for a closed loop: then nothing was queued
        _late = late
    items = late._items
    items.append(fn)
    items.append(context)
    items.append(handle)


def _report_unretrieved(loop: Any, topic: str, partition: int, count: int, exc: BaseException) -> None:
    """Say once that a failed batch's error was never retrieved (from a finalizer: must not raise)."""
    message = ("%d record(s) for %s-%s failed and the error was never retrieved (await a handle, call its "
               "exception(), or pass on_delivery_error to the Producer)" % (count, topic, partition))
    try:
        loop.call_exception_handler({"message": message, "exception": exc})
    except Exception:
        logging.getLogger("aiokprod.handle").error("%s: %r", message, exc)


class BatchCompletion:
    """The outcome of one partition batch, shared by the handles of its records."""

    __slots__ = (
        "loop",
        "topic",
        "partition",
        "_timestamps",
        "_state",
        "_base_offset",
        "_log_append_time",
        "_exc",
        "_exc_tb",
        "_waiters",
        "_last_waiter_index",
        "_waiters_unordered",
        "_batch_callbacks",
        "_batch_cursor",
        "_waiter_cursor",
        "log_unretrieved",
        "_last_index",
        "_last_metadata",
    )

    def __init__(self, loop: Any, topic: str, partition: int) -> None:
        self.loop = loop
        self.topic = topic
        self.partition = partition
        self._timestamps: list[int] = []  # the records' own timestamps (ms), by index
        self._state = _PENDING
        self._base_offset = -1
        self._log_append_time = -1
        self._exc: BaseException | None = None
        self._exc_tb: Optional[TracebackType] = None
        # Only handles somebody registered a callback on: unawaited handles make no reference cycle.
        self._waiters: list[DeliveryHandle] | None = None
        self._last_waiter_index = -1
        self._waiters_unordered = False
        self._batch_callbacks: list[Callable[[BatchCompletion], Any]] | None = None
        # Where _run() resumes if a callback raised SystemExit/KeyboardInterrupt out of it.
        self._batch_cursor = 0
        self._waiter_cursor = 0
        # True from fail() until someone sees the error: logged when the completion is finalized.
        self.log_unretrieved = False
        # The last RecordMetadata built and its index (a Task's wakeup and its await both call result()).
        self._last_index = -1
        self._last_metadata: Optional[RecordMetadata] = None

    def __del__(self) -> None:
        if self.log_unretrieved and self._exc is not None:
            _report_unretrieved(self.loop, self.topic, self.partition, len(self._timestamps), self._exc)

    def __len__(self) -> int:
        return len(self._timestamps)

    def __repr__(self) -> str:
        return "<BatchCompletion %s-%s records=%d %s>" % (
            self.topic, self.partition, len(self._timestamps), self._state_name())

    def _state_name(self) -> str:
        if self._state == _PENDING:
            return "pending"
        if self._state == _SETTLED:
            return "settled"
        return "failed" if self._exc is not None else "done"

    @property
    def done(self) -> bool:
        """True once the loop callback ran (the same moment every handle turns done)."""
        return self._state == _DONE

    @property
    def settled(self) -> bool:
        """True once resolve() or fail() was called (the loop callback may not have run yet)."""
        return self._state != _PENDING

    @property
    def exception(self) -> BaseException | None:
        """The exception the batch failed with, or None."""
        return self._exc

    @property
    def base_offset(self) -> int:
        return self._base_offset

    @property
    def log_append_time(self) -> int:
        return self._log_append_time

    def add(self, timestamp_ms: int) -> DeliveryHandle:
        """Make the handle of the batch's next record (its index is the number of records so far)."""
        if self._state != _PENDING:
            raise InvalidStateError("cannot add a record to a batch that is already settled")
        timestamps = self._timestamps
        handle = DeliveryHandle(self, len(timestamps))
        timestamps.append(timestamp_ms.__index__())  # an int, as the compiled twin's int64 demands
        return handle

    def timestamp(self, index: int) -> int:
        """The record's own (create) timestamp, as given to add()."""
        if index < 0 or index >= len(self._timestamps):
            raise IndexError("record index out of range")
        return self._timestamps[index]

    def metadata(self, index: int) -> RecordMetadata:
        """The RecordMetadata of record ``index`` (needs a successful resolve())."""
        if index < 0 or index >= len(self._timestamps):
            raise IndexError("record index out of range")
        if self._state == _PENDING or self._exc is not None:
            raise InvalidStateError("the batch has no successful outcome")
        return self._metadata(index)

    def _metadata(self, index: int) -> RecordMetadata:
        last = self._last_metadata
        if index == self._last_index and last is not None:  # a Task's wakeup, then its await: one object
            return last
        base = self._base_offset
        timestamp = self._log_append_time
        if timestamp == -1:  # CreateTime topic: the record keeps its own timestamp
            timestamp = self._timestamps[index]
        # base -1: acks=0, the broker told us no offset
        metadata: RecordMetadata = _tuple_new(
            RecordMetadata, (self.topic, self.partition, -1 if base == -1 else base + index, timestamp))
        self._last_metadata = metadata
        self._last_index = index
        return metadata

    def add_batch_callback(self, fn: Callable[[BatchCompletion], Any]) -> None:
        """Call ``fn(completion)`` once, from the batch's loop callback, before the handles' callbacks.
        Added after the batch is done: scheduled with its own call_soon."""
        if self._state == _DONE:
            self.loop.call_soon(fn, self)
            return
        if self._batch_callbacks is None:
            self._batch_callbacks = []
        self._batch_callbacks.append(fn)

    def resolve(self, base_offset: int, log_append_time: int = -1) -> bool:
        """Success: record i gets offset base_offset + i (-1 for all when base_offset is -1, acks=0) and
        timestamp log_append_time, or its own when that is -1. False when already settled."""
        if self._state != _PENDING:
            return False
        self._base_offset = base_offset.__index__()
        self._log_append_time = log_append_time.__index__()
        self._settle()
        return True

    def fail(self, exc: BaseException | type[BaseException]) -> bool:
        """Failure: every handle raises ``exc``. False when already settled."""
        if self._state != _PENDING:
            return False
        if isinstance(exc, type):
            exc = exc()
        if not isinstance(exc, BaseException):
            raise TypeError("fail() needs an exception, got %r" % (exc,))
        if isinstance(exc, StopIteration):
            raise TypeError("StopIteration interacts badly with generators and cannot be a delivery error")
        self._exc = exc
        # Re-raised with this traceback by every handle, so N awaiters do not grow one traceback N times.
        self._exc_tb = exc.__traceback__
        self.log_unretrieved = True
        self._settle()
        return True

    def _settle(self) -> None:
        self._state = _SETTLED
        # _run, queued with the loop's other late callbacks: one call_soon for the batches of a response.
        _schedule_late(self.loop, None, _copy_context(), self)

    def _register(self, handle: DeliveryHandle) -> None:
        if self._waiters is None:
            self._waiters = []
        elif handle._index < self._last_waiter_index:
            self._waiters_unordered = True
        self._last_waiter_index = handle._index
        self._waiters.append(handle)

    def _run(self) -> None:
        """The batch's single loop callback: mark done, run batch callbacks, then handle callbacks."""
        loop = self.loop
        if self._state == _SETTLED:
            self._state = _DONE
            if self._waiters_unordered and self._waiters is not None:
                # Callbacks in record (offset) order, whatever order the awaiters registered in.
                self._waiters.sort(key=_handle_index)
        try:
            callbacks = self._batch_callbacks
            if callbacks is not None:
                while self._batch_cursor < len(callbacks):
                    fn = callbacks[self._batch_cursor]
                    self._batch_cursor += 1
                    _run_callback(loop, fn, None, self)
                self._batch_callbacks = None
            waiters = self._waiters
            if waiters is not None:
                while self._waiter_cursor < len(waiters):
                    handle = waiters[self._waiter_cursor]
                    self._waiter_cursor += 1
                    handle._fire(loop)
                self._waiters = None  # drops the completion -> handle references
        except BaseException:
            # SystemExit/KeyboardInterrupt only: finish the rest on a later loop turn.
            loop.call_soon(self._run)
            raise


class DeliveryHandle:
    """The awaitable of one record: future-like enough for asyncio (``asyncio.isfuture`` is True).

    ``cancel()`` detaches this awaiter only: the record is still delivered and its batch is unaffected.
    """

    # A slot, like the compiled twin's C field: __await__ sets it, asyncio's Task checks and resets it.
    __slots__ = ("_completion", "_index", "_asyncio_future_blocking", "_cancelled", "_registered", "_cb0",
                 "_ctx0", "_more", "_cancel_message")

    def __init__(self, completion: BatchCompletion, index: int) -> None:
        self._completion = completion
        self._index = index
        self._asyncio_future_blocking = False
        self._cancelled = False
        self._registered = False
        # The first callback in two slots (the common case: one Task or one gather), the rest in a list.
        self._cb0: Optional[Callable[[DeliveryHandle], Any]] = None
        self._ctx0 = None
        self._more: list[tuple[Callable[[DeliveryHandle], Any], Any]] | None = None
        self._cancel_message = None

    def __repr__(self) -> str:
        c = self._completion
        return "<DeliveryHandle %s-%s #%d %s>" % (
            c.topic, c.partition, self._index, "cancelled" if self._cancelled else c._state_name())

    @property
    def completion(self) -> BatchCompletion:
        return self._completion

    @property
    def index(self) -> int:
        return self._index

    def get_loop(self) -> Any:
        return self._completion.loop

    def done(self) -> bool:
        return self._cancelled or self._completion._state == _DONE

    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self, msg: Any = None) -> bool:
        """Detach this awaiter: the handle turns cancelled and its callbacks are scheduled (like
        asyncio.Future.cancel; through the queue of late callbacks). The record itself is still delivered."""
        if self._cancelled or self._completion._state == _DONE:
            return False
        self._cancelled = True
        self._cancel_message = msg
        fn = self._cb0
        if fn is not None:
            loop = self._completion.loop
            context, more = self._ctx0, self._more
            self._cb0 = self._ctx0 = self._more = None
            _schedule_late(loop, fn, context, self)
            if more is not None:
                for fn, context in more:
                    _schedule_late(loop, fn, context, self)
        return True

    def _fire(self, loop: Any) -> None:
        """Run this handle's callbacks now (from the batch's loop callback)."""
        fn = self._cb0
        if fn is None:  # nothing left, or cancelled (cancel() scheduled them)
            return
        context, more = self._ctx0, self._more
        self._cb0 = self._ctx0 = self._more = None  # detach first, as asyncio.Future does
        i = 0
        try:
            _run_callback(loop, fn, context, self)
            if more is not None:
                while i < len(more):
                    fn, context = more[i]
                    i += 1
                    _run_callback(loop, fn, context, self)
        except BaseException:
            if more is not None:
                while i < len(more):
                    fn, context = more[i]
                    i += 1
                    _schedule_late(loop, fn, context, self)
            raise

    def add_done_callback(self, fn: Callable[[DeliveryHandle], Any], *, context: Any = None) -> None:
        """Call ``fn(handle)`` when done, in ``context`` (default: a copy of the current one)."""
        if context is None:
            context = _copy_context()
        if self._cancelled or self._completion._state == _DONE:
            _schedule_late(self._completion.loop, fn, context, self)
            return
        if self._cb0 is None:
            self._cb0 = fn
            self._ctx0 = context
        else:
            if self._more is None:
                self._more = []
            self._more.append((fn, context))
        if not self._registered:
            self._registered = True
            self._completion._register(self)

    def remove_done_callback(self, fn: Callable[[DeliveryHandle], Any]) -> int:
        """Remove every registration of ``fn``; return how many were removed."""
        removed = 0
        if self._more is not None:
            kept = [entry for entry in self._more if entry[0] != fn]
            removed = len(self._more) - len(kept)
            self._more = kept or None
        if self._cb0 is not None and self._cb0 == fn:
            removed += 1
            if self._more is not None:
                self._cb0, self._ctx0 = self._more.pop(0)  # the oldest stays first
                if not self._more:
                    self._more = None
            else:
                self._cb0 = self._ctx0 = None
        return removed

    def _make_cancelled_error(self) -> CancelledError:
        return CancelledError("" if self._cancel_message is None else self._cancel_message)

    def result(self) -> RecordMetadata:
        """The record's RecordMetadata; raises the delivery error, CancelledError if cancelled,
        InvalidStateError if not done yet."""
        if self._cancelled:
            raise self._make_cancelled_error()
        c = self._completion
        if c._state != _DONE:
            raise InvalidStateError("Result is not ready.")
        if c._exc is not None:
            c.log_unretrieved = False
            raise c._exc.with_traceback(c._exc_tb)
        return c._metadata(self._index)

    def exception(self) -> BaseException | None:
        """The delivery error or None; raises CancelledError / InvalidStateError like asyncio.Future."""
        if self._cancelled:
            raise self._make_cancelled_error()
        c = self._completion
        if c._state != _DONE:
            raise InvalidStateError("Exception is not set.")
        if c._exc is not None:
            c.log_unretrieved = False
        return c._exc

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        if not (self._cancelled or self._completion._state == _DONE):
            self._asyncio_future_blocking = True
            yield self
        if not (self._cancelled or self._completion._state == _DONE):
            raise RuntimeError("await wasn't used with future")
        return self.result()

    __iter__ = __await__
