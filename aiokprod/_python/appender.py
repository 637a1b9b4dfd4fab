"""The common case of ``Producer.send`` in one call (pure-Python twin of ``aiokprod/_native/appender.pyx``).

Same names, signatures and results as the compiled twin; read its module docstring for the design: the
per-topic partition count, sticky state (the one copy, shared with ``DefaultPartitioner``) and open batches
(maintained by ``RecordAccumulator``), and the rule that :meth:`RecordAppender.append` either appends to the
open batch and returns the handle, or returns None having changed nothing (but for marking a full batch
refused); and the send entries that ARE ``producer.send``/``send_and_wait``. ``tests/test_appender.py`` runs
both twins through the same tests and against ``send()``'s general path; ``tests/test_send_entry.py`` the
send entries.
"""
from __future__ import annotations

import asyncio
import inspect
import random
import threading
import warnings
from collections.abc import Callable, Coroutine, Generator, Sequence
from time import time as _time
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aiokprod.codec import (
    BATCH_HEADER_SIZE,
    RECORD_OVERHEAD_MAX,
    RecordBatchBuilder,
    key_partition,
    record_size_upper_bound,
)

if TYPE_CHECKING:
    from aiokprod.handle import BatchCompletion, DeliveryHandle
    from aiokprod.metadata import RecordMetadata

_T = TypeVar("_T")

__all__ = ["RecordAppender"]

# The accumulator's batches and their per-partition queues are typed Any here, as in the compiled twin's stub
# (aiokprod/_native/appender.pyi): the appender reads ``topic``, ``partition``, ``builder`` and ``completion``
# of a batch and the queue's tail, and both belong to the accumulator.

_FIXED_SIZE = BATCH_HEADER_SIZE + RECORD_OVERHEAD_MAX + 1
_INT64_MAX = (1 << 63) - 1


def _length_varint_size(n: int) -> int:
    """Bytes of the varint of a zig-zagged length (-1 for null)."""
    u = (n << 1) ^ (n >> 63)
    size = 1
    while u >= 0x80:
        u >>= 7
        size += 1
    return size


class _OpenBatch:
    __slots__ = ("batches", "batch", "builder", "completion", "refused")

    def __init__(self, batches: Any, batch: Any) -> None:
        self.batches = batches
        self.batch = batch
        self.builder: RecordBatchBuilder = batch.builder
        self.completion: BatchCompletion = batch.completion
        # A record did not fit: no record goes in by the fast path until the general path closed the batch.
        self.refused = False


class _Topic:
    __slots__ = ("info", "num_partitions", "sticky", "sticky_bytes", "open")

    def __init__(self) -> None:
        self.info: Any = None  # the cluster's TopicInfo num_partitions was read from (None: not yet)
        self.num_partitions = 0
        self.sticky = -1
        self.sticky_bytes = 0
        self.open: list[_OpenBatch | None] = []


class RecordAppender:
    """The per-producer fast path of ``send()``; also the sticky partitioner's state."""

    __slots__ = ("enabled", "own_partitioner", "batch_size", "_metadata", "_waiters", "_max_record_size",
                 "_topics", "_randrange", "_general_send", "_general_send_and_wait", "_pending_general",
                 "_loop_thread")

    def __init__(self, batch_size: int = 16384, rng: random.Random | None = None) -> None:
        self.batch_size = batch_size
        self.enabled = False
        self.own_partitioner = False
        self._metadata: dict[str, Any] = {}
        self._waiters: Sequence[Any] = ()
        self._max_record_size = 0
        self._topics: dict[str, _Topic] = {}
        self._randrange = (random.Random() if rng is None else rng).randrange
        self._general_send: Callable[..., Coroutine[Any, Any, DeliveryHandle]] | None = None
        self._general_send_and_wait: Callable[..., Coroutine[Any, Any, RecordMetadata]] | None = None
        # As the compiled module's: general-path coroutines handed out and not yet appended, and the thread
        # of the producer's loop (the entries append only there).
        self._pending_general = 0
        self._loop_thread = -1

    def bind(self, metadata: dict[str, Any], waiters: Sequence[Any], max_record_size: int,
             own_partitioner: bool) -> None:
        if type(metadata) is not dict:
            raise TypeError("metadata must be the cluster's dict of TopicInfo")
        self._metadata = metadata
        self._waiters = waiters
        self._max_record_size = max_record_size
        self.own_partitioner = bool(own_partitioner)
        self._loop_thread = threading.get_ident()

    def _topic(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        return state

    # -- the fast path ------------------------------------------------------------------------------------
    def append(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None,
               timestamp_ms: int | None, headers: Sequence[tuple[str | bytes, bytes | None]] | None,
               ) -> DeliveryHandle | None:
        if not self.enabled or type(topic) is not str:
            return None
        state = self._topics.get(topic)
        if state is None:
            return None
        info = self._metadata.get(topic)
        if info is None:
            return None
        if info is not state.info:
            state.num_partitions = info.num_partitions
            state.info = info
        n = state.num_partitions
        if n <= 0:
            return None
        if key is None:
            klen = -1
        elif type(key) is bytes:
            klen = len(key)
        else:
            return None
        if value is None:
            vlen = -1
        elif type(value) is bytes:
            vlen = len(value)
        else:
            return None
        if partition is None:
            if not self.own_partitioner:
                return None
            if key is not None:  # klen >= 0
                p = key_partition(key, n)
            else:
                p = state.sticky
                if p < 0 or p >= n:
                    return None
        elif type(partition) is int:
            p = partition
            if p < 0 or p >= n:
                return None
        else:
            return None
        open_batches = state.open
        if p >= len(open_batches):
            return None
        slot = open_batches[p]
        if slot is None or self._waiters or slot.refused:
            return None
        batches = slot.batches
        if not batches or batches[-1] is not slot.batch:
            return None
        if headers is None:
            size = (_FIXED_SIZE + _length_varint_size(klen) + (klen if klen > 0 else 0)
                    + _length_varint_size(vlen) + (vlen if vlen > 0 else 0))
        elif type(headers) is list or type(headers) is tuple:
            try:
                size = record_size_upper_bound(key, value, headers)
            except (TypeError, ValueError):
                return None  # the general path raises, naming the header
        else:
            return None
        if size > self._max_record_size:
            return None
        if timestamp_ms is None:
            timestamp_ms = int(_time() * 1000)
        elif type(timestamp_ms) is not int or not 0 <= timestamp_ms <= _INT64_MAX:
            return None
        builder = slot.builder
        sticky = partition is None and klen < 0  # only records the sticky partitioner placed count
        before = builder.size_in_bytes if sticky else 0
        if not builder.append(timestamp_ms, key, value, headers):
            slot.refused = True
            return None
        handle = slot.completion.add(timestamp_ms)
        if sticky and p == state.sticky:
            state.sticky_bytes += builder.size_in_bytes - before  # what the record added to the batch
            if state.sticky_bytes >= self.batch_size:
                self._switch(state, p, n)
        return handle

    # -- Producer.send / send_and_wait themselves ---------------------------------------------------------
    def set_general_path(self, send: Callable[..., Coroutine[Any, Any, DeliveryHandle]],
                         send_and_wait: Callable[..., Coroutine[Any, Any, RecordMetadata]]) -> None:
        self._general_send = send
        self._general_send_and_wait = send_and_wait

    def general_done(self) -> None:
        if self._pending_general > 0:
            self._pending_general -= 1

    @property
    def pending_general(self) -> int:
        return self._pending_general

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None,
             timestamp_ms: int | None = None, headers: Sequence[tuple[str | bytes, bytes | None]] | None = None,
             ) -> Coroutine[Any, Any, DeliveryHandle]:
        handle = None
        if self._pending_general == 0 and threading.get_ident() == self._loop_thread:
            handle = self.append(topic, value, key, partition, timestamp_ms, headers)
        if handle is None:
            general = _general(self._general_send, topic, value, key, partition, timestamp_ms, headers)
            self._pending_general += 1
            return general
        return _Ready(handle, False)

    def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                      partition: int | None = None, timestamp_ms: int | None = None,
                      headers: Sequence[tuple[str | bytes, bytes | None]] | None = None,
                      ) -> Coroutine[Any, Any, RecordMetadata]:
        handle = None
        if self._pending_general == 0 and threading.get_ident() == self._loop_thread:
            handle = self.append(topic, value, key, partition, timestamp_ms, headers)
        if handle is None:
            general = _general(self._general_send_and_wait, topic, value, key, partition, timestamp_ms, headers)
            self._pending_general += 1
            return general
        return _Ready(handle, True)

    # -- the sticky partitioner's state (used by DefaultPartitioner) ---------------------------------------
    def sticky_partition(self, topic: str, num_partitions: int) -> int:
        state = self._topic(topic)
        if state.sticky < 0 or state.sticky >= num_partitions:
            state.sticky = self._randrange(num_partitions)
            state.sticky_bytes = 0
        return state.sticky

    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None:
        state = self._topics.get(topic)
        if state is None or state.sticky < 0 or state.sticky != partition:
            return
        state.sticky_bytes += num_bytes
        if state.sticky_bytes >= self.batch_size:
            self._switch(state, partition, num_partitions)

    def _switch(self, state: _Topic, partition: int, num_partitions: int) -> None:
        state.sticky_bytes = 0
        if num_partitions > 1:
            choice = self._randrange(num_partitions - 1)
            state.sticky = choice if choice < partition else choice + 1

    # -- open batches (maintained by RecordAccumulator) ---------------------------------------------------
    def batch_opened(self, batches: Any, batch: Any) -> None:
        state = self._topic(batch.topic)
        partition = batch.partition.__index__()
        if partition < 0:
            raise ValueError(f"partition {partition} < 0")
        open_batches = state.open
        while len(open_batches) <= partition:
            open_batches.append(None)
        open_batches[partition] = _OpenBatch(batches, batch)

    def batch_closed(self, batch: Any) -> None:
        state = self._topics.get(batch.topic)
        if state is None:
            return
        partition = batch.partition
        if 0 <= partition < len(state.open):
            slot = state.open[partition]
            if slot is not None and slot.batch is batch:
                state.open[partition] = None

    def sticky_state(self, topic: str) -> tuple[int, int] | None:
        state = self._topics.get(topic)
        if state is None or state.sticky < 0:
            return None
        return (state.sticky, state.sticky_bytes)

    def open_batch(self, topic: str, partition: int) -> Any:
        state = self._topics.get(topic)
        if state is None or not 0 <= partition < len(state.open):
            return None
        slot = state.open[partition]
        return None if slot is None else slot.batch


def _mark_coroutine_function(function: Callable[..., Any]) -> None:
    """Mark ``function`` (the send entries, which return coroutines without being ``async def``) as a
    coroutine function for those who dispatch on it (Starlette's BackgroundTasks, for one, would otherwise
    call ``producer.send`` in a worker thread): ``asyncio.iscoroutinefunction`` on every version, and
    ``inspect.iscoroutinefunction`` from 3.12 (``inspect.markcoroutinefunction``). Bound methods pass the
    function's attributes on, so ``producer.send`` carries the marks. (Same as the compiled twin's.)"""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(function)
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)  # what asyncio.iscoroutinefunction looks for
    if marker is not None:
        function._is_coroutine = marker  # type: ignore[attr-defined]


def _general(path: Callable[..., Coroutine[Any, Any, _T]] | None, *args: Any) -> Coroutine[Any, Any, _T]:
    if path is None:
        raise RuntimeError("RecordAppender.send()/send_and_wait() before set_general_path()")
    return path(*args)


class _Ready(Coroutine[Any, Any, Any]):
    """What send() / send_and_wait() return when the fast path appended the record (the compiled twin's
    ``_Ready`` says why): a coroutine that returns the handle (send) or awaits it (send_and_wait); warns
    when never awaited, as a coroutine does, though its record was appended."""

    __slots__ = ("_handle", "_inner", "_wait", "_started")

    def __init__(self, handle: DeliveryHandle, wait: bool) -> None:
        self._handle: DeliveryHandle | None = handle
        self._inner: Generator[Any, None, RecordMetadata] | None = None
        self._wait = wait
        self._started = False

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if self._handle is not None and not self._started:
            _warn(f"coroutine {self.__name__!r} was never awaited (its record was appended anyway)",
                  RuntimeWarning, stacklevel=1)

    @property
    def __name__(self) -> str:
        return "Producer.send_and_wait" if self._wait else "Producer.send"

    @property
    def cr_running(self) -> bool:
        return False

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]  # an iterator with send/throw/close, as a generator

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        handle = self._handle
        if handle is None:
            raise RuntimeError("cannot reuse already awaited coroutine")
        inner = self._inner
        if not self._started:
            if value is not None:
                raise TypeError("can't send non-None value to a just-started coroutine")
            self._started = True
            if not self._wait:
                self._handle = None
                raise StopIteration(handle)
            inner = self._inner = handle.__await__()
        try:
            # Started send_and_wait's: waiting on the handle (send's finished at its first step).
            return cast("Generator[Any, None, RecordMetadata]", inner).send(value)
        except BaseException:
            self._finish()
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
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

    def close(self) -> None:
        inner = self._inner
        self._finish()
        if inner is not None:
            inner.close()

    def _finish(self) -> None:
        self._started = True
        self._handle = None
        self._inner = None


_mark_coroutine_function(RecordAppender.send)
_mark_coroutine_function(RecordAppender.send_and_wait)
