"""A framing-aware, fault-injecting proxy that makes the single embedded broker look like a cluster.

Tansu is one node (111) that leads everything, so multi-broker routing, leader moves and lost acks cannot
be produced by the broker itself. This proxy listens on N loopback ports, one per *virtual broker*
(node ids 1..N), and forwards every frame to the one real broker over a connection of its own per client
connection. Because it reads whole frames and remembers ``correlation_id -> (api_key, api_version)`` for
every request in flight, it can decode the answers it cares about:

* Metadata answers are rewritten: the broker list becomes the N virtual brokers, the controller is node 1,
  and partition p of a topic is led by ``leader_fn(topic, p)`` (default ``p % N + 1``). Every call of
  :meth:`KafkaProxy.set_leader_fn` bumps the leader epochs, so clients that discard stale metadata
  (KIP-320) accept the new leaders.
* FindCoordinator answers point at a virtual broker (``coordinator_node``, default 1) instead of the real
  broker's advertised address, which would take the client around the proxy.
* A Produce that reaches a port which is not the partition's current leader is answered, for that
  partition, with NOT_LEADER_OR_FOLLOWER (6) without reaching the broker. The other partitions of the
  same request are forwarded, and the broker's answer and ours are merged into one response.

Faults (each applies to the next ``count`` matching requests; ``count=None`` means until cleared):

* :meth:`delay_responses`: hold matching responses for some seconds (later responses on the same
  connection wait behind them, as they would behind a slow broker: Kafka answers in order).
* :meth:`lose_responses`: the request reaches the broker (the write happens) but the answer is lost;
  with ``cut=True`` (default) the connection is closed at that point, the realistic "lost ack".
* :meth:`cut_before`: close the client's connection when a matching request arrives, without
  forwarding it (the write certainly did not happen).
* :meth:`fail_produce`: answer the next Produce of a partition with an error code of your choice.
* :meth:`inject_error`: answer the next request of *any* API with an error code. ``after_write=False``
  (default): the broker never sees the request, the proxy answers it (for a Produce, per partition; for
  AddPartitionsToTxn and TxnOffsetCommit, every partition of the request). ``after_write=True``: the
  request reaches the broker (the write, the commit, the registration happens) and every error code of
  its answer is replaced (for a Produce, only the matching partitions'): the client is told it failed.
  :attr:`injected` counts them per API name.
* :meth:`cut_connections`: close every connection now.
* :meth:`omit_from_produce_response`: forward a Produce (the write happens) but leave one partition out
  of the answer, as a buggy or partially failed broker might.

* :meth:`hold_responses`: like a delay, but until :meth:`release_held` (no wall-clock race in the test:
  while :meth:`held` counts a response, the client cannot have its answer).
* :meth:`cap_version`: advertise at most a given version of an API in ApiVersions answers (an older
  broker), so the client's own version negotiation is what is tested.

Metadata views (until changed again): :meth:`limit_partitions` shows only a topic's first partitions (so a
later call with ``None`` makes its partition count grow, which Tansu cannot do itself), and
:meth:`delete_topic` makes a topic look deleted: Metadata answers UNKNOWN_TOPIC_OR_PARTITION for it and
Produce to it is answered with the same error without reaching the broker. :meth:`restore_topic` undoes it.

Counters (:attr:`requests`, :attr:`produce_partitions`) record what arrived on which virtual broker so
tests can assert routing; :attr:`forwarded_records` counts the records of the Produce batches the proxy
passed on to the broker (proof that bytes left the client, acks=0 included); :attr:`produce_log` keeps,
per Produce request, its virtual broker and the (topic, partition, record-set bytes) it carried;
:attr:`max_outstanding` is the most answers one connection was owed at once; :meth:`wait_for` polls them.
:meth:`record_requests` keeps the decoded requests of the APIs it names (``recorded["InitProducerId"]``),
for tests that check what a request said.

The proxy runs on its own event loop in a background thread (see ``proxy_thread``), so sync and async tests
can use it and a test blocking its own loop does not stall it. Public methods are thread-safe.

Usage::

    with KafkaProxy(broker.host, broker.port, num_brokers=3) as proxy:
        producer = Producer(bootstrap_servers=proxy.bootstrap)
        proxy.set_leader_fn(lambda topic, p: 2)          # move every partition to node 2
        proxy.lose_responses(api="Produce", count=1)     # next Produce: written, ack lost, connection cut
        assert proxy.count("Produce", node_id=2) >= 1
"""
from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from aiokprod.protocol import (
    API_NAMES,
    MESSAGES,
    ApiVersionsResponse,
    decode_response_header,
    FindCoordinatorResponse,
    MetadataResponse,
    ProduceRequest,
    ProduceResponse,
)
from kafka_frames import FrameError, RequestInfo, frame, read_frame, response_payload
from proxy_thread import ThreadedProxy, close_writer

PRODUCE = 0
METADATA = 3
API_VERSIONS = 18
FIND_COORDINATOR = 10
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6

_API_KEYS = {name: key for key, name in API_NAMES.items()}
_I32 = struct.Struct(">i")
_BATCH_LENGTH = struct.Struct(">i")   # at offset 8 of a record batch; the batch is 12 + length bytes
_BATCH_RECORDS = struct.Struct(">i")  # the record count, at offset 57 of a v2 record batch

LeaderFn = Callable[[str, int], int]


def _api_key(api: int | str | None) -> int | None:
    if api is None or isinstance(api, int):
        return api
    try:
        return _API_KEYS[api]
    except KeyError:
        raise ValueError(f"unknown API {api!r}") from None


@dataclass
class _Fault:
    """One fault rule. ``None`` in a filter field matches anything."""

    kind: str                     # "delay" | "lose" | "cut_before" | "error" | "omit"
                                  # | "api_error" | "error_after_write" (inject_error)
    api_key: int | None = None
    node_id: int | None = None
    topic: str | None = None
    partition: int | None = None
    remaining: int | None = 1     # None: until cleared
    delay: float = 0.0
    cut: bool = True
    error_code: int = 0
    error_message: str | None = None
    hits: int = 0

    def matches(self, api_key: int, node_id: int, partitions: list[tuple[str, int]] | None) -> bool:
        if self.api_key is not None and self.api_key != api_key:
            return False
        if self.node_id is not None and self.node_id != node_id:
            return False
        if self.topic is not None or self.partition is not None:
            if not partitions:
                return False
            return any(
                (self.topic is None or self.topic == t) and (self.partition is None or self.partition == p)
                for t, p in partitions
            )
        return True


# Markers the response writer understands, in place of response bytes.
_DROP = object()
_CUT = object()


class _AnswerQueue(asyncio.Queue):
    """A connection's answers in request order, and how many the client is still owed."""

    def __init__(self) -> None:
        super().__init__()
        self.owed = 0


@dataclass
class _InFlight:
    info: RequestInfo
    future: asyncio.Future
    local_errors: list[tuple[str, int, int, str | None]] = field(default_factory=list)
    lose: _Fault | None = None
    omitted: list[tuple[str, int]] = field(default_factory=list)  # partitions to leave out of the answer
    # inject_error(after_write=True): the error codes to put in the broker's answer. For a Produce,
    # (topic, partition, code, message) per partition; for any other API, one fault for the whole answer.
    written_errors: list[tuple[str, int, int, str | None]] = field(default_factory=list)
    api_error: _Fault | None = None


class KafkaProxy(ThreadedProxy):
    """N virtual brokers in front of one real one. See the module docstring for what it can do."""

    def __init__(
        self,
        broker_host: str,
        broker_port: int,
        num_brokers: int = 3,
        *,
        host: str = "127.0.0.1",
        enforce_leadership: bool = True,
        coordinator_node: int = 1,
    ) -> None:
        super().__init__(host)
        if num_brokers < 1:
            raise ValueError("num_brokers must be at least 1")
        self.upstream = (broker_host, broker_port)
        self.num_brokers = num_brokers
        self.node_ids = list(range(1, num_brokers + 1))
        self.ports: list[int] = []
        self.enforce_leadership = enforce_leadership
        self.coordinator_node = coordinator_node
        self._leader_fn: LeaderFn = self.default_leader
        self._leader_generation = 0
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        # (node_id, api name) -> requests received on that virtual broker
        self.requests: Counter[tuple[int, str]] = Counter()
        # (node_id, topic, partition) -> partitions of Produce requests received on that virtual broker
        self.produce_partitions: Counter[tuple[int, str, int]] = Counter()
        # what the proxy did: "not_leader", "injected_error", "lost_response", "cut_before", "delayed"
        self.events: Counter[str] = Counter()
        # API name -> error codes injected into its answers by inject_error (before or after the write)
        self.injected: Counter[str] = Counter()
        # API name -> decoded requests, for the APIs named in record_requests()
        self.recorded: dict[str, list] = {}
        # (topic, partition) -> records in the Produce batches forwarded to the broker
        self.forwarded_records: Counter[tuple[str, int]] = Counter()
        self.connections_accepted = 0
        # The most answers one client connection was owed at once (requests in flight on it, as the
        # client sees them): proves a pipeline was full when a fault hit it.
        self.max_outstanding = 0
        # One entry per Produce request: (node_id, [(topic, partition, record-set bytes), ...])
        self.produce_log: list[tuple[int, list[tuple[str, int, int]]]] = []
        # Metadata views (see the module docstring): topic -> partitions shown; topics that look deleted.
        self._partition_limits: dict[str, int] = {}
        self._deleted_topics: set[str] = set()
        self._version_caps: dict[int, int] = {}  # api key -> the highest version ApiVersions advertises
        self._held: Counter[int] = Counter()  # api key -> responses held right now
        self._release: dict[int, asyncio.Event] = {}  # api key -> what its held responses wait for (proxy loop)

    # ---------------------------------------------------------------- addresses

    @property
    def bootstrap(self) -> str:
        """All virtual brokers, comma separated (any one of them would do)."""
        return ",".join(f"{self.host}:{port}" for port in self.ports)

    def port_of(self, node_id: int) -> int:
        return self.ports[node_id - 1]

    def node_of(self, port: int) -> int:
        return self.ports.index(port) + 1

    # ---------------------------------------------------------------- leadership

    def default_leader(self, topic: str, partition: int) -> int:
        return partition % self.num_brokers + 1

    def set_leader_fn(self, fn: LeaderFn | None) -> None:
        """``fn(topic, partition) -> node id`` (1..N); None restores ``p % N + 1``. Bumps leader epochs."""
        with self._lock:
            self._leader_fn = fn or self.default_leader
            self._leader_generation += 1

    def leader_for(self, topic: str, partition: int) -> int:
        node = self._leader_fn(topic, partition)
        if node not in self.node_ids:
            raise ValueError(f"leader function returned node {node}, not one of {self.node_ids}")
        return node

    def _leader_epoch(self, broker_epoch: int) -> int:
        # The broker's epoch never changes (it leads everything forever); ours rises with every move.
        return max(broker_epoch, 0) + self._leader_generation

    # ---------------------------------------------------------------- faults

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("count must be at least 1 (or None for 'until cleared')")
        with self._lock:
            self._faults.append(fault)

    def delay_responses(self, seconds: float, *, api: int | str | None = None, node_id: int | None = None,
                        count: int | None = 1) -> None:
        """Hold the responses to the next ``count`` matching requests for ``seconds``."""
        self._add_fault(_Fault("delay", _api_key(api), node_id, remaining=count, delay=seconds))

    def lose_responses(self, *, api: int | str | None = "Produce", node_id: int | None = None,
                       topic: str | None = None, partition: int | None = None, count: int | None = 1,
                       cut: bool = True) -> None:
        """Forward the next ``count`` matching requests to the broker but never deliver the answers.

        ``cut=True`` closes the client connection once the broker has answered (the client sees a network
        error and cannot know whether the write happened); ``cut=False`` keeps the connection open and
        silently discards the answer (the client must time the request out).
        """
        self._add_fault(_Fault("lose", _api_key(api), node_id, topic, partition, remaining=count, cut=cut))

    def cut_before(self, *, api: int | str | None = "Produce", node_id: int | None = None,
                   topic: str | None = None, partition: int | None = None, count: int | None = 1) -> None:
        """Close the client connection when the next ``count`` matching requests arrive (not forwarded)."""
        self._add_fault(_Fault("cut_before", _api_key(api), node_id, topic, partition, remaining=count))

    def hold_responses(self, *, api: int | str | None = None, node_id: int | None = None,
                       count: int | None = 1) -> None:
        """Hold the responses to the next ``count`` matching requests until :meth:`release_held`."""
        self._add_fault(_Fault("delay", _api_key(api), node_id, remaining=count, delay=None))

    def held(self, api: int | str | None = None) -> int:
        """Responses (of ``api``, or of any) held right now by :meth:`hold_responses`: the client has not
        received them, nor any later response on the same connection (answers come in order)."""
        key = _api_key(api)
        with self._lock:
            return sum(n for k, n in self._held.items() if key in (None, k))

    def release_held(self, api: int | str | None = None) -> None:
        """Let the responses (of ``api``, or all) held so far go on; later ones wait for the next release."""
        self.call_soon(self._release_now, _api_key(api))

    def _release_now(self, api_key: int | None) -> None:
        for key in [k for k in self._release if api_key in (None, k)]:
            self._release.pop(key).set()

    def cap_version(self, api: int | str, max_version: int) -> None:
        """Advertise at most ``max_version`` of ``api`` in ApiVersions answers from now on (new
        connections negotiate against it), as a broker of an older release would."""
        with self._lock:
            self._version_caps[_api_key(api)] = max_version

    def fail_produce(self, topic: str, partition: int, error_code: int, *, count: int | None = 1,
                     node_id: int | None = None, message: str | None = None) -> None:
        """Answer the next ``count`` Produce writes to ``topic``/``partition`` with ``error_code``."""
        self._add_fault(_Fault("error", PRODUCE, node_id, topic, partition, remaining=count,
                               error_code=error_code, error_message=message))

    def omit_from_produce_response(self, topic: str, partition: int, *, count: int | None = 1,
                                   node_id: int | None = None) -> None:
        """Forward the next ``count`` Produce writes to ``topic``/``partition`` (the broker writes them) but
        leave that partition out of the response (the rest of the response is delivered)."""
        self._add_fault(_Fault("omit", PRODUCE, node_id, topic, partition, remaining=count))

    def limit_partitions(self, topic: str, count: int | None) -> None:
        """Metadata shows only partitions ``0..count-1`` of ``topic``; None shows them all again."""
        with self._lock:
            if count is None:
                self._partition_limits.pop(topic, None)
            else:
                self._partition_limits[topic] = count

    def delete_topic(self, topic: str) -> None:
        """Make ``topic`` look deleted: Metadata says UNKNOWN_TOPIC_OR_PARTITION, Produce to it fails so."""
        with self._lock:
            self._deleted_topics.add(topic)

    def restore_topic(self, topic: str) -> None:
        with self._lock:
            self._deleted_topics.discard(topic)

    def inject_error(self, api: int | str, error_code: int, *, after_write: bool = False,
                     count: int | None = 1, node_id: int | None = None, topic: str | None = None,
                     partition: int | None = None, message: str | None = None) -> None:
        """Answer the next ``count`` matching requests of ``api`` with ``error_code``.

        ``after_write=False``: not forwarded; the proxy answers. ``after_write=True``: forwarded, and the
        broker's answer has its error codes replaced, so what the request did stays done. ``topic`` and
        ``partition`` filter Produce partitions (only those are failed; the rest of the request goes on).
        """
        key = _api_key(api)
        if key == PRODUCE and not after_write:
            self.fail_produce(topic, partition, error_code, count=count, node_id=node_id, message=message)
            return
        if key != PRODUCE and (topic is not None or partition is not None):
            raise ValueError("topic/partition filters apply to Produce only")
        if key not in MESSAGES:
            raise ValueError(f"unknown API {api!r}")
        kind = "error_after_write" if after_write else "api_error"
        self._add_fault(_Fault(kind, key, node_id, topic, partition, remaining=count,
                               error_code=error_code, error_message=message))

    def record_requests(self, *apis: int | str) -> None:
        """Keep every request of these APIs, decoded, in ``recorded[api name]`` (in arrival order)."""
        with self._lock:
            for api in apis:
                self.recorded.setdefault(API_NAMES[_api_key(api)], [])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def _take_fault(self, kind: str, api_key: int, node_id: int,
                    partitions: list[tuple[str, int]] | None = None) -> _Fault | None:
        """The first matching rule of ``kind``, consuming one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(api_key, node_id, partitions):
                    fault.hits += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # ---------------------------------------------------------------- counters

    def count(self, api: int | str, node_id: int | None = None) -> int:
        """Requests of ``api`` received so far, on one virtual broker or on all."""
        name = API_NAMES.get(_api_key(api), str(api))
        with self._lock:
            return sum(n for (node, a), n in self.requests.items() if a == name and node_id in (None, node))

    def produce_count(self, topic: str, partition: int | None = None, node_id: int | None = None) -> int:
        with self._lock:
            return sum(
                n for (node, t, p), n in self.produce_partitions.items()
                if t == topic and partition in (None, p) and node_id in (None, node)
            )

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.produce_partitions.clear()
            self.events.clear()
            self.produce_log.clear()
            self.max_outstanding = 0
            self.forwarded_records.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` (e.g. ``lambda: proxy.count("Produce") >= 2``) until true or timeout (sync)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    async def wait_for_async(self, predicate: Callable[[], bool], timeout: float = 10.0,
                             interval: float = 0.01) -> bool:
        """Like :meth:`wait_for`, without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(interval)
        return predicate()

    # ---------------------------------------------------------------- the proxy itself (proxy loop only)

    async def _serve(self) -> None:
        for _ in self.node_ids:
            self.ports.append(await self._listen(0))

    async def _handle(self, reader, writer, port) -> None:
        node_id = self.node_of(port)
        self.connections_accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.track_writer(up_writer)
        # Responses must reach the client in request order. Each request that expects an answer puts
        # (future, delay) here as it arrives; the writer task awaits them in that order, whether the answer
        # comes from the broker or from the proxy itself.
        order = _AnswerQueue()
        inflight: dict[int, _InFlight] = {}
        acks0_ids: set[int] = set()  # correlation ids of acks=0 Produce requests forwarded
        tasks = [
            asyncio.ensure_future(self._client_to_broker(node_id, reader, writer, up_writer, order, inflight, acks0_ids)),
            asyncio.ensure_future(self._broker_to_proxy(node_id, up_reader, inflight, acks0_ids)),
            asyncio.ensure_future(self._proxy_to_client(writer, order)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, (ConnectionError, OSError,
                                                            asyncio.IncompleteReadError, FrameError)):
                    self.errors.append(exc)
        finally:
            close_writer(writer)
            close_writer(up_writer)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for entry in inflight.values():
                if not entry.future.done():
                    entry.future.cancel()

    async def _client_to_broker(self, node_id, reader, writer, up_writer, order, inflight, acks0_ids) -> None:
        loop = asyncio.get_running_loop()
        while True:
            payload = await read_frame(reader)
            if payload is None:
                return
            info = RequestInfo(payload)
            api_name = API_NAMES.get(info.api_key, str(info.api_key))
            with self._lock:
                self.requests[(node_id, api_name)] += 1
                recorded = self.recorded.get(api_name)
            if recorded is not None:
                recorded.append(MESSAGES[info.api_key][0].decode(info.body(payload), info.api_version))

            expects_response = True
            local_errors: list[tuple[str, int, int, str | None]] = []
            partitions = None
            forward: bytes | None = payload
            if info.api_key == PRODUCE:
                forward, local_errors, partitions, expects_response = self._route_produce(node_id, info, payload)

            if self._take_fault("cut_before", info.api_key, node_id, partitions):
                self.events["cut_before"] += 1
                return  # _handle closes both sides
            omitted: list[tuple[str, int]] = []
            if info.api_key == PRODUCE and forward is not None and expects_response:
                omitted = self._take_omissions(node_id, partitions)
            # Response faults are consumed only by requests that get a response (not acks=0 Produce).
            delay_rule = self._take_fault("delay", info.api_key, node_id, partitions) if expects_response else None
            delay = delay_rule.delay if delay_rule else 0.0

            future = loop.create_future()
            written_errors: list = []
            api_error = None
            if info.api_key == PRODUCE:
                written_errors = self._produce_errors_after_write(node_id, partitions or [])
            elif expects_response:
                local = self._take_fault("api_error", info.api_key, node_id)
                if local is not None:  # inject_error(after_write=False): the broker never sees it
                    self._count_injected(info)
                    future.set_result(self._error_response(info, payload, local))
                    order.put_nowait((future, delay, info.api_key))
                    order.owed += 1
                    self.max_outstanding = max(self.max_outstanding, order.owed)
                    continue
                api_error = self._take_fault("error_after_write", info.api_key, node_id)
            if forward is not None:
                if info.api_key == PRODUCE and not expects_response:
                    # Tansu answers some acks=0 Produce requests anyway; the client expects nothing.
                    acks0_ids.add(info.correlation_id)
                if expects_response:
                    entry = _InFlight(info, future, local_errors, omitted=omitted)
                    entry.written_errors = written_errors
                    entry.api_error = api_error
                    entry.lose = self._take_fault("lose", info.api_key, node_id, partitions)
                    inflight[info.correlation_id] = entry
                up_writer.write(frame(forward))
                await up_writer.drain()
            elif expects_response:
                # Every partition was answered by the proxy: the broker never sees this request.
                future.set_result(self._local_produce_response(info, local_errors))
            if expects_response:
                order.put_nowait((future, delay, info.api_key))
                order.owed += 1
                self.max_outstanding = max(self.max_outstanding, order.owed)

    def _route_produce(self, node_id, info, payload):
        """Split a Produce between the broker and the proxy's own answers (injected errors, not leader)."""
        request = ProduceRequest.decode(info.body(payload), info.api_version)
        partitions: list[tuple[str, int]] = []
        local: list[tuple[str, int, int, str | None]] = []
        kept_topics = []
        logged = []
        for topic_data in request.topic_data:
            kept = []
            for part in topic_data.partition_data:
                tp = (topic_data.name, part.index)
                partitions.append(tp)
                logged.append((*tp, len(part.records or b"")))
                with self._lock:
                    self.produce_partitions[(node_id, *tp)] += 1
                    deleted = tp[0] in self._deleted_topics
                injected = self._take_fault("error", PRODUCE, node_id, [tp])
                if injected is not None:
                    self.events["injected_error"] += 1
                    local.append((*tp, injected.error_code, injected.error_message))
                elif deleted:
                    self.events["deleted_topic"] += 1
                    local.append((*tp, UNKNOWN_TOPIC_OR_PARTITION, "proxy: the topic was deleted"))
                elif self.enforce_leadership and self.leader_for(*tp) != node_id:
                    self.events["not_leader"] += 1
                    local.append((*tp, NOT_LEADER_OR_FOLLOWER, "proxy: not the leader of this partition"))
                else:
                    kept.append(part)
                    with self._lock:
                        self.forwarded_records[tp] += _record_count(part.records)
            if kept:
                topic_data.partition_data = kept
                kept_topics.append(topic_data)
        with self._lock:
            self.produce_log.append((node_id, logged))
        # acks=0: the broker sends no answer, so neither may we (even for partitions we refused).
        expects_response = request.acks != 0
        if not local:
            return payload, local, partitions, expects_response  # untouched bytes: nothing to rewrite
        if not kept_topics:
            return None, local, partitions, expects_response
        request.topic_data = kept_topics
        rewritten = payload[:info.body_offset] + request.encode(info.api_version)
        return rewritten, local, partitions, expects_response

    def _take_omissions(self, node_id, partitions) -> list[tuple[str, int]]:
        """The partitions of this Produce whose results the response must leave out (omit rules)."""
        return [tp for tp in partitions or () if self._take_fault("omit", PRODUCE, node_id, [tp]) is not None]

    async def _broker_to_proxy(self, node_id, up_reader, inflight, acks0_ids) -> None:
        while True:
            payload = await read_frame(up_reader)
            if payload is None:
                return
            (correlation_id,) = _I32.unpack_from(payload, 0)
            entry = inflight.pop(correlation_id, None)
            if entry is None and correlation_id in acks0_ids:
                # The broker answered an acks=0 Produce. The client sent it expecting no answer, and one
                # would desynchronise its stream, so it is dropped here and counted (a broker quirk).
                acks0_ids.discard(correlation_id)
                self.events["acks0_answer_dropped"] += 1
                continue
            if entry is None:
                # Not a frame error to shrug off: the proxy's picture of the stream is wrong.
                raise RuntimeError(f"broker answered unknown correlation id {correlation_id}")
            if entry.lose is not None:
                self.events["lost_response"] += 1
                entry.future.set_result(_CUT if entry.lose.cut else _DROP)
                continue
            entry.future.set_result(self._rewrite_response(entry, payload))

    async def _proxy_to_client(self, writer, order) -> None:
        while True:
            future, delay, api_key = await order.get()
            data = await future
            if delay is None:
                self.events["held"] += 1
                release = self._release.setdefault(api_key, asyncio.Event())
                with self._lock:
                    self._held[api_key] += 1
                try:
                    await release.wait()
                finally:
                    with self._lock:
                        self._held[api_key] -= 1
            elif delay:
                self.events["delayed"] += 1
                await asyncio.sleep(delay)
            if data is _DROP:
                order.owed -= 1
                continue
            if data is _CUT:
                return  # _handle closes both sides
            writer.write(frame(data))
            order.owed -= 1
            await writer.drain()

    # ---------------------------------------------------------------- response rewriting

    def _rewrite_response(self, entry: _InFlight, payload: bytes) -> bytes:
        info = entry.info
        if entry.api_error is not None:
            return self._rewrite_error_codes(entry, payload)
        if info.api_key == API_VERSIONS:
            return self._rewrite_api_versions(info, payload)
        if info.api_key not in (METADATA, FIND_COORDINATOR, PRODUCE):
            return payload
        if info.api_key == PRODUCE and not entry.local_errors and not entry.omitted and not entry.written_errors:
            return payload
        _, body_offset = decode_response_header(payload, info.response_header_version)
        body = memoryview(payload)[body_offset:]
        if info.api_key == METADATA:
            message = self._rewrite_metadata(MetadataResponse.decode(body, info.api_version), info.api_version)
        elif info.api_key == FIND_COORDINATOR:
            message = self._rewrite_coordinator(FindCoordinatorResponse.decode(body, info.api_version))
        else:
            message = ProduceResponse.decode(body, info.api_version)
            self._set_written_produce_errors(message, entry.written_errors)
            self._omit_partitions(message, entry.omitted)
            self._add_local_produce_errors(message, info, entry.local_errors)
        return bytes(payload[:body_offset]) + message.encode(info.api_version)

    # ---------------------------------------------------------------- injected error codes (any API)

    def _count_injected(self, info) -> None:
        self.events["injected_error"] += 1
        with self._lock:
            self.injected[API_NAMES.get(info.api_key, str(info.api_key))] += 1

    def _produce_errors_after_write(self, node_id, partitions) -> list:
        result = []
        for tp in partitions:
            fault = self._take_fault("error_after_write", PRODUCE, node_id, [tp])
            if fault is not None:
                result.append((*tp, fault.error_code, fault.error_message))
        return result

    def _set_written_produce_errors(self, response, written_errors) -> None:
        if not written_errors:
            return
        wanted = {(t, p): (code, message) for t, p, code, message in written_errors}
        for topic in response.responses:
            for part in topic.partition_responses:
                hit = wanted.get((topic.name, part.index))
                if hit is not None:
                    part.error_code, part.error_message = hit
                    part.base_offset = -1
                    self.events["injected_error"] += 1
                    with self._lock:
                        self.injected["Produce"] += 1

    def _rewrite_error_codes(self, entry: _InFlight, payload: bytes) -> bytes:
        """The broker did what was asked; its answer now says ``code`` wherever it has an error code."""
        info, fault = entry.info, entry.api_error
        _, body_offset = decode_response_header(payload, info.response_header_version)
        response_class = MESSAGES[info.api_key][1]
        message = response_class.decode(memoryview(payload)[body_offset:], info.api_version)
        _set_error_codes(message, fault.error_code, fault.error_message)
        self._count_injected(info)
        return bytes(payload[:body_offset]) + message.encode(info.api_version)

    def _error_response(self, info, payload: bytes, fault: _Fault) -> bytes:
        """The proxy's own answer to a request the broker never saw: ``fault.error_code`` wherever the
        response has an error code, with the request's partitions mirrored where the answer lists them."""
        request_class, response_class = MESSAGES[info.api_key]
        request = request_class.decode(info.body(payload), info.api_version)
        code = fault.error_code
        response = response_class()
        name = response_class.__name__
        if name == "AddPartitionsToTxnResponse" and info.api_version <= 3:
            result = response_class.AddPartitionsToTxnTopicResult
            part = response_class.AddPartitionsToTxnPartitionResult
            response.results_by_topic_v3_and_below = [
                result(name=topic.name, results_by_partition=[
                    part(partition_index=p, partition_error_code=code) for p in topic.partitions])
                for topic in request.v3_and_below_topics]
        elif name == "TxnOffsetCommitResponse":
            topic_class = response_class.TxnOffsetCommitResponseTopic
            part = response_class.TxnOffsetCommitResponsePartition
            response.topics = [
                topic_class(name=topic.name, partitions=[
                    part(partition_index=p.partition_index, error_code=code) for p in topic.partitions])
                for topic in request.topics]
        elif name == "FindCoordinatorResponse" and info.api_version >= 4:
            response.coordinators = [
                response_class.Coordinator(key=key, node_id=-1, host="", port=-1, error_code=code,
                                           error_message=fault.error_message)
                for key in request.coordinator_keys]
        elif name == "FindCoordinatorResponse":
            response.node_id, response.port = -1, -1
        _set_error_codes(response, code, fault.error_message)
        return response_payload(info.correlation_id, info.response_header_version,
                                response.encode(info.api_version))

    def _rewrite_api_versions(self, info, payload: bytes) -> bytes:
        with self._lock:
            caps = dict(self._version_caps)
        if not caps:
            return payload
        _, body_offset = decode_response_header(payload, info.response_header_version)
        try:
            response = ApiVersionsResponse.decode(memoryview(payload)[body_offset:], info.api_version)
        except Exception:  # noqa: BLE001 - an UNSUPPORTED_VERSION answer has a v0 body: pass it on as is
            return payload
        if response.error_code:
            return payload
        for entry in response.api_keys:
            cap = caps.get(entry.api_key)
            if cap is not None and entry.max_version > cap:
                entry.max_version = cap
                self.events["version_capped"] += 1
        return bytes(payload[:body_offset]) + response.encode(info.api_version)

    def _rewrite_metadata(self, response, version):
        response.brokers = [
            MetadataResponse.MetadataResponseBroker(node_id=node, host=self.host, port=self.port_of(node))
            for node in self.node_ids
        ]
        response.controller_id = self.node_ids[0]
        with self._lock:
            limits = dict(self._partition_limits)
            deleted = set(self._deleted_topics)
        for topic in response.topics:
            if topic.name in deleted:
                topic.error_code = UNKNOWN_TOPIC_OR_PARTITION
                topic.partitions = []
                continue
            if topic.name in limits:
                topic.partitions = [p for p in topic.partitions if p.partition_index < limits[topic.name]]
            for part in topic.partitions:
                if part.leader_id < 0:
                    continue  # no leader (an error for this partition): leave it so
                leader = self.leader_for(topic.name, part.partition_index)
                part.leader_id = leader
                part.leader_epoch = self._leader_epoch(part.leader_epoch)
                # One replica: the client has no business with followers, and a replica list naming
                # node 111 would point at a broker that does not exist in this view.
                part.replica_nodes = [leader]
                part.isr_nodes = [leader]
                part.offline_replicas = []
        return response

    def _omit_partitions(self, response, omitted) -> None:
        for tp in omitted:
            self.events["omitted_partition"] += 1
            for topic in response.responses:
                if topic.name == tp[0]:
                    topic.partition_responses = [p for p in topic.partition_responses if p.index != tp[1]]
        response.responses = [t for t in response.responses if t.partition_responses]

    def _rewrite_coordinator(self, response):
        node = self.coordinator_node
        port = self.port_of(node)
        if response.node_id >= 0:
            response.node_id, response.host, response.port = node, self.host, port
        for coordinator in response.coordinators:
            if coordinator.node_id >= 0:
                coordinator.node_id, coordinator.host, coordinator.port = node, self.host, port
        return response

    def _partition_error(self, info, topic, partition, code, message):
        result = ProduceResponse.PartitionProduceResponse(
            index=partition, error_code=code, base_offset=-1, error_message=message)
        if code == NOT_LEADER_OR_FOLLOWER and info.api_version >= 10:
            # KIP-951: tell the client who leads now so it can retry without a metadata round trip.
            result.current_leader = ProduceResponse.LeaderIdAndEpoch(
                leader_id=self.leader_for(topic, partition), leader_epoch=self._leader_epoch(0))
        return result

    def _add_local_produce_errors(self, response, info, local_errors) -> None:
        by_name = {t.name: t for t in response.responses}
        leaders = set()
        for topic, partition, code, message in local_errors:
            topic_response = by_name.get(topic)
            if topic_response is None:
                topic_response = ProduceResponse.TopicProduceResponse(name=topic, partition_responses=[])
                response.responses.append(topic_response)
                by_name[topic] = topic_response
            topic_response.partition_responses.append(
                self._partition_error(info, topic, partition, code, message))
            if code == NOT_LEADER_OR_FOLLOWER:
                leaders.add(self.leader_for(topic, partition))
        if info.api_version >= 10:
            # The endpoints of the leaders named above (KIP-951); drop the real broker's, which would
            # take the client around the proxy.
            response.node_endpoints = [
                ProduceResponse.NodeEndpoint(node_id=node, host=self.host, port=self.port_of(node))
                for node in sorted(leaders)
            ]

    def _local_produce_response(self, info, local_errors) -> bytes:
        response = ProduceResponse(responses=[])
        self._add_local_produce_errors(response, info, local_errors)
        return response_payload(info.correlation_id, info.response_header_version,
                                response.encode(info.api_version))


def _set_error_codes(struct, code: int, message: str | None) -> None:
    """Set every ``*error_code`` field of a decoded message, however deep, to ``code`` (and the error
    messages beside them, where there are any, to ``message``)."""
    for name in type(struct).__slots__:
        value = getattr(struct, name)
        if name.endswith("error_code"):
            setattr(struct, name, code)
        elif name == "error_message" and message is not None:
            setattr(struct, name, message)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if hasattr(type(item), "__slots__") and not isinstance(item, (bytes, str)):
                    _set_error_codes(item, code, message)


def _record_count(records) -> int:
    """Records in a Produce partition's ``records`` bytes (one or more v2 record batches)."""
    if not records:
        return 0
    view = memoryview(records)
    count = pos = 0
    while pos + 61 <= len(view):
        (length,) = _BATCH_LENGTH.unpack_from(view, pos + 8)
        (count_here,) = _BATCH_RECORDS.unpack_from(view, pos + 57)
        count += count_here
        pos += 12 + length
    return count


