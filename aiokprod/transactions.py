"""The transaction driver: the requests the ``TransactionManager`` asks for, sent and retried.

The manager (``transaction_manager.py``) decides; this module only talks to brokers: InitProducerId,
FindCoordinator, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn, and reports each answer
back to the manager. The sender runs InitProducerId (resets) and AddPartitionsToTxn in tasks of their own
(its loop never awaits I/O); the producer's transaction methods await EndTxn and the offset requests.

Retries, as the Java client does them: NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE and
COORDINATOR_LOAD_IN_PROGRESS (and a lost connection) forget the coordinator, find it again and retry after
``retry_backoff_ms``; CONCURRENT_TRANSACTIONS (the coordinator is still completing the previous transaction)
retries after a short backoff that starts at 20 ms; any other retriable error retries after the backoff.
An operation that runs out of its deadline raises ``KafkaTimeoutError``; the manager's state is unchanged,
so calling the same operation again resumes it. Abortable and fatal answers are reported to the manager and
raised.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, TypeVar

from . import errors
from .protocol import (
    AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest,
    EndTxnRequest,
    FindCoordinatorRequest,
    InitProducerIdRequest,
    TxnOffsetCommitRequest,
)

if TYPE_CHECKING:  # annotations only: the driver is handed these, it does not build them
    from .cluster import Cluster
    from .config import ProducerConfig
    from .connection import BrokerConnection
    from .transaction_manager import TopicPartition, TransactionManager

log = logging.getLogger("aiokprod.transactions")

_T = TypeVar("_T")

GROUP, TRANSACTION = 0, 1  # FindCoordinator key types
_COORDINATOR_MOVED = frozenset({14, 15, 16})  # LOAD_IN_PROGRESS, NOT_AVAILABLE, NOT_COORDINATOR
_CONCURRENT_TRANSACTIONS = 51
_OPERATION_NOT_ATTEMPTED = 55
_CONCURRENT_BACKOFF = 0.02


class _Retry(Exception):
    """Internal: the answer asks for another try (``backoff`` seconds; ``refind``: look up the coordinator)."""

    def __init__(self, error: BaseException, backoff: float, refind: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.backoff = backoff
        self.refind = refind


class TransactionDriver:
    def __init__(self, config: ProducerConfig, cluster: Cluster, manager: TransactionManager,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.cluster = cluster
        self.manager = manager
        self.on_change = on_change  # wakes the sender after an answer that changes what it may drain
        self._coordinators: dict[tuple[int, str], int] = {}  # (key type, key) -> node id
        self._backoff = config.retry_backoff_ms / 1000.0
        # Counters tests and metrics read: what the driver had to do.
        self.coordinator_lookups = 0
        self.retries = 0

    # -- coordinator --------------------------------------------------------------------------------------
    async def _coordinator(self, key_type: int, key: str) -> BrokerConnection:
        node = self._coordinators.get((key_type, key))
        if node is None:
            node = await self._find_coordinator(key_type, key)
        if node not in self.cluster.brokers:
            await self.cluster.refresh()
            if node not in self.cluster.brokers:
                self._coordinators.pop((key_type, key), None)
                raise _Retry(errors.KafkaConnectionError(f"coordinator node {node} is not in the metadata"),
                             self._backoff, True)
        return await self.cluster.connection(node)

    async def _find_coordinator(self, key_type: int, key: str) -> int:
        self.coordinator_lookups += 1
        connection = await self.cluster.any_connection()
        version = connection.version_for(FindCoordinatorRequest)
        if version >= 4:
            request = FindCoordinatorRequest(key_type=key_type, coordinator_keys=[key])
        else:
            request = FindCoordinatorRequest(key=key, key_type=key_type)
        response = await connection.request(request, version)  # decoded FindCoordinator response: Any
        code: int
        message: Optional[str]
        node: int
        if version >= 4:
            if len(response.coordinators) != 1:
                raise _Retry(errors.KafkaError(f"FindCoordinator answered {len(response.coordinators)} coordinators"),
                             self._backoff, True)
            answer = response.coordinators[0]
            code, message, node = answer.error_code, answer.error_message, answer.node_id
        else:
            code, message, node = response.error_code, response.error_message, response.node_id
        if code:
            error = errors.for_code(code, message)
            if error.retriable:
                raise _Retry(error, self._backoff, True)
            raise error
        self._coordinators[(key_type, key)] = node
        log.debug("coordinator for %s %r: node %s", "transaction" if key_type else "group", key, node)
        return node

    # -- the retry loop -----------------------------------------------------------------------------------
    async def _call(self, what: str, key_type: Optional[int], key: Optional[str],
                    attempt: Callable[[BrokerConnection], Awaitable[_T]], timeout: float) -> _T:
        """Run ``attempt(connection)`` until it returns, retrying as the module docstring says, for at most
        ``timeout`` seconds. ``key_type``/``key`` name the coordinator (None: any broker will do)."""
        coordinator: Optional[tuple[int, str]] = None
        if key_type is not None:
            if key is None:
                raise errors.IllegalStateError(f"{what}: a coordinator lookup (key type {key_type}) needs a key")
            coordinator = (key_type, key)
        deadline = time.monotonic() + timeout
        backoff_concurrent = _CONCURRENT_BACKOFF
        last: Optional[BaseException] = None
        while True:
            try:
                if coordinator is None:
                    connection = await self.cluster.any_connection()
                else:
                    connection = await self._coordinator(*coordinator)
                return await attempt(connection)
            except _Retry as retry:
                last = retry.error
                if retry.refind and coordinator is not None:
                    self._coordinators.pop(coordinator, None)
                backoff = retry.backoff
                if backoff == _CONCURRENT_BACKOFF:
                    backoff = backoff_concurrent
                    backoff_concurrent = min(backoff_concurrent * 2, self._backoff)
            except errors.KafkaError as exc:
                if not exc.retriable:
                    raise
                # A lost connection or a request timeout: the coordinator may have moved with it.
                last = exc
                if coordinator is not None:
                    self._coordinators.pop(coordinator, None)
                backoff = self._backoff
            self.retries += 1
            remaining = deadline - time.monotonic()
            if remaining <= backoff:
                raise errors.KafkaTimeoutError(
                    f"{what} did not complete within {timeout * 1000:.0f} ms; last error: {last}") from last
            log.info("%s: %s; retrying in %.0f ms", what, last, backoff * 1000)
            await asyncio.sleep(backoff)

    def _check(self, code: int, message: Optional[str] = None) -> None:
        """Turn an answer's error code into a retry or an exception (see the module docstring)."""
        if not code:
            return
        error = errors.for_code(code, message)
        if code in _COORDINATOR_MOVED:
            raise _Retry(error, self._backoff, True)
        if code == _CONCURRENT_TRANSACTIONS:
            raise _Retry(error, _CONCURRENT_BACKOFF, False)
        if error.retriable or code == _OPERATION_NOT_ATTEMPTED:
            raise _Retry(error, self._backoff, False)
        raise error

    def _transactional_id(self, operation: str) -> str:
        """The id a transaction request carries: only a transactional producer sends them."""
        transactional_id = self.manager.transactional_id
        if transactional_id is None:
            raise errors.IllegalStateError(f"{operation} needs a transactional_id (this producer has none)")
        return transactional_id

    # -- InitProducerId -----------------------------------------------------------------------------------
    async def init_producer_id(self, timeout: Optional[float] = None) -> None:
        """Acquire the identity the manager asks for (first id, epoch bump or new id), retrying retriable
        errors; an idempotent producer whose bump is refused asks for a new id at once."""
        manager = self.manager
        manager.begin_init()
        timeout = self.config.max_block_ms / 1000.0 if timeout is None else timeout
        key_type = TRANSACTION if manager.transactional else None

        async def attempt(connection: BrokerConnection) -> None:
            # Brokers (Tansu) refuse InitProducerId below v3; the negotiated version is the highest common.
            version = connection.version_for(InitProducerIdRequest)
            transactional_id, txn_timeout, producer_id, epoch = manager.init_request(supports_bump=version >= 3)
            bumping = producer_id >= 0
            response = await connection.request(InitProducerIdRequest(
                transactional_id=transactional_id, transaction_timeout_ms=txn_timeout,
                producer_id=producer_id, producer_epoch=epoch), version)
            if response.error_code:
                error = errors.for_code(response.error_code, "InitProducerId"
                                        + (f" (epoch bump of producer id {producer_id} epoch {epoch})" if bumping else ""))
                manager.init_failed(error, bumping)
                if manager.fatal:
                    fatal = manager.error
                    if fatal is None:
                        raise errors.IllegalStateError("InitProducerId: fatal transaction state without its error")
                    raise fatal
                if bumping and not manager.transactional and not error.retriable:
                    log.info("epoch bump refused (%s); asking for a new producer id", error)
                    raise _Retry(error, 0.0, False)
                self._check(response.error_code)
                raise error
            manager.init_succeeded(response.producer_id, response.producer_epoch)
            log.debug("producer id %s epoch %s", response.producer_id, response.producer_epoch)

        try:
            await self._call("InitProducerId", key_type, manager.transactional_id, attempt, timeout)
        except errors.FatalError as exc:
            manager.fatal_error(exc)
            raise
        finally:
            self.on_change()

    # -- AddPartitionsToTxn -------------------------------------------------------------------------------
    async def add_partitions(self, partitions: list[TopicPartition]) -> None:
        """One AddPartitionsToTxn for every partition the sender collected in a drain pass."""
        manager = self.manager
        transactional_id = self._transactional_id("AddPartitionsToTxn")
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append(partition)
        topics = [AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(name=topic, partitions=parts)
                  for topic, parts in by_topic.items()]

        async def attempt(connection: BrokerConnection) -> None:
            # v4+ is the brokers' batched form (KIP-890); clients speak v3 and below.
            version = connection.version_for(AddPartitionsToTxnRequest, high=3)
            response = await connection.request(AddPartitionsToTxnRequest(
                v3_and_below_transactional_id=transactional_id,
                v3_and_below_producer_id=manager.producer_id, v3_and_below_producer_epoch=manager.epoch,
                v3_and_below_topics=topics), version)
            self._check(response.error_code)
            answered: dict[TopicPartition, int] = {}
            for topic in response.results_by_topic_v3_and_below:
                for part in topic.results_by_partition:
                    answered[(topic.name, part.partition_index)] = part.partition_error_code
            codes = [answered.get(tp, -1) for tp in partitions]
            # The most telling code: fatal first, then abortable, then the retriable ones.
            for code in sorted(set(codes), key=_severity):
                if code:
                    self._check(code, "AddPartitionsToTxn")
            return None

        try:
            await self._call("AddPartitionsToTxn", TRANSACTION, transactional_id, attempt,
                             manager.transaction_timeout_ms / 1000.0)
        except BaseException as exc:
            manager.partitions_add_failed(partitions, exc)
            if isinstance(exc, errors.FatalError):
                manager.fatal_error(exc)
            elif isinstance(exc, errors.KafkaError):
                # Not added within transaction_timeout_ms, or refused: this transaction cannot commit.
                manager.abortable_error(exc)
            raise
        else:
            manager.partitions_added(partitions)
        finally:
            self.on_change()

    # -- EndTxn ---------------------------------------------------------------------------------------------
    async def end_transaction(self, commit: bool, timeout: float) -> None:
        manager = self.manager
        transactional_id = self._transactional_id("EndTxn")

        async def attempt(connection: BrokerConnection) -> None:
            response = await connection.request(EndTxnRequest(
                transactional_id=transactional_id, producer_id=manager.producer_id,
                producer_epoch=manager.epoch, committed=commit), connection.version_for(EndTxnRequest))
            self._check(response.error_code, "EndTxn " + ("commit" if commit else "abort"))

        try:
            await self._call("EndTxn", TRANSACTION, transactional_id, attempt, timeout)
        except errors.FatalError as exc:
            manager.fatal_error(exc)
            raise
        except errors.KafkaTimeoutError:
            raise  # retriable: the same call again resumes it
        except errors.KafkaError as exc:
            if commit:
                manager.abortable_error(exc)
            raise

    # -- offsets --------------------------------------------------------------------------------------------
    async def send_offsets(self, offsets: dict[TopicPartition, int], group_id: str, timeout: float,
                           generation_id: int = -1, member_id: str = "",
                           group_instance_id: Optional[str] = None) -> None:
        """AddOffsetsToTxn (once per group and transaction) to the transaction coordinator, then
        TxnOffsetCommit to the group coordinator."""
        manager = self.manager
        transactional_id = self._transactional_id("send_offsets_to_transaction")
        deadline = time.monotonic() + timeout
        if not manager.offsets_added(group_id):
            async def add(connection: BrokerConnection) -> None:
                response = await connection.request(AddOffsetsToTxnRequest(
                    transactional_id=transactional_id, producer_id=manager.producer_id,
                    producer_epoch=manager.epoch, group_id=group_id), connection.version_for(AddOffsetsToTxnRequest))
                self._check(response.error_code, f"AddOffsetsToTxn for group {group_id!r}")

            await self._guarded(self._call("AddOffsetsToTxn", TRANSACTION, transactional_id, add, timeout))
            manager.mark_offsets_added(group_id)

        # TxnOffsetCommitRequestPartition is built at import from the message spec: not a static type.
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), offset in sorted(offsets.items()):
            by_topic.setdefault(topic, []).append(TxnOffsetCommitRequest.TxnOffsetCommitRequestPartition(
                partition_index=partition, committed_offset=offset))
        topics = [TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic(name=topic, partitions=parts)
                  for topic, parts in by_topic.items()]

        async def commit(connection: BrokerConnection) -> None:
            response = await connection.request(TxnOffsetCommitRequest(
                transactional_id=transactional_id, group_id=group_id, producer_id=manager.producer_id,
                producer_epoch=manager.epoch, generation_id=generation_id, member_id=member_id,
                group_instance_id=group_instance_id, topics=topics), connection.version_for(TxnOffsetCommitRequest))
            codes = {part.error_code for topic in response.topics for part in topic.partitions}
            for code in sorted(codes, key=_severity):
                self._check(code, f"TxnOffsetCommit for group {group_id!r}")

        await self._guarded(self._call("TxnOffsetCommit", GROUP, group_id, commit,
                                       max(deadline - time.monotonic(), 0.001)))

    async def _guarded(self, call: Awaitable[None]) -> None:
        try:
            await call
        except errors.FatalError as exc:
            self.manager.fatal_error(exc)
            raise
        except errors.KafkaTimeoutError:
            raise
        except errors.KafkaError as exc:
            self.manager.abortable_error(exc)
            raise


def _severity(code: int) -> int:
    """Sort key: fatal codes first, then abortable, then the rest (0 last)."""
    if code == 0:
        return 3
    cls = errors.ERROR_CLASSES.get(code)
    if cls is None or issubclass(cls, errors.FatalError):
        return 0
    if cls.retriable or code == _OPERATION_NOT_ATTEMPTED:
        return 2
    return 1
