"""The record accumulator without a loop or a socket: readiness, memory accounting, FIFO waiters, requeue order.

A fake clock drives linger; a stand-in loop collects the completions' call_soon callbacks; memory waiters are
plain objects with the three future methods the accumulator uses.
"""
from __future__ import annotations

import pytest

from aiokprod.accumulator import RecordAccumulator
from aiokprod.codec import decode_record_batches, record_size_upper_bound
from aiokprod.handle import BatchCompletion


class FakeLoop:
    """Enough of a loop for BatchCompletion: call_soon queues, run() runs them."""

    def __init__(self):
        self.callbacks = []

    def call_soon(self, fn, *args, context=None):
        self.callbacks.append((fn, args))

    def call_exception_handler(self, context):  # pragma: no cover - only on a failing callback
        raise AssertionError(context)

    def run(self):
        while self.callbacks:
            fn, args = self.callbacks.pop(0)
            fn(*args)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Waiter:
    """A future-like memory waiter: done(), cancelled(), set_result()."""

    def __init__(self, name, order):
        self.name = name
        self.order = order
        self._done = False
        self._cancelled = False

    def done(self):
        return self._done

    def cancelled(self):
        return self._cancelled

    def cancel(self):
        self._done = self._cancelled = True

    def set_result(self, _):
        assert not self._done
        self._done = True
        self.order.append(self.name)


def make(*, batch_size=1024, linger_ms=10, buffer_memory=1 << 20, delivery_timeout_ms=60_000):
    loop, clock, wakeups = FakeLoop(), Clock(), []
    acc = RecordAccumulator(
        batch_size=batch_size, compression="none", compression_level=None, linger_ms=linger_ms,
        buffer_memory=buffer_memory, delivery_timeout_ms=delivery_timeout_ms,
        completion_factory=lambda topic, partition: BatchCompletion(loop, topic, partition),
        on_wakeup=lambda: wakeups.append(1), clock=clock)
    return acc, loop, clock, wakeups


def append(acc, topic="t", partition=0, value=b"v" * 50, ts=1):
    """What Producer.send does: the open batch if the record fits, else reserve a new batch and append."""
    size = record_size_upper_bound(None, value, None)
    handle = acc.try_append(topic, partition, ts, None, value, None)
    if handle is None:
        reserved = acc.new_batch_reservation(size)
        assert acc.try_reserve(reserved)
        handle = acc.append_new(topic, partition, ts, None, value, None, reserved)
    return handle, size


def ready_names(acc, now):
    ready, next_check = acc.ready(now, lambda q: True)
    return [(q.topic, q.partition) for q in ready], next_check


# -- readiness --------------------------------------------------------------------------------------------

def test_new_batch_waits_for_linger_then_is_ready():
    acc, _, clock, wakeups = make(linger_ms=10)
    append(acc)
    assert wakeups  # a new batch wakes the sender (it must arm the linger timer)
    ready, next_check = ready_names(acc, clock.now)
    assert ready == [] and next_check == pytest.approx(0.010)
    clock.now += 0.004
    assert ready_names(acc, clock.now) == ([], pytest.approx(0.006))
    clock.now += 0.006
    assert ready_names(acc, clock.now)[0] == [("t", 0)]


def test_full_batch_is_ready_at_once():
    acc, _, clock, _ = make(batch_size=1024, linger_ms=60_000)
    handles = []
    while len(acc.queues.get(("t", 0)).batches if acc.queues else ()) < 2:
        handles.append(append(acc, value=b"x" * 100)[0])
    queue = acc.queues[("t", 0)]
    assert queue.batches[0].closed and not queue.batches[1].closed
    assert ready_names(acc, clock.now)[0] == [("t", 0)]
    # The full batch holds no more than batch_size bytes (the first record always fits).
    assert queue.batches[0].builder.size_in_bytes <= 1024
    assert len(queue.batches[0].builder) + len(queue.batches[1].builder) == len(handles)


def test_flush_forces_readiness_and_linger_zero_is_immediate():
    acc, _, clock, _ = make(linger_ms=60_000)
    append(acc, partition=0)
    append(acc, partition=1)
    assert ready_names(acc, clock.now)[0] == []
    acc.flushing += 1
    assert sorted(ready_names(acc, clock.now)[0]) == [("t", 0), ("t", 1)]
    acc.flushing -= 1
    assert ready_names(acc, clock.now)[0] == []
    acc2, _, clock2, _ = make(linger_ms=0)
    append(acc2)
    assert ready_names(acc2, clock2.now)[0] == [("t", 0)]


def test_not_sendable_queues_are_skipped():
    acc, _, clock, _ = make(linger_ms=0)
    append(acc, partition=0)
    append(acc, partition=1)
    ready, _ = acc.ready(clock.now, lambda q: q.partition == 1)
    assert [(q.topic, q.partition) for q in ready] == [("t", 1)]
    ready, _ = acc.ready(clock.now, lambda q: True)
    assert sorted((q.topic, q.partition) for q in ready) == [("t", 0), ("t", 1)]


def test_drain_head_counts_in_flight_per_broker_until_returned():
    acc, _, clock, _ = make(linger_ms=0, batch_size=200)
    for i in range(3):
        append(acc, value=b"x" * 120)
    queue = acc.queues[("t", 0)]
    first = acc.head(queue)
    assert acc.drain_head(queue, 2) is first and first.drain_order >= 0 and first.closed
    second = acc.drain_head(queue, 2)
    assert queue.in_flight == 2 and not acc.in_flight_elsewhere(queue, 2) and acc.in_flight_elsewhere(queue, 3)
    assert acc.returned(first) is queue and acc.returned(second) is queue
    assert queue.in_flight == 0 and not acc.in_flight_elsewhere(queue, 3)
    popped = acc.pop_head(queue)
    assert popped.drain_order < 0 and not queue.batches


def test_take_unsent_keeps_retries_and_take_all_empties():
    acc, _, clock, _ = make(linger_ms=0, batch_size=200)
    for i in range(4):
        append(acc, value=b"%d" % i + b"x" * 120)
    queue = acc.queues[("t", 0)]
    retried = acc.drain_head(queue, 1)
    acc.returned(retried)
    acc.requeue(retried, clock.now)
    unsent = list(queue.batches)[1:]
    assert acc.take_unsent() == unsent
    assert list(queue.batches) == [retried]
    assert acc.appender.open_batch("t", 0) is None  # the open batch was among them: closed for send()
    assert acc.take_all() == [retried] and not queue.batches and queue.in_flight == 0


def test_retry_backoff_delays_readiness():
    acc, _, clock, _ = make(linger_ms=0)
    append(acc)
    batch = acc.queues[("t", 0)].batches.popleft()
    batch.freeze(7, 0, 0, False)
    acc.requeue(batch, clock.now + 0.5)
    ready, next_check = ready_names(acc, clock.now)
    assert ready == [] and next_check == pytest.approx(0.5)
    clock.now += 0.5
    assert ready_names(acc, clock.now)[0] == [("t", 0)]


# -- memory accounting ------------------------------------------------------------------------------------

def test_memory_is_reserved_per_batch_and_released_when_it_completes():
    acc, loop, _, _ = make(batch_size=1024)
    for n in (10, 200, 30):
        append(acc, value=b"x" * n)
    # Three small records share one batch: its buffer (batch_size) is what is counted, once.
    assert acc.used == 1024
    batch = acc.queues[("t", 0)].batches[0]
    assert len(batch.builder) == 3 and batch.reserved == 1024
    append(acc, partition=1)  # another partition: another batch, another buffer
    assert acc.used == 2048
    acc.batch_done(batch)
    assert acc.used == 1024 and batch.reserved == 0
    acc.batch_done(batch)  # releasing twice releases nothing more
    assert acc.used == 1024


def test_a_record_bigger_than_batch_size_reserves_its_own_size():
    acc, _, _, _ = make(batch_size=1024)
    _, size = append(acc, value=b"x" * 3000)
    assert size > 3000 and acc.used == size
    assert acc.queues[("t", 0)].batches[0].reserved == size


def test_no_append_past_queued_senders():
    acc, _, _, _ = make(batch_size=1024, buffer_memory=2048)
    append(acc)  # an open batch with room
    assert acc.try_append("t", 0, 1, None, b"y", None) is not None
    assert acc.try_reserve(1024)  # the buffer is full now
    acc.enqueue_waiter(1024, Waiter("queued", []))
    # While someone waits for memory, nobody overtakes them, not even into an open batch.
    assert acc.try_append("t", 0, 1, None, b"y", None) is None


def test_append_new_uses_an_open_batch_and_returns_the_reservation():
    acc, _, _, _ = make(batch_size=1024)
    append(acc)
    assert acc.try_reserve(1024)  # as if this sender had waited for memory while the batch opened
    handle = acc.append_new("t", 0, 1, None, b"late", None, 1024)
    assert handle is not None and acc.used == 1024
    assert len(acc.queues[("t", 0)].batches) == 1


def test_try_reserve_respects_the_bound():
    acc, _, _, _ = make(batch_size=100, buffer_memory=1000)
    assert acc.try_reserve(600)
    assert not acc.try_reserve(401)
    assert acc.try_reserve(400)
    assert acc.used == 1000
    acc.release(1000)
    assert acc.used == 0


def test_waiters_are_granted_in_fifo_order_and_never_overtaken():
    acc, _, _, _ = make(batch_size=100, buffer_memory=1000)
    order = []
    assert acc.try_reserve(900)
    acc.enqueue_waiter(500, Waiter("big", order))
    acc.enqueue_waiter(50, Waiter("small", order))
    assert order == []  # 50 would fit, but "small" may not overtake "big"
    assert not acc.try_reserve(50)  # nor may a newcomer
    acc.release(400)  # used 500: "big" fits (1000), "small" does not yet
    assert order == ["big"] and acc.used == 1000
    acc.release(50)
    assert order == ["big", "small"] and acc.used == 1000
    acc.release(1000)
    assert acc.try_reserve(50)  # the queue is empty again: newcomers go straight through


def test_grant_never_exceeds_buffer_memory():
    acc, _, _, _ = make(batch_size=100, buffer_memory=1000)
    order = []
    assert acc.try_reserve(1000)
    waiters = [acc.enqueue_waiter(300, Waiter(i, order)) for i in range(5)]
    for step in range(10):
        acc.release(100)
        assert acc.used <= 1000
        assert order == list(range(len(order)))  # FIFO, always
    acc.release(acc.used)
    while len(order) < 5:
        acc.release(acc.used)
        assert acc.used <= 1000
    assert order == [0, 1, 2, 3, 4]
    assert len(waiters) == 5


def test_abandoned_waiters_give_back_and_let_others_through():
    acc, _, _, _ = make(batch_size=100, buffer_memory=1000)
    order = []
    assert acc.try_reserve(1000)
    first = acc.enqueue_waiter(800, Waiter("first", order))
    second = acc.enqueue_waiter(100, Waiter("second", order))
    # The first gives up (timeout) while still queued: the second is no longer stuck behind it.
    acc.release(200)
    assert order == []
    acc.abandon_waiter(first)
    assert order == ["second"]
    assert acc.used == 900
    # A waiter cancelled (its future done) while queued is skipped by the next grant.
    third_future = Waiter("third", order)
    acc.enqueue_waiter(500, third_future)
    fourth = acc.enqueue_waiter(50, Waiter("fourth", order))
    third_future.cancel()
    acc.release(1)
    assert order == ["second", "fourth"]
    assert acc.used == 949
    # A waiter granted just before it gave up: its reservation is returned.
    used = acc.used
    acc.abandon_waiter(fourth)
    assert acc.used == used - 50
    acc.abandon_waiter(second)
    assert acc.used == used - 150



# -- the general path's one-call append ---------------------------------------------------------------------

def general_append(acc, value=b"v" * 50, partition=0, headers=None):
    size = record_size_upper_bound(None, value, headers)
    return acc.append("t", partition, 1, None, value, headers, size), size


def test_append_fills_the_open_batch_then_closes_it_and_opens_the_next_in_one_call():
    acc, _, _, wakeups = make(batch_size=1024)
    handle, _ = general_append(acc)
    queue = acc.queues[("t", 0)]
    first = queue.batches[0]
    assert handle.index == 0 and acc.used == 1024 and first.reserved == 1024 and wakeups == [1]
    assert acc.appended_bytes == first.builder.size_in_bytes  # the whole new batch, header included
    assert acc.appender.open_batch("t", 0) is first
    grown = []
    while len(queue.batches) == 1:
        before = first.builder.size_in_bytes
        handle, _ = general_append(acc)
        grown.append((acc.appended_bytes, first.builder.size_in_bytes - before))
    # Every record that joined the open batch counted what it added.
    assert len(grown) > 2 and all(added == growth > 0 for added, growth in grown[:-1])
    second = queue.batches[1]
    # The record that did not fit closed the full batch (ready now, no longer the fast path's) and started
    # the next one with its own reservation, waking the sender once for both (and never for the records
    # that joined the open batch).
    assert first.closed and not second.closed and handle.index == 0 and len(second.builder) == 1
    assert acc.appender.open_batch("t", 0) is second
    assert acc.used == 2048 and second.reserved == 1024 and wakeups == [1, 1]
    assert acc.appended_bytes == second.builder.size_in_bytes
    assert ready_names(acc, 1000.0)[0] == [("t", 0)]


def test_append_without_memory_closes_the_full_batch_and_leaves_the_new_one_to_the_waiter():
    acc, _, _, wakeups = make(batch_size=1024, buffer_memory=1024)
    general_append(acc)
    first = acc.queues[("t", 0)].batches[0]
    while general_append(acc, value=b"w" * 50)[0] is not None:
        pass
    # No memory for a new batch: nothing appended, nothing reserved, but the full batch is ready and the
    # sender told (its completion is what frees the memory the record waits for).
    assert first.closed and len(acc.queues[("t", 0)].batches) == 1 and acc.used == 1024
    assert wakeups == [1, 1]
    assert acc.appender.open_batch("t", 0) is None
    # Once the reservation is granted, append_new opens the batch.
    acc.batch_done(acc.pop_head(acc.queues[("t", 0)]))
    assert acc.used == 0 and acc.try_reserve(1024)
    handle = acc.append_new("t", 0, 1, None, b"w" * 50, None, 1024)
    assert handle.index == 0 and acc.queues[("t", 0)].batches[0].reserved == 1024


def test_append_never_overtakes_queued_senders():
    acc, _, _, _ = make(batch_size=1024, buffer_memory=4096)
    general_append(acc)  # an open batch with room
    assert acc.try_reserve(3072)
    acc.enqueue_waiter(1024, Waiter("queued", []))
    assert acc.waiters
    before = len(acc.queues[("t", 0)].batches[0].builder)
    assert general_append(acc)[0] is None and general_append(acc, partition=1)[0] is None
    assert len(acc.queues[("t", 0)].batches[0].builder) == before and acc.used == 4096


def test_a_failed_append_gives_the_new_batch_reservation_back():
    acc, _, _, _ = make(batch_size=1024)
    # Not headers at all: the builder refuses them (send() checks them first; this is the safety net).
    with pytest.raises(TypeError):
        acc.append("t", 0, 1, None, b"v", 5, 200)
    assert acc.used == 0 and not acc.queues[("t", 0)].batches
    assert acc.try_reserve(1024)
    with pytest.raises(TypeError):
        acc.append_new("t", 0, 1, None, b"v", 5, 1024)
    assert acc.used == 0 and not acc.queues[("t", 0)].batches


# -- memory waits past their deadline -------------------------------------------------------------------------

def test_expired_waiters_leave_the_queue_ungranted_and_let_the_next_through():
    acc, _, _, _ = make(batch_size=100, buffer_memory=1000)
    order = []
    assert acc.try_reserve(600)
    big = acc.enqueue_waiter(800, Waiter("big", order), deadline=10.0)
    small = acc.enqueue_waiter(100, Waiter("small", order), deadline=20.0)
    later = acc.enqueue_waiter(900, Waiter("later", order), deadline=30.0)
    assert acc.next_waiter_deadline() == 10.0 and order == []
    assert acc.expire_waiters(9.5) == []  # nobody is due yet
    # "big" is due: it leaves, its future resolved but not granted; "small" (which fitted, but waited behind
    # it) is granted at once; "later" does not fit and keeps waiting.
    assert acc.expire_waiters(10.0) == [big]
    assert big.future.done() and not big.granted
    assert small.granted and order == ["big", "small"] and acc.used == 700
    assert list(acc.waiters) == [later] and acc.next_waiter_deadline() == 30.0
    # Abandoning an expired waiter gives back nothing (it never held anything); a granted one gives back.
    acc.abandon_waiter(big)
    assert acc.used == 700
    acc.abandon_waiter(small)
    assert acc.used == 600
    assert acc.expire_waiters(31.0) == [later] and not later.granted
    assert acc.next_waiter_deadline() is None and acc.used == 600


def test_expiry_drops_cancelled_waiters_without_resolving_them():
    acc, _, _, _ = make(batch_size=100, buffer_memory=1000)
    order = []
    assert acc.try_reserve(1000)
    gone = Waiter("gone", order)
    acc.enqueue_waiter(500, gone, deadline=5.0)
    due = acc.enqueue_waiter(500, Waiter("due", order), deadline=5.0)
    gone.cancel()
    assert acc.expire_waiters(5.0) == [due]
    assert order == ["due"] and not acc.waiters and acc.used == 1000

# -- requeue order ----------------------------------------------------------------------------------------

def _drain_all(acc, topic="t", partition=0, pid=5, sequence=0):
    queue = acc.queues[(topic, partition)]
    drained = []
    while queue.batches:
        batch = acc.drain_head(queue, 1)
        acc.returned(batch)
        if batch.base_sequence < 0:
            batch.freeze(pid, 0, sequence, False)
        sequence += batch.record_count
        drained.append(batch)
    return drained


def test_requeue_puts_retries_first_in_drain_order():
    acc, _, clock, _ = make(batch_size=300, linger_ms=0)
    for i in range(12):
        append(acc, value=b"%03d" % i + b"x" * 100)
    drained = _drain_all(acc)
    assert len(drained) >= 4
    sequences = [b.base_sequence for b in drained]
    assert sequences == sorted(sequences) and sequences[0] == 0
    # Newer, not yet drained batches arrive meanwhile.
    for i in range(3):
        append(acc, value=b"new%d" % i)
    newest = list(acc.queues[("t", 0)].batches)
    # Failed batches come back in any order: they are put back in the order they were first drained
    # (which is sequence order, but survives the sequence wrapping at 2**31), before the new ones.
    for batch in (drained[2], drained[0], drained[3], drained[1]):
        acc.requeue(batch, clock.now)
    queue = list(acc.queues[("t", 0)].batches)
    assert queue[:4] == drained[:4]
    assert queue[4:] == newest
    # A requeued batch keeps its sequence and its bytes.
    payload = drained[0].payload
    drained[0].freeze(5, 0, drained[0].base_sequence, False)
    assert drained[0].payload is payload


def test_requeue_order_without_sequences():
    """Non-idempotent batches (no sequence) also go back in drain order, not reversed."""
    acc, _, clock, _ = make(batch_size=300, linger_ms=0)
    for i in range(9):
        append(acc, value=b"%03d" % i + b"x" * 100)
    queue = acc.queues[("t", 0)]
    drained = []
    while queue.batches:
        batch = queue.batches.popleft()
        batch.freeze(-1, -1, -1, False)
        acc.mark_drained(batch)
        drained.append(batch)
    for batch in drained:  # all failed, settled in order: each goes behind the ones before it
        acc.requeue(batch, clock.now)
    assert list(queue.batches) == drained


def test_reset_sequences_renumbers_unsent_batches():
    acc, _, _, _ = make(batch_size=300)
    for _ in range(6):
        append(acc, value=b"y" * 100)
    drained = _drain_all(acc)
    for batch in reversed(drained):
        acc.requeue(batch, 0.0)
    acc.forget_sequences()
    queue = acc.queues[("t", 0)]
    assert all(b.base_sequence == -1 and b.payload is None for b in queue.batches)
    redrained = _drain_all(acc, pid=6)
    assert [b.base_sequence for b in redrained][0] == 0
    batches = decode_record_batches(b"".join(bytes(b.payload) for b in redrained))
    assert [b.producer_id for b in batches] == [6] * len(redrained)
    assert [b.base_sequence for b in batches] == [b.base_sequence for b in redrained]


def test_expired_takes_only_queued_batches_past_their_deadline():
    acc, _, clock, _ = make(delivery_timeout_ms=1000, batch_size=200, linger_ms=60_000)
    append(acc, partition=0)
    clock.now += 0.6
    append(acc, partition=1)
    clock.now += 0.5
    expired = acc.expired(clock.now)
    assert [(b.topic, b.partition) for b in expired] == [("t", 0)]
    assert acc.has_unsent()
    clock.now += 0.5
    assert [(b.partition) for b in acc.expired(clock.now)] == [1]
    assert not acc.has_unsent()


def test_completion_resolves_handles_with_offsets():
    acc, loop, _, _ = make()
    handles = [append(acc, value=b"r%d" % i, ts=100 + i)[0] for i in range(3)]
    batch = acc.queues[("t", 0)].batches[0]
    batch.completion.resolve(40)
    assert not handles[0].done()  # one loop callback per batch
    loop.run()
    assert [(h.result().offset, h.result().timestamp) for h in handles] == [(40, 100), (41, 101), (42, 102)]
