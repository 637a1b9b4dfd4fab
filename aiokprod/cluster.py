"""Cluster metadata and the connection pool.

The cache maps topics to their partitions and leaders and node ids to addresses. Refreshes are coalesced:
whoever asks while one is in flight shares its round trip, which runs in a task of its own so that a caller
giving up (cancelled, or timed out by ``wait_for``) does not cancel it under the others. Background refreshes
(``request_refresh``) are spaced by ``retry_backoff_ms`` after a failure, so callers that ask in a loop while
the cluster is down do not turn into a connect loop. Connections are opened lazily, one per broker, and a
failed connect puts the broker in a short back-off so a dead broker is not hammered.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import errors
from .connection import BrokerConnection

if TYPE_CHECKING:
    from .config import ProducerConfig
from .protocol import MetadataRequest

log = logging.getLogger("aiokprod.cluster")


class TopicInfo:
    __slots__ = ("name", "partitions", "leaders", "num_partitions")

    def __init__(self, name: str, leaders: dict[int, int]) -> None:
        self.name = name
        self.leaders = leaders  # partition -> leader node id (-1: none right now)
        self.partitions = tuple(sorted(leaders))
        self.num_partitions = len(self.partitions)


class Cluster:
    def __init__(self, config: ProducerConfig, *, on_change: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        # Every deadline and back-off here reads this clock (the accumulator takes one too): tests give a
        # fake one to check back-off spacing by what happened, not by how long it took.
        self.clock = clock
        self.brokers: dict[int, tuple[str, int]] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.wanted_topics: set[str] = set()
        self.last_refresh = 0.0
        self.on_change = on_change  # called (no args) after every refresh and every new connection
        self._connections: dict[int, BrokerConnection] = {}
        self._connecting: dict[int, asyncio.Task[None]] = {}
        self._backoff_until: dict[int, float] = {}
        self._bootstrap_connection: Optional[BrokerConnection] = None
        self._last_connect_error: dict[int, BaseException] = {}
        # The metadata round trip in flight, and the generation of wanted_topics it asked for: a caller
        # whose topics were added later (a higher generation) cannot be served by it.
        self._refresh_task: Optional[asyncio.Task[None]] = None
        self._refresh_generation = 0
        self._wanted_generation = 0
        self._refresh_backoff_until = 0.0
        self._refresh_later: Optional[asyncio.TimerHandle] = None
        self.topic_errors: dict[str, int] = {}  # topic -> the error code of its last Metadata answer
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- connections --------------------------------------------------------------------------------------
    def _connection_kwargs(self) -> dict[str, Any]:
        config = self.config
        sasl = config.security_protocol.startswith("SASL")
        return dict(
            client_id=config.client_id,
            request_timeout_ms=config.request_timeout_ms,
            ssl_context=config.ssl_context if config.security_protocol in ("SSL", "SASL_SSL") else None,
            sasl_mechanism=config.sasl_mechanism if sasl else None,
            sasl_username=config.sasl_plain_username,
            sasl_password=config.sasl_plain_password,
        )

    async def _open(self, host: str, port: int, node_id: int) -> BrokerConnection:
        return await BrokerConnection.open(
            host, port, node_id=node_id,
            connect_timeout_ms=min(self.config.socket_connection_setup_timeout_ms, self.config.request_timeout_ms),
            **self._connection_kwargs())

    async def bootstrap(self) -> None:
        """Connect to the first bootstrap address that answers and learn the cluster from it."""
        failures: list[str] = []
        deadline = self.clock() + self.config.request_timeout_ms / 1000.0
        addresses = list(self.config.bootstrap_list)
        random.shuffle(addresses)
        for host, port in addresses:
            if self.clock() >= deadline and failures:
                break
            try:
                connection = await self._open(host, port, -1)
            except errors.AuthenticationError:
                raise
            except errors.KafkaError as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            self._bootstrap_connection = connection
            await self.refresh()
            return
        raise errors.KafkaConnectionError("could not connect to any bootstrap server: " + "; ".join(failures))

    def connection_nowait(self, node_id: int) -> Optional[BrokerConnection]:
        """The open connection to ``node_id``, or None after starting to open one in the background."""
        connection = self._connections.get(node_id)
        if connection is not None and not connection.closed:
            return connection
        if node_id not in self._connecting and not self._closed:
            if self._backoff_until.get(node_id, 0.0) > self.clock():
                return None
            task = asyncio.get_running_loop().create_task(self._connect(node_id))
            self._connecting[node_id] = task
        return None

    async def connection(self, node_id: int) -> BrokerConnection:
        connection = self._connections.get(node_id)
        if connection is not None and not connection.closed:
            return connection
        task = self._connecting.get(node_id)
        if task is None:
            task = self._connecting[node_id] = asyncio.get_running_loop().create_task(self._connect(node_id))
        await asyncio.shield(task)
        connection = self._connections.get(node_id)
        if connection is None or connection.closed:
            reason = self._last_connect_error.get(node_id)
            if isinstance(reason, errors.AuthenticationError):
                raise reason  # not a network problem: the caller must see it as what it is
            raise errors.KafkaConnectionError(
                f"cannot connect to broker node {node_id} {self.brokers.get(node_id)}"
                + (f": {reason}" if reason else ""))
        return connection

    async def _connect(self, node_id: int) -> None:
        try:
            address = self.brokers.get(node_id)
            if address is None:
                raise errors.KafkaConnectionError(f"unknown broker node {node_id}")
            connection = await self._open(address[0], address[1], node_id)
            if self._closed:
                connection.close()
                return
            connection.on_close = self._connection_closed
            connection.on_writable = self.on_change
            self._connections[node_id] = connection
            self._backoff_until.pop(node_id, None)
            self._last_connect_error.pop(node_id, None)
        except (errors.KafkaError, OSError) as exc:
            # Authentication failures too: they are kept for connection() to raise as they are, and they
            # get the back-off, or the sender (woken by on_change below, asking connection_nowait again)
            # would log in with the wrong password in a tight loop. This task never raises, so a
            # connection_nowait task nobody awaits does not end as "exception was never retrieved".
            log.warning("cannot connect to broker node %s: %s", node_id, exc)
            self._last_connect_error[node_id] = exc
            self._backoff_until[node_id] = self.clock() + self.config.retry_backoff_ms / 1000.0
        finally:
            self._connecting.pop(node_id, None)
            if self.on_change is not None:
                self.on_change()

    def _connection_closed(self, connection: BrokerConnection, exc: BaseException) -> None:
        if self._connections.get(connection.node_id) is connection:
            del self._connections[connection.node_id]
        if not self._closed:
            log.info("connection to node %s closed: %s", connection.node_id, exc)
            self.request_refresh()

    @property
    def connected(self) -> bool:
        """Whether any connection to a broker is open right now (the bootstrap one counts).

        Connections close as soon as their broker goes away (``connection_lost``), so this turns False
        within one loop turn of the last one closing; it turns True again when the next metadata refresh or
        produce reconnects.
        """
        if self._closed:
            return False
        if any(not connection.closed for connection in self._connections.values()):
            return True
        return self._bootstrap_connection is not None and not self._bootstrap_connection.closed

    async def any_connection(self) -> BrokerConnection:
        """Some open connection: the least busy existing one, the bootstrap one, or a new one to any known
        broker. Least busy, because answers come in order: a Metadata request behind slow Produce requests
        would wait for all of them."""
        open_connections = [c for c in self._connections.values() if not c.closed]
        if open_connections:
            return min(open_connections, key=lambda c: c.in_flight)
        if self._bootstrap_connection is not None and not self._bootstrap_connection.closed:
            return self._bootstrap_connection
        nodes = list(self.brokers)
        random.shuffle(nodes)
        failures = []
        for node_id in nodes:
            try:
                return await self.connection(node_id)
            except errors.AuthenticationError:
                raise  # another broker will not take these credentials either; not a connection error
            except errors.KafkaError as exc:
                failures.append(str(exc))
        for host, port in self.config.bootstrap_list:
            try:
                self._bootstrap_connection = await self._open(host, port, -1)
                return self._bootstrap_connection
            except errors.AuthenticationError:
                raise
            except errors.KafkaError as exc:
                failures.append(f"{host}:{port}: {exc}")
        raise errors.KafkaConnectionError("no broker reachable: " + "; ".join(failures))

    # -- metadata -----------------------------------------------------------------------------------------
    def request_refresh(self) -> None:
        """Refresh in the background (coalesced with any refresh in flight).

        After a failed refresh, the next background one waits out ``retry_backoff_ms``: the sender asks on
        every wake-up while leaders are unknown, and a failed connect wakes it, so without this spacing a
        dead cluster would be dialled in a tight loop.
        """
        if self._closed or self._refreshing():
            return
        delay = self._refresh_backoff_until - self.clock()
        if delay > 0:
            if self._refresh_later is None:
                self._refresh_later = asyncio.get_running_loop().call_later(delay, self._refresh_after_backoff)
            return
        self._start_refresh()

    def _refresh_after_backoff(self) -> None:
        self._refresh_later = None
        self.request_refresh()

    def _refreshing(self) -> bool:
        return self._refresh_task is not None and not self._refresh_task.done()

    def _start_refresh(self) -> asyncio.Task[None]:
        # Snapshot the wanted topics now, synchronously, so the generation recorded matches what is asked.
        names = sorted(self.wanted_topics)
        self._refresh_generation = self._wanted_generation
        task = self._refresh_task = asyncio.get_running_loop().create_task(self._do_refresh(names))
        self._tasks.add(task)
        task.add_done_callback(self._refresh_done)
        return task

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so a refresh nobody awaited is not "never retrieved"
        if exc is None:
            self._refresh_backoff_until = 0.0
        else:
            self._refresh_backoff_until = self.clock() + self.config.retry_backoff_ms / 1000.0
            log.warning("metadata refresh failed: %s", exc)

    async def refresh(self, topics: Optional[set[str]] = None) -> None:
        """Fetch metadata for every wanted topic (plus ``topics``); concurrent callers share one round trip.

        Raises what the round trip raised (``KafkaConnectionError`` when no broker answers). Cancelling
        the caller does not cancel the round trip that others may share.
        """
        if self._closed:
            raise errors.KafkaConnectionError("cluster is closed")
        if topics:
            added = set(topics) - self.wanted_topics
            if added:
                self.wanted_topics |= added
                self._wanted_generation += 1
        needed = self._wanted_generation
        while True:
            if self._closed:
                raise errors.KafkaConnectionError("cluster is closed")
            task = self._refresh_task
            if task is None or task.done():
                await self._join(self._start_refresh())
                return
            if self._refresh_generation >= needed:
                await self._join(task)  # it asked for everything we want: share it
                return
            # The round trip in flight was started before our topics were added: let it land (its
            # failure is not ours to report), then start the next one, or join whoever started it first.
            try:
                await self._join(task)
            except errors.KafkaError:
                pass

    @staticmethod
    async def _join(task: asyncio.Task[None]) -> None:
        """Await a shared round trip without letting our cancellation reach it."""
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # Only close() cancels the shared task; we were not cancelled ourselves.
                raise errors.KafkaConnectionError("metadata refresh abandoned: the cluster is closing") from None
            raise

    async def _do_refresh(self, names: list[str]) -> None:
        topics = [MetadataRequest.MetadataRequestTopic(name=name) for name in names]
        request = MetadataRequest(topics=topics, allow_auto_topic_creation=self.config.allow_auto_create_topics)
        connection = await self.any_connection()
        try:
            response = await connection.request(request, connection.version_for(MetadataRequest))
        except errors.KafkaConnectionError:
            # A pooled connection can be dead without our knowing yet (a restarted broker's FIN is read
            # only when the loop polls the socket, possibly after we wrote). It is closed and out of the
            # pool now, so one more try goes to a fresh connection instead of failing the refresh.
            connection = await self.any_connection()
            response = await connection.request(request, connection.version_for(MetadataRequest))
        self._apply(response)

    def _apply(self, response: Any) -> None:
        self.brokers = {broker.node_id: (broker.host, broker.port) for broker in response.brokers}
        for topic in response.topics:
            if topic.error_code:
                self.topic_errors[topic.name] = topic.error_code
            else:
                self.topic_errors.pop(topic.name, None)
            if topic.error_code == 0 and topic.partitions:
                self.topics[topic.name] = TopicInfo(
                    topic.name, {p.partition_index: (p.leader_id if p.error_code in (0, 9) else -1)
                                 for p in topic.partitions})
            elif topic.error_code in (3, 17):  # unknown or invalid topic: forget what we had
                self.topics.pop(topic.name, None)
        for node_id, connection in list(self._connections.items()):
            if node_id not in self.brokers:
                connection.close()
        self.last_refresh = self.clock()
        if self.on_change is not None:
            self.on_change()

    async def wait_for_topic(self, topic: str, timeout: float) -> TopicInfo:
        """Metadata for ``topic``, refreshing until it appears.

        After ``timeout`` seconds (the producer's max_block_ms), ``KafkaTimeoutError`` as the Java client's
        "Topic X not present in metadata after N ms" does, chained to the last cause (the broker's
        UNKNOWN_TOPIC_OR_PARTITION, or the connection error). Each refresh is bounded by the time left, so
        a broker that does not answer cannot hold the caller for request_timeout_ms past the deadline.
        An invalid topic name or a denied topic fails at once: waiting would not change the answer.
        """
        start = self.clock()
        deadline = start + timeout
        backoff = self.config.retry_backoff_ms / 1000.0
        last_error: Optional[BaseException] = None
        while True:
            if self._closed:
                raise errors.ProducerClosedError(f"closed while waiting for metadata of topic {topic!r}")
            remaining = deadline - self.clock()
            try:
                await asyncio.wait_for(self.refresh({topic}), max(remaining, 0.001))
            except errors.KafkaError as exc:
                last_error = exc
            except asyncio.TimeoutError:
                last_error = errors.KafkaTimeoutError("the metadata request did not complete in time")
            info = self.topics.get(topic)
            if info is not None:
                return info
            code = self.topic_errors.get(topic)
            if code is not None:
                last_error = errors.for_code(code, topic=topic)
                if code in (17, 29):  # INVALID_TOPIC_EXCEPTION, TOPIC_AUTHORIZATION_FAILED
                    raise last_error
            remaining = deadline - self.clock()
            if remaining <= 0:
                detail = f" (last error: {last_error})" if last_error else ""
                raise errors.KafkaTimeoutError(
                    f"topic {topic!r} not present in metadata after {(self.clock() - start) * 1000:.0f} ms "
                    f"(max_block_ms={timeout * 1000:.0f}){detail}") from last_error
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 1.0)

    def leader(self, topic: str, partition: int) -> int:
        info = self.topics.get(topic)
        if info is None:
            return -1
        leader: int = info.leaders.get(partition, -1)
        return leader

    async def close(self) -> None:
        self._closed = True
        if self._refresh_later is not None:
            self._refresh_later.cancel()
            self._refresh_later = None
        for task in list(self._connecting.values()) + list(self._tasks):
            task.cancel()
        for task in list(self._connecting.values()) + list(self._tasks):
            try:
                await task
            except BaseException:
                pass
        # Graceful: requests already written (acks=0 produces have no answer to wait for) must still
        # leave the socket before it closes.
        connections = list(self._connections.values())
        if self._bootstrap_connection is not None:
            connections.append(self._bootstrap_connection)
        self._connections.clear()
        await asyncio.gather(*(connection.aclose() for connection in connections))
