"""The sender: the one task that moves batches from the accumulator to the brokers and settles them.

Each turn it: fails batches past ``delivery_timeout_ms``, queued or in flight; starts InitProducerId (in a task
of its own) when an idempotent producer needs a producer id; asks the accumulator which partitions are ready; groups them by leader; and for
each leader with a free in-flight slot (and a transport not pushing back) drains one batch per partition (up
to ``max_request_size``) into one Produce request. Draining is where a batch gets its sequence and its bytes.
Responses come back through a done-callback on the connection's future (no task per request) and are settled
with ``errors.classify_produce_error``:

  success                      -> the batch's completion resolves every record's handle (one call_soon)
  retriable / unknown outcome  -> back to the front of its partition queue, after backoff with jitter
  needs metadata               -> the same, plus a metadata refresh
  anything else                -> the batch fails with an error naming topic, partition and broker message

Ordering: a partition's in-flight batches all go to one broker; nothing more of it is drained to another
broker (after a leader change) until they are back, so a later batch can never overtake an earlier one.

Idempotence and transactions: the producer identity, the sequences, which batches are in doubt and which
partitions are blocked belong to the ``TransactionManager`` (``transaction_manager.py``), not to the sender.
The sender asks it, at drain, for each batch's ``(producer_id, epoch, base_sequence, transactional)`` and
which partitions may be drained now, and reports every outcome to it: success, a retriable answer, an
unknown outcome (no answer, or REQUEST_TIMED_OUT / NOT_ENOUGH_REPLICAS_AFTER_APPEND, which do not say
whether the batch was written), "not written" (OUT_OF_ORDER_SEQUENCE, UNKNOWN_PRODUCER_ID), failure. The
manager's rules (see its docstring): a blocked partition waits for all its in-flight batches; a batch in doubt
is only re-sent under its old identity; an identity reset waits until nothing is in doubt or in flight. The
sender runs the requests the manager asks for (InitProducerId for a reset, one AddPartitionsToTxn for the
partitions a drain pass found new to the transaction) in tasks of their own, through ``transactions.py``.
The batches themselves belong to the accumulator: the sender drains, requeues and clears them through its
methods.

Delivery timeout: every record fails within ``delivery_timeout_ms`` whatever the broker does, so nothing the
loop awaits may hold up expiry. The loop never awaits I/O: InitProducerId runs in a task of its own (while it
is pending nothing new is drained, but expiry goes on), and every sleep is bounded by the soonest deadline of
a queued or in-flight batch. A batch whose deadline passes while its request is in flight is failed then,
as the Java client does, with ``DeliveryTimeoutError`` saying that the broker may have written it; it still
counts as in flight (its partition sends nothing to another broker, an identity reset waits for it) until its
request is answered or cut, and that answer only clears the slot. Its sequence is burnt: if the broker never
wrote it, the partition's later sequences would leave a gap (OUT_OF_ORDER_SEQUENCE for ever), and if it did,
re-sending it would duplicate it. So an idempotent producer takes a new producer id once everything in flight
is back (as for any other failed batch that had a sequence; a transactional producer aborts instead, see the
manager); under the new id the queued
batches, known to be unwritten, are renumbered from 0: no gap, and no record is sent twice, because the
expired batch itself is never re-sent.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from . import errors
from .errors import ProduceAction, classify_produce_error
from .protocol import ProduceRequest
from .protocol.produce import encode_produce_request

if TYPE_CHECKING:
    from .accumulator import PartitionQueue, ProducerBatch, RecordAccumulator
    from .cluster import Cluster
    from .config import ProducerConfig
    from .connection import BrokerConnection
    from .handle import BatchCompletion
    from .hooks import Hooks
    from .protocol.primitives import Message
    from .protocol.produce import ProducePartitionResult, ProduceResult
    from .transaction_manager import TransactionManager
    from .transactions import TransactionDriver

    # Which partition queues a drain pass may take from (``RecordAccumulator.ready``'s filter).
    _Sendable = Callable[[PartitionQueue], bool]

log = logging.getLogger("aiokprod.sender")


class Sender:
    def __init__(self, config: ProducerConfig, cluster: Cluster, accumulator: RecordAccumulator, hooks: Hooks,
                 manager: TransactionManager, driver: TransactionDriver,
                 on_fatal: Callable[[], None] = lambda: None,
                 on_abandoned: Callable[[int], None] = lambda count: None,
                 on_batch_failed: Optional[Callable[[ProducerBatch, BaseException], None]] = None) -> None:
        self.config = config
        self.cluster = cluster
        self.accumulator = accumulator
        self.hooks = hooks  # aiokprod/hooks.py: told per batch and per request (the metrics are one)
        self.on_batch_failed = on_batch_failed  # the producer's on_delivery_error reporter, if any
        self.manager = manager  # the TransactionManager: identity, sequences, in-doubt batches, transaction
        self.driver = driver    # sends the requests the manager asks for (transactions.py)
        self.acks = config.acks_value
        self.idempotent = config.idempotent
        self.transactional = manager.transactional
        self.max_in_flight = config.max_in_flight_requests_per_connection
        self.in_flight_batches: set[ProducerBatch] = set()
        self.fatal_error: Optional[BaseException] = None
        self.on_fatal = on_fatal  # the producer stops taking records
        # Called with the number of records never delivered when our task is cancelled by someone other
        # than close(): the event loop is ending (asyncio.run cancels every task) without stop().
        self.on_abandoned = on_abandoned
        # The hand-written reader: a third of the generated decoder's cost, once per request.
        from .protocol.produce import ProduceResponseReader
        # The connection only calls ``response_class.decode(body, version)``, which the reader has; it is not
        # a generated Message, hence the cast (send_frame is typed for those).
        self._produce_response = None if self.acks == 0 else cast("type[Message]", ProduceResponseReader)
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task[None]] = None
        # InitProducerId in flight (a task, so that the loop never waits for it) and when it may be retried.
        self._identity_task: Optional[asyncio.Task[None]] = None
        self._identity_retry_at = 0.0
        # AddPartitionsToTxn in flight (one at a time, for every partition a drain pass found new).
        self._partitions_task: Optional[asyncio.Task[None]] = None
        # Batches failed by delivery timeout while their request is in flight: their handles are settled, but
        # they stay in in_flight_batches (and their partition's in-flight count) until the request ends.
        self._expired_in_flight: set[ProducerBatch] = set()
        self._closing = False
        self._random = random.Random()
        self._drain_start = 0  # where _send_to starts in the list of ready partitions (rotates)
        # The Produce version per broker, with the connection it was negotiated on (a new connection asks again).
        self._versions: dict[int, tuple[BrokerConnection, int]] = {}
        # No in-flight batch's deadline is earlier than this (kept as batches are drained; recomputed only when
        # it passes): a turn does not scan every in-flight batch for expiry, only when one may be due.
        self._in_flight_floor = _NEVER
        # The one timer that bounds the sender's sleep, and when it fires (loop time). A turn keeps it if it
        # fires no later than that turn needs: no call_later and cancel per turn (see _sleep_or_wakeup).
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        head = accumulator.head
        self._manager_sendable: _Sendable = lambda queue: manager.sendable(queue.topic, queue.partition,
                                                                head(queue).base_sequence >= 0)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        # The loop is handed the event itself (so it needs no None check); wakeup() reaches it through the attribute.
        wakeup = self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(wakeup), name="aiokprod-sender")

    def wakeup(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self, error: BaseException) -> None:
        """Stop the task; fail everything not yet delivered with ``error``."""
        self._closing = True
        self.wakeup()
        if self._task is not None:
            # _run also checks _closing: a cancel that lands just as its wait finished can be lost
            # (asyncio.wait_for on Python 3.11 swallows it), and stop() must never hang on that.
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        for name in ("_identity_task", "_partitions_task"):
            task = getattr(self, name)
            if task is not None:
                task.cancel()
                try:
                    await task
                except BaseException:  # its outcome no longer matters; its done-callback logged failures
                    pass
                setattr(self, name, None)
        self._fail_everything(error)

    def _fail_everything(self, error: BaseException) -> None:
        for batch in self.accumulator.take_all() + list(self.in_flight_batches):
            if batch not in self._expired_in_flight:  # those were failed already, with the timeout
                self._fail(batch, error)
        self.in_flight_batches.clear()
        self._expired_in_flight.clear()

    def undelivered_records(self) -> int:
        """Records buffered or in flight whose handles are not settled yet."""
        count = sum(len(batch.builder) for batch in self.accumulator.all_batches())
        expired = self._expired_in_flight
        return count + sum(len(batch.builder) for batch in self.in_flight_batches if batch not in expired)

    def _abandon(self) -> None:
        """Our task was cancelled, not by close(): nobody will deliver what is buffered. Fail it (whoever still
        awaits a handle learns why) and tell the producer how much was lost, so that it can say so."""
        count = self.undelivered_records()
        self._closing = True
        self.fatal_error = errors.ProducerClosedError(
            "the producer's sender task was cancelled (its event loop ended?) before stop(); "
            f"{count} record(s) never delivered")
        self._fail_everything(self.fatal_error)
        self.on_abandoned(count)

    def fail(self, error: BaseException) -> None:
        """The producer can go no further (a coordinator answered fenced, say): fail everything, send nothing."""
        self._fatal(error)

    def _fatal(self, error: BaseException) -> None:
        """Nothing more can be sent (a bug, or a fatal error: fenced, not authorised)."""
        if self.fatal_error is not None:
            return
        self.fatal_error = error
        if self.idempotent:
            self.manager.fatal_error(error)
        self.on_fatal()
        self._fail_everything(error)

    # -- below the facade: flush and abort ------------------------------------------------------------------
    async def flush(self, timeout: Optional[float] = None) -> None:
        """Send everything buffered now, and wait until it is delivered or failed (``asyncio.TimeoutError``
        after ``timeout`` seconds)."""
        loop = asyncio.get_running_loop()
        completions = [batch.completion for batch in self.accumulator.all_batches()]
        completions += [batch.completion for batch in self.in_flight_batches]
        pending = [c for c in completions if not c.done]
        if not pending:
            # A batch answered just before this call has left the sender's books but its handles turn
            # done only in its loop callback, already scheduled: yield once so that it runs (callbacks
            # run FIFO), and every record sent before flush() is done when flush() returns.
            await asyncio.sleep(0)
            return
        self.accumulator.flushing += 1
        self.wakeup()
        try:
            done = loop.create_future()
            remaining = [len(pending)]

            def one_done(_completion: BatchCompletion) -> None:
                remaining[0] -= 1
                if remaining[0] == 0 and not done.done():
                    done.set_result(None)

            for completion in pending:
                completion.add_batch_callback(one_done)
            if timeout is None:
                await done
            else:
                await asyncio.wait_for(done, timeout)
        finally:
            self.accumulator.flushing -= 1

    def abort_unsent(self, error: BaseException) -> int:
        """Fail every batch never sent (an aborted transaction); retries stay to be settled. Returns how many
        records were failed."""
        failed = 0
        for batch in self.accumulator.take_unsent():
            failed += len(batch.builder)
            self._settle_error(batch, error, returned=False)
        self.wakeup()
        return failed

    async def transaction_requests_done(self) -> None:
        """Wait for an AddPartitionsToTxn in flight (EndTxn must not overtake it)."""
        task = self._partitions_task
        if task is not None:
            try:
                await asyncio.shield(task)
            except Exception:  # noqa: BLE001 - its done-callback handled it; the manager holds the error
                pass

    # -- the loop -----------------------------------------------------------------------------------------
    async def _run(self, wakeup: asyncio.Event) -> None:
        # After a fatal error everything is failed and the producer refuses records: the task ends (it
        # used to go on asking for a producer id every retry_backoff_ms until stop()).
        while not self._closing and self.fatal_error is None:
            try:
                await self._turn(wakeup)
            except asyncio.CancelledError:
                if not self._closing:
                    self._abandon()
                raise
            except Exception as exc:  # a bug must not leave every handle pending: fail loudly instead
                log.exception("aiokprod sender failed; the producer cannot send any more")
                error = errors.KafkaError(f"the producer's sender failed: {exc!r}")
                error.__cause__ = exc
                self._fatal(error)
                return
            finally:
                if self._closing or self.fatal_error is not None:
                    self._cancel_timer()

    async def _turn(self, wakeup: asyncio.Event) -> None:
        # The only await is the sleep at the end, bounded by the soonest delivery deadline: whatever the
        # broker does (frozen, slow, gone), expiry runs on time (see the module docstring).
        wakeup.clear()
        now = time.monotonic()
        metadata_age = self.config.metadata_max_age_ms / 1000.0
        self._expire(now)
        if now - self.cluster.last_refresh > metadata_age:
            self.cluster.request_refresh()
        next_check: Optional[float] = None
        sendable = self._sendable(now)
        if sendable is not None:
            next_check = self._send_ready(now, sendable)
            # 0.0: a request went out, its connection has room for more and batches are left behind it
            # (a backlog). Drain on in this turn, up to one request per in-flight slot, rather than take a
            # turn (timer, wake-up, expiry scan) per request.
            rounds = self.max_in_flight
            while next_check == 0.0 and rounds > 0:
                rounds -= 1
                sendable = self._sendable(now)
                if sendable is None:
                    break
                next_check = self._send_ready(now, sendable)
            if self.transactional and self._partitions_task is None:
                self._add_partitions()
        elif self._identity_task is None and self._needs_identity():
            next_check = self._reset_identity(now)
        # Wake for the next expiry too: the in-flight window may be full, or a connection still opening,
        # and neither wakes us when a queued batch's deadline passes.
        deadline = self._earliest_deadline()
        if deadline is not None:
            next_check = _min(next_check, deadline - now)
        if next_check is None:
            next_check = metadata_age
        await self._sleep_or_wakeup(max(next_check, 0.0005), wakeup)

    def _sendable(self, now: float) -> Optional[_Sendable]:
        """Which queues may be drained now (a filter for ``accumulator.ready``), or None for none at all."""
        if not self.idempotent:
            return _always
        manager = self.manager
        if manager.reset_pending:
            # Settle the batches in doubt under the old identity first (the manager lets only their
            # partitions through); once none is left and nothing is in flight, a new identity.
            return self._manager_sendable if manager.in_doubt else None
        if manager.has_identity:
            return self._manager_sendable
        return None

    def _needs_identity(self) -> bool:
        """An idempotent producer acquires (or resets) its identity here; a transactional one does so in
        start() and after an abort, awaited by the caller."""
        manager = self.manager
        if manager.transactional or manager.fatal or self.in_flight_batches:
            return False
        return manager.needs_init and (not manager.reset_pending or manager.reset_allowed())

    def _earliest_deadline(self) -> Optional[float]:
        """The soonest deadline of a queued or in-flight batch, or None. For in-flight batches a lower
        bound (``_in_flight_floor``, refreshed by ``_expire`` when it passes): at worst a turn comes early."""
        deadline = self.accumulator.earliest_deadline()
        floor = self._in_flight_floor
        # Only while something is in flight: the floor of batches already answered would otherwise keep an
        # idle sender asleep until it passes, instead of waking every metadata_max_age_ms to refresh (an idle
        # producer then reconnected ~30 s after an outage, not within metadata_max_age_ms).
        if floor != _NEVER and self.in_flight_batches and (deadline is None or floor < deadline):
            deadline = floor
        return deadline

    def _reset_identity(self, now: float) -> Optional[float]:
        """Start InitProducerId in a task of its own (unless it is backing off); return when to look again,
        or None to wait for its wake-up."""
        if now < self._identity_retry_at:
            return self._identity_retry_at - now
        task = self._identity_task = asyncio.get_running_loop().create_task(
            self._acquire_identity(), name="aiokprod-init-producer-id")
        task.add_done_callback(self._identity_done)
        return None

    async def _acquire_identity(self) -> None:
        await self.driver.init_producer_id()
        # In the same step as the new identity (no sender turn in between): what is queued is known to be
        # unwritten and is numbered again at its next drain.
        self.accumulator.forget_sequences()

    def _identity_done(self, task: asyncio.Task[None]) -> None:
        self._identity_task = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here: nobody else awaits this task
        if exc is None:
            self.wakeup()
            return
        # Retriable or not, the next try waits retry_backoff_ms (after a fatal error the producer takes no
        # more records, but one that is stopped late must not dial the broker in a loop meanwhile).
        self._identity_retry_at = time.monotonic() + self.config.retry_backoff_ms / 1000.0
        if isinstance(exc, errors.KafkaError) and exc.retriable and not self.manager.fatal:
            log.warning("InitProducerId failed: %s", exc)
            self.wakeup()
            return
        if not isinstance(exc, errors.KafkaError):
            log.error("InitProducerId failed", exc_info=exc)
        else:
            log.warning("InitProducerId failed: %s", exc)
        if self._closing:
            return
        self._fatal(exc)

    def _add_partitions(self) -> None:
        """One AddPartitionsToTxn for every partition this drain pass found new to the transaction."""
        partitions = self.manager.partitions_to_add()
        if not partitions:
            return
        task = self._partitions_task = asyncio.get_running_loop().create_task(
            self.driver.add_partitions(partitions), name="aiokprod-add-partitions-to-txn")
        task.add_done_callback(self._partitions_done)

    def _partitions_done(self, task: asyncio.Task[None]) -> None:
        self._partitions_task = None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                log.warning("AddPartitionsToTxn failed: %s", exc)
                if self.manager.fatal and not self._closing:
                    self._fatal(exc)
        self.wakeup()

    async def _sleep_or_wakeup(self, delay: float, wakeup: asyncio.Event) -> None:
        # A timer that sets the event, not asyncio.wait_for: no task per wait, and no lost cancellation.
        # The timer outlives the wait: most turns want to wake at the same deadline (the soonest delivery
        # deadline, when nothing lingers), so a timer already armed for no later than ``delay`` is kept
        # rather than cancelled and armed again each turn. A timer earlier than needed only brings a turn
        # early, which finds nothing to do and sleeps again.
        if wakeup.is_set():
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        timer = self._timer
        if timer is None or self._timer_at > at:
            if timer is not None:
                timer.cancel()
            self._timer_at = at
            self._timer = loop.call_at(at, self._timer_fired, wakeup)
        await wakeup.wait()

    def _timer_fired(self, wakeup: asyncio.Event) -> None:
        self._timer = None
        wakeup.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send_ready(self, now: float, sendable: _Sendable) -> Optional[float]:
        cluster = self.cluster
        accumulator = self.accumulator
        max_in_flight = self.max_in_flight
        one_at_a_time = max_in_flight == 1 and not self.idempotent
        ready, next_check = accumulator.ready(now, sendable)
        if not ready:
            return next_check
        by_node: dict[int, list[PartitionQueue]] = {}
        unknown_leader = False
        for queue in ready:
            node = cluster.leader(queue.topic, queue.partition)
            if node < 0:
                unknown_leader = True
                continue
            if accumulator.in_flight_elsewhere(queue, node) or (one_at_a_time and accumulator.has_in_flight(queue)):
                # The leader moved: first the batches in flight to the old one must come back. Without
                # idempotence and with max_in_flight 1, a partition is muted while a batch of it is in flight,
                # as in the Java client: the per-connection limit alone does not keep order, because a cut
                # connection's batch counts as in flight until its failure callback runs, and by then a new
                # connection to the same broker may have taken the next batch (seen in test_chaos[plain]).
                continue
            by_node.setdefault(node, []).append(queue)
        if unknown_leader:
            cluster.request_refresh()
            next_check = _min(next_check, self.config.retry_backoff_ms / 1000.0)
        for node, queues in by_node.items():
            connection = cluster.connection_nowait(node)
            if connection is None:
                next_check = _min(next_check, self.config.retry_backoff_ms / 1000.0)
                continue
            if connection.in_flight >= max_in_flight or connection.write_paused:
                continue  # a response (or resume_writing) will wake us
            self._send_to(connection, node, queues)
            if connection.in_flight < max_in_flight and any(queue.batches for queue in queues):
                # A request takes one batch per partition; with a backlog more are ready behind it. Run the
                # next turn at once rather than wait for a response to wake us, or a backlog only ever has
                # one or two requests in flight whatever max_in_flight says.
                next_check = 0.0
        return next_check

    def _send_to(self, connection: BrokerConnection, node: int, queues: list[PartitionQueue]) -> None:
        """Drain one batch per partition (up to max_request_size) into one Produce request."""
        accumulator = self.accumulator
        version = self._produce_version(connection, node)
        if version < 7 and self.config.compression_type == "zstd":
            error = errors.UnsupportedVersionError(
                f"zstd needs Produce v7, broker {connection.host}:{connection.port} supports up to v{version}")
            for queue in queues:
                self._settle_error(accumulator.pop_head(queue), error, returned=False)
            return
        # Everything used per batch is looked up once per request: this loop runs per batch (~15 records
        # each in keyed_lz4), where attribute lookups and method calls are a visible share of the cost.
        on_drain = self.manager.on_drain if self.idempotent else None
        head = accumulator.head
        drain_head = accumulator.drain_head
        in_flight = self.in_flight_batches
        drained_hooks = self.hooks.on_batch_drained
        budget = self.config.max_request_size
        if len(queues) > 1:
            # Fairness between partitions when the request fills up: each request starts one partition
            # further along (as the Java client's drain index does; a shuffle cost more per request).
            start = self._drain_start % len(queues)
            self._drain_start += 1
            if start:
                queues = queues[start:] + queues[:start]
        batches: list[ProducerBatch] = []
        topics: dict[str, list[tuple[int, Optional[bytes]]]] = {}
        wire_bytes = 0  # of the request's batches, for on_request_sent
        for queue in queues:
            batch = head(queue)
            builder = batch.builder
            if batches and builder.size_in_bytes > budget:
                continue  # the next request takes it
            if on_drain is not None:
                # Sequences are assigned here, at drain time, so they follow the order batches are sent in;
                # a retry keeps its identity and sequence (the payload is reused as is).
                payload = batch.freeze(*on_drain(batch, len(builder)))
            else:
                payload = batch.freeze(-1, -1, -1, False)
            size = len(payload)
            budget -= size
            wire_bytes += size
            drain_head(queue, node)
            if batch.deadline < self._in_flight_floor:
                self._in_flight_floor = batch.deadline
            attempts = batch.attempts = batch.attempts + 1
            batches.append(batch)
            in_flight.add(batch)
            parts = topics.get(batch.topic)
            if parts is None:
                parts = topics[batch.topic] = []
            parts.append((batch.partition, payload))
            if drained_hooks:
                for fn in drained_hooks:
                    fn(batch.topic, batch.partition, batch.record_count, builder.size_in_bytes, size, attempts)
        if not batches:
            return
        correlation_id = connection.next_correlation_id()
        config = self.config
        buffers = encode_produce_request(version, correlation_id, config.client_id, self.manager.transactional_id,
                                         self.acks, config.request_timeout_ms, list(topics.items()))
        future = connection.send_frame(buffers, correlation_id, ProduceRequest.API_KEY, version,
                                       response_class=self._produce_response)
        if self.hooks.on_request_sent:
            records = sum([b.record_count for b in batches])
            for fn in self.hooks.on_request_sent:
                fn(node, len(batches), records, wire_bytes)
        sent_at = time.monotonic()
        future.add_done_callback(lambda f: self._on_response(f, batches, sent_at, node))

    def _produce_version(self, connection: BrokerConnection, node: int) -> int:
        """The Produce version for ``connection``, negotiated once per connection (not once per request)."""
        cached = self._versions.get(node)
        if cached is not None and cached[0] is connection:
            return cached[1]
        version = connection.version_for(ProduceRequest, 3)  # magic-2 record batches need v3+
        self._versions[node] = (connection, version)
        return version

    # -- settling -----------------------------------------------------------------------------------------
    def _on_response(self, future: asyncio.Future[Any], batches: list[ProducerBatch], sent_at: float,
                     node: int = -1) -> None:
        # What ProduceResponseReader decoded (None with acks=0: no response is read).
        response: Optional[ProduceResult]
        error: Optional[BaseException]
        try:
            response = future.result()
        except asyncio.CancelledError:
            response = None
            error = errors.KafkaConnectionError("request cancelled")
        except Exception as exc:
            response = None
            error = exc
        else:
            error = None
        if self.hooks.on_request_answered:
            for fn in self.hooks.on_request_answered:
                fn(node, (time.monotonic() - sent_at) * 1000.0, getattr(response, "throttle_time_ms", 0) or 0,
                   error)
        by_partition: dict[tuple[str, int], ProducePartitionResult] = {}
        if response is not None:
            for topic in response.responses:
                name = topic.name
                for result in topic.partition_responses:
                    by_partition[(name, result.index)] = result
        in_flight = self.in_flight_batches
        returned = self.accumulator.returned
        expired = self._expired_in_flight
        for batch in batches:
            try:
                in_flight.remove(batch)
            except KeyError:
                continue  # settled already (producer closed)
            returned(batch)
            if expired and batch in expired:
                # Failed at its deadline already (see the module docstring); this answer only frees the slot.
                # Written or not, its sequence was given up and the identity reset is under way.
                expired.discard(batch)
                if self.idempotent:
                    self.manager.release(batch)
            elif error is not None:
                # No answer: the broker may or may not have written it. Retry with the same sequence.
                self._retry(batch, error, _UNKNOWN, refresh=True)
            elif self.acks == 0:
                self._succeed(batch, -1, -1)
            else:
                part = by_partition.get((batch.topic, batch.partition))
                if part is None:
                    self._retry(batch, errors.KafkaError(
                        f"no answer for {batch.topic}-{batch.partition} in the Produce response"), _UNKNOWN,
                        refresh=False)
                elif part.error_code == 0:  # the usual answer: straight to success, nothing to classify
                    self._succeed(batch, part.base_offset, part.log_append_time_ms)
                else:
                    self._settle_partition(batch, part)
        self.wakeup()

    def _settle_partition(self, batch: ProducerBatch, part: ProducePartitionResult) -> None:
        code = part.error_code
        idempotent = self.idempotent
        # Whether an earlier batch of the partition failed only matters for OUT_OF_ORDER_SEQUENCE (45); the
        # scan of the in-flight batches is not made for any other answer.
        action = classify_produce_error(
            code, idempotent=idempotent,
            earlier_batch_failed=idempotent and code == 45 and (
                self.manager.blocked(batch.topic, batch.partition) or self._earlier_in_doubt(batch)))
        if action is ProduceAction.SUCCEED:
            # DUPLICATE_SEQUENCE_NUMBER lands here too: an earlier attempt was written, its answer lost.
            self._succeed(batch, part.base_offset, part.log_append_time_ms)
            return
        error = errors.for_code(code, getattr(part, "error_message", None), topic=batch.topic,
                                partition=batch.partition)
        if action is ProduceAction.RESET_AND_RETRY:
            # The broker forgot our producer id, or its sequences and ours diverged: this batch is not in
            # its log. A new identity once nothing in doubt is left (idempotent); a transactional producer
            # cannot renumber inside a transaction: the batch fails and the transaction must be aborted.
            self.manager.on_not_written(batch)
            self.manager.request_reset(error)
            if self.transactional:
                self._settle_error(batch, error, returned=False)
            else:
                self._retry(batch, error, None, refresh=False)
        elif action is ProduceAction.RETRY_UNSURE:
            # REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND: the broker may have written it.
            self._retry(batch, error, _UNKNOWN, refresh=False)
        elif action is ProduceAction.RETRY:
            self._retry(batch, error, _RETRIABLE, refresh=False)
        elif action is ProduceAction.REFRESH_AND_RETRY:
            self._retry(batch, error, _RETRIABLE, refresh=True)
        elif self.transactional and isinstance(error, errors.FatalError):
            # PRODUCER_FENCED, INVALID_PRODUCER_EPOCH...: a newer instance owns the transactional id.
            self._settle_error(batch, error, returned=True)
            self._fatal(error)
        else:
            self._settle_error(batch, error, returned=True)

    def _earlier_in_doubt(self, batch: ProducerBatch) -> bool:
        """Is an earlier batch of the same partition in flight or waiting for its retry? Then an
        OUT_OF_ORDER_SEQUENCE answer is the echo of that gap, not lost broker state."""
        topic, partition, order = batch.topic, batch.partition, batch.drain_order
        for other in self.in_flight_batches:
            if other.partition == partition and other.topic == topic and other.drain_order < order:
                return True
        head = self.accumulator.head_of(topic, partition)
        return head is not None and 0 <= head.drain_order < order

    def _succeed(self, batch: ProducerBatch, base_offset: int, log_append_time: Optional[int]) -> None:
        if self.idempotent:
            self.manager.on_success(batch)
        self.accumulator.batch_done(batch)
        if self.hooks.on_batch_acknowledged:
            for fn in self.hooks.on_batch_acknowledged:
                fn(batch.topic, batch.partition, batch.record_count, base_offset, len(cast(bytes, batch.payload)))
        batch.completion.resolve(base_offset, log_append_time if log_append_time is not None else -1)

    def _retry(self, batch: ProducerBatch, error: BaseException, outcome: Optional[str], refresh: bool) -> None:
        """The batch came back without success: report how (``outcome``: _UNKNOWN, _RETRIABLE, or None when
        reported already) and requeue it, or fail it if its time or retries are spent."""
        if self.idempotent:
            if outcome is _UNKNOWN:
                self.manager.on_unknown(batch)
            elif outcome is _RETRIABLE:
                self.manager.on_retriable(batch)
        batch.last_error = error
        now = time.monotonic()
        retries = self.config.retries
        if now >= batch.deadline:
            self._settle_error(batch, _delivery_failed(batch, error, now), returned=False)
            return
        if self._closing:
            self._settle_error(batch, _gave_up(batch, error, retries, True), returned=False)
            return
        if retries is not None and batch.attempts > retries:
            self._settle_error(batch, _retries_exhausted(batch, error, retries), returned=False)
            return
        for fn in self.hooks.on_batch_retry:
            fn(batch.topic, batch.partition, batch.record_count, error, batch.attempts)
        backoff = min(self.config.retry_backoff_ms * (2 ** (batch.attempts - 1)), self.config.retry_backoff_max_ms)
        backoff *= self._random.uniform(0.8, 1.2)  # jitter: retries of many producers do not align
        self.accumulator.requeue(batch, now + backoff / 1000.0)
        if refresh:
            self.cluster.request_refresh()

    def _settle_error(self, batch: ProducerBatch, error: BaseException, returned: bool) -> None:
        """The batch fails. ``returned``: this is also the end of its request (not reported yet)."""
        if self.idempotent:
            # A sequence that will never be acknowledged: the manager resets the identity (or, in a
            # transaction, makes it abortable).
            self.manager.on_failed(batch, error, in_flight=returned)
        self._fail(batch, error)

    def _fail(self, batch: ProducerBatch, error: BaseException) -> None:
        self.accumulator.batch_done(batch)
        if batch.completion.settled:
            return
        for fn in self.hooks.on_batch_failed:
            fn(batch.topic, batch.partition, len(batch.builder), error)
        batch.completion.fail(error)
        if self.on_batch_failed is not None:
            self.on_batch_failed(batch, error)  # after fail(): it may mark the error as taken care of

    def _expire(self, now: float) -> None:
        for batch in self.accumulator.expired(now):
            self._settle_error(batch, _delivery_failed(batch, batch.last_error, now), returned=False)
        if now < self._in_flight_floor:
            return  # no in-flight batch can be due yet
        expired = self._expired_in_flight
        floor = _NEVER
        for batch in self.in_flight_batches:
            if batch in expired:
                continue
            if batch.deadline <= now:
                # In flight, no answer yet: fail it now rather than when the request times out (the
                # Java client does the same); it keeps its in-flight slot until the request ends.
                expired.add(batch)
                self._settle_error(batch, _delivery_failed(batch, batch.last_error, now, in_flight=True),
                                   returned=False)
            elif batch.deadline < floor:
                floor = batch.deadline
        self._in_flight_floor = floor


# No deadline: the in-flight floor when nothing is in flight.
_NEVER = float("inf")

# How a batch came back, as _retry reports it to the manager.
_UNKNOWN = "unknown"
_RETRIABLE = "retriable"

def _delivery_failed(batch: ProducerBatch, cause: Optional[BaseException], now: float,
                     in_flight: bool = False) -> errors.DeliveryTimeoutError:
    waited = now - batch.created
    if in_flight:
        state = f"expired while attempt {batch.attempts} was in flight with no answer yet"
    elif batch.attempts == 0:
        state = "expired before it could be sent"
    else:
        state = f"expired after {batch.attempts} attempt(s)"
    detail = f"; last error: {cause}" if cause is not None else ""
    doubt = in_flight or batch.outcome_unknown
    exc = errors.DeliveryTimeoutError(
        f"{len(batch.builder)} record(s) for {batch.topic}-{batch.partition} not delivered within "
        f"delivery_timeout_ms: {state} ({waited:.1f}s after the batch was created){detail}."
        + (" The last attempt got no answer, so the broker may have written it." if doubt else ""))
    exc.topic = batch.topic
    exc.partition = batch.partition
    exc.attempts = batch.attempts
    exc.may_have_been_written = doubt
    exc.__cause__ = cause
    return exc


def _gave_up(batch: ProducerBatch, cause: BaseException, retries: Optional[int], closing: bool) -> errors.KafkaError:
    """Not retried although its deadline is not reached: the producer is closing, or ``retries`` is spent."""
    why = "the producer is closing" if closing else f"retries={retries} reached"
    doubt = " The last attempt got no answer, so the broker may have written it." if batch.outcome_unknown else ""
    cls = errors.ProducerClosedError if closing else errors.KafkaError
    exc = cls(f"{len(batch.builder)} record(s) for {batch.topic}-{batch.partition} not delivered: {why} after "
              f"{batch.attempts} attempt(s); last error: {cause}.{doubt}")
    # KafkaError and ProducerClosedError declare no topic/partition (DeliveryTimeoutError does): they are set
    # on the instance as before, for whoever reads them.
    setattr(exc, "topic", batch.topic)
    setattr(exc, "partition", batch.partition)
    exc.__cause__ = cause
    return exc


def _retries_exhausted(batch: ProducerBatch, cause: BaseException, retries: int) -> errors.RetriesExhaustedError:
    doubt = (" The last attempt got no answer, so the broker may have written it."
             if batch.outcome_unknown else "")
    return errors.RetriesExhaustedError(
        f"{len(batch.builder)} record(s) for {batch.topic}-{batch.partition} not delivered: retries={retries} "
        f"reached after {batch.attempts} attempt(s); last error: {cause}.{doubt}",
        topic=batch.topic, partition=batch.partition, attempts=batch.attempts, last_error=cause)


def _always(queue: PartitionQueue) -> bool:
    return True


def _min(a: Optional[float], b: float) -> float:
    return b if a is None or b < a else a
