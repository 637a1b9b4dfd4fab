"""The sender: the one task that moves batches from the accumulator to the brokers and settles them.

Each turn it: fails batches past ``delivery_timeout_ms`` that are still queued; makes sure an idempotent
producer has its producer id; asks the accumulator which partitions are ready; groups them by leader; and for
each leader with a free in-flight slot drains one batch per partition (up to ``max_request_size``) into one
Produce request. Draining is where a batch gets its sequence and its bytes. Responses come back through a
done-callback on the connection's future (no task per request) and are settled by ``_settle``:

  success                      -> the batch's completion resolves every record's handle (one call_soon)
  retriable / unknown outcome  -> back to the front of its partition queue, after backoff with jitter
  needs metadata               -> the same, plus a metadata refresh
  anything else                -> the batch fails with an error naming topic, partition and broker message

Idempotence (sequences, at most 5 in flight): after a retriable failure the partition is *blocked*: nothing
new is drained for it until all its in-flight batches came back, then the retried ones go again in sequence
order, so the broker never sees a gap it would answer with OUT_OF_ORDER_SEQUENCE. When the broker forgot the
producer id (UNKNOWN_PRODUCER_ID, e.g. after a restart) or a sequenced batch was given up, the sender waits
for everything in flight, takes a new producer id and renumbers what is still queued from 0.
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



class ProducerIdentity:
    """The idempotent producer's id and epoch, and whether they must be (re)acquired."""

    __slots__ = ("producer_id", "producer_epoch", "needs_reset")

    def __init__(self) -> None:
        self.producer_id = -1
        self.producer_epoch = -1
        self.needs_reset = True


class Sender:
    def __init__(self, config, cluster, accumulator, metrics) -> None:
        self.config = config
        self.cluster = cluster
        self.accumulator = accumulator
        self.metrics = metrics
        self.acks = config.acks_value
        self.idempotent = config.idempotent
        self.identity = ProducerIdentity()
        self.max_in_flight = config.max_in_flight_requests_per_connection
        self.in_flight_batches: set = set()
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._fatal: Optional[BaseException] = None
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
        for batch in list(self.accumulator.all_batches()) + list(self.in_flight_batches):
            self._fail(batch, error)
        for queue in self.accumulator.queues.values():
            queue.batches.clear()
        self.in_flight_batches.clear()

    # -- the loop -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        wakeup = self._wakeup
        metadata_age = self.config.metadata_max_age_ms / 1000.0
        while not self._closing:
            wakeup.clear()
            now = time.monotonic()
            self._expire(now)
            if now - self.cluster.last_refresh > metadata_age:
                self.cluster.request_refresh()
            if self.idempotent and self.identity.needs_reset:
                if self.in_flight_batches:
                    await wakeup.wait()  # responses of the old identity must come back first
                    continue
                try:
                    await self._init_producer_id()
                except errors.KafkaError as exc:
                    if not exc.retriable:
                        self._fatal = exc
                        for batch in list(self.accumulator.all_batches()):
                            self._fail(batch, exc)
                        for queue in self.accumulator.queues.values():
                            queue.batches.clear()
                    log.warning("InitProducerId failed: %s", exc)
                    await self._sleep_or_wakeup(self.config.retry_backoff_ms / 1000.0)
                    continue
            next_check = self._send_ready(now)
            if next_check is None:
                next_check = metadata_age
            await self._sleep_or_wakeup(max(next_check, 0.0005))

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

    def _send_ready(self, now: float) -> Optional[float]:
        cluster = self.cluster
        max_in_flight = self.max_in_flight
        ready, next_check = self.accumulator.ready(now, _always)
        if not ready:
            return next_check
        by_node: dict[int, list] = {}
        unknown_leader = False
        for queue in ready:
            node = cluster.leader(queue.topic, queue.partition)
            if node < 0:
                unknown_leader = True
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
            if connection.in_flight >= max_in_flight:
                continue  # a response will wake us
            self._send_to(connection, queues, now)
        return next_check

    def _send_to(self, connection, queues, now: float) -> None:
        """Drain one batch per partition (up to max_request_size) into one Produce request."""
        idempotent = self.idempotent
        identity = self.identity
        budget = self.config.max_request_size
        random.shuffle(queues)  # fairness between partitions when the request fills up
        batches = []
        for queue in queues:
            batch = queue.batches[0]
            if batches and batch.builder.size_in_bytes > budget:
                continue  # the next request takes it
            fresh = idempotent and batch.base_sequence < 0
            if fresh:
                # Sequences are assigned here, at drain time, so they follow the order batches are sent in.
                batch.freeze(identity.producer_id, identity.producer_epoch, queue.next_sequence, False)
                queue.next_sequence += batch.record_count
            elif idempotent:
                batch.freeze(identity.producer_id, identity.producer_epoch, batch.base_sequence, False)
            else:
                batch.freeze(-1, -1, -1, False)
            budget -= len(batch.payload)
            queue.batches.popleft()
            queue.in_flight += 1
            batch.attempts += 1
            batch.ever_sent = True
            batches.append(batch)
            self.in_flight_batches.add(batch)
        if not batches:
            return
        version = connection.version_for(ProduceRequest, 3)
        if version < 7 and self.config.compression_type == "zstd":
            for batch in batches:
                self._settle_error(batch, errors.UnsupportedVersionError(
                    f"zstd needs Produce v7, broker {connection.host}:{connection.port} supports up to v{version}"),
                    fatal=True)
            return
        correlation_id = connection.next_correlation_id()
        topics: dict[str, list] = {}
        for batch in batches:
            topics.setdefault(batch.topic, []).append((batch.partition, batch.payload))
        buffers = encode_produce_request(version, correlation_id, self.config.client_id, None, self.acks,
                                         self.config.request_timeout_ms, list(topics.items()))
        from .connection import RESPONSE_CLASSES
        future = connection.send_frame(buffers, correlation_id, ProduceRequest.API_KEY, version,
                                       response_class=None if self.acks == 0 else RESPONSE_CLASSES[ProduceRequest.API_KEY])
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
            if error is not None:
                # The request may or may not have reached the broker: outcome unknown, retry (same sequence).
                self._retry(batch, error, refresh=True)
            elif self.acks == 0:
                self._succeed(batch, -1, -1)
            else:
                part = by_partition.get((batch.topic, batch.partition))
                if part is None:
                    self._retry(batch, errors.KafkaError(
                        f"no answer for {batch.topic}-{batch.partition} in the Produce response"), refresh=False)
                else:
                    self._settle_partition(batch, queue, part)
            if queue.blocked and queue.in_flight == 0:
                queue.blocked = False
        self.wakeup()

    def _settle_partition(self, batch, queue, part) -> None:
        code = part.error_code
        action = classify_produce_error(code, idempotent=self.idempotent, earlier_batch_failed=queue.blocked)
        if action is ProduceAction.SUCCEED:
            # DUPLICATE_SEQUENCE_NUMBER lands here too: an earlier attempt was written, its answer lost.
            self._succeed(batch, part.base_offset, part.log_append_time_ms)
            return
        error = errors.for_code(code, getattr(part, "error_message", None), topic=batch.topic,
                                partition=batch.partition)
        if action is ProduceAction.RESET_AND_RETRY:
            # The broker forgot our producer id, or its sequences and ours diverged: start over with a
            # new id once everything in flight came back (see _run).
            self.identity.needs_reset = True
            self._retry(batch, error, refresh=False)
        elif action is ProduceAction.RETRY:
            self._retry(batch, error, refresh=False)
        elif action is ProduceAction.REFRESH_AND_RETRY:
            self._retry(batch, error, refresh=True)
        else:
            self._settle_error(batch, error, fatal=True)

    def _succeed(self, batch, base_offset: int, log_append_time: int) -> None:
        self.accumulator.batch_done(batch)
        metrics = self.metrics
        metrics.records_sent += batch.record_count
        metrics.batches_sent += 1
        metrics.bytes_sent += len(batch.payload)
        batch.completion.resolve(base_offset, log_append_time if log_append_time is not None else -1)

    def _retry(self, batch, error: BaseException, refresh: bool) -> None:
        now = time.monotonic()
        retries = self.config.retries
        if self._closing or now >= batch.deadline or (retries is not None and batch.attempts > retries):
            self._settle_error(batch, _delivery_failed(batch, error, now), fatal=False)
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

    def _settle_error(self, batch, error: BaseException, fatal: bool) -> None:
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
            self._settle_error(batch, _delivery_failed(batch, None, now), fatal=False)


def _delivery_failed(batch, cause, now: float) -> errors.KafkaTimeoutError:
    waited = now - batch.created
    detail = f": last error {cause}" if cause is not None else ""
    exc = errors.KafkaTimeoutError(
        f"{len(batch.builder)} record(s) for {batch.topic}-{batch.partition} not delivered within "
        f"delivery_timeout_ms ({waited:.1f}s, {batch.attempts} attempt(s)){detail}")
    exc.topic = batch.topic
    exc.partition = batch.partition
    exc.__cause__ = cause
    return exc


def _always(queue) -> bool:
    return True


def _min(a: Optional[float], b: float) -> float:
    return b if a is None or b < a else a
