# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-record delivery handles and the per-batch completion that settles them (compiled twin).

Pure-Python twin: ``aiokprod/_python/handle.py`` (same names, same behaviour, tested against this one).

Why not one ``asyncio.Future`` per record: on this project's machine a Future costs ~0.5 us to make and
gathering one per record ~3.9 us. A producer appends thousands of records per batch and the broker answers
per batch, so the outcome lives once, in the batch's :class:`BatchCompletion`, and each record gets a
:class:`DeliveryHandle` that is only ``(completion, index)`` plus the callbacks of whoever awaits it. The
``RecordMetadata`` of a record is computed in ``result()`` from the batch's base offset and the record's
index; it is never stored per handle.

Life of a batch::

    add() x N          state PENDING    handles not done; add_done_callback() queues on the handle
    resolve() / fail() state SETTLED    outcome stored, _run queued (ONE loop.call_soon for the batches
                                        settled in one loop iteration, see _LateCallbacks)
    loop runs _run     state DONE       handles report done(); batch callbacks, then every waiting
                                        handle's callbacks, in record order, each in its own context

Why a loop callback and not inline: resolve() is called by the sender while it handles a ProduceResponse.
Running user callbacks there would re-enter the sender, and an awaiting Task's wakeup cannot run inside
another running Task (asyncio raises "Cannot enter into task ... while another task ... is being
executed"). Why one callback per batch and not one per record: the call_soon is most of a Future's cost.

A failed batch whose error nobody retrieved is logged ONCE, as asyncio logs a task exception that was
never retrieved: when the completion is finalized (its last handle gone), if ``log_unretrieved`` is still
True, one message naming topic, partition, the number of records and the error goes to the loop's
exception handler. ``fail()`` sets the flag; ``result()`` or ``exception()`` of ANY handle of the batch
returning or raising its error clears it (the records of a batch share one error: seeing it once is
seeing it), and so may its owner (the producer clears it when ``on_delivery_error`` took the failure).
Per batch, not per handle: a successful batch pays nothing; the hot path pays nothing.
"""
cimport cython
from cpython.contextvars cimport PyContext_CheckExact, PyContext_CopyCurrent, PyContext_New
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int64_t

cdef extern from "Python.h":
    # Entering a context object directly: what Context.run() does, without the method call and its
    # argument tuple (one per callback run).
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    # GC tracking of a handle (see DeliveryHandle): both idempotent here, as we check first.
    void PyObject_GC_Track(object obj)
    void PyObject_GC_UnTrack(object obj)
    int PyObject_GC_IsTracked(object obj)

from asyncio import CancelledError, InvalidStateError

from aiokprod.metadata import RecordMetadata

__all__ = ["BatchCompletion", "DeliveryHandle", "RecordMetadata"]

# Results are built in place as tuples of this type (aiokprod_metadata_new below), skipping the NamedTuple's
# Python-level __new__ (a Python frame per record): that needs a plain tuple subclass with no __dict__.
cdef object _RecordMetadata = RecordMetadata
if not issubclass(RecordMetadata, tuple) or RecordMetadata.__dictoffset__ != 0:
    raise TypeError("RecordMetadata must be a tuple subclass without a __dict__")

cdef extern from *:
    """
    /* The thread's current context object (borrowed; NULL while nothing ever set one). */
    static PyObject *aiokprod_current_context(void) { return PyThreadState_Get()->context; }
    """
    PyObject* aiokprod_current_context()


# Stored instead of a copy of the caller's context when that context holds no variables: a copy of an
# empty context is an empty context, so the callback gets a new empty one when it runs. Gathering N handles
# then keeps no N context copies alive (and tracked by the cycle collector) while the records are in flight.
cdef object _EMPTY_CONTEXT = object()


cdef object _capture_context():
    """What add_done_callback keeps for ``context=None``: asyncio's copy of the current context."""
    cdef PyObject* current = aiokprod_current_context()
    if current is NULL or len(<object>current) == 0:
        return _EMPTY_CONTEXT
    return PyContext_CopyCurrent()




cdef extern from *:
    """
    /* A RecordMetadata (a tuple subclass of 4 items, no __dict__) filled in place. */
    static PyObject *aiokprod_metadata_new(PyObject *type, PyObject *topic, PyObject *partition,
                                           long long offset, PyObject *timestamp) {
        PyTypeObject *tp = (PyTypeObject *)type;
        PyObject *o, *off;
        off = PyLong_FromLongLong(offset);
        if (off == NULL)
            return NULL;
        o = tp->tp_alloc(tp, 4);
        if (o == NULL) {
            Py_DECREF(off);
            return NULL;
        }
        Py_INCREF(topic);
        Py_INCREF(partition);
        Py_INCREF(timestamp);
        PyTuple_SET_ITEM(o, 0, topic);
        PyTuple_SET_ITEM(o, 1, partition);
        PyTuple_SET_ITEM(o, 2, off);
        PyTuple_SET_ITEM(o, 3, timestamp);
        return o;
    }
    """
    object aiokprod_metadata_new(object type, object topic, object partition, long long offset,
                                 object timestamp)


cdef enum:
    _PENDING = 0   # accepting records
    _SETTLED = 1   # resolve()/fail() called, the loop callback has not run yet
    _DONE = 2      # the loop callback ran: every handle reports done()


cdef object _handle_index(DeliveryHandle handle):
    return handle._index


cdef int _run_callback(object loop, object fn, object context, object arg) except -1:
    """Run one callback the way asyncio's Handle._run does: an exception is reported to the loop's
    exception handler and does not stop the callbacks after it; SystemExit/KeyboardInterrupt propagate
    (the caller reschedules what is left first, so nobody's awaiter is lost)."""
    try:
        if context is _EMPTY_CONTEXT:
            context = PyContext_New()
        if context is None:
            fn(arg)
        elif PyContext_CheckExact(context):
            # Context.run(fn, arg), without looking the method up and packing its arguments.
            PyContext_Enter(context)
            try:
                fn(arg)
            finally:
                PyContext_Exit(context)
        else:
            context.run(fn, arg)  # whatever the caller passed as context: its own run()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler({
            "message": "Exception in delivery callback %r" % (fn,),
            "exception": exc,
            "handle": arg,
        })
    return 0


@cython.final
cdef class _LateCallbacks:
    """Callbacks of handles that were already done (or cancelled) when they were added, and the loop
    callbacks of settled batches, run from ONE loop callback instead of one ``loop.call_soon`` each.

    Why: ``asyncio.gather(*handles)`` adds a callback to every handle, most of them done already when the
    records were sent while the caller was still appending; a call_soon each is an asyncio.Handle, a
    context copy and a Python-level Handle._run per record. Here a record costs three list slots. The
    batches one ProduceResponse settles (one per partition) share the queue the same way.

    Same guarantees as a call_soon each: nothing runs inside add_done_callback(); callbacks run in the
    order they were added (across handles too: one queue per loop); each in its own context; an exception
    goes to the loop's exception handler and the next callback still runs; a callback added while the
    queue runs waits for the next loop iteration (the running queue is closed: a new one is scheduled).
    """

    cdef object loop
    # fn, context, handle, fn, context, handle, ...: no tuple per callback.
    cdef list _items
    # Where _run() resumes if a callback raised SystemExit/KeyboardInterrupt out of it.
    cdef Py_ssize_t _cursor

    def _run(self):
        global _late
        cdef list items = self._items
        cdef Py_ssize_t i
        if _late is self:
            _late = None  # closed: what is added from now on runs on the next loop iteration
        try:
            while self._cursor < len(items):
                i = self._cursor
                self._cursor = i + 3
                if items[i] is None:  # a settled batch (BatchCompletion._settle)
                    _complete_in(items[i + 1], <BatchCompletion>items[i + 2])
                else:
                    _run_callback(self.loop, items[i], items[i + 1], items[i + 2])
        except BaseException:
            # Only SystemExit/KeyboardInterrupt get here: the rest runs on a later loop turn.
            self.loop.call_soon(self._run)
            raise
        self._items = None


# The open queue of late callbacks (see _LateCallbacks), or None. Only one is open at a time: a callback for
# another loop opens that loop's own queue (the first one still runs, from its own loop).
cdef _LateCallbacks _late = None


cdef int _schedule_late(object loop, object fn, object context, object handle) except -1:
    """Have ``fn(handle)`` called from the loop soon, in ``context`` (a stored one: _EMPTY_CONTEXT or a
    context object), after every late callback scheduled before it. ``fn`` None: ``handle`` is a settled
    BatchCompletion, whose _run is due."""
    global _late
    cdef _LateCallbacks late = _late
    if late is None or late.loop is not loop:
        late = _LateCallbacks.__new__(_LateCallbacks)
        late.loop = loop
        late._items = []
        loop.call_soon(late._run)  # raises for a closed loop: then nothing was queued
        _late = late
    late._items.append(fn)
    late._items.append(context)
    late._items.append(handle)
    return 0


cdef int _complete_in(object context, BatchCompletion completion) except -1:
    """A settled batch's turn in the queue: its _run(), in the context it was settled in (what its own
    call_soon would have given it)."""
    if context is _EMPTY_CONTEXT:
        context = PyContext_New()
    PyContext_Enter(context)
    try:
        completion._complete()
    finally:
        PyContext_Exit(context)
    return 0


cdef _report_unretrieved(object loop, str topic, object partition, Py_ssize_t count, object exc):
    """Say once that a failed batch's error was never retrieved (from the completion's finalizer, so it
    must not raise: a closed or half-torn-down loop falls back to the module's logger)."""
    message = ("%d record(s) for %s-%s failed and the error was never retrieved (await a handle, call its "
               "exception(), or pass on_delivery_error to the Producer)" % (count, topic, partition))
    try:
        loop.call_exception_handler({"message": message, "exception": exc})
    except Exception:
        import logging
        logging.getLogger("aiokprod.handle").error("%s: %r", message, exc)


@cython.final
cdef class BatchCompletion:
    """The outcome of one partition batch, shared by the handles of its records."""

    cdef readonly object loop
    cdef readonly str topic
    cdef readonly object partition
    # The records' own timestamps (ms), by index, in a growable C array: add() stays one store.
    cdef int64_t* _timestamps
    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity
    cdef int _state
    cdef int64_t _base_offset
    cdef int64_t _log_append_time
    cdef object _exc
    cdef object _exc_tb
    # Only the handles somebody registered a callback on (usually far fewer than the records), so an
    # unawaited handle holds its completion and nothing holds it: no reference cycle, no GC work.
    cdef list _waiters
    cdef Py_ssize_t _last_waiter_index
    cdef bint _waiters_unordered
    cdef list _batch_callbacks
    # Where _run() resumes if a callback raised SystemExit/KeyboardInterrupt out of it.
    cdef Py_ssize_t _batch_cursor
    cdef Py_ssize_t _waiter_cursor
    # True from fail() until someone sees the error (see the module docstring): logged at finalization.
    cdef public bint log_unretrieved
    # The last RecordMetadata built, and its index: a Task awaiting a handle calls result() twice (its
    # wakeup calls it to see whether the handle failed, then the coroutine's await takes the value), so
    # the second call returns the same object instead of building another (as asyncio.Future does).
    cdef Py_ssize_t _last_index
    cdef object _last_metadata
    # The int object of the last timestamp put in a RecordMetadata: the records of a batch mostly share
    # their millisecond (all of them do with LogAppendTime), so gathering a batch's results makes one
    # int for the timestamps instead of one each.
    cdef int64_t _timestamp_value
    cdef object _timestamp_object

    def __cinit__(self, loop, str topic, partition):
        self.loop = loop
        self.topic = topic
        self.partition = partition
        self._timestamps = NULL
        self._count = 0
        self._capacity = 0
        self._state = _PENDING
        self._base_offset = -1
        self._log_append_time = -1
        self._last_waiter_index = -1
        self._last_index = -1

    def __del__(self):
        if self.log_unretrieved and self._exc is not None:
            _report_unretrieved(self.loop, self.topic, self.partition, self._count, self._exc)

    def __dealloc__(self):
        PyMem_Free(self._timestamps)

    def __len__(self):
        return self._count

    def __repr__(self):
        return "<BatchCompletion %s-%s records=%d %s>" % (
            self.topic, self.partition, self._count, self._state_name())

    cdef str _state_name(self):
        if self._state == _PENDING:
            return "pending"
        if self._state == _SETTLED:
            return "settled"
        return "failed" if self._exc is not None else "done"

    @property
    def done(self):
        """True once the loop callback ran (the same moment every handle turns done)."""
        return self._state == _DONE

    @property
    def settled(self):
        """True once resolve() or fail() was called (the loop callback may not have run yet)."""
        return self._state != _PENDING

    @property
    def exception(self):
        """The exception the batch failed with, or None."""
        return self._exc

    @property
    def base_offset(self):
        return self._base_offset

    @property
    def log_append_time(self):
        return self._log_append_time

    cdef int _grow(self) except -1:
        cdef Py_ssize_t capacity = self._capacity * 2 if self._capacity else 64
        cdef int64_t* grown = <int64_t*>PyMem_Realloc(self._timestamps, capacity * sizeof(int64_t))
        if grown == NULL:
            raise MemoryError()
        self._timestamps = grown
        self._capacity = capacity
        return 0

    def add(self, int64_t timestamp_ms):
        """Make the handle of the batch's next record (its index is the number of records so far)."""
        cdef DeliveryHandle handle
        if self._state != _PENDING:
            raise InvalidStateError("cannot add a record to a batch that is already settled")
        if self._count == self._capacity:
            self._grow()
        self._timestamps[self._count] = timestamp_ms
        # __new__ skips __init__ and takes the object from the type's freelist.
        handle = DeliveryHandle.__new__(DeliveryHandle)
        # Out of the cycle collector's sight until it holds a callback (see DeliveryHandle).
        PyObject_GC_UnTrack(handle)
        handle._completion = self
        handle._index = self._count
        self._count += 1
        return handle

    def timestamp(self, Py_ssize_t index):
        """The record's own (create) timestamp, as given to add()."""
        if index < 0 or index >= self._count:
            raise IndexError("record index out of range")
        return self._timestamps[index]

    def metadata(self, Py_ssize_t index):
        """The RecordMetadata of record ``index`` (needs a successful resolve())."""
        if index < 0 or index >= self._count:
            raise IndexError("record index out of range")
        if self._state == _PENDING or self._exc is not None:
            raise InvalidStateError("the batch has no successful outcome")
        return self._metadata(index)

    cdef object _metadata(self, Py_ssize_t index):
        cdef int64_t offset = -1
        cdef int64_t timestamp = self._log_append_time
        if index == self._last_index:
            return self._last_metadata
        if self._base_offset != -1:  # -1: acks=0, the broker told us no offset
            offset = self._base_offset + index
        if timestamp == -1:  # -1: CreateTime topic, the record keeps its own timestamp
            timestamp = self._timestamps[index]
        # What tuple.__new__(RecordMetadata, (topic, partition, offset, timestamp)) builds, without the
        # argument tuple, the call and the copy.
        if self._timestamp_object is None or timestamp != self._timestamp_value:
            self._timestamp_object = timestamp
            self._timestamp_value = timestamp
        metadata = aiokprod_metadata_new(_RecordMetadata, self.topic, self.partition, offset,
                                         self._timestamp_object)
        if type(self.partition) is int:
            # A str and ints in an immutable tuple with no __dict__: it can be on no reference cycle, but
            # the collector only untracks exact tuples by itself, and gathering N handles keeps N of these.
            PyObject_GC_UnTrack(metadata)
        self._last_metadata = metadata
        self._last_index = index
        return metadata

    def add_batch_callback(self, fn):
        """Call ``fn(completion)`` once, from the batch's loop callback, before the handles' callbacks
        (like Java's interceptors, which see the acknowledgement before the record callbacks).
        Used by the producer for flush(), metrics and interceptors. Added after the batch is done: it is
        scheduled with its own call_soon."""
        if self._state == _DONE:
            self.loop.call_soon(fn, self)
            return
        if self._batch_callbacks is None:
            self._batch_callbacks = []
        self._batch_callbacks.append(fn)

    def resolve(self, int64_t base_offset, int64_t log_append_time=-1):
        """Success: record i gets offset base_offset + i (every offset -1 when base_offset is -1, acks=0)
        and timestamp log_append_time, or its own timestamp when log_append_time is -1.
        Returns False (and changes nothing) when the batch was already settled."""
        if self._state != _PENDING:
            return False
        self._base_offset = base_offset
        self._log_append_time = log_append_time
        self._settle()
        return True

    def fail(self, exc):
        """Failure: every handle raises ``exc``. Returns False when the batch was already settled."""
        if self._state != _PENDING:
            return False
        if isinstance(exc, type):
            exc = exc()
        if not isinstance(exc, BaseException):
            raise TypeError("fail() needs an exception, got %r" % (exc,))
        if isinstance(exc, StopIteration):
            # Raised out of __await__ it would end the awaiting coroutine's generator (asyncio refuses too).
            raise TypeError("StopIteration interacts badly with generators and cannot be a delivery error")
        self._exc = exc
        # Re-raised with this traceback by every handle, so N awaiters do not grow one traceback N times.
        self._exc_tb = exc.__traceback__
        self.log_unretrieved = True
        self._settle()
        return True

    cdef int _settle(self) except -1:
        self._state = _SETTLED
        # The batch's loop callback (_run), queued with the loop's other late callbacks (_LateCallbacks):
        # the batches of one response then cost one call_soon, not one each.
        _schedule_late(self.loop, None, _capture_context(), self)
        return 0

    cdef int _register(self, DeliveryHandle handle) except -1:
        # Called when a handle gets its first callback while the batch is not done.
        if self._waiters is None:
            self._waiters = []
        elif handle._index < self._last_waiter_index:
            self._waiters_unordered = True
        self._last_waiter_index = handle._index
        self._waiters.append(handle)
        return 0

    def _run(self):
        """The batch's single loop callback: mark done, run batch callbacks, then handle callbacks."""
        self._complete()

    cdef int _complete(self) except -1:
        cdef object loop = self.loop
        cdef list callbacks
        cdef list waiters
        cdef DeliveryHandle handle
        if self._state == _SETTLED:
            self._state = _DONE
            if self._waiters_unordered:
                # Records of one partition see their callbacks in offset order (Java's guarantee too),
                # whatever order the awaiters registered in.
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
                    handle = <DeliveryHandle>waiters[self._waiter_cursor]
                    self._waiter_cursor += 1
                    _handle_fire(handle, loop)
                # Drops the completion -> handle references (the only cycle this design has).
                self._waiters = None
        except BaseException:
            # Only SystemExit/KeyboardInterrupt get here; finish the rest on a later loop turn, the way
            # asyncio leaves the rest of its ready queue for when the loop runs again.
            loop.call_soon(self._run)
            raise
        return 0


@cython.final
@cython.freelist(1024)
cdef class DeliveryHandle:
    """The awaitable of one record: future-like enough for asyncio (``asyncio.isfuture`` is True, and
    Task, gather, wait_for, wait, shield, as_completed and run_until_complete accept it).

    ``cancel()`` detaches this awaiter only: the record is still delivered and its batch is unaffected.

    GC: a handle is tracked by the cycle collector only while it holds callbacks or a cancel message.
    Without them it refers to its completion alone, which refers back to handles only through its list
    of waiters, i.e. handles that hold callbacks: so an untracked handle is on no reference cycle, and
    the collector need not visit the 100k handles a caller keeps in a list (measured: most of the
    difference gc.disable() makes when every record's handle is gathered). A callback (a Task's
    wakeup, gather's closure) can lead back to the handle, so holding one tracks it again; firing or
    cancelling drops the callbacks and the tracking with them.
    """

    # 64 bytes (80 with the collector's header, one pymalloc size class): await-each keeps one per record
    # alive until gather() returns, so every field counts. Flags are single bytes; the cancel message
    # reuses _ctx0, which a cancelled handle no longer needs (its callbacks were scheduled by cancel(),
    # and later ones go straight to the loop).
    cdef BatchCompletion _completion
    cdef Py_ssize_t _index
    # asyncio's protocol flag (property _asyncio_future_blocking below): __await__ sets it before yielding
    # the handle, the Task checks it and resets it.
    cdef unsigned char _blocking
    cdef unsigned char _cancelled
    cdef unsigned char _registered
    # The first callback lives in two fields (the common case: one awaiting Task or one gather), the
    # rest in a list of (fn, context). _cb0 is always the oldest. Cancelled: _ctx0 is the cancel message.
    cdef object _cb0
    cdef object _ctx0
    cdef list _more

    def __init__(self, BatchCompletion completion, Py_ssize_t index):
        # Only for symmetry with the Python twin: BatchCompletion.add() makes handles without __init__.
        if index < 0 or index >= completion._count:
            raise IndexError("record index out of range")
        self._completion = completion
        self._index = index
        if self._cb0 is None and self._ctx0 is None:
            _untrack(self)

    @property
    def _asyncio_future_blocking(self):
        # A C field behind a descriptor (hasattr(cls, ...) holds, so isfuture() is True): a per-instance
        # __dict__ would cost every handle.
        return <bint>self._blocking

    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value):
        self._blocking = bool(value)

    @property
    def _cancel_message(self):
        # What cancel(msg) was given (asyncio.gather reads it for the CancelledError it builds).
        return self._ctx0 if self._cancelled else None

    def __repr__(self):
        cdef BatchCompletion c = self._completion
        return "<DeliveryHandle %s-%s #%d %s>" % (
            c.topic, c.partition, self._index, "cancelled" if self._cancelled else c._state_name())

    @property
    def completion(self):
        return self._completion

    @property
    def index(self):
        return self._index

    def get_loop(self):
        return self._completion.loop

    def done(self):
        return self._cancelled or self._completion._state == _DONE

    def cancelled(self):
        return self._cancelled

    def cancel(self, msg=None):
        """Detach this awaiter: the handle turns cancelled and its callbacks are scheduled (as
        asyncio.Future.cancel does; through the loop's queue of late callbacks, see _LateCallbacks). The
        record itself is still delivered."""
        if self._cancelled or self._completion._state == _DONE:
            return False
        self._cancelled = True
        _handle_schedule_callbacks(self)  # empties _cb0/_ctx0/_more and untracks
        if msg is not None:
            self._ctx0 = msg  # _cancel_message
            _track(self)  # the message may lead back here
        return True

    def add_done_callback(self, fn, *, context=None):
        """Call ``fn(handle)`` when the handle is done, in ``context`` (default: a copy of the current
        context, as asyncio does)."""
        if context is None:
            context = _capture_context()
        if self._cancelled or self._completion._state == _DONE:
            _schedule_late(self._completion.loop, fn, context, self)
            return
        if self._cb0 is None:
            _track(self)  # fn may lead back to this handle: the collector must see the cycle
            self._cb0 = fn
            self._ctx0 = context
        else:
            if self._more is None:
                self._more = []
            self._more.append((fn, context))
        if not self._registered:
            self._registered = True
            self._completion._register(self)

    def remove_done_callback(self, fn):
        """Remove every registration of ``fn``; return how many were removed."""
        cdef Py_ssize_t removed = 0
        cdef list kept
        if self._more is not None:
            kept = [entry for entry in self._more if entry[0] != fn]
            removed = len(self._more) - len(kept)
            self._more = kept if kept else None
        if self._cb0 is not None and self._cb0 == fn:
            removed += 1
            if self._more is not None:
                # Keep the oldest remaining callback in the first slot, so order is preserved.
                self._cb0, self._ctx0 = self._more.pop(0)
                if not self._more:
                    self._more = None
            else:
                self._cb0 = self._ctx0 = None
        return removed

    def _make_cancelled_error(self):
        # asyncio.gather() calls this on a cancelled child; same message convention as asyncio.Future.
        cdef object msg = self._ctx0 if self._cancelled else None
        return CancelledError("" if msg is None else msg)

    def result(self):
        """The record's RecordMetadata; raises the delivery error, CancelledError if this handle was
        cancelled, InvalidStateError if not done yet."""
        cdef BatchCompletion c = self._completion
        if self._cancelled:
            raise self._make_cancelled_error()
        if c._state != _DONE:
            raise InvalidStateError("Result is not ready.")
        if c._exc is not None:
            c.log_unretrieved = False
            raise c._exc.with_traceback(c._exc_tb)
        return c._metadata(self._index)

    def exception(self):
        """The delivery error or None; raises CancelledError / InvalidStateError like asyncio.Future."""
        cdef BatchCompletion c = self._completion
        if self._cancelled:
            raise self._make_cancelled_error()
        if c._state != _DONE:
            raise InvalidStateError("Exception is not set.")
        if c._exc is not None:
            c.log_unretrieved = False
        return c._exc

    def __await__(self):
        # asyncio's protocol: flag the handle as blocking and yield it to the Task, which resets the flag
        # and registers its wakeup with add_done_callback(..., context=task_context). The iterator is a
        # small object from a freelist (like asyncio's FutureIter), not a generator: one per await.
        cdef _HandleAwait it = _HandleAwait.__new__(_HandleAwait)
        it._handle = self
        return it

    def __iter__(self):
        # ``yield from handle`` in old-style generator coroutines, as asyncio.Future allows.
        return self.__await__()


cdef int _handle_schedule_callbacks(DeliveryHandle self) except -1:
    """cancel(): hand the handle's callbacks to the loop (module-level, as _handle_fire: a cdef method
    would give every handle a vtable pointer)."""
    cdef object loop = self._completion.loop
    cdef object fn = self._cb0
    cdef list more = self._more
    cdef object context
    if fn is None:
        return 0
    context = self._ctx0
    self._cb0 = self._ctx0 = self._more = None
    _untrack(self)
    _schedule_late(loop, fn, context, self)
    if more is not None:
        for fn, context in more:
            _schedule_late(loop, fn, context, self)
    return 0


cdef int _handle_fire(DeliveryHandle self, object loop) except -1:
    """Run this handle's callbacks now (from the batch's loop callback)."""
    cdef object fn = self._cb0
    cdef object context
    cdef list more
    cdef Py_ssize_t i = 0
    if fn is None:  # no callbacks left, or cancelled (its callbacks were scheduled by cancel())
        return 0
    context = self._ctx0
    more = self._more
    # Detach first: a callback that calls remove_done_callback()/add_done_callback() on this handle
    # sees a done handle with no pending callbacks, as with asyncio.Future.
    self._cb0 = self._ctx0 = self._more = None
    _untrack(self)  # not cancelled (then _cb0 would be None): no message either
    try:
        _run_callback(loop, fn, context, self)
        if more is not None:
            while i < len(more):
                fn, context = more[i]
                i += 1
                _run_callback(loop, fn, context, self)
    except BaseException:
        # SystemExit/KeyboardInterrupt: schedule this handle's remaining callbacks before leaving.
        if more is not None:
            while i < len(more):
                fn, context = more[i]
                i += 1
                _schedule_late(loop, fn, context, self)
        raise
    return 0


cdef inline int _track(DeliveryHandle handle) except -1:
    if not PyObject_GC_IsTracked(handle):
        PyObject_GC_Track(handle)
    return 0


cdef inline int _untrack(DeliveryHandle handle) except -1:
    if PyObject_GC_IsTracked(handle):
        PyObject_GC_UnTrack(handle)
    return 0


@cython.final
@cython.freelist(256)
cdef class _HandleAwait:
    """What ``DeliveryHandle.__await__`` returns: yields the handle once while it is not done (the Task
    then waits for it), then returns its result, as the Python twin's generator does.

    ``await`` drives it through the type's ``am_send`` slot (installed below, as asyncio's own future
    iterator has one): the result is handed back as a return value. ``__next__`` (for ``next()`` and
    ``yield from`` callers) returns it the iterator way, inside a StopIteration, which costs an exception
    object and a traceback entry per record.
    """

    cdef DeliveryHandle _handle   # None once finished
    cdef bint _started            # a step was taken (a generator that is no longer "just started")
    cdef bint _yielded

    def __iter__(self):
        return self

    def __await__(self):
        # Declared so that the type has async slots, where am_send is installed (see the module end).
        return self

    def __next__(self):
        cdef PyObject* out = NULL
        cdef object value
        if _await_step(self, &out) == 0:
            value = <object>out
            Py_DECREF(value)  # _await_step gave us a new reference; ``value`` holds one of its own
            return value
        value = <object>out
        Py_DECREF(value)
        # StopIteration(value) is how an iterator returns a value to its caller (a tuple stays one value).
        raise StopIteration(value)

    def send(self, value):
        # As the Python twin's generator: a value is refused before the first step, ignored after it.
        if value is not None and not self._started:
            raise TypeError("can't send non-None value to a just-started generator")
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        # The exception is raised where the handle is awaited (asyncio.Future's iterator does the same).
        self._handle = None
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        elif not isinstance(val, BaseException):
            val = typ(val)
        if tb is not None:
            val = val.with_traceback(tb)
        raise val

    def close(self):
        self._handle = None


cdef int _await_step(_HandleAwait self, PyObject** out) except -1:
    """One step of an ``await handle``: 0 with ``*out`` the handle to yield to the Task (the first time, if
    not done), 1 with ``*out`` the result to return (a new reference either way); raises what result()
    raises, or RuntimeError if resumed before the handle is done (not driven by a Task)."""
    cdef DeliveryHandle handle = self._handle
    cdef object value
    self._started = True
    if handle is None:
        value = None  # finished already: an exhausted iterator returns nothing more
    elif not (handle._cancelled or handle._completion._state == _DONE):
        if not self._yielded:
            self._yielded = True
            handle._blocking = True
            Py_INCREF(handle)
            out[0] = <PyObject*>handle
            return 0
        self._handle = None
        raise RuntimeError("await wasn't used with future")
    else:
        self._handle = None
        value = handle.result()
    Py_INCREF(value)
    out[0] = <PyObject*>value
    return 1


cdef extern from *:
    """
    typedef int (*aiokprod_await_step_t)(PyObject *, PyObject **);
    typedef int (*aiokprod_await_started_t)(PyObject *);
    static aiokprod_await_step_t aiokprod_await_step = NULL;
    static aiokprod_await_started_t aiokprod_await_started = NULL;

    /* am_send: PYGEN_NEXT to yield *result, PYGEN_RETURN to return it, PYGEN_ERROR with an exception set. */
    static PySendResult aiokprod_await_am_send(PyObject *self, PyObject *arg, PyObject **result) {
        int step;
        *result = NULL;
        if (arg != Py_None && !aiokprod_await_started(self)) {
            /* as send(): a value is refused before the first step, ignored after it (a Task sends None) */
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started generator");
            return PYGEN_ERROR;
        }
        step = aiokprod_await_step(self, result);
        if (step < 0) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        return step == 0 ? PYGEN_NEXT : PYGEN_RETURN;
    }

    static int aiokprod_install_am_send(PyTypeObject *type, aiokprod_await_step_t step,
                                        aiokprod_await_started_t started) {
        if (type->tp_as_async == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "_HandleAwait has no async slots to install am_send in");
            return -1;
        }
        aiokprod_await_step = step;
        aiokprod_await_started = started;
        ((PyAsyncMethods *)type->tp_as_async)->am_send = aiokprod_await_am_send;
        PyType_Modified(type);
        return 0;
    }
    """
    ctypedef int (*aiokprod_await_step_t)(object, PyObject**) except -1
    ctypedef int (*aiokprod_await_started_t)(object) noexcept
    int aiokprod_install_am_send(type cls, aiokprod_await_step_t step, aiokprod_await_started_t started) except -1


cdef int _await_started(_HandleAwait self) noexcept:
    return self._started


aiokprod_install_am_send(_HandleAwait, <aiokprod_await_step_t>_await_step, <aiokprod_await_started_t>_await_started)
