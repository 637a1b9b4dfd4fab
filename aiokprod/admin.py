"""A tiny admin helper for tests, benchmarks and examples: create topics, read partition offsets.

Not a general admin client: one function per job, each opening its own short-lived connections.

    await create_topics("127.0.0.1:9092", {"orders": 6, "audit": 1})
    ends = await list_offsets("127.0.0.1:9092", "orders")          # {partition: next offset}

Connection options (``client_id``, ``request_timeout_ms``, ``ssl_context``, ``sasl_mechanism``,
``sasl_username``, ``sasl_password``) are passed through to :meth:`BrokerConnection.open`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable, Optional, Sequence, Union

from . import errors
from .config import parse_bootstrap
from .connection import BrokerConnection
from .protocol import CreateTopicsRequest, ListOffsetsRequest, MetadataRequest

__all__ = ["create_topics", "list_offsets", "LATEST", "EARLIEST"]

# ListOffsets timestamps with a special meaning.
LATEST = -1    # the offset the next record will get (the log end)
EARLIEST = -2  # the first offset still in the log

_TOPIC_ALREADY_EXISTS = 36

#: "host:port,host:port" or a sequence of "host:port" strings.
Bootstrap = Union[str, Sequence[str]]


async def _open_any(bootstrap: Bootstrap, options: dict[str, Any]) -> BrokerConnection:
    """A connection to the first bootstrap address that answers."""
    failures: list[str] = []
    for host, port in parse_bootstrap(bootstrap):
        try:
            return await BrokerConnection.open(host, port, **options)
        except errors.AuthenticationError:
            raise  # another address will not accept the credentials either
        except errors.KafkaError as exc:
            failures.append(f"{host}:{port}: {exc}")
    raise errors.KafkaConnectionError("could not connect to any bootstrap server: " + "; ".join(failures))


async def _metadata(connection: BrokerConnection, topics: Optional[Iterable[str]]) -> Any:
    request = MetadataRequest(
        topics=None if topics is None else [MetadataRequest.MetadataRequestTopic(name=t) for t in topics],
        allow_auto_topic_creation=False)
    return await connection.request(request, connection.version_for(MetadataRequest))


async def _connect_node(connection: BrokerConnection, metadata: Any, node_id: int,
                        options: dict[str, Any]) -> BrokerConnection:
    """``connection`` itself if it is ``node_id`` (or we cannot tell), else a new one to that node."""
    brokers = {b.node_id: (b.host, b.port) for b in metadata.brokers}
    address = brokers.get(node_id)
    if address is None or address == (connection.host, connection.port):
        return connection
    return await BrokerConnection.open(address[0], address[1], node_id=node_id, **options)


async def create_topics(bootstrap: Bootstrap, topics: dict[str, int], *, replication_factor: int = 1,
                        exist_ok: bool = True, timeout_ms: int = 10000, wait: bool = True,
                        **options: Any) -> dict[str, int]:
    """Create ``topics`` ({name: num_partitions}; -1 for the broker's default) and return
    {name: partition count as the broker reports it}.

    CreateTopics goes to the controller, found through Metadata. A topic that already exists is fine with
    ``exist_ok`` (its count is then whatever it has). With ``wait``, return only once Metadata shows every
    topic with its partitions: brokers create topics asynchronously, and a producer started right after
    would otherwise see UNKNOWN_TOPIC_OR_PARTITION. Any other per-topic error raises the broker's error.
    """
    if not topics:
        return {}
    connection = await _open_any(bootstrap, options)
    controller = connection
    try:
        metadata = await _metadata(connection, [])
        controller = await _connect_node(connection, metadata, metadata.controller_id, options)
        request = CreateTopicsRequest(
            topics=[CreateTopicsRequest.CreatableTopic(name=name, num_partitions=count,
                                                       replication_factor=replication_factor)
                    for name, count in topics.items()],
            timeout_ms=timeout_ms)
        response = await controller.request(request, controller.version_for(CreateTopicsRequest))
        for result in response.topics:
            if result.error_code == _TOPIC_ALREADY_EXISTS and exist_ok:
                continue
            if result.error_code:
                raise errors.for_code(result.error_code, result.error_message, topic=result.name)
        if not wait:
            return {r.name: r.num_partitions for r in response.topics}
        return await _wait_for_partitions(connection, list(topics), timeout_ms / 1000.0)
    finally:
        if controller is not connection:
            controller.close()
        connection.close()


async def _wait_for_partitions(connection: BrokerConnection, names: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        metadata = await _metadata(connection, names)
        counts = {t.name: len(t.partitions) for t in metadata.topics if t.error_code == 0 and t.partitions}
        if len(counts) == len(names):
            return counts
        if time.monotonic() >= deadline:
            missing = sorted(set(names) - set(counts))
            raise errors.KafkaTimeoutError(f"topics {missing} not in metadata {timeout:.1f}s after CreateTopics")
        await asyncio.sleep(0.05)


async def list_offsets(bootstrap: Bootstrap, topic: str, partitions: Optional[Iterable[int]] = None, *,
                       timestamp: int = LATEST, **options: Any) -> dict[int, int]:
    """{partition: offset} for ``topic`` (every partition unless given): with ``LATEST`` the next offset
    to be written, with ``EARLIEST`` the first one kept, else the first offset at or after ``timestamp`` (ms)
    (-1 when there is none). Each partition is asked of its leader."""
    connection = await _open_any(bootstrap, options)
    opened: dict[int, BrokerConnection] = {}
    try:
        metadata = await _metadata(connection, [topic])
        info = next(t for t in metadata.topics if t.name == topic)
        if info.error_code:
            raise errors.for_code(info.error_code, topic=topic)
        leaders = {p.partition_index: p.leader_id for p in info.partitions}
        wanted = sorted(leaders) if partitions is None else sorted(partitions)
        by_leader: dict[int, list[int]] = {}
        for partition in wanted:
            if partition not in leaders:
                raise errors.UnknownTopicOrPartitionError(topic=topic, partition=partition,
                                                          broker_message="no such partition in metadata")
            by_leader.setdefault(leaders[partition], []).append(partition)

        async def ask(node_id: int, parts: list[int]) -> list[Any]:
            leader = opened.get(node_id)
            if leader is None:
                leader = await _connect_node(connection, metadata, node_id, options)
                if leader is not connection:
                    opened[node_id] = leader
            version = leader.version_for(ListOffsetsRequest, 1)  # v0 returns a list of offsets instead
            request = ListOffsetsRequest(replica_id=-1, topics=[ListOffsetsRequest.ListOffsetsTopic(
                name=topic, partitions=[ListOffsetsRequest.ListOffsetsPartition(
                    partition_index=p, timestamp=timestamp) for p in parts])])
            response = await leader.request(request, version)
            return [p for t in response.topics for p in t.partitions]

        result: dict[int, int] = {}
        for answers in await asyncio.gather(*(ask(n, ps) for n, ps in by_leader.items())):
            for answer in answers:
                if answer.error_code:
                    raise errors.for_code(answer.error_code, topic=topic, partition=answer.partition_index)
                result[answer.partition_index] = answer.offset
        return result
    finally:
        for extra in opened.values():
            extra.close()
        connection.close()
