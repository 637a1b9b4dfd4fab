"""Cluster metadata and the connection pool.

The cache maps topics to their partitions and leaders and node ids to addresses. Refreshes are coalesced:
whoever asks while one is in flight shares its round trip. Connections are opened lazily, one per broker,
and a failed connect puts the broker in a short back-off so a dead broker is not hammered.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Optional

from . import errors
from .connection import BrokerConnection
from .protocol import MetadataRequest

log = logging.getLogger("aiokprod.cluster")


class TopicInfo:
    __slots__ = ("name", "partitions", "leaders", "num_partitions")

    def __init__(self, name: str, leaders: dict) -> None:
        self.name = name
        self.leaders = leaders  # partition -> leader node id (-1: none right now)
        self.partitions = tuple(sorted(leaders))
        self.num_partitions = len(self.partitions)


class Cluster:
    def __init__(self, config, *, on_change=None) -> None:
        self.config = config
        self.brokers: dict[int, tuple[str, int]] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.wanted_topics: set[str] = set()
        self.last_refresh = 0.0
        self.on_change = on_change  # called (no args) after every refresh and every new connection
        self._connections: dict[int, BrokerConnection] = {}
        self._connecting: dict[int, asyncio.Task] = {}
        self._backoff_until: dict[int, float] = {}
        self._bootstrap_connection: Optional[BrokerConnection] = None
        self._refresh_future: Optional[asyncio.Future] = None
        self._closed = False
        self._tasks: set[asyncio.Task] = set()

    # -- connections --------------------------------------------------------------------------------------
    def _connection_kwargs(self) -> dict:
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
        return await BrokerConnection.open(host, port, node_id=node_id, **self._connection_kwargs())

    async def bootstrap(self) -> None:
        """Connect to the first bootstrap address that answers and learn the cluster from it."""
        failures = []
        deadline = time.monotonic() + self.config.request_timeout_ms / 1000.0
        addresses = list(self.config.bootstrap_list)
        random.shuffle(addresses)
        for host, port in addresses:
            if time.monotonic() >= deadline and failures:
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
            if self._backoff_until.get(node_id, 0.0) > time.monotonic():
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
            raise errors.KafkaConnectionError(f"cannot connect to broker node {node_id} {self.brokers.get(node_id)}")
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
            self._connections[node_id] = connection
            self._backoff_until.pop(node_id, None)
        except errors.AuthenticationError:
            raise
        except (errors.KafkaError, OSError) as exc:
            log.warning("cannot connect to broker node %s: %s", node_id, exc)
            self._backoff_until[node_id] = time.monotonic() + self.config.retry_backoff_ms / 1000.0
        finally:
            self._connecting.pop(node_id, None)
            if self.on_change is not None:
                self.on_change()

    def _connection_closed(self, connection: BrokerConnection, exc) -> None:
        if self._connections.get(connection.node_id) is connection:
            del self._connections[connection.node_id]
        if not self._closed:
            log.info("connection to node %s closed: %s", connection.node_id, exc)
            self.request_refresh()

    async def any_connection(self) -> BrokerConnection:
        """Some open connection: an existing one, the bootstrap one, or a new one to any known broker."""
        for connection in self._connections.values():
            if not connection.closed:
                return connection
        if self._bootstrap_connection is not None and not self._bootstrap_connection.closed:
            return self._bootstrap_connection
        nodes = list(self.brokers)
        random.shuffle(nodes)
        failures = []
        for node_id in nodes:
            try:
                return await self.connection(node_id)
            except errors.KafkaError as exc:
                failures.append(str(exc))
        for host, port in self.config.bootstrap_list:
            try:
                self._bootstrap_connection = await self._open(host, port, -1)
                return self._bootstrap_connection
            except errors.KafkaError as exc:
                failures.append(f"{host}:{port}: {exc}")
        raise errors.KafkaConnectionError("no broker reachable: " + "; ".join(failures))

    # -- metadata -----------------------------------------------------------------------------------------
    def request_refresh(self) -> None:
        """Refresh in the background (coalesced with any refresh in flight)."""
        if self._closed or (self._refresh_future is not None and not self._refresh_future.done()):
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except (errors.KafkaError, OSError) as exc:
            log.warning("metadata refresh failed: %s", exc)

    async def refresh(self, topics: Optional[set] = None) -> None:
        """Fetch metadata for every wanted topic (plus ``topics``); concurrent callers share one request."""
        if topics:
            new = set(topics) - self.wanted_topics
            self.wanted_topics |= set(topics)
        else:
            new = set()
        future = self._refresh_future
        if future is not None and not future.done():
            await asyncio.shield(future)
            if not new:
                return
            # The shared round trip did not ask for our topics: one more.
        future = self._refresh_future = asyncio.get_running_loop().create_future()
        try:
            await self._do_refresh()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; callers see the exception we raise
            raise
        else:
            future.set_result(None)

    async def _do_refresh(self) -> None:
        connection = await self.any_connection()
        version = connection.version_for(MetadataRequest)
        topics = [MetadataRequest.MetadataRequestTopic(name=name) for name in sorted(self.wanted_topics)]
        request = MetadataRequest(topics=topics, allow_auto_topic_creation=self.config.allow_auto_create_topics)
        response = await connection.request(request, version)
        self._apply(response)

    def _apply(self, response) -> None:
        self.brokers = {broker.node_id: (broker.host, broker.port) for broker in response.brokers}
        for topic in response.topics:
            if topic.error_code == 0 and topic.partitions:
                self.topics[topic.name] = TopicInfo(
                    topic.name, {p.partition_index: (p.leader_id if p.error_code in (0, 9) else -1)
                                 for p in topic.partitions})
            elif topic.error_code in (3, 17):  # unknown or invalid topic: forget what we had
                self.topics.pop(topic.name, None)
        for node_id, connection in list(self._connections.items()):
            if node_id not in self.brokers:
                connection.close()
        self.last_refresh = time.monotonic()
        if self.on_change is not None:
            self.on_change()

    async def wait_for_topic(self, topic: str, timeout: float) -> TopicInfo:
        """Metadata for ``topic``, refreshing until it appears; UnknownTopicError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        backoff = self.config.retry_backoff_ms / 1000.0
        last_error = None
        while True:
            try:
                await self.refresh({topic})
            except errors.KafkaError as exc:
                last_error = exc
            info = self.topics.get(topic)
            if info is not None:
                return info
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f" (last error: {last_error})" if last_error else ""
                raise errors.UnknownTopicOrPartitionError(topic=topic, broker_message=
                    f"topic {topic!r} not found in metadata after {timeout:.1f}s (max_block_ms){detail}")
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 1.0)

    def leader(self, topic: str, partition: int) -> int:
        info = self.topics.get(topic)
        if info is None:
            return -1
        return info.leaders.get(partition, -1)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._connecting.values()) + list(self._tasks):
            task.cancel()
        for task in list(self._connecting.values()) + list(self._tasks):
            try:
                await task
            except BaseException:
                pass
        for connection in list(self._connections.values()):
            connection.close()
        self._connections.clear()
        if self._bootstrap_connection is not None:
            self._bootstrap_connection.close()
