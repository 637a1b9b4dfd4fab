"""The sender: the one task that moves batches from the accumulator to the brokers and settles them.

Each turn it: fails batches past ``delivery_timeout_ms`` that are still queued; makes sure an idempotent
producer has its producer id; asks the accumulator which partitions are ready; groups them by leader; and for
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

Idempotence (sequences, at most 5 in flight): after a retriable failure the partition is *blocked*: nothing
new is drained for it until all its in-flight batches came back, then the retried ones go again in drain
order, so the broker never sees a gap. A batch whose request got no answer (lost ack, timeout, cut) has an
*unknown outcome*: the broker may have written it. It is only re-sent with its old producer id and sequence,
so the broker recognises the duplicate. When the producer id must change (UNKNOWN_PRODUCER_ID after a broker
restart, a sequence that will never be acknowledged), the sender first settles every batch of unknown
outcome with the old identity, waits for everything in flight, and only then takes a new id and renumbers
what is still queued, all of it known to be unwritten.

Delivery timeout: every record fails within ``delivery_timeout_ms`` whatever the broker does, so nothing the
loop awaits may hold up expiry. The loop never awaits I/O: InitProducerId runs in a task of its own (while it
is pending nothing new is drained, but expiry goes on), and every sleep is bounded by the soonest deadline of
a queued or in-flight batch. A batch whose deadline passes while its request is in flight is failed then,
as the Java client does, with ``DeliveryTimeoutError`` saying that the broker may have written it; it still
counts as in flight (its partition sends nothing to another broker, an identity reset waits for it) until its
request is answered or cut, and that answer only clears the slot. Its sequence is burnt: if the broker never
wrote it, the partition's later sequences would leave a gap (OUT_OF_ORDER_SEQUENCE for ever), and if it did,
re-sending it would duplicate it. So an idempotent producer takes a new producer id once everything in flight
is back (as for any other failed batch that had a sequence, ``_settle_error``); under the new id the queued
batches, known to be unwritten, are renumbered from 0: no gap, and no record is sent twice, because the
expired batch itself is never re-sent.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Optional

from . import errors
from .errors import ProduceAction, classify_produce_error
from .protocol import InitProducerIdRequest, ProduceRequest
from .protocol.produce import encode_produce_request

log = logging.getLogger("aiokprod.sender")

SEQUENCE_MASK = 0x7FFFFFFF  # sequences are int32 and wrap to 0 after 2**31 - 1, as in the Java client


class ProducerIdentity:
    """The idempotent producer's id and epoch, and whether they must be (re)acquired."""

    __slots__ = ("producer_id", "producer_epoch", "needs_reset")

    def __init__(self) -> None:
        self.producer_id = -1
        self.producer_epoch = -1
        self.needs_reset = True


class Sender:
    def __init__(self, config, cluster, accumulator, metrics, on_fatal=lambda: None) -> None:
        from .connection import RESPONSE_CLASSES

        self.config = config
        self.cluster = cluster
        self.accumulator = accumulator
        self.metrics = metrics
        self.acks = config.acks_value
        self.idempotent = config.idempotent
        self.identity = ProducerIdentity()
        self.max_in_flight = config.max_in_flight_requests_per_connection
        self.in_flight_batches: set = set()
        self.fatal_error: Optional[BaseException] = None
        self.on_fatal = on_fatal  # the producer stops taking records
        self._produce_response = None if self.acks == 0 else RESPONSE_CLASSES[ProduceRequest.API_KEY]
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        # InitProducerId in flight (a task, so that the loop never waits for it) and when it may be retried.
        self._identity_task: Optional[asyncio.Task] = None
        self._identity_retry_at = 0.0
        # Batches failed by delivery timeout while their request is in flight: their handles are settled, but
        # they stay in in_flight_batches (and their partition's in-flight count) until the request ends.
        self._expired_in_flight: set = set()
        self._closing = False
        self._random = random.Random()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aiokprod-sender")

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
        if self._identity_task is not None:
            self._identity_task.cancel()
            try:
                await self._identity_task
            except BaseException:  # its outcome no longer matters; its done-callback logged failures
                pass
            self._identity_task = None
        self._fail_everything(error)

    def _fail_everything(self, error: BaseException) -> None:
        for batch in list(self.accumulator.all_batches()) + list(self.in_flight_batches):
            if batch not in self._expired_in_flight:  # those were failed already, with the timeout
                self._fail(batch, error)
        for queue in self.accumulator.queues.values():
            queue.batches.clear()
            queue.in_flight = 0
        self.in_flight_batches.clear()
        self._expired_in_flight.clear()

    # -- the loop -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._turn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not leave every handle pending: fail loudly instead
                log.exception("aiokprod sender failed; the producer cannot send any more")
                self.fatal_error = errors.KafkaError(f"the producer's sender failed: {exc!r}")
                self.fatal_error.__cause__ = exc
                self.on_fatal()
                self._fail_everything(self.fatal_error)
                return

    async def _turn(self) -> None:
        # The only await is the sleep at the end, bounded by the soonest delivery deadline: whatever the
        # broker does (frozen, slow, gone), expiry runs on time (see the module docstring).
        wakeup = self._wakeup
        wakeup.clear()
        now = time.monotonic()
        metadata_age = self.config.metadata_max_age_ms / 1000.0
        self._expire(now)
        if now - self.cluster.last_refresh > metadata_age:
            self.cluster.request_refresh()
        next_check: Optional[float] = None
        sendable = _always
        if self.idempotent and self.identity.needs_reset:
            if self._unknown_outcomes_pending():
                # Settle them with the old identity first (see the module docstring).
                sendable = _only_unknown_outcome
            else:
                # Answers to the old identity must come back before a new one is taken; a response wakes us.
                sendable = None
                if not self.in_flight_batches:
                    next_check = self._reset_identity(now)
        if sendable is not None:
            next_check = self._send_ready(now, sendable)
        # Wake for the next expiry too: the in-flight window may be full, or a connection still opening,
        # and neither wakes us when a queued batch's deadline passes.
        deadline = self._earliest_deadline()
        if deadline is not None:
            next_check = _min(next_check, deadline - now)
        if next_check is None:
            next_check = metadata_age
        await self._sleep_or_wakeup(max(next_check, 0.0005))

    def _earliest_deadline(self) -> Optional[float]:
        deadline = self.accumulator.earliest_deadline()
        expired = self._expired_in_flight
        for batch in self.in_flight_batches:
            if batch not in expired and (deadline is None or batch.deadline < deadline):
                deadline = batch.deadline
        return deadline

    def _reset_identity(self, now: float) -> Optional[float]:
        """Start InitProducerId in a task of its own (unless one runs or is backing off); return when to look
        again, or None to wait for its wake-up."""
        if self._identity_task is not None:
            return None
        if now < self._identity_retry_at:
            return self._identity_retry_at - now
        task = self._identity_task = asyncio.get_running_loop().create_task(
            self._init_producer_id(), name="aiokprod-init-producer-id")
        task.add_done_callback(self._identity_done)
        return None

    def _identity_done(self, task: asyncio.Task) -> None:
        self._identity_task = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here: nobody else awaits this task
        if exc is None:
            self.wakeup()
            return
        if isinstance(exc, errors.KafkaError) and exc.retriable:
            log.warning("InitProducerId failed: %s", exc)
            self._identity_retry_at = time.monotonic() + self.config.retry_backoff_ms / 1000.0
            self.wakeup()
            return
        if not isinstance(exc, errors.KafkaError):
            log.error("InitProducerId failed", exc_info=exc)
        else:
            log.warning("InitProducerId failed: %s", exc)
        if self._closing:
            return
        self.fatal_error = exc
        self.on_fatal()
        self._fail_everything(exc)

    def _unknown_outcomes_pending(self) -> bool:
        if any(batch.outcome_unknown for batch in self.in_flight_batches):
            return True
        return any(queue.batches and queue.batches[0].outcome_unknown for queue in self.accumulator.queues.values())

    async def _sleep_or_wakeup(self, delay: float) -> None:
        # A timer that sets the event, not asyncio.wait_for: no task per wait, and no lost cancellation.
        timer = asyncio.get_running_loop().call_later(delay, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()

    async def _init_producer_id(self) -> None:
        connection = await self.cluster.any_connection()
        # Some brokers (Tansu) refuse InitProducerId below v3; the negotiated version is the highest common.
        version = connection.version_for(InitProducerIdRequest)
        response = await connection.request(
            InitProducerIdRequest(transactional_id=None,
                                  transaction_timeout_ms=self.config.transaction_timeout_ms,
                                  producer_id=-1, producer_epoch=-1), version)
        if response.error_code:
            raise errors.for_code(response.error_code, "InitProducerId failed")
        self.identity.producer_id = response.producer_id
        self.identity.producer_epoch = response.producer_epoch
        self.identity.needs_reset = False
        self.accumulator.reset_sequences()
        log.debug("producer id %s epoch %s", response.producer_id, response.producer_epoch)

    def _send_ready(self, now: float, sendable) -> Optional[float]:
        cluster = self.cluster
        max_in_flight = self.max_in_flight
        ready, next_check = self.accumulator.ready(now, sendable)
        if not ready:
            return next_check
        by_node: dict[int, list] = {}
        unknown_leader = False
        for queue in ready:
            node = cluster.leader(queue.topic, queue.partition)
            if node < 0:
                unknown_leader = True
                continue
            if queue.in_flight and queue.in_flight_node != node:
                continue  # the leader moved: first the batches in flight to the old one must come back
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
        return next_check

    def _send_to(self, connection, node: int, queues) -> None:
        """Drain one batch per partition (up to max_request_size) into one Produce request."""
        version = connection.version_for(ProduceRequest, 3)  # magic-2 record batches need v3+
        if version < 7 and self.config.compression_type == "zstd":
            error = errors.UnsupportedVersionError(
                f"zstd needs Produce v7, broker {connection.host}:{connection.port} supports up to v{version}")
            for queue in queues:
                self._settle_error(queue.batches.popleft(), error)
            return
        idempotent = self.idempotent
        identity = self.identity
        accumulator = self.accumulator
        budget = self.config.max_request_size
        self._random.shuffle(queues)  # fairness between partitions when the request fills up
        batches = []
        for queue in queues:
            batch = queue.batches[0]
            if batches and batch.builder.size_in_bytes > budget:
                continue  # the next request takes it
            if not idempotent:
                batch.freeze(-1, -1, -1, False)
            elif batch.base_sequence < 0:
                # Sequences are assigned here, at drain time, so they follow the order batches are sent in.
                batch.freeze(identity.producer_id, identity.producer_epoch, queue.next_sequence, False)
                queue.next_sequence = (queue.next_sequence + batch.record_count) & SEQUENCE_MASK
            else:
                # A retry keeps its identity and sequence (the payload is reused as is).
                batch.freeze(batch.producer_id, batch.producer_epoch, batch.base_sequence, False)
            budget -= len(batch.payload)
            queue.batches.popleft()
            queue.in_flight += 1
            queue.in_flight_node = node
            accumulator.mark_drained(batch)
            batch.attempts += 1
            batches.append(batch)
            self.in_flight_batches.add(batch)
        if not batches:
            return
        correlation_id = connection.next_correlation_id()
        topics: dict[str, list] = {}
        for batch in batches:
            topics.setdefault(batch.topic, []).append((batch.partition, batch.payload))
        buffers = encode_produce_request(version, correlation_id, self.config.client_id, None, self.acks,
                                         self.config.request_timeout_ms, list(topics.items()))
        future = connection.send_frame(buffers, correlation_id, ProduceRequest.API_KEY, version,
                                       response_class=self._produce_response)
        self.metrics.requests_sent += 1
        sent_at = time.monotonic()
        future.add_done_callback(lambda f: self._on_response(f, batches, sent_at))

    # -- settling -----------------------------------------------------------------------------------------
    def _on_response(self, future: asyncio.Future, batches: list, sent_at: float) -> None:
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
        by_partition = {}
        if response is not None:
            self.metrics.request_latency((time.monotonic() - sent_at) * 1000.0)
            for topic in response.responses:
                for part in topic.partition_responses:
                    by_partition[(topic.name, part.index)] = part
        for batch in batches:
            if batch not in self.in_flight_batches:
                continue  # settled already (producer closed)
            self.in_flight_batches.discard(batch)
            queue = self.accumulator.queues[(batch.topic, batch.partition)]
            queue.in_flight -= 1
            if batch in self._expired_in_flight:
                # Failed at its deadline already (see the module docstring); this answer only frees the slot.
                # Written or not, its sequence was given up and the identity reset is under way.
                self._expired_in_flight.discard(batch)
            elif error is not None:
                # No answer: the broker may or may not have written it. Retry with the same sequence.
                batch.outcome_unknown = True
                self._retry(batch, error, refresh=True)
            elif self.acks == 0:
                self._succeed(batch, -1, -1)
            else:
                part = by_partition.get((batch.topic, batch.partition))
                if part is None:
                    batch.outcome_unknown = True
                    self._retry(batch, errors.KafkaError(
                        f"no answer for {batch.topic}-{batch.partition} in the Produce response"), refresh=False)
                else:
                    batch.outcome_unknown = False  # a definite answer, whatever it says
                    self._settle_partition(batch, queue, part)
            if queue.blocked and queue.in_flight == 0:
                queue.blocked = False
        self.wakeup()

    def _settle_partition(self, batch, queue, part) -> None:
        code = part.error_code
        action = classify_produce_error(code, idempotent=self.idempotent,
                                        earlier_batch_failed=queue.blocked or self._earlier_in_doubt(batch))
        if action is ProduceAction.SUCCEED:
            # DUPLICATE_SEQUENCE_NUMBER lands here too: an earlier attempt was written, its answer lost.
            self._succeed(batch, part.base_offset, part.log_append_time_ms)
            return
        error = errors.for_code(code, getattr(part, "error_message", None), topic=batch.topic,
                                partition=batch.partition)
        if action is ProduceAction.RESET_AND_RETRY:
            # The broker forgot our producer id, or its sequences and ours diverged: start over with a
            # new id once nothing of unknown outcome is left (see _turn). This batch was not written.
            self.identity.needs_reset = True
            self._retry(batch, error, refresh=False)
        elif action is ProduceAction.RETRY:
            self._retry(batch, error, refresh=False)
        elif action is ProduceAction.REFRESH_AND_RETRY:
            self._retry(batch, error, refresh=True)
        else:
            self._settle_error(batch, error)

    def _earlier_in_doubt(self, batch) -> bool:
        """Is an earlier batch of the same partition in flight or waiting for its retry? Then an
        OUT_OF_ORDER_SEQUENCE answer is the echo of that gap, not lost broker state."""
        topic, partition, order = batch.topic, batch.partition, batch.drain_order
        for other in self.in_flight_batches:
            if other.partition == partition and other.topic == topic and other.drain_order < order:
                return True
        queue = self.accumulator.queues[(topic, partition)]
        return bool(queue.batches) and 0 <= queue.batches[0].drain_order < order

    def _succeed(self, batch, base_offset: int, log_append_time: int) -> None:
        self.accumulator.batch_done(batch)
        metrics = self.metrics
        metrics.records_sent += batch.record_count
        metrics.batches_sent += 1
        metrics.bytes_sent += len(batch.payload)
        batch.completion.resolve(base_offset, log_append_time if log_append_time is not None else -1)

    def _retry(self, batch, error: BaseException, refresh: bool) -> None:
        batch.last_error = error
        now = time.monotonic()
        retries = self.config.retries
        if now >= batch.deadline:
            self._settle_error(batch, _delivery_failed(batch, error, now))
            return
        if self._closing or (retries is not None and batch.attempts > retries):
            self._settle_error(batch, _gave_up(batch, error, retries, self._closing))
            return
        self.metrics.retries += 1
        queue = self.accumulator.queues[(batch.topic, batch.partition)]
        if self.idempotent:
            queue.blocked = True
        backoff = min(self.config.retry_backoff_ms * (2 ** (batch.attempts - 1)), self.config.retry_backoff_max_ms)
        backoff *= self._random.uniform(0.8, 1.2)  # jitter: retries of many producers do not align
        self.accumulator.requeue(batch, now + backoff / 1000.0)
        if refresh:
            self.cluster.request_refresh()

    def _settle_error(self, batch, error: BaseException) -> None:
        if self.idempotent and batch.base_sequence >= 0:
            # A sequence was used and will never be acknowledged: later batches would leave a gap.
            self.identity.needs_reset = True
        self.metrics.batch_errors += 1
        self.metrics.record_errors += len(batch.builder)
        self._fail(batch, error)

    def _fail(self, batch, error: BaseException) -> None:
        self.accumulator.batch_done(batch)
        batch.completion.fail(error)

    def _expire(self, now: float) -> None:
        for batch in self.accumulator.expired(now):
            self._settle_error(batch, _delivery_failed(batch, batch.last_error, now))
        expired = self._expired_in_flight
        for batch in self.in_flight_batches:
            if batch.deadline <= now and batch not in expired:
                # In flight, no answer yet: fail it now rather than when the request times out (the
                # Java client does the same); it keeps its in-flight slot until the request ends.
                expired.add(batch)
                self._settle_error(batch, _delivery_failed(batch, batch.last_error, now, in_flight=True))


def _delivery_failed(batch, cause, now: float, in_flight: bool = False) -> errors.DeliveryTimeoutError:
    waited = now - batch.created
    if in_flight:
        state = f"expired while attempt {batch.attempts} was in flight with no answer yet"
    elif batch.attempts == 0:
        state = "expired before it could be sent"
    else:
        state = f"expired waiting to be retried after {batch.attempts} attempt(s)"
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


def _gave_up(batch, cause, retries, closing: bool) -> errors.KafkaError:
    """Not retried although its deadline is not reached: the producer is closing, or ``retries`` is spent."""
    why = "the producer is closing" if closing else f"retries={retries} reached"
    doubt = " The last attempt got no answer, so the broker may have written it." if batch.outcome_unknown else ""
    cls = errors.ProducerClosedError if closing else errors.KafkaError
    exc = cls(f"{len(batch.builder)} record(s) for {batch.topic}-{batch.partition} not delivered: {why} after "
              f"{batch.attempts} attempt(s); last error: {cause}.{doubt}")
    exc.topic = batch.topic
    exc.partition = batch.partition
    exc.__cause__ = cause
    return exc


def _always(queue) -> bool:
    return True


def _only_unknown_outcome(queue) -> bool:
    return queue.batches[0].outcome_unknown


def _min(a: Optional[float], b: float) -> float:
    return b if a is None or b < a else a
