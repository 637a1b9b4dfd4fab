"""The record accumulator: per-partition queues of batches, bounded by ``buffer_memory``. No I/O, no loop.

A record travels: ``append`` puts it in the open batch of its partition (the native ``RecordBatchBuilder``
holds its bytes, the batch's ``BatchCompletion`` hands out its delivery handle). A batch is *ready* when it is
full, has lingered ``linger_ms``, or a flush asked for it. The sender asks ``ready()`` which partitions can
go, then ``drain()`` for each leader: drain is where a batch is closed, gets its producer id, epoch and
sequence, and its bytes are built once (``ProducerBatch.freeze``). A retried batch keeps its sequence and its
bytes, and goes back to the *front* of its partition queue in sequence order.

Memory, as the Java client counts it: a new batch reserves its buffer (``batch_size``, or the record if it
is bigger) from ``buffer_memory`` before it is made, records appended to an open batch need nothing more, and
the reservation is released when the batch completes. So what is counted is what is allocated, whatever the
number of partitions. When the buffer is full, senders queue in FIFO order and are granted memory in that
order as it frees, so thousands of blocked senders wake one by one, not as a herd, and while anyone is queued
nobody appends past them.

The open batch of each partition (the tail of its queue, not closed) is also registered in a
``RecordAppender``: ``Producer.send``'s compiled fast path appends there without going through this class.
So every place below where a batch starts or stops taking records tells the appender (``batch_opened`` /
``batch_closed``): a new batch, a full one, a drained one (``mark_drained``), an expired one, a settled one.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Callable, Optional, Union

from .appender import RecordAppender
from .codec import RecordBatchBuilder

if TYPE_CHECKING:
    import asyncio

    from .handle import BatchCompletion, DeliveryHandle

# What a record's key, value and headers may be (as the codec takes them).
_BytesLike = Union[bytes, bytearray, memoryview]
_Headers = Optional[Sequence[tuple[Union[str, bytes], Optional[_BytesLike]]]]


class ProducerBatch:
    """One batch for one partition: its builder, its completion, and its delivery state."""

    __slots__ = (
        "topic", "partition", "builder", "completion", "created", "reserved", "attempts", "closed",
        "producer_id", "producer_epoch", "base_sequence", "transactional", "payload", "retry_at",
        "deadline", "outcome_unknown", "record_count", "drain_order", "last_error",
    )

    def __init__(self, topic: str, partition: int, builder: RecordBatchBuilder, completion: BatchCompletion,
                 now: float, deadline: float, reserved: int = 0) -> None:
        self.topic = topic
        self.partition = partition
        self.builder = builder
        self.completion = completion
        self.created = now
        self.deadline = deadline
        self.reserved = reserved  # bytes of buffer_memory it holds until batch_done
        self.attempts = 0
        self.closed = False
        self.producer_id = -1
        self.producer_epoch = -1
        self.base_sequence = -1
        self.transactional = False
        self.payload: Optional[bytes] = None
        self.retry_at = 0.0
        # True while the last request carrying it failed without an answer (lost ack, timeout, cut): the
        # broker may have written it. Such a batch is only ever re-sent with the same producer id and
        # sequence (the broker then recognises a duplicate); it is never renumbered.
        self.outcome_unknown = False
        self.record_count = 0
        # Order of first drain (over all partitions): retries go back in this order.
        self.drain_order = -1
        # What made the last attempt fail (None before any): the cause a delivery timeout reports.
        self.last_error: Optional[BaseException] = None

    def freeze(self, producer_id: int, producer_epoch: int, base_sequence: int, transactional: bool) -> bytes:
        """Fix the producer fields and build the bytes (once; a retry with the same fields reuses them).
        Returns the bytes (the payload, never None from here on)."""
        if (
            self.payload is not None
            and self.producer_id == producer_id
            and self.producer_epoch == producer_epoch
            and self.base_sequence == base_sequence
        ):
            return self.payload
        self.closed = True
        self.record_count = len(self.builder)
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.transactional = transactional
        payload = self.payload = self.builder.build(0, producer_id, producer_epoch, base_sequence, transactional)
        return payload

    def __repr__(self) -> str:
        return (f"<ProducerBatch {self.topic}-{self.partition} records={len(self.builder)} "
                f"seq={self.base_sequence} attempts={self.attempts}>")


class PartitionQueue:
    """The batches of one partition, oldest first, and how many of its drained batches are out.

    Changed only by the accumulator's methods (the sender drains, requeues and clears through them); the
    sequences, in-doubt batches and the *blocked* flag of idempotence belong to the ``TransactionManager``.
    """

    __slots__ = ("topic", "partition", "batches", "in_flight", "in_flight_node")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.batches: collections.deque[ProducerBatch] = collections.deque()
        self.in_flight = 0
        # The broker the in-flight batches went to: nothing is drained to another one until they are back,
        # or a leader change could put a later batch in the log before an earlier one.
        self.in_flight_node = -1


class MemoryWaiter:
    """A sender queued for ``size`` bytes of ``buffer_memory``. Its future is resolved (with None) when it is
    granted (``granted`` True: the bytes are its own) or when its ``deadline`` passed first (``expire_waiters``;
    ``granted`` stays False). ``deadline`` is on whatever clock the caller gives ``expire_waiters`` (the
    producer's: its loop's time)."""

    __slots__ = ("size", "future", "deadline", "granted")

    def __init__(self, size: int, future: asyncio.Future[None], deadline: float) -> None:
        self.size = size
        self.future = future
        self.deadline = deadline
        self.granted = False


class RecordAccumulator:
    def __init__(
        self,
        *,
        batch_size: int,
        compression: str,
        compression_level: Optional[int],
        linger_ms: float,
        buffer_memory: int,
        delivery_timeout_ms: int,
        completion_factory: Callable[[str, int], BatchCompletion],
        on_wakeup: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        appender: Optional[RecordAppender] = None,
    ) -> None:
        self.batch_size = batch_size
        self.compression = compression
        self.compression_level = compression_level
        self.linger = linger_ms / 1000.0
        self.buffer_memory = buffer_memory
        self.delivery_timeout = delivery_timeout_ms / 1000.0
        self.completion_factory = completion_factory
        self.on_wakeup = on_wakeup
        self.clock = clock
        self.queues: dict[tuple[str, int], PartitionQueue] = {}
        self.used = 0
        self.waiters: collections.deque[MemoryWaiter] = collections.deque()
        self.flushing = 0
        self.closed = False
        self._drain_counter = 0
        # Told about every batch that opens or closes (see the module docstring); a private one if the
        # caller (the producer, whose send() appends through it) does not share its own.
        self.appender = RecordAppender(batch_size) if appender is None else appender
        self._batch_opened = self.appender.batch_opened
        self._batch_closed = self.appender.batch_closed
        # What the last record appended by ``append`` / ``append_new`` added to its batch (its growth, or the
        # whole new batch with its header): read by the producer right after the call, for the sticky
        # partitioner (KIP-794 counts exactly these bytes).
        self.appended_bytes = 0

    # -- memory -------------------------------------------------------------------------------------------
    def try_reserve(self, size: int) -> bool:
        """Take ``size`` bytes at once if nobody is queued before us and they fit."""
        if self.waiters or self.used + size > self.buffer_memory:
            return False
        self.used += size
        return True

    def enqueue_waiter(self, size: int, future: asyncio.Future[None], deadline: float = float("inf")) -> MemoryWaiter:
        """Queue a sender for ``size`` bytes, granted in FIFO order (maybe at once); ``deadline``: see
        ``expire_waiters``."""
        waiter = MemoryWaiter(size, future, deadline)
        self.waiters.append(waiter)
        self._grant()
        return waiter

    def abandon_waiter(self, waiter: MemoryWaiter) -> None:
        """The waiting sender gave up (cancelled): give back what it may have been granted."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            # Granted (or expired) already: a grant's reservation is ours to return.
            if waiter.granted:
                waiter.granted = False
                self.release(waiter.size)
            return
        self._grant()

    def expire_waiters(self, now: float) -> list[MemoryWaiter]:
        """Take out of the queue the waiters whose deadline is ``now`` or before, resolving their futures
        (not granted), and return them; the waiters behind them may then be granted. One check for the whole
        queue, not a timer per waiter: the caller runs it at ``next_waiter_deadline()``."""
        expired: list[MemoryWaiter] = []
        waiters = self.waiters
        if any(waiter.deadline <= now for waiter in waiters):
            kept = []
            for waiter in waiters:
                if waiter.deadline > now:
                    kept.append(waiter)
                elif not waiter.future.done():  # (a cancelled one is simply dropped)
                    expired.append(waiter)
            waiters.clear()  # in place: the appender holds this deque
            waiters.extend(kept)
            for waiter in expired:
                waiter.future.set_result(None)
            self._grant()
        return expired

    def next_waiter_deadline(self) -> Optional[float]:
        """The soonest deadline of a queued waiter, or None when nobody waits."""
        waiters = self.waiters
        if not waiters:
            return None
        # Waiters queue with the same max_block, so the head's deadline is usually the soonest: a scan only
        # when a timer fires (about once per max_block), never per wait.
        return min(waiter.deadline for waiter in waiters)

    def release(self, size: int) -> None:
        self.used -= size
        if self.waiters:
            self._grant()

    def _grant(self) -> None:
        while self.waiters:
            waiter = self.waiters[0]
            if waiter.future.done():  # cancelled while queued
                self.waiters.popleft()
                continue
            if self.used + waiter.size > self.buffer_memory:
                return
            self.waiters.popleft()
            self.used += waiter.size
            waiter.granted = True
            waiter.future.set_result(None)

    # -- appending ----------------------------------------------------------------------------------------
    def append(self, topic: str, partition: int, timestamp_ms: int, key: Optional[_BytesLike],
               value: Optional[_BytesLike], headers: _Headers, record_size: int) -> Optional[DeliveryHandle]:
        """The general path's append in one call; return the record's handle, or None if it must wait.

        The record goes into the partition's open batch if it fits there (that needs no memory: the batch's
        buffer was reserved when it was made). Otherwise (no open batch, or it is full: then it is closed,
        ready now whatever linger_ms says) it starts a new batch, if that batch's reservation
        (``new_batch_reservation(record_size)``) can be taken at once. None, having appended nothing, when it
        cannot, or when senders are queued for memory (nobody overtakes them): the caller then waits for the
        reservation (``enqueue_waiter``) and calls ``append_new``. ``appended_bytes`` says what the record
        added to its batch.
        """
        if self.waiters:
            return None
        queue = self.queues.get((topic, partition))
        if queue is None:
            queue = self.queues[(topic, partition)] = PartitionQueue(topic, partition)
        batches = queue.batches
        closed_one = False
        if batches:
            batch = batches[-1]
            if not batch.closed:
                builder = batch.builder
                before = builder.size_in_bytes
                if builder.append(timestamp_ms, key, value, headers):
                    self.appended_bytes = builder.size_in_bytes - before
                    return batch.completion.add(timestamp_ms)
                batch.closed = True
                self._batch_closed(batch)
                closed_one = True
        reserved = record_size if record_size > self.batch_size else self.batch_size
        if self.used + reserved > self.buffer_memory:
            if closed_one:
                self.on_wakeup()
            return None
        self.used += reserved
        try:
            handle = self._open_batch(batches, topic, partition, timestamp_ms, key, value, headers, reserved)
        except BaseException:
            self.release(reserved)
            raise
        # One wake-up for both the batch that filled and the new one.
        self.on_wakeup()
        return handle

    def try_append(self, topic: str, partition: int, timestamp_ms: int, key: Optional[_BytesLike],
                   value: Optional[_BytesLike], headers: _Headers) -> Optional[DeliveryHandle]:
        """Append to the partition's open batch if the record fits there; return its handle, else None.

        Needs no memory: the open batch's buffer was reserved when the batch was made. Returns None, and the
        caller reserves a new batch (``new_batch_reservation``, maybe waiting) and calls ``append_new``, when
        there is no open batch, it is full, or senders are queued for memory (so nobody overtakes them).
        (``append`` does this and the new batch in one call.)
        """
        queue = self.queues.get((topic, partition))
        if queue is None or self.waiters:
            return None
        return self._append_to_open(queue.batches, timestamp_ms, key, value, headers)

    def _append_to_open(self, batches: collections.deque[ProducerBatch], timestamp_ms: int,
                        key: Optional[_BytesLike], value: Optional[_BytesLike],
                        headers: _Headers) -> Optional[DeliveryHandle]:
        """The append rule of the general path, in one place: the record goes into the partition's open
        batch (its tail, not closed) if it fits there; a full open batch is closed (ready now, whatever
        linger_ms says) and None returned, for the caller to start a new one."""
        if batches:
            batch = batches[-1]
            if not batch.closed:
                builder = batch.builder
                before = builder.size_in_bytes
                if builder.append(timestamp_ms, key, value, headers):
                    self.appended_bytes = builder.size_in_bytes - before
                    return batch.completion.add(timestamp_ms)
                batch.closed = True
                self._batch_closed(batch)
                self.on_wakeup()
        return None

    def new_batch_reservation(self, record_size: int) -> int:
        """Bytes a new batch for a record of ``record_size`` takes from ``buffer_memory`` (as the Java client:
        the batch's buffer, ``batch_size``, or the record if it is bigger)."""
        return record_size if record_size > self.batch_size else self.batch_size

    def append_new(self, topic: str, partition: int, timestamp_ms: int, key: Optional[_BytesLike],
                   value: Optional[_BytesLike], headers: _Headers, reserved: int) -> DeliveryHandle:
        """Append a record for which ``reserved`` bytes were reserved; return its delivery handle.

        Usually starts a new batch holding the reservation. If, while the caller waited for memory, another
        sender opened a batch the record fits in, it goes there and the reservation is given back. If the
        append fails (it raises), the reservation is given back too.
        """
        queue = self.queues.get((topic, partition))
        if queue is None:
            queue = self.queues[(topic, partition)] = PartitionQueue(topic, partition)
        batches = queue.batches
        try:
            handle = self._append_to_open(batches, timestamp_ms, key, value, headers)
            if handle is not None:
                self.release(reserved)
                return handle
            handle = self._open_batch(batches, topic, partition, timestamp_ms, key, value, headers, reserved)
        except BaseException:
            self.release(reserved)
            raise
        self.on_wakeup()
        return handle

    def _open_batch(self, batches: collections.deque[ProducerBatch], topic: str, partition: int,
                    timestamp_ms: int, key: Optional[_BytesLike], value: Optional[_BytesLike], headers: _Headers,
                    reserved: int) -> DeliveryHandle:
        """Start the partition's new open batch with this record, holding ``reserved`` bytes."""
        now = self.clock()
        builder = RecordBatchBuilder(self.compression, self.batch_size, self.compression_level)
        if not builder.append(timestamp_ms, key, value, headers):  # a first record always fits
            raise AssertionError("RecordBatchBuilder refused the first record of a batch")
        batch = ProducerBatch(topic, partition, builder, self.completion_factory(topic, partition), now,
                              now + self.delivery_timeout, reserved)
        batches.append(batch)
        handle = batch.completion.add(timestamp_ms)
        self._batch_opened(batches, batch)
        self.appended_bytes = builder.size_in_bytes
        return handle

    # -- readiness and draining ---------------------------------------------------------------------------
    def ready(self, now: float, sendable: Callable[[PartitionQueue], bool]
              ) -> tuple[list[PartitionQueue], Optional[float]]:
        """Return (ready queues, seconds until the next batch may become ready or None)."""
        ready: list[PartitionQueue] = []
        next_check: Optional[float] = None
        linger = self.linger
        force = self.flushing > 0 or self.closed
        for queue in self.queues.values():
            if not queue.batches:
                continue
            batch = queue.batches[0]
            # ``sendable`` is asked only about queues that would go now: a transactional producer's
            # manager collects, from these calls, the partitions to add to the transaction in one request.
            if batch.retry_at > now:
                wait = batch.retry_at - now
            elif force or batch.closed or len(queue.batches) > 1:
                if sendable(queue):
                    ready.append(queue)
                continue
            else:
                wait = batch.created + linger - now
                if wait <= 0:
                    if sendable(queue):
                        ready.append(queue)
                    continue
            if next_check is None or wait < next_check:
                next_check = wait
        return ready, next_check

    @staticmethod
    def head(queue: PartitionQueue) -> ProducerBatch:
        """The batch a drain of ``queue`` would take (its oldest)."""
        return queue.batches[0]

    def head_of(self, topic: str, partition: int) -> Optional[ProducerBatch]:
        """The oldest queued batch of a partition, or None."""
        queue = self.queues.get((topic, partition))
        return queue.batches[0] if queue is not None and queue.batches else None

    def drain_head(self, queue: PartitionQueue, node: int) -> ProducerBatch:
        """Take ``queue``'s oldest batch for a request to broker ``node``: it counts as in flight there
        until :meth:`returned`."""
        batch = queue.batches.popleft()
        queue.in_flight += 1
        queue.in_flight_node = node
        self.mark_drained(batch)
        return batch

    def pop_head(self, queue: PartitionQueue) -> ProducerBatch:
        """Take ``queue``'s oldest batch out without sending it (the caller fails it)."""
        batch = queue.batches.popleft()
        self._batch_closed(batch)
        return batch

    def returned(self, batch: ProducerBatch) -> PartitionQueue:
        """A drained batch's request ended (answered, lost or cut): it no longer counts as in flight."""
        queue = self.queues[(batch.topic, batch.partition)]
        queue.in_flight -= 1
        return queue

    @staticmethod
    def has_in_flight(queue: PartitionQueue) -> bool:
        return queue.in_flight > 0

    def in_flight_elsewhere(self, queue: PartitionQueue, node: int) -> bool:
        """Batches of ``queue`` are in flight to a broker other than ``node`` (the leader moved): nothing
        more of it may go to ``node`` until they are back."""
        return queue.in_flight > 0 and queue.in_flight_node != node

    def take_all(self) -> list[ProducerBatch]:
        """Remove every queued batch (the producer is closing or failed; the caller fails them)."""
        taken: list[ProducerBatch] = []
        for queue in self.queues.values():
            for batch in queue.batches:
                self._batch_closed(batch)
                taken.append(batch)
            queue.batches.clear()
            queue.in_flight = 0
        return taken

    def take_unsent(self) -> list[ProducerBatch]:
        """Remove the batches never drained (an aborted transaction fails them); retries, which carry a
        sequence the broker may be waiting for, stay queued."""
        taken: list[ProducerBatch] = []
        for queue in self.queues.values():
            batches = queue.batches
            if not batches or batches[-1].drain_order >= 0:
                continue
            kept = [b for b in batches if b.drain_order >= 0]
            for batch in batches:
                if batch.drain_order < 0:
                    self._batch_closed(batch)
                    taken.append(batch)
            batches.clear()  # in place: the appender holds this deque
            batches.extend(kept)
        return taken

    def mark_drained(self, batch: ProducerBatch) -> None:
        """Called when a batch leaves its queue (frozen by the sender): it takes no more records; the first
        time, this also fixes its place for retries."""
        self._batch_closed(batch)
        if batch.drain_order < 0:
            batch.drain_order = self._drain_counter
            self._drain_counter += 1

    def requeue(self, batch: ProducerBatch, retry_at: float) -> None:
        """Put a batch back for a retry: in front of the batches never sent, behind retried batches that
        were drained before it. (Drain order, not sequence number: sequences wrap at 2**31.)"""
        queue = self.queues[(batch.topic, batch.partition)]
        batch.retry_at = retry_at
        batches = queue.batches
        index = 0
        while index < len(batches) and 0 <= batches[index].drain_order < batch.drain_order:
            index += 1
        batches.insert(index, batch)

    def batch_done(self, batch: ProducerBatch) -> None:
        self._batch_closed(batch)
        self.release(batch.reserved)
        batch.reserved = 0

    def expired(self, now: float) -> list[ProducerBatch]:
        """Remove and return queued batches past their delivery deadline (never ones in flight)."""
        result: list[ProducerBatch] = []
        for queue in self.queues.values():
            batches = queue.batches
            while batches and batches[0].deadline <= now:
                batch = batches.popleft()
                self._batch_closed(batch)
                result.append(batch)
        return result

    def earliest_deadline(self) -> Optional[float]:
        """The soonest delivery deadline among queued batches (a queue's oldest batch is its head), or None."""
        earliest: Optional[float] = None
        for queue in self.queues.values():
            if queue.batches:
                deadline = queue.batches[0].deadline
                if earliest is None or deadline < earliest:
                    earliest = deadline
        return earliest

    def all_batches(self) -> Iterator[ProducerBatch]:
        for queue in self.queues.values():
            yield from queue.batches

    def has_unsent(self) -> bool:
        return any(queue.batches for queue in self.queues.values())

    def forget_sequences(self) -> None:
        """A new producer identity: queued batches (all known to be unwritten) lose their sequence and bytes,
        to be numbered again at their next drain."""
        for queue in self.queues.values():
            for batch in queue.batches:
                batch.base_sequence = -1
                batch.payload = None
