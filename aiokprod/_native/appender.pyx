# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The common case of ``Producer.send`` in one compiled call (twin: ``aiokprod/_python/appender.py``).

``send()`` of a record whose topic's metadata is cached and whose partition has an open batch with room
needs no await. Done as Python it is ~1.4 us/record, nearly all of it attribute lookups, dict lookups and
calls (producer state, serializers, metadata, partitioner, size bound, clock, accumulator queue, batch,
builder, completion, partitioner again). :meth:`RecordAppender.append` does that work here, from C fields,
and returns the record's delivery handle; or returns None, having changed NOTHING (but for marking a full
batch refused, see the end), whenever anything is out of the ordinary, and ``send()`` goes on with its
general (slow) path, which raises the right errors and awaits what must be awaited. So the fast path never
has to reproduce an error or a wait: only the outcome of the slow path when that outcome is "appended to the
open batch".

What the fast path needs, kept per topic in a :class:`_Topic`:

- the topic's partition count, re-read only when the metadata cache holds a new ``TopicInfo`` object (the
  cluster replaces it on every refresh, never mutates it);
- the keyless "uniform sticky" state (KIP-794): the sticky partition and the bytes appended to it, counted
  as the Java client counts them: what each record added to its batch (the growth of the builder's
  ``size_in_bytes``; the whole batch, 61-byte header included, for a record that opened a new one), not its
  upper-bound size. This is the ONE copy of that state: ``DefaultPartitioner`` reads and updates it through
  :meth:`sticky_partition` and :meth:`record_appended`, so both paths switch at the same byte, with the same
  random draws;
- per partition, the open batch (an :class:`_OpenBatch`: its queue's deque, the batch, its builder and its
  completion), set by the accumulator when it opens a batch and cleared whenever that batch stops taking
  records (full, drained, expired, settled). The fast path also checks that the batch is still the tail of
  its partition's deque: a cheap guard that a queue changed behind the accumulator's back (the sender pops
  and clears deques) can never make us append to a batch that is gone.

Odd input (a negative, out-of-range or non-int timestamp, a partition that is not an int, headers that are
not already (str | bytes, bytes | None) pairs in a list or tuple) is declined too: the general path raises
the error that names it.

Memory: a record appended to an open batch needs no ``buffer_memory`` (the batch reserved its buffer when it
was made), exactly as ``RecordAccumulator.try_append``; and while senders are queued for memory nothing is
appended, so nobody overtakes them.

``producer.send`` and ``producer.send_and_wait`` ARE :meth:`RecordAppender.send` and
:meth:`RecordAppender.send_and_wait` (bound by ``Producer._init_parts``): the fast path, then a freelisted
:class:`_Ready` that ``await`` completes without a yield (send) or that awaits the handle (send_and_wait). A
coroutine and its frame per record were a quarter of fire-and-forget's CPU. What the fast path declines,
they hand to the general path, ``Producer.send``/``send_and_wait`` themselves, and return its coroutine. So
the common case appends when send() is called, the general path when its coroutine runs. So that records
keep the order of the calls, the entries append nothing themselves while a general-path coroutine they
handed out has not appended yet (``_pending_general``, counted down by ``general_done``), and a record the
open batch refused (full) marks it refused until the general path has closed it. Called from a thread other
than the loop's, the entries always hand out the general path (it appends on the loop, never beside the
sender).
"""
cimport cython

from aiokprod._native._murmur2 cimport murmur2_bytes
from aiokprod._native.codec cimport RecordBatchBuilder
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact, PyLong_FromLongLong
from cpython.exc cimport PyErr_WarnEx
from cpython.object cimport PyObject
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.sequence cimport PySequence_GetItem
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

import asyncio
import inspect
import random
from collections.abc import Coroutine as _Coroutine
from time import time as _time

from aiokprod.codec import BATCH_HEADER_SIZE, RECORD_OVERHEAD_MAX, record_size_upper_bound

__all__ = ["RecordAppender"]

# record_size_upper_bound() for bytes/None key and value and no headers, without the call: batch header +
# the record's fixed worst case + the two length varints and the bytes + one byte of header count.
cdef Py_ssize_t _FIXED_SIZE = BATCH_HEADER_SIZE + RECORD_OVERHEAD_MAX + 1
cdef object _size_bound = record_size_upper_bound
cdef object _clock = _time


cdef extern from *:
    """
    #include <time.h>
    /* Bytes of the varint of a zig-zagged length (-1 for null): what record_size_upper_bound counts. */
    static inline Py_ssize_t aiokprod_length_varint_size(Py_ssize_t n) {
        unsigned long long u = ((unsigned long long)n << 1) ^ (unsigned long long)(n >> 63);
        if (u < 0x80) return 1;
        if (u < 0x4000) return 2;
        return (9 * (64 - __builtin_clzll(u)) + 64) >> 6;
    }

    /* int(time.time() * 1000), bit for bit, without the two calls and the float object. CPython 3.11's
       time.time() reads CLOCK_REALTIME as integer nanoseconds t, and turns it into a double as
       _PyTime_AsSecondsDouble does (exact seconds when t is a whole number of seconds, else (double)t /
       1e9); the multiplication by 1000 is a double multiplication and int() truncates. Returns -1 if
       the clock cannot be read (the caller then asks Python). */
    static inline long long aiokprod_now_ms(void) {
        struct timespec ts;
        long long t;
        double d;
        if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
            return -1;
        t = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        if (t % 1000000000LL == 0)
            d = (double)(t / 1000000000LL);
        else
            d = (double)t / 1e9;
        return (long long)(d * 1000.0);
    }
    """
    Py_ssize_t aiokprod_length_varint_size(Py_ssize_t n) noexcept nogil
    long long aiokprod_now_ms() noexcept nogil
    # Without Cython's error check: an int too big for Py_ssize_t is just "out of range" here (we clear
    # the OverflowError and decline; the slow path then raises its ValueError).
    Py_ssize_t aiokprod_as_ssize "PyLong_AsSsize_t"(object o) noexcept
    void PyErr_Clear() noexcept


@cython.final
@cython.freelist(64)
cdef class _OpenBatch:
    """The open batch of one partition, as the fast path needs it: no attribute lookups per record."""

    cdef object batches      # the PartitionQueue's deque; the batch must still be its tail
    cdef object batch
    cdef RecordBatchBuilder builder  # typed: its _len is read without a call (bytes each record added)
    cdef object completion
    # The classes' own functions, called with the object as first argument: a direct vectorcall, where
    # builder.append(...) would first look the method up on the type (~10 ns each, per record).
    cdef object append
    cdef object add
    # Set when a record did not fit (the builder refused it): the fast path then declines every record
    # for this batch, so that none overtakes the refused one, whose general path closes the batch and
    # opens the next (with a new _OpenBatch). See RecordAppender.send on why this matters now.
    cdef bint refused


@cython.final
cdef class _Topic:
    """Everything the fast path keeps about one topic."""

    cdef object info                # the TopicInfo num_partitions was read from (None: not yet)
    cdef Py_ssize_t num_partitions
    cdef Py_ssize_t sticky          # the keyless sticky partition, -1 before the first keyless record
    cdef Py_ssize_t sticky_bytes    # bytes its records added to its batches since it was chosen
    cdef list open                  # partition -> _OpenBatch or None

    def __cinit__(self):
        self.sticky = -1
        self.open = []


@cython.final
cdef class RecordAppender:
    """The per-producer fast path of ``send()``; also the sticky partitioner's state. See the module doc."""

    cdef public bint enabled            # set by the producer: running, no interceptors, no serializers
    cdef readonly bint own_partitioner  # True: the producer's DefaultPartitioner uses our sticky state
    cdef readonly Py_ssize_t batch_size
    cdef dict _metadata                 # the cluster's live cache: topic -> TopicInfo
    cdef object _waiters                # the accumulator's queue of senders waiting for memory
    cdef Py_ssize_t _max_record_size
    cdef dict _topics                   # topic -> _Topic
    cdef object _randrange
    # Producer.send / send_and_wait's general path (set_general_path): what send() / send_and_wait() return,
    # a coroutine, for a record the fast path declines.
    cdef object _general_send
    cdef object _general_send_and_wait
    # General-path coroutines handed out and not yet appended (general_done() counts them down): while any
    # is pending the entries append nothing themselves, so no record overtakes one handed out earlier (a
    # record is appended when its send() is called on the fast path, when awaited on the general path).
    cdef Py_ssize_t _pending_general
    # The thread of the producer's loop (bind()): the entries append only there; called from another thread
    # (asyncio.run_coroutine_threadsafe(producer.send(...), loop)) they hand out the general path, which
    # appends on the loop when it runs, never beside the sender.
    cdef unsigned long _loop_thread

    def __init__(self, batch_size=16384, rng=None):
        self.batch_size = batch_size
        self.enabled = False
        self.own_partitioner = False
        self._metadata = {}
        self._waiters = ()
        self._max_record_size = 0
        self._topics = {}
        self._randrange = (random.Random() if rng is None else rng).randrange

    def bind(self, metadata, waiters, max_record_size, own_partitioner):
        """Attach to a started producer's parts. ``own_partitioner``: keyless and keyed records without an
        explicit partition may be placed here (the producer's partitioner is a DefaultPartitioner sharing
        this object); otherwise only records with an explicit partition take the fast path (their
        partitioner's ``record_appended`` must then be a no-op)."""
        if type(metadata) is not dict:
            raise TypeError("metadata must be the cluster's dict of TopicInfo")
        self._metadata = metadata
        self._waiters = waiters
        self._max_record_size = max_record_size
        self.own_partitioner = own_partitioner
        self._loop_thread = PyThread_get_thread_ident()

    cdef _Topic _topic(self, str topic):
        cdef PyObject* found = PyDict_GetItem(self._topics, topic)
        if found is not NULL:
            return <_Topic>found
        state = _Topic()
        self._topics[topic] = state
        return state

    # -- the fast path ------------------------------------------------------------------------------------
    def append(self, topic, value, key, partition, timestamp_ms, headers):
        """Append to the partition's open batch and return the record's handle; None (nothing done) if the
        record needs the general path. Arguments as ``Producer.send``'s, serializers already applied."""
        return self._append(topic, value, key, partition, timestamp_ms, headers)

    cdef object _append(self, topic, value, key, partition, timestamp_ms, headers):
        cdef PyObject* found
        cdef _Topic state
        cdef _OpenBatch slot
        cdef Py_ssize_t n, p, klen, vlen, size, before
        cdef long long now
        cdef int overflow, appended
        cdef const char* kp
        cdef const char* vp
        if not self.enabled or not PyUnicode_CheckExact(topic):
            return None
        found = PyDict_GetItem(self._topics, topic)
        if found is NULL:
            return None  # no batch was ever opened for this topic
        state = <_Topic>found
        found = PyDict_GetItem(self._metadata, topic)
        if found is NULL:
            return None  # metadata not cached (or dropped): send() waits for it
        if found is not <PyObject*>state.info:
            state.num_partitions = (<object>found).num_partitions
            state.info = <object>found
        n = state.num_partitions
        if n <= 0 or n > 0x7FFFFFFF:
            return None  # the slow path raises (no partitions) or copes (never seen: Kafka ids are int32)
        # Key and value exactly bytes or None (anything else is converted or refused by the slow path).
        if key is None:
            klen = -1
        elif PyBytes_CheckExact(key):
            klen = PyBytes_GET_SIZE(key)
        else:
            return None
        if value is None:
            vlen = -1
        elif PyBytes_CheckExact(value):
            vlen = PyBytes_GET_SIZE(value)
        else:
            return None
        # The partition, as DefaultPartitioner.partition() would say, or the caller's if in range.
        if partition is None:
            if not self.own_partitioner:
                return None
            if klen >= 0:
                # (A 32-bit division: n < 2**31, and the 64-bit one costs several times as much.)
                p = <uint32_t>(murmur2_bytes(<const unsigned char*>PyBytes_AS_STRING(key), klen) & 0x7FFFFFFF) % <uint32_t>n
            else:
                p = state.sticky
                if p < 0 or p >= n:
                    return None  # no sticky partition yet, or a stale one: the partitioner draws one
        elif PyLong_CheckExact(partition):
            p = aiokprod_as_ssize(partition)
            if p < 0 or p >= n:
                if p == -1:
                    PyErr_Clear()  # -1 may also be an overflow: either way, out of range
                return None
        else:
            return None
        # The partition's open batch, still the tail of its queue, and nobody waiting for memory.
        if p >= PyList_GET_SIZE(state.open):
            return None
        found = PyList_GET_ITEM(state.open, p)
        if <object>found is None:
            return None
        slot = <_OpenBatch>found
        if self._waiters or slot.refused:
            return None
        batches = slot.batches
        # (PySequence_GetItem counts a negative index from the end; the deque's end item is O(1).)
        if not batches or PySequence_GetItem(batches, -1) is not slot.batch:
            return None
        # record_size_upper_bound, inline when there are no headers.
        if headers is None:
            size = (_FIXED_SIZE + aiokprod_length_varint_size(klen) + (klen if klen > 0 else 0)
                    + aiokprod_length_varint_size(vlen) + (vlen if vlen > 0 else 0))
        elif type(headers) is list or type(headers) is tuple:
            # Validates the headers too; bad ones (or ones that need converting) are the general path's to
            # refuse (or convert), with an error naming the header.
            try:
                size = _size_bound(key, value, headers)
            except (TypeError, ValueError):
                return None
        else:
            return None
        if size > self._max_record_size:
            return None  # send() raises RecordTooLargeError
        if timestamp_ms is None:
            now = aiokprod_now_ms()
            if now >= 0:
                timestamp_ms = PyLong_FromLongLong(now)
            else:
                timestamp_ms = int(_clock() * 1000)
                now = timestamp_ms
        elif not PyLong_CheckExact(timestamp_ms):
            return None
        else:
            # Only when the caller gave one: Kafka timestamps are int64 and, as in the Java client, >= 0.
            now = PyLong_AsLongLongAndOverflow(timestamp_ms, &overflow)
            if now < 0 or overflow:
                return None
        before = slot.builder._len
        if headers is None:
            # The builder's C entry, as its append() would call it for exact bytes or None (checked above)
            # and no headers: no Python call, no argument boxing, ``now`` already the int64 timestamp.
            kp = PyBytes_AS_STRING(key) if klen >= 0 else NULL
            vp = PyBytes_AS_STRING(value) if vlen >= 0 else NULL
            appended = slot.builder._append(now, kp, klen, vp, vlen, None)
        else:
            appended = 1 if slot.append(slot.builder, timestamp_ms, key, value, headers) else 0
        if not appended:
            # Full. The slow path's accumulator.append finds it so again, closes it and opens the next.
            # Until it does, no record goes into this batch by the fast path (see _OpenBatch.refused).
            slot.refused = True
            return None
        handle = slot.add(slot.completion, timestamp_ms)
        if partition is None and klen < 0 and p == state.sticky:
            # DefaultPartitioner.record_appended, which send() calls for the records the sticky partitioner
            # placed (keyless, no partition given): as in Java's KIP-794, only they count toward a switch,
            # each with the bytes it added to the batch (the open batch already has its header).
            state.sticky_bytes += slot.builder._len - before
            if state.sticky_bytes >= self.batch_size:
                self._switch(state, p, n)
        return handle

    # -- Producer.send / send_and_wait themselves ---------------------------------------------------------
    def set_general_path(self, send, send_and_wait):
        """The producer's general path: coroutine functions taking send()'s arguments (``Producer.send`` and
        ``Producer.send_and_wait`` bound to the producer), called by :meth:`send` and :meth:`send_and_wait`
        for what the fast path declines."""
        self._general_send = send
        self._general_send_and_wait = send_and_wait

    def general_done(self):
        """A general-path coroutine handed out by :meth:`send` / :meth:`send_and_wait` appended its record (or
        failed to): the general path calls this once per such coroutine, when it is past its append."""
        if self._pending_general > 0:
            self._pending_general -= 1

    @property
    def pending_general(self):
        """General-path coroutines handed out and not past their append yet (for tests and diagnostics)."""
        return self._pending_general

    # binding: a Cython function object (with a __dict__), so that it can carry the coroutine-function marks
    # (see _mark_coroutine_function); its bound method is called as directly (vectorcall) as a builtin one.
    @cython.binding(True)
    def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None):
        """``Producer.send`` of a started producer: the fast path, then an awaitable that returns the handle
        at once (no coroutine, no frame: see _Ready); the general path's coroutine if the fast path declines.

        The record is appended HERE, when send() is called, not when its result is awaited (with the general
        path, as with any coroutine, nothing happens before the await). So records are appended in the order
        of the calls; _OpenBatch.refused keeps a later record from overtaking one the general path will
        append to the same partition."""
        cdef _Ready ready
        handle = None
        if self._pending_general == 0 and PyThread_get_thread_ident() == self._loop_thread:
            handle = self._append(topic, value, key, partition, timestamp_ms, headers)
        if handle is None:
            general = _general(self._general_send, topic, value, key, partition, timestamp_ms, headers)
            self._pending_general += 1
            return general
        ready = _Ready.__new__(_Ready)
        ready._handle = handle
        return ready

    @cython.binding(True)
    def send_and_wait(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None):
        """``Producer.send_and_wait`` of a started producer: as :meth:`send`, but the awaitable waits for the
        record's delivery and returns its ``RecordMetadata`` (it awaits the handle)."""
        cdef _Ready ready
        handle = None
        if self._pending_general == 0 and PyThread_get_thread_ident() == self._loop_thread:
            handle = self._append(topic, value, key, partition, timestamp_ms, headers)
        if handle is None:
            general = _general(self._general_send_and_wait, topic, value, key, partition, timestamp_ms, headers)
            self._pending_general += 1
            return general
        ready = _Ready.__new__(_Ready)
        ready._handle = handle
        ready._wait = True
        return ready

    # -- the sticky partitioner's state (used by DefaultPartitioner) ---------------------------------------
    def sticky_partition(self, str topic, Py_ssize_t num_partitions):
        """The keyless partition for ``topic``: the sticky one, or a new random one if there is none yet or
        it is out of range (the topic shrank)."""
        cdef _Topic state = self._topic(topic)
        if state.sticky < 0 or state.sticky >= num_partitions:
            state.sticky = self._randrange(num_partitions)
            state.sticky_bytes = 0
        return state.sticky

    def record_appended(self, str topic, Py_ssize_t partition, Py_ssize_t num_bytes, Py_ssize_t num_partitions):
        """Count ``num_bytes`` (what a keyless record added to its batch, the batch header included if it
        opened the batch) on the sticky partition; switch once a batch's worth went there (KIP-794)."""
        cdef PyObject* found = PyDict_GetItem(self._topics, topic)
        if found is NULL:
            return
        cdef _Topic state = <_Topic>found
        if state.sticky < 0 or state.sticky != partition:
            return
        state.sticky_bytes += num_bytes
        if state.sticky_bytes >= self.batch_size:
            self._switch(state, partition, num_partitions)

    cdef int _switch(self, _Topic state, Py_ssize_t partition, Py_ssize_t num_partitions) except -1:
        state.sticky_bytes = 0
        cdef Py_ssize_t choice
        if num_partitions > 1:
            # Any partition but the current one, uniformly.
            choice = self._randrange(num_partitions - 1)
            state.sticky = choice if choice < partition else choice + 1
        return 0

    # -- open batches (maintained by RecordAccumulator) ---------------------------------------------------
    def batch_opened(self, batches, batch):
        """``batch`` (just appended to the ``batches`` deque of its partition) is its partition's open batch."""
        cdef _Topic state = self._topic(batch.topic)
        cdef Py_ssize_t partition = batch.partition
        if partition < 0:
            raise ValueError(f"partition {partition} < 0")
        while PyList_GET_SIZE(state.open) <= partition:
            state.open.append(None)
        builder = batch.builder
        if type(builder) is not RecordBatchBuilder:
            raise TypeError(f"the compiled appender needs the compiled RecordBatchBuilder, got {type(builder)!r}")
        cdef _OpenBatch slot = _OpenBatch.__new__(_OpenBatch)
        slot.batches = batches
        slot.batch = batch
        slot.builder = builder
        slot.completion = batch.completion
        slot.append = type(slot.builder).append
        slot.add = type(slot.completion).add
        state.open[partition] = slot

    def batch_closed(self, batch):
        """``batch`` takes no more records (full, drained, expired or settled): forget it if it was open."""
        cdef PyObject* found = PyDict_GetItem(self._topics, batch.topic)
        if found is NULL:
            return
        cdef _Topic state = <_Topic>found
        cdef Py_ssize_t partition = batch.partition
        if 0 <= partition < PyList_GET_SIZE(state.open):
            slot = state.open[partition]
            if slot is not None and (<_OpenBatch>slot).batch is batch:
                state.open[partition] = None

    def sticky_state(self, str topic):
        """``(sticky partition, bytes counted on it)`` for ``topic``, or None before its first keyless record:
        for tests and diagnostics; changes nothing."""
        cdef PyObject* found = PyDict_GetItem(self._topics, topic)
        if found is NULL or (<_Topic>found).sticky < 0:
            return None
        return ((<_Topic>found).sticky, (<_Topic>found).sticky_bytes)

    def open_batch(self, str topic, Py_ssize_t partition):
        """The batch the fast path would append to for ``topic``-``partition`` (None: none), for tests."""
        cdef PyObject* found = PyDict_GetItem(self._topics, topic)
        if found is NULL:
            return None
        cdef _Topic state = <_Topic>found
        if not 0 <= partition < PyList_GET_SIZE(state.open):
            return None
        slot = state.open[partition]
        return None if slot is None else (<_OpenBatch>slot).batch


cdef object _general(object path, topic, value, key, partition, timestamp_ms, headers):
    if path is None:
        raise RuntimeError("RecordAppender.send()/send_and_wait() before set_general_path()")
    return path(topic, value, key, partition, timestamp_ms, headers)


# -- what send() returns when the fast path appended ---------------------------------------------------------

@cython.final
@cython.freelist(256)
cdef class _Ready:
    """The result of ``producer.send(...)`` (or ``send_and_wait``) when the fast path appended the record:
    a coroutine as asyncio sees it (``asyncio.iscoroutine``, ``create_task``, ``ensure_future``, ``gather``,
    ``wait_for`` take it: it has ``send``, ``throw``, ``close`` and ``__await__`` and is registered as a
    ``collections.abc.Coroutine``), that costs no frame.

    send(): ``await`` returns the handle without yielding, through the type's ``am_send`` slot (installed at
    the module end, as handle.pyx does for the handle's await iterator): the value comes back as a return,
    no StopIteration. send_and_wait(): it awaits the handle, by driving the handle's own await iterator
    (``am_await`` then ``PyIter_Send``, C slots both), and returns its RecordMetadata.

    Never awaited (nor closed, nor thrown into): its finalizer warns as an unawaited coroutine does
    (RuntimeWarning "coroutine 'Producer.send' was never awaited"); unlike a coroutine, the record was
    appended already, and is delivered.
    """

    cdef object _handle   # the record's DeliveryHandle; None once finished (returned, thrown into, closed)
    cdef object _inner    # send_and_wait: the handle's await iterator, from the first step on
    cdef bint _wait       # True: send_and_wait's (awaits the handle), False: send's (returns it)
    cdef bint _started    # a step was taken (the coroutine is no longer "just started")

    def __dealloc__(self):
        if self._handle is not None and not self._started:
            # A RuntimeWarning, as CPython gives a coroutine that was never awaited (Cython saves and
            # restores any exception being handled around __dealloc__; an error here is unraisable).
            if self._wait:
                PyErr_WarnEx(RuntimeWarning, b"coroutine 'Producer.send_and_wait' was never awaited "
                             b"(its record was appended anyway)", 1)
            else:
                PyErr_WarnEx(RuntimeWarning, b"coroutine 'Producer.send' was never awaited "
                             b"(its record was appended anyway)", 1)

    @property
    def __name__(self):
        # asyncio's repr of a Task names its coroutine by __qualname__ or else __name__ (a type's
        # __qualname__ cannot be an instance property).
        return "Producer.send_and_wait" if self._wait else "Producer.send"

    @property
    def cr_running(self):
        return False

    def __await__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        cdef PyObject* out = NULL
        cdef object result
        cdef int step = _ready_step(self, <PyObject*>value, &out)
        result = <object>out
        Py_DECREF(result)  # _ready_step gave a new reference; ``result`` holds its own
        if step == 0:
            return result
        raise StopIteration(result)

    def throw(self, typ, val=None, tb=None):
        """Raise the exception where the coroutine is awaited (into the handle's await, once send_and_wait's
        is waiting for it)."""
        inner = self._inner
        if inner is not None:
            try:
                return inner.throw(typ, val, tb)
            except BaseException:
                self._finish()
                raise
        self._finish()
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        elif not isinstance(val, BaseException):
            val = typ(val)
        if tb is not None:
            val = val.with_traceback(tb)
        raise val

    def close(self):
        inner = self._inner
        self._finish()
        if inner is not None:
            inner.close()

    cdef inline void _finish(self):
        self._started = True
        self._handle = None
        self._inner = None


cdef int _ready_step(_Ready self, PyObject* arg, PyObject** out) except -1:
    """One step: 0 with ``*out`` the value to yield, 1 with ``*out`` the value to return (a new reference
    either way); raises as a coroutine would."""
    cdef object handle = self._handle
    cdef object inner
    cdef object value
    cdef PySendResult status
    if handle is None:
        raise RuntimeError("cannot reuse already awaited coroutine")
    if not self._started:
        if arg != <PyObject*>None:
            raise TypeError("can't send non-None value to a just-started coroutine")
        self._started = True
        if not self._wait:
            self._handle = None
            Py_INCREF(handle)
            out[0] = <PyObject*>handle
            return 1
        self._inner = aiokprod_await_iter(handle)
    status = PyIter_Send(self._inner, <object>arg, out)
    if status == PYGEN_NEXT:
        return 0
    self._handle = None
    self._inner = None
    if status == PYGEN_RETURN:
        return 1
    return -1  # the exception is set


cdef extern from *:
    """
    /* await's first step on a handle: its __await__ through the type's am_await slot (no method lookup). */
    static PyObject *aiokprod_await_iter(PyObject *o) {
        PyTypeObject *tp = Py_TYPE(o);
        if (tp->tp_as_async == NULL || tp->tp_as_async->am_await == NULL) {
            PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression", tp->tp_name);
            return NULL;
        }
        return tp->tp_as_async->am_await(o);
    }

    typedef int (*aiokprod_ready_step_t)(PyObject *, PyObject *, PyObject **);
    static aiokprod_ready_step_t aiokprod_ready_step = NULL;

    /* am_send: PYGEN_NEXT to yield *result, PYGEN_RETURN to return it, PYGEN_ERROR with an exception set. */
    static PySendResult aiokprod_ready_am_send(PyObject *self, PyObject *arg, PyObject **result) {
        int step;
        *result = NULL;
        step = aiokprod_ready_step(self, arg, result);
        if (step < 0) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        return step == 0 ? PYGEN_NEXT : PYGEN_RETURN;
    }

    static int aiokprod_install_ready_am_send(PyTypeObject *type, aiokprod_ready_step_t step) {
        if (type->tp_as_async == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "_Ready has no async slots to install am_send in");
            return -1;
        }
        aiokprod_ready_step = step;
        ((PyAsyncMethods *)type->tp_as_async)->am_send = aiokprod_ready_am_send;
        PyType_Modified(type);
        return 0;
    }
    """
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject** presult)
    object aiokprod_await_iter(object o)
    ctypedef int (*aiokprod_ready_step_t)(object, PyObject*, PyObject**) except -1
    int aiokprod_install_ready_am_send(type cls, aiokprod_ready_step_t step) except -1


def _mark_coroutine_function(function):
    """Mark ``function`` (a send entry: it returns a coroutine without being ``async def``) as a coroutine
    function for code that dispatches on that (Starlette's BackgroundTasks, for one, would otherwise call
    ``producer.send`` in a worker thread): ``asyncio.iscoroutinefunction`` on every version, and
    ``inspect.iscoroutinefunction`` from 3.12 (``inspect.markcoroutinefunction``). A bound method passes its
    function's attributes on, so ``producer.send`` carries the marks. (Same as the Python twin's.)"""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(function)
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)  # what asyncio.iscoroutinefunction looks for
    if marker is not None:
        function._is_coroutine = marker


aiokprod_install_ready_am_send(_Ready, <aiokprod_ready_step_t>_ready_step)
_Coroutine.register(_Ready)
_mark_coroutine_function(RecordAppender.send)
_mark_coroutine_function(RecordAppender.send_and_wait)
