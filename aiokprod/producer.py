"""The public ``Producer``: builds its parts from a ``ProducerConfig`` and does no I/O of its own.

``send()`` serializes, partitions and appends a record to the accumulator and returns the record's delivery
handle (awaitable, resolving to ``RecordMetadata``). It awaits only when it must: for the metadata of a topic
it has not seen, or for room in ``buffer_memory``. The sender task does everything else.

The common case (running, no interceptors or serializers, metadata cached, room in the partition's open
batch) is one call into compiled code: ``producer.send`` IS ``RecordAppender.send``
(``aiokprod/_native/appender.pyx``), which appends and returns an awaitable that gives the handle at once (no
coroutine, no frame); for everything else it did nothing and returns the coroutine of ``Producer.send``, the
general path.
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import operator
import warnings
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from time import monotonic as _monotonic, time as _time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, NoReturn, Optional, Union, cast

from . import errors
from .accumulator import RecordAccumulator
from .appender import RecordAppender
from .cluster import Cluster, TopicInfo
from .codec import record_size_upper_bound
from .config import ProducerConfig
from .delivery import DeliveryErrorReporter
from .handle import BatchCompletion, DeliveryHandle
from .hooks import Hooks
from .interceptors import InterceptorChain, ProducerRecord
from .metadata import RecordMetadata
from .metrics import ProducerMetrics
from .partitioner import (CallablePartitioner, ClusterView, DefaultPartitioner, RecordPartitioner,
                          RoundRobinPartitioner, make_partitioner)
from .sender import Sender
from .serializers import check_bytes
from .transaction_manager import TransactionManager, TxnState
from .transactions import TransactionDriver

if TYPE_CHECKING:  # annotations only: typing_extensions is needed by the type checker, not at run time
    from typing_extensions import Unpack

    from .compression import BytesLike
    from .config import ProducerSettings

    # What send() takes as headers: (name, value) pairs as the codec takes them, or a mapping of name to value
    # (send() makes it pairs). Values are bytes-like or None.
    HeaderPairs = Sequence[tuple[str, Optional[BytesLike]]]
    Headers = Union[HeaderPairs, Mapping[str, Optional[BytesLike]]]

log = logging.getLogger("aiokprod.producer")

_INT64_MAX = (1 << 63) - 1


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"  # the sender hit a fatal error (e.g. fenced, or a bug): stop() is all that is left
    CLOSING = "closing"
    CLOSED = "closed"


class _Parts(NamedTuple):
    """What start() builds: the producer's parts that need the running loop."""
    loop: asyncio.AbstractEventLoop
    cluster: Cluster
    accumulator: RecordAccumulator
    sender: Sender
    driver: TransactionDriver


class Producer:
    """An asyncio Kafka producer. Build it anywhere (no loop needed); it binds to the loop in ``start()``."""

    def __init__(self, bootstrap_servers: str | list[str] = "127.0.0.1:9092",
                 **config: Unpack[ProducerSettings]) -> None:
        self.config = ProducerConfig(bootstrap_servers=bootstrap_servers, **config)
        self._init_parts()

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> "Producer":
        """Build from a dict of keyword names or Java/librdkafka dotted names (``linger.ms``, ...)."""
        producer = cls.__new__(cls)
        producer.config = ProducerConfig.from_dict(dict(settings))
        producer._init_parts()
        return producer

    def _init_parts(self) -> None:
        config = self.config
        # send()'s fast path, and the keyless sticky state its DefaultPartitioner shares with it.
        self._appender = RecordAppender(config.batch_size)
        # Typed as it behaves: it takes any arguments and declines (returns None for) what is not plain.
        self._fast_append: Callable[..., Optional[DeliveryHandle]] = self._appender.append
        # producer.send / producer.send_and_wait ARE the appender's entries (instance attributes, found before
        # the class's methods): the common case is one compiled call returning an awaitable that completes
        # at once, with no coroutine and no frame; what the fast path declines, they hand to the methods
        # below (bound here), whose coroutine they return. A subclass that overrides one keeps its own.
        self._general_send = self.send  # the class's (or a subclass's) method, bound
        self._appender.set_general_path(self._send_in_order, self._send_and_wait_in_order)
        if type(self).send is Producer.send:
            self.__dict__["send"] = self._appender.send
        if type(self).send_and_wait is Producer.send_and_wait:
            self.__dict__["send_and_wait"] = self._appender.send_and_wait
        self._state = State.NEW
        self._stopped: Optional[asyncio.Future[None]] = None
        self._abandon_reported = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._partitioner = make_partitioner(config.partitioner, config.batch_size, self._appender)
        self._interceptors = InterceptorChain(config.interceptors)
        self._has_interceptors = bool(config.interceptors)
        # The producer's own metrics are a hook like any other (per batch, per request); user hooks come after.
        self._metrics = ProducerMetrics(
            config.buffer_memory,
            lambda: self._accumulator.used if self._accumulator else 0,
            lambda: len(self._accumulator.waiters) if self._accumulator else 0)
        self._hooks = Hooks(config.hooks, trusted=[self._metrics])
        self._record_hooks = self._hooks.on_record_send
        # Records that need per-record work in send() (interceptors, a hook's on_record_send): they all go
        # through the general path below, as the compiled fast path would skip them.
        self._observed = self._has_interceptors or bool(self._record_hooks)
        self._delivery_errors = (DeliveryErrorReporter(config.on_delivery_error)
                                 if config.on_delivery_error is not None else None)
        self._max_record_size = min(config.max_request_size, config.buffer_memory)
        self._topics: dict[str, TopicInfo] = {}
        self._key_serializer = config.key_serializer
        self._value_serializer = config.value_serializer
        # The fast path does what the slow path does for records that need no interceptor, serializer or
        # partitioner call. It places records itself only for our own DefaultPartitioner (whose state it
        # holds); with round robin or a callable (whose record_appended does nothing) it takes the records
        # that name their partition; with any other partitioner object (whose record_appended may do
        # anything) it takes none.
        partitioner = self._partitioner
        self._own_partitioner = type(partitioner) is DefaultPartitioner and partitioner.sticky is self._appender
        # A Java-signature partitioner: called with the record's value and the cluster view, not partition().
        self._record_partition = partitioner.partition_record if isinstance(partitioner, RecordPartitioner) else None
        self._cluster_view: Optional[ClusterView] = None
        # Whether send()'s general path must tell the partitioner what each keyless record added to its batch
        # (round robin's, a callable's and a Java-signature one's record_appended do nothing: no need to
        # measure it for them).
        self._counts_appended = type(partitioner) not in (RoundRobinPartitioner, CallablePartitioner,
                                                          RecordPartitioner)
        self._fast_path = (not self._observed and self._key_serializer is None
                           and self._value_serializer is None
                           and (self._own_partitioner
                                or type(partitioner) in (RoundRobinPartitioner, CallablePartitioner)))
        self._max_block = config.max_block_ms / 1000.0
        # The one timer that ends memory waits past max_block_ms (see _wait_for_memory); None: not armed.
        self._memory_timer: Optional[asyncio.TimerHandle] = None
        self._cluster: Optional[Cluster] = None
        self._accumulator: Optional[RecordAccumulator] = None
        self._sender: Optional[Sender] = None
        self._transactional = config.transactional_id is not None
        self._manager = TransactionManager(idempotent=config.idempotent, transactional_id=config.transactional_id,
                                           transaction_timeout_ms=config.transaction_timeout_ms)
        self._driver: Optional[TransactionDriver] = None
        self._manager.on_change = self._update_fast_path  # e.g. ABORTABLE_ERROR set by the sender
        self._txn_started = 0.0  # when the open transaction began (monotonic), for transaction_timeout_ms

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state is not State.NEW:
            raise errors.IllegalStateError(f"start() on a producer that is {self._state.value}")
        self._set_state(State.STARTING)
        loop = self._loop = asyncio.get_running_loop()
        config = self.config
        self._cluster = Cluster(config, on_change=self._wakeup_sender, hooks=self._hooks)
        self._topics = self._cluster.topics  # the live cache, read on the hot path
        self._cluster_view = ClusterView(self._topics)
        self._accumulator = RecordAccumulator(
            batch_size=config.batch_size,
            # validate() replaced a None of these two by its default: both are set here.
            compression=cast(str, config.compression_type),
            compression_level=config.compression_level,
            linger_ms=config.linger_ms,
            buffer_memory=config.buffer_memory,
            delivery_timeout_ms=cast(int, config.delivery_timeout_ms),
            completion_factory=lambda topic, partition: BatchCompletion(loop, topic, partition),
            on_wakeup=self._wakeup_sender,
            appender=self._appender,
        )
        self._appender.bind(self._topics, self._accumulator.waiters, self._max_record_size, self._own_partitioner)
        self._driver = TransactionDriver(config, self._cluster, self._manager, on_change=self._wakeup_sender)
        self._sender = Sender(config, self._cluster, self._accumulator, self._hooks, self._manager, self._driver,
                              on_fatal=self._sender_failed, on_abandoned=self._abandoned,
                              on_batch_failed=self._delivery_errors.batch_failed if self._delivery_errors else None)
        try:
            await self._cluster.bootstrap()
            if self._transactional:
                # Find the transaction coordinator and take the transactional id: this fences any older
                # instance and makes the coordinator finish what it left open.
                await self._driver.init_producer_id()
        except BaseException:
            self._set_state(State.CLOSED)
            await self._cluster.close()
            raise
        self._sender.start()
        self._set_state(State.RUNNING)
        for fn in self._hooks.on_producer_start:
            fn(self)

    def _set_state(self, state: State) -> None:
        """Every state change goes through here: the fast path runs only while the producer is RUNNING (and,
        on a transactional producer, only inside a transaction: the general path says why not)."""
        self._state = state
        self._update_fast_path()

    def _update_fast_path(self) -> None:
        self._appender.enabled = (self._state is State.RUNNING and self._fast_path
                                  and (not self._transactional or self._manager.state is TxnState.IN_TRANSACTION))

    def _sender_failed(self) -> None:
        if self._state is State.RUNNING:
            self._set_state(State.FAILED)

    def _abandoned(self, count: int) -> None:
        """The sender's task was cancelled without stop(): the event loop is ending (asyncio.run cancels
        every task). Records still buffered are lost; say so, as asyncio does for a task destroyed pending."""
        self._sender_failed()
        self._report_lost(count)

    def _report_lost(self, count: int) -> None:
        loop = self._loop  # set by start(), before the sender that counts the records exists
        if self._abandon_reported or count == 0 or loop is None:
            return
        self._abandon_reported = True
        loop.call_exception_handler({
            "message": f"{self!r} was not stopped before its event loop ended: {count} record(s) were never "
                       "delivered (await producer.stop() or use 'async with' to deliver them)",
            "producer": self,
        })

    def __repr__(self) -> str:
        config = self.config
        return (f"<aiokprod.Producer client_id={config.client_id!r} bootstrap={config.bootstrap_servers!r} "
                f"{self._state.value}>")

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Like an unclosed socket or transport: a ResourceWarning. And if the loop went away without
        # cancelling our sender (loop.close() after run_until_complete), nobody reported the lost records yet.
        # Only a started producer holds anything (its loop, connections, tasks); never started, or closed,
        # there is nothing to warn about.
        state = getattr(self, "_state", None)
        if state is None or state in (State.NEW, State.CLOSED) or getattr(self, "_loop", None) is None:
            return
        _warn(f"unclosed producer {self!r}", ResourceWarning, source=self)
        if self._sender is not None and self._loop is not None:
            try:
                self._report_lost(self._sender.undelivered_records())
            except Exception:  # noqa: BLE001 - a finaliser must not raise; this is only a report
                pass

    def _parts(self, operation: str) -> _Parts:
        """The parts start() built. They exist from start() on: every caller checked the state first, so the
        error here means start() failed before building them."""
        loop, cluster, accumulator = self._loop, self._cluster, self._accumulator
        sender, driver = self._sender, self._driver
        if loop is None or cluster is None or accumulator is None or sender is None or driver is None:
            raise errors.IllegalStateError(f"{operation}() on a producer whose start() did not complete "
                                           f"({self._state.value})")
        return _Parts(loop, cluster, accumulator, sender, driver)

    def _wakeup_sender(self) -> None:
        if self._sender is not None:
            self._sender.wakeup()

    async def stop(self, timeout: Optional[float] = None) -> None:
        """Flush what is buffered (within ``timeout``, default ``stop_timeout_ms``), then close.

        Every record not delivered by then fails with ``ProducerClosedError``; every task ends.
        """
        if self._state in (State.CLOSING, State.CLOSED):
            if self._stopped is not None:
                await asyncio.shield(self._stopped)  # a concurrent stop(): return when it is done
            return
        if self._state is State.NEW:
            self._set_state(State.CLOSED)
            return
        parts = self._parts("stop")
        self._set_state(State.CLOSING)
        stopped = self._stopped = parts.loop.create_future()
        if timeout is None:
            timeout = self.config.stop_timeout_ms / 1000.0
        try:
            if self._transactional and self._manager.state in (TxnState.IN_TRANSACTION, TxnState.ABORTABLE_ERROR):
                # Never commit implicitly: what the application left open is aborted.
                await self.abort_transaction(timeout)
            else:
                await parts.sender.flush(timeout)
        except asyncio.TimeoutError:
            log.warning("stop(): records still undelivered after %.1fs; failing them", timeout)
        except Exception as exc:  # noqa: BLE001 - stop must close whatever flush says
            log.warning("stop(): flush failed: %s", exc)
        finally:
            await parts.sender.close(errors.ProducerClosedError("producer stopped before the record was delivered"))
            await parts.cluster.close()
            # Failing a batch schedules its handles' completion with one call_soon; yield once so that
            # every handle is done() when stop() returns (callbacks run FIFO, before our resumption).
            await asyncio.sleep(0)
            # The memory waits' timer has nothing left to expire once no sender waits (closing the sender
            # failed every batch, which freed their memory): do not leave it holding the producer.
            if self._memory_timer is not None and not parts.accumulator.waiters:
                self._memory_timer.cancel()
                self._memory_timer = None
            self._interceptors.close()
            self._set_state(State.CLOSED)
            stopped.set_result(None)

    async def __aenter__(self) -> "Producer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- sending ------------------------------------------------------------------------------------------
    async def send(self, topic: str, value: Any = None, key: Any = None, partition: Optional[int] = None,
                   timestamp_ms: Optional[int] = None, headers: Optional[Headers] = None) -> DeliveryHandle:
        """Append a record; return its delivery handle (await it for ``RecordMetadata``).

        ``await producer.send(...)`` never yields with the topic's metadata cached and room in the buffer.
        On a producer, ``send`` is the compiled ``RecordAppender.send`` (see ``_init_parts``): the common case
        appends the record when send() is CALLED and returns an awaitable that gives the handle at once (a
        coroutine to asyncio: ``create_task``, ``gather``, ``wait_for`` take it). If it is never awaited, it
        warns as a coroutine does ("coroutine 'Producer.send' was never awaited"); its record was appended
        anyway. What the compiled call declines (it then did nothing), and any call from a thread other than
        the loop's, is this method's coroutine, which appends when awaited, as any coroutine; until it has,
        the compiled call appends nothing, so records keep the order of the calls. Never awaiting that
        coroutine loses its record and leaves the producer on this general path: always await send().

        This body is the general path, and the reference behaviour: the fast path must give the same
        partition, order, handle and accounting as this code would. Its checks are ordered so that the common
        case takes the fewest Python operations; the rare cases branch off to helpers.
        """
        handle = self._fast_append(topic, value, key, partition, timestamp_ms, headers)
        if handle is not None:
            return handle
        if self._state is not State.RUNNING:
            self._raise_not_running(topic)
        if self._transactional:
            self._manager.check_can_send()
        if headers is not None and type(headers) is not list and isinstance(headers, Mapping):
            headers = _header_list(topic, headers)
        if self._observed:
            return await self._send_observed(topic, value, key, partition, timestamp_ms, headers)
        return await self._append_record(topic, value, key, partition, timestamp_ms, headers)

    # What the compiled entries hand out for a record they do not append themselves (declined by the fast
    # path, or called from a thread other than the loop's). The appender counts these coroutines until they
    # are past their append (general_done) and appends nothing itself meanwhile, so that no later record
    # overtakes one of them, as asyncio.gather(send(bytearray(...)), send(b"...")) would otherwise let the
    # second do. Named as the calls they stand for, which is what an unawaited-coroutine warning should say.
    async def _send_in_order(self, topic: Any, value: Any = None, key: Any = None, partition: Any = None,
                             timestamp_ms: Any = None, headers: Any = None) -> DeliveryHandle:
        try:
            handle: DeliveryHandle = await self._general_send(topic, value, key, partition, timestamp_ms, headers)
        finally:
            self._appender.general_done()
        return handle

    async def _send_and_wait_in_order(self, topic: Any, value: Any = None, key: Any = None, partition: Any = None,
                                      timestamp_ms: Any = None, headers: Any = None) -> RecordMetadata:
        try:
            handle: DeliveryHandle = await self._general_send(topic, value, key, partition, timestamp_ms, headers)
        finally:
            self._appender.general_done()  # past the append: the wait for delivery holds nobody up
        return await handle

    _send_in_order.__qualname__ = "Producer.send"
    _send_and_wait_in_order.__qualname__ = "Producer.send_and_wait"

    async def _send_observed(self, topic: Any, value: Any, key: Any, partition: Any, timestamp_ms: Any,
                             headers: Any) -> DeliveryHandle:
        """send() for a record somebody watches: interceptors' on_send, hooks' on_record_send (which may add
        headers), then the general path; whatever send() rejects from here on is acknowledged to them with
        the error (as the Java client does), and what it appends, when its batch is done."""
        if self._has_interceptors:
            record = self._interceptors.on_send(ProducerRecord(topic, value, key, partition, timestamp_ms, headers))
            topic, value, key, partition, timestamp_ms, headers = record
            if headers is not None and type(headers) is not list and isinstance(headers, Mapping):
                headers = _header_list(topic, headers)
        acks: list[_Ack] = []
        if self._record_hooks:
            headers = [] if headers is None else list(headers)
            for fn in self._record_hooks:
                ack = fn(topic, key, headers)
                if ack is not None:
                    acks.append(ack)
            if not headers:
                headers = None
        if self._has_interceptors:
            acks.append(self._interceptors.on_acknowledgement)
        try:
            handle = await self._append_record(topic, value, key, partition, timestamp_ms, headers)
        except Exception as exc:
            for ack in acks:
                _acknowledge_one(ack, None, exc)
            raise
        if acks:
            handle.completion.add_batch_callback(functools.partial(_acknowledge, handle.index, acks))
        return handle

    async def _append_record(self, topic: Any, value: Any, key: Any, partition: Any, timestamp_ms: Any,
                             headers: Any) -> DeliveryHandle:
        """The general path: serialize, find the topic's metadata, partition, append (maybe a new batch)."""
        key_object, value_object = key, value
        # The arguments the fast path declined for their type or range (it takes only exact ints).
        if partition is not None and type(partition) is not int:
            partition = _int_argument("partition", topic, partition)
        if timestamp_ms is not None and (type(timestamp_ms) is not int or not 0 <= timestamp_ms <= _INT64_MAX):
            timestamp_ms = _timestamp_argument(topic, timestamp_ms)
        if self._key_serializer is not None:
            try:
                key = self._key_serializer(key)
            except Exception as exc:
                raise errors.SerializationError(topic, "key", exc) from exc
        elif key is not None and type(key) is not bytes:
            key = check_bytes("key", topic, key, "key_serializer")
        if self._value_serializer is not None:
            try:
                value = self._value_serializer(value)
            except Exception as exc:
                raise errors.SerializationError(topic, "value", exc) from exc
        elif value is not None and type(value) is not bytes:
            value = check_bytes("value", topic, value, "value_serializer")
        info = self._topics.get(topic) if type(topic) is str else None
        if info is None:
            info = await self._topic_info(topic)
            if self._state is not State.RUNNING:  # stop() ran while we waited for metadata
                self._raise_not_running(topic)
        num_partitions = info.num_partitions
        # Only records the partitioner placed without a key count toward its sticky switch (KIP-794).
        sticky = partition is None and key is None and self._counts_appended
        if partition is None:
            if self._record_partition is not None:
                # start() set the view (send() runs from then on): the cast only tells the type checker so.
                partition = self._record_partition(topic, key_object, key, value_object, value,
                                                   cast(ClusterView, self._cluster_view))
            else:
                partition = self._partitioner.partition(topic, key, num_partitions)
            if type(partition) is not int or not 0 <= partition < num_partitions:
                raise ValueError(f"partitioner returned partition {partition!r} for topic {topic!r}, "
                                 f"which has partitions 0..{num_partitions - 1}")
        elif type(partition) is not int or not 0 <= partition < num_partitions:
            raise ValueError(f"partition {partition!r} out of range for topic {topic!r}, "
                             f"which has {num_partitions} partition(s) (0..{num_partitions - 1})")
        if timestamp_ms is None:
            timestamp_ms = int(_time() * 1000)
        try:
            size = record_size_upper_bound(key, value, headers)
        except (TypeError, ValueError) as exc:
            if headers is None:
                raise
            raise _headers_error(topic, headers, exc) from exc
        if size > self._max_record_size:
            self._record_too_large(topic, partition, size)
        accumulator = cast(RecordAccumulator, self._accumulator)  # set by start(), like _cluster_view
        if self._transactional:
            self._manager.check_can_send()  # again: the transaction may have ended while we awaited metadata
        handle: Optional[DeliveryHandle] = accumulator.append(topic, partition, timestamp_ms, key, value, headers,
                                                              size)
        if handle is None:
            # The record needs a new batch and its buffer is not free now (or others wait for memory first):
            # wait for the reservation (FIFO), then append (append_new gives it back if that fails). Inline, not
            # a helper coroutine: this is once per batch whenever the buffer is the bottleneck.
            reserved = accumulator.new_batch_reservation(size)
            await self._wait_for_memory(reserved, size, topic, partition)
            handle = accumulator.append_new(topic, partition, timestamp_ms, key, value, headers, reserved)
        if sticky:
            # KIP-794, as the Java client counts: the bytes the record added to its batch (the whole batch,
            # header included, if it opened it), not its upper-bound size. (Read right after the append that
            # set it: no await in between.)
            self._partitioner.record_appended(topic, partition, accumulator.appended_bytes, num_partitions)
        return handle

    def _raise_not_running(self, topic: object) -> NoReturn:
        # FAILED: the sender failed, so start() built it.
        fatal = self._sender.fatal_error if self._sender is not None else None
        if self._state is State.FAILED and self._transactional and isinstance(fatal, errors.FatalError):
            self._manager.check_not_fatal()  # raises it: a fenced zombie is told ProducerFencedError itself
        if self._state is State.FAILED:
            raise errors.KafkaError(f"send() to {topic!r}: the producer failed and must be stopped: {fatal}") from fatal
        raise errors.ProducerClosedError(f"send() to {topic!r} on a producer that is {self._state.value}")

    async def _topic_info(self, topic: object) -> TopicInfo:
        if type(topic) is not str or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        # start() set the cluster (send() runs from then on): the cast only tells the type checker so.
        return await cast(Cluster, self._cluster).wait_for_topic(topic, self._max_block)

    def _record_too_large(self, topic: str, partition: int, size: int) -> NoReturn:
        raise errors.RecordTooLargeError(
            f"record for {topic}-{partition} is {size} bytes serialized, over the limit of "
            f"{self._max_record_size} (max_request_size={self.config.max_request_size}, "
            f"buffer_memory={self.config.buffer_memory})")

    async def _wait_for_memory(self, size: int, record_size: int, topic: str, partition: int) -> None:
        """Queue for ``size`` bytes of buffer_memory (FIFO) for at most max_block_ms. No timer per wait: one
        timer for all of them (``_expire_memory_waiters``), re-armed about once per max_block_ms."""
        # Both set by start(): send() runs from then on; the casts only tell the type checker so.
        accumulator = cast(RecordAccumulator, self._accumulator)
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        future: asyncio.Future[None] = loop.create_future()
        waiter = accumulator.enqueue_waiter(size, future, loop.time() + self._max_block)
        if self._memory_timer is None and not waiter.granted:
            self._memory_timer = loop.call_at(waiter.deadline, self._expire_memory_waiters)
        hooks = self._hooks
        if hooks.on_buffer_wait:
            for fn in hooks.on_buffer_wait:
                fn(topic, partition, size)
        started = _monotonic()
        try:
            await future
        except BaseException:
            accumulator.abandon_waiter(waiter)
            for fn in hooks.on_buffer_wait_done:
                fn((_monotonic() - started) * 1000.0, False)
            raise
        if not waiter.granted:  # expired: _expire_memory_waiters took it out of the queue
            for fn in hooks.on_buffer_wait_done:
                fn((_monotonic() - started) * 1000.0, True)
            raise errors.BufferExhaustedError(
                f"no room for a {record_size}-byte record for {topic}-{partition}: its new batch needs {size} "
                f"bytes of buffer_memory ({self.config.buffer_memory} bytes), and none freed within "
                f"max_block_ms ({self.config.max_block_ms} ms)")
        for fn in hooks.on_buffer_wait_done:
            fn((_monotonic() - started) * 1000.0, False)
        if self._state is not State.RUNNING:
            accumulator.release(size)
            raise errors.ProducerClosedError(f"producer closed while send() to {topic!r} waited for memory")
        if self._transactional and self._manager.state is not TxnState.IN_TRANSACTION:
            accumulator.release(size)
            self._manager.check_can_send()  # the transaction ended while we waited for memory

    def _expire_memory_waiters(self) -> None:
        """The memory waiters' one timer: fail the waits past max_block_ms, then re-arm for the next deadline
        (a wait granted in time needs no timer of its own, nor a cancel)."""
        self._memory_timer = None
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        accumulator = cast(RecordAccumulator, self._accumulator)
        # A timer may run a little early (uvloop counts whole milliseconds): what is due within a millisecond
        # expires now rather than re-arming a timer that would fire at once, again and again.
        accumulator.expire_waiters(loop.time() + 0.001)
        deadline = accumulator.next_waiter_deadline()
        if deadline is not None:
            self._memory_timer = loop.call_at(deadline, self._expire_memory_waiters)

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None, partition: Optional[int] = None,
                            timestamp_ms: Optional[int] = None, headers: Optional[Headers] = None) -> RecordMetadata:
        """Send a record and wait for its delivery: ``await (await send(...))``, ``RecordMetadata``.

        As ``send``, on a producer this is the compiled ``RecordAppender.send_and_wait``: the common case
        appends when called and returns an awaitable that waits for the delivery; this method's coroutine is
        what it returns for the records the fast path declines."""
        # send()'s own first step, inline: the common case then makes one coroutine per record, not two.
        handle = self._fast_append(topic, value, key, partition, timestamp_ms, headers)
        if handle is None:
            handle = await self.send(topic, value, key, partition, timestamp_ms, headers)
        return await handle

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Send everything buffered now, and wait until it is delivered (or failed)."""
        if self._state not in (State.RUNNING, State.CLOSING):
            raise errors.ProducerClosedError(f"flush() on a producer that is {self._state.value}")
        await self._parts("flush").sender.flush(timeout)

    # -- transactions -------------------------------------------------------------------------------------
    def _check_running(self, operation: str) -> None:
        if self._state is State.FAILED and self._manager.fatal:
            self._manager.check_not_fatal()
        if self._state is not State.RUNNING:
            raise errors.IllegalStateError(f"{operation}() on a producer that is {self._state.value}")

    def begin_transaction(self) -> None:
        """Open a transaction: every record sent until commit_transaction() or abort_transaction() is part
        of it. Needs ``transactional_id``; one transaction at a time."""
        self._check_running("begin_transaction")
        loop = self._parts("begin_transaction").loop
        self._manager.begin_transaction()  # turns the fast path on (the manager's on_change)
        self._txn_started = loop.time()

    async def commit_transaction(self, timeout: Optional[float] = None) -> None:
        """Deliver every record of the transaction, then commit it (EndTxn). Raises an ``AbortableError``
        if a record failed (or the transaction outlived ``transaction_timeout_ms``): call
        abort_transaction() then. A ``KafkaTimeoutError`` (``timeout``, default ``max_block_ms``) leaves the
        commit under way: calling commit_transaction() again resumes it."""
        self._check_running("commit_transaction")
        loop, _, _, sender, driver = self._parts("commit_transaction")
        manager = self._manager
        if manager.state is TxnState.IN_TRANSACTION:
            age = loop.time() - self._txn_started
            if age * 1000.0 > self.config.transaction_timeout_ms:
                # The coordinator aborts a transaction open longer than this (and bumps the epoch); say so
                # here, where the application can still abort cleanly.
                manager.abortable_error(errors.TransactionTimedOutError(
                    f"transaction {manager.transactional_id!r} was open {age * 1000:.0f} ms, longer than "
                    f"transaction_timeout_ms ({self.config.transaction_timeout_ms}): it cannot commit; abort it"))
        manager.prepare_commit()
        deadline = loop.time() + (self._max_block if timeout is None else timeout)
        await self._end_transaction(True, deadline, loop, sender, driver)

    async def abort_transaction(self, timeout: Optional[float] = None) -> None:
        """Abort the transaction: records not yet sent fail with ``TransactionAbortedError``, those in flight
        are waited for, then EndTxn(abort) marks all of it aborted for read_committed consumers."""
        self._check_running_or_closing("abort_transaction")
        loop, _, accumulator, sender, driver = self._parts("abort_transaction")
        manager = self._manager
        manager.prepare_abort()
        deadline = loop.time() + (self._max_block if timeout is None else timeout)
        cause = manager.error
        error = errors.TransactionAbortedError(
            f"record not sent: transaction {manager.transactional_id!r} was aborted"
            + (f" after: {cause}" if cause is not None else ""))
        error.__cause__ = cause
        sender.abort_unsent(error)
        await self._end_transaction(False, deadline, loop, sender, driver)
        if manager.state is TxnState.INITIALIZING:
            # Sequences of the aborted transaction are unknown: bump the epoch (our own id and epoch).
            await self._fatal_guard(driver.init_producer_id(max(deadline - loop.time(), 0.001)))
            accumulator.forget_sequences()

    async def _end_transaction(self, commit: bool, deadline: float, loop: asyncio.AbstractEventLoop,
                               sender: Sender, driver: TransactionDriver) -> None:
        """The tail commit and abort share: wait (until ``deadline``) for the transaction's batches and its
        AddPartitionsToTxn requests, then EndTxn. A timeout leaves the end under way: calling the same method
        again resumes it, as the KafkaTimeoutError says."""
        manager = self._manager
        operation = "commit_transaction" if commit else "abort_transaction"
        try:
            await sender.flush(max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            what = "records of transaction {!r} not delivered in time" if commit else \
                "requests of transaction {!r} still in flight"
            raise errors.KafkaTimeoutError(
                f"{operation}(): {what.format(manager.transactional_id)}; call {operation}() again to go on "
                "waiting") from None
        await sender.transaction_requests_done()
        if commit and manager.state is not TxnState.COMMITTING:
            manager.prepare_commit()  # raises the error that ended the commit (abortable or fatal)
        if manager.needs_end_txn():
            await self._fatal_guard(driver.end_transaction(commit, max(deadline - loop.time(), 0.001)))
        manager.end_succeeded()

    async def _fatal_guard(self, request: Awaitable[None]) -> None:
        """Await a coordinator request; if it left the producer fatal (fenced...), nothing more is sent."""
        try:
            await request
        except BaseException:
            sender, error = self._sender, self._manager.error  # a fatal manager holds its error
            if self._manager.fatal and error is not None and sender is not None and sender.fatal_error is None:
                sender.fail(error)
            raise

    def _check_running_or_closing(self, operation: str) -> None:
        if self._state is State.CLOSING:
            return  # stop() aborts what is left open
        self._check_running(operation)

    async def send_offsets_to_transaction(self, offsets: Mapping[tuple[str, int], int], group_id: str, *,
                                          generation_id: int = -1, member_id: str = "",
                                          group_instance_id: Optional[str] = None,
                                          timeout: Optional[float] = None) -> None:
        """Commit a consumer group's offsets as part of the transaction (consume-transform-produce).

        ``offsets`` maps ``(topic, partition)`` to the next offset to consume (the last processed + 1); they
        become visible to the group only if the transaction commits. ``generation_id``/``member_id``/
        ``group_instance_id`` (KIP-447) let the group coordinator fence a consumer that lost its partitions.
        """
        self._check_running("send_offsets_to_transaction")
        driver = self._parts("send_offsets_to_transaction").driver
        self._manager.check_can_send_offsets(group_id)
        checked: dict[tuple[str, int], int] = {}
        for key, offset in dict(offsets).items():
            if (not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[0], str)
                    or type(key[1]) is not int or key[1] < 0):
                raise ValueError(f"offsets keys must be (topic, partition) tuples, got {key!r}")
            if type(offset) is not int or offset < 0:
                raise ValueError(f"offset for {key[0]}-{key[1]} must be an int >= 0, got {offset!r}")
            checked[key] = offset
        if not checked:
            raise ValueError("send_offsets_to_transaction() needs at least one offset")
        await self._fatal_guard(driver.send_offsets(
            checked, group_id, self._max_block if timeout is None else timeout, generation_id, member_id,
            group_instance_id))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Producer]:
        """``async with producer.transaction():`` commits when the block succeeds and aborts when it raises
        (or when the commit fails with an ``AbortableError``), then re-raises."""
        self.begin_transaction()
        try:
            yield self
        except BaseException:
            if not self._manager.fatal and self._manager.state in (
                    TxnState.IN_TRANSACTION, TxnState.ABORTABLE_ERROR, TxnState.ABORTING):
                await self.abort_transaction()
            raise
        try:
            await self.commit_transaction()
        except errors.AbortableError:
            await self.abort_transaction()
            raise

    # -- information --------------------------------------------------------------------------------------
    async def partitions_for(self, topic: str) -> list[int]:
        if self._state is not State.RUNNING:
            raise errors.ProducerClosedError(f"partitions_for() on a producer that is {self._state.value}")
        cluster = self._parts("partitions_for").cluster
        info = cluster.topics.get(topic) or await cluster.wait_for_topic(topic, self._max_block)
        return list(info.partitions)

    @property
    def connected(self) -> bool:
        """True while the producer is running and holds an open connection to at least one broker.

        For health checks: False before ``start()``, after ``stop()``, after a fatal sender error, and from the
        moment the last broker connection closes. Connections are opened on demand, so it turns True again
        when the producer next needs the cluster: a send, a retry, or the periodic metadata refresh (every
        ``metadata_max_age_ms``; a service that wants its health to recover without traffic lowers it).
        """
        return self._state is State.RUNNING and self._cluster is not None and self._cluster.connected

    def metrics(self) -> dict[str, Any]:
        """A snapshot of the producer's metrics (the Java producer's core set in snake_case; see
        ``aiokprod/metrics.py``): rates, averages and maxima over the last 30 s, totals since start,
        ``errors_by_code`` (error name -> count)."""
        return self._metrics.as_dict()


def _header_list(topic: object, headers: Mapping[Any, Any]) -> list[tuple[str, Any]]:
    """Headers given as a mapping of str to bytes, as the list of (str, bytes | None) pairs the codec takes
    (lists and tuples of pairs go to the codec as they are); a TypeError naming the header otherwise."""
    pairs = list(headers.items())
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError(f"headers for topic {topic!r}: header name must be a str, not "
                            f"{type(name).__name__} ({name!r:.100})")
        if value is not None and not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"headers for topic {topic!r}: header {name!r}: value must be bytes or None, not "
                            f"{type(value).__name__}")
    return pairs


_Ack = Callable[[Any, Optional[BaseException]], Any]  # on_acknowledgement(metadata, error), a hook's ack


def _acknowledge_one(ack: _Ack, metadata: Any, error: Optional[BaseException]) -> None:
    try:
        ack(metadata, error)
    except Exception:
        log.exception("acknowledgement callback %r raised; skipped", ack)


def _acknowledge(index: int, acks: list[_Ack], completion: Any) -> None:
    """A watched record's batch is done: tell each watcher its outcome. Reads the batch's outcome, not the
    handle's (the handle may be cancelled; reading its exception() would count the error as retrieved)."""
    error = completion.exception
    metadata = None if error is not None else completion.metadata(index)
    for ack in acks:
        _acknowledge_one(ack, metadata, error)


# -- send()'s argument checks (the general path only: the fast path declines whatever is not plain) ----------

def _int_argument(name: str, topic: object, value: object) -> int:
    """``value`` as an int: ints and integer types (``operator.index``: numpy integers, IntEnum) are taken,
    bool is refused (``partition=True`` is a mistake, not partition 1), and so is anything else."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise TypeError(f"{name} for topic {topic!r} must be an int or None, got {type(value).__name__} {value!r:.100}")


def _timestamp_argument(topic: object, value: object) -> int:
    timestamp = _int_argument("timestamp_ms", topic, value)
    if timestamp < 0:
        # As the Java client (ProducerRecord): a negative timestamp is refused, never written.
        raise ValueError(f"timestamp_ms for topic {topic!r} must be >= 0 (milliseconds since the epoch) or None, "
                         f"got {timestamp}")
    if timestamp > _INT64_MAX:
        raise ValueError(f"timestamp_ms for topic {topic!r} does not fit Kafka's int64 timestamp: {timestamp}")
    return timestamp


def _headers_error(topic: object, headers: object, error: Exception) -> Exception:
    """The error for headers the codec refused (``error``), naming the first header it refuses."""
    if isinstance(headers, (list, tuple)):
        for index, header in enumerate(headers):
            try:
                record_size_upper_bound(None, None, (header,))
            except (TypeError, ValueError) as bad:
                kind = TypeError if isinstance(bad, TypeError) else ValueError
                return kind(f"headers[{index}] for topic {topic!r} is refused: {header!r:.200}: {bad}")
    return TypeError(f"headers for topic {topic!r} must be a list or tuple of (str, bytes | None) pairs or a "
                     f"mapping of str to bytes, got {type(headers).__name__}: {error}")
