"""The transaction manager without a socket or a loop: every allowed and refused state transition, the
identity (first id, epoch bump, fallback to a new id), sequences (per partition, retries keep theirs, wrap at
2**31), in-doubt batches (counted wherever they are queued), and the transaction's partitions.

Batches are real ``ProducerBatch`` objects with real record builders, frozen with what the manager hands out,
as the sender does at drain."""
from __future__ import annotations

import itertools

import pytest

from aiokprod import errors
from aiokprod.accumulator import ProducerBatch
from aiokprod.codec import RecordBatchBuilder
from aiokprod.transaction_manager import ALLOWED, EPOCH_MAX, SEQUENCE_MASK, TransactionManager, TxnState

S = TxnState


def make_batch(topic="t", partition=0, records=1):
    builder = RecordBatchBuilder("none", 16384, None)
    for i in range(records):
        assert builder.append(1000 + i, None, b"v%d" % i, None)
    return ProducerBatch(topic, partition, builder, None, 0.0, 100.0)


def drain(manager, batch):
    """What the sender does when a batch leaves its queue."""
    batch.freeze(*manager.on_drain(batch, len(batch.builder)))
    return batch


def idempotent(pid=7, epoch=0):
    manager = TransactionManager(idempotent=True)
    manager.begin_init()
    manager.init_succeeded(pid, epoch)
    return manager


def transactional(pid=9, epoch=3, txn_id="tx-1"):
    manager = TransactionManager(idempotent=True, transactional_id=txn_id, transaction_timeout_ms=1000)
    manager.begin_init()
    assert manager.init_request() == (txn_id, 1000, -1, -1)
    manager.init_succeeded(pid, epoch)
    return manager


def in_state(state: TxnState) -> TransactionManager:
    """A transactional manager brought to ``state`` through legal moves only."""
    manager = TransactionManager(idempotent=True, transactional_id="tx", transaction_timeout_ms=1000)
    if state is S.UNINITIALIZED:
        return manager
    manager.begin_init()
    if state is S.INITIALIZING:
        return manager
    manager.init_succeeded(1, 0)
    if state is S.READY:
        return manager
    if state is S.FATAL_ERROR:
        manager.fatal_error(errors.ProducerFencedError("fenced"))
        return manager
    manager.begin_transaction()
    if state is S.IN_TRANSACTION:
        return manager
    if state is S.COMMITTING:
        manager.prepare_commit()
        return manager
    if state is S.ABORTING:
        manager.prepare_abort()
        return manager
    if state is S.ABORTABLE_ERROR:
        manager.abortable_error(errors.TransactionAbortableError("lost"))
        return manager
    raise AssertionError(state)


# -- the transition table ----------------------------------------------------------------------------------
@pytest.mark.parametrize("source, target", list(itertools.product(TxnState, TxnState)),
                         ids=lambda s: s.value)
def test_every_transition_is_allowed_or_refused_by_the_table(source, target):
    manager = in_state(source)
    assert manager.state is source
    if source in ALLOWED[target]:
        manager._transition(target)
        assert manager.state is target
    else:
        with pytest.raises(errors.IllegalStateError) as info:
            manager._transition(target)
        assert source.value in str(info.value) and target.value in str(info.value)
        assert manager.state is source


def test_table_shape():
    # Fatal is reachable from everywhere and a dead end; nothing returns to UNINITIALIZED.
    assert ALLOWED[S.FATAL_ERROR] == frozenset(set(TxnState) - {S.FATAL_ERROR})
    assert all(S.FATAL_ERROR not in sources for target, sources in ALLOWED.items())
    assert ALLOWED[S.UNINITIALIZED] == frozenset()
    assert ALLOWED[S.IN_TRANSACTION] == {S.READY}
    assert ALLOWED[S.COMMITTING] == {S.IN_TRANSACTION}


# -- the user's operations in each state ---------------------------------------------------------------------
OPERATIONS = {
    "begin_transaction": lambda m: m.begin_transaction(),
    "commit_transaction": lambda m: m.prepare_commit(),
    "abort_transaction": lambda m: m.prepare_abort(),
    "send": lambda m: m.check_can_send(),
    "send_offsets_to_transaction": lambda m: m.check_can_send_offsets("group"),
}
# operation -> states where it is accepted (and the state it leaves)
ACCEPTED = {
    "begin_transaction": {S.READY: S.IN_TRANSACTION},
    "commit_transaction": {S.IN_TRANSACTION: S.COMMITTING, S.COMMITTING: S.COMMITTING},
    "abort_transaction": {S.IN_TRANSACTION: S.ABORTING, S.ABORTABLE_ERROR: S.ABORTING, S.ABORTING: S.ABORTING},
    "send": {S.IN_TRANSACTION: S.IN_TRANSACTION},
    "send_offsets_to_transaction": {S.IN_TRANSACTION: S.IN_TRANSACTION},
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("state", list(TxnState), ids=lambda s: s.value)
def test_user_operations_in_every_state(operation, state):
    manager = in_state(state)
    accepted = ACCEPTED[operation]
    if state in accepted:
        OPERATIONS[operation](manager)
        assert manager.state is accepted[state]
        return
    with pytest.raises(errors.KafkaError) as info:
        OPERATIONS[operation](manager)
    assert manager.state is state
    if state is S.FATAL_ERROR:
        # A fenced producer's every call says it is fenced, chained to the first occurrence.
        assert isinstance(info.value, errors.ProducerFencedError)
        assert isinstance(info.value.__cause__, errors.ProducerFencedError)
    elif state is S.ABORTABLE_ERROR and operation != "begin_transaction":
        assert isinstance(info.value, errors.AbortableError)
    else:
        assert isinstance(info.value, errors.IllegalStateError)
        assert state.value in str(info.value)


def test_transaction_operations_need_a_transactional_id():
    manager = idempotent()
    for operation in OPERATIONS.values():
        if operation is OPERATIONS["send"]:
            continue
        with pytest.raises(errors.IllegalStateError, match="transactional_id"):
            operation(manager)


def test_commit_then_abort_cycle_and_end_txn_only_when_the_coordinator_knows():
    manager = transactional()
    manager.begin_transaction()
    assert not manager.needs_end_txn()  # nothing was added: the coordinator has no transaction
    manager.prepare_commit()
    manager.end_succeeded()
    assert manager.state is S.READY
    manager.begin_transaction()
    assert not manager.sendable("t", 0)
    assert manager.partitions_to_add() == [("t", 0)]
    manager.partitions_added([("t", 0)])
    assert manager.needs_end_txn()
    manager.prepare_abort()
    manager.end_succeeded()
    assert manager.state is S.READY and manager.transaction_partitions == frozenset()


# -- identity ------------------------------------------------------------------------------------------------
def test_non_idempotent_needs_no_identity():
    manager = TransactionManager(idempotent=False)
    assert manager.state is S.READY and manager.has_identity and not manager.needs_init
    batch = make_batch()
    assert manager.on_drain(batch, 1) == (-1, -1, -1, False)
    manager.on_success(batch)  # no bookkeeping, no error


def test_transactional_needs_idempotence():
    with pytest.raises(errors.IllegalStateError):
        TransactionManager(idempotent=False, transactional_id="x")


def test_first_init_then_epoch_bump_keeps_the_id():
    manager = TransactionManager(idempotent=True)
    assert manager.needs_init and not manager.has_identity
    manager.begin_init()
    assert manager.init_request() == (None, 60000, -1, -1)
    manager.init_succeeded(42, 0)
    assert (manager.producer_id, manager.epoch, manager.state) == (42, 0, S.READY)
    batch = drain(manager, make_batch(records=3))
    manager.on_failed(batch, errors.InvalidRecordError("bad"), in_flight=True)  # a sequence is lost
    assert manager.reset_pending and manager.reset_allowed() and not manager.has_identity
    manager.begin_init()
    # KIP-360: the current id and epoch; the broker bumps the epoch.
    assert manager.init_request(supports_bump=True) == (None, 60000, 42, 0)
    manager.init_succeeded(42, 1)
    assert not manager.reset_pending and manager.has_identity
    assert drain(manager, make_batch()).base_sequence == 0  # sequences start again


def test_refused_bump_falls_back_to_a_new_id():
    manager = idempotent(pid=42, epoch=5)
    manager.request_reset(errors.UnknownProducerIdError())
    manager.begin_init()
    assert manager.init_request() == (None, 60000, 42, 5)
    manager.init_failed(errors.UnknownProducerIdError("forgotten"), bumping=True)
    assert manager.state is S.INITIALIZING
    assert manager.init_request() == (None, 60000, -1, -1)
    manager.init_succeeded(43, 0)
    assert (manager.producer_id, manager.epoch) == (43, 0)


def test_an_authorisation_failure_on_a_bump_is_fatal_without_a_fallback():
    manager = idempotent(pid=42, epoch=5)
    manager.request_reset(errors.UnknownProducerIdError())
    manager.begin_init()
    manager.init_failed(errors.ClusterAuthorizationFailedError(), bumping=True)
    assert manager.fatal and isinstance(manager.error, errors.ClusterAuthorizationFailedError)


def test_old_broker_or_exhausted_epoch_takes_a_new_id():
    manager = idempotent(pid=42, epoch=5)
    manager.request_reset(errors.UnknownProducerIdError())
    manager.begin_init()
    assert manager.init_request(supports_bump=False) == (None, 60000, -1, -1)
    manager.init_succeeded(42, EPOCH_MAX)
    manager.request_reset(errors.UnknownProducerIdError())
    manager.begin_init()
    assert manager.init_request() == (None, 60000, -1, -1)


def test_retriable_init_failure_stays_initializing_and_a_fatal_one_is_fatal():
    manager = TransactionManager(idempotent=True, transactional_id="tx")
    manager.begin_init()
    manager.init_failed(errors.CoordinatorLoadInProgressError(), bumping=False)
    assert manager.state is S.INITIALIZING
    manager.init_failed(errors.TransactionalIdAuthorizationFailedError(), bumping=False)
    assert manager.state is S.FATAL_ERROR
    with pytest.raises(errors.TransactionalIdAuthorizationFailedError):
        manager.begin_transaction()


def test_transactional_bump_always_names_itself_and_never_resets_on_produce_errors():
    manager = transactional(pid=9, epoch=3)
    manager.begin_transaction()
    manager.partitions_added([("t", 0)])
    batch = drain(manager, make_batch())
    assert batch.transactional and (batch.producer_id, batch.producer_epoch) == (9, 3)
    manager.on_retriable(batch)  # OUT_OF_ORDER / UNKNOWN_PRODUCER_ID are classified by the sender...
    manager.request_reset(errors.UnknownProducerIdError())  # ...and a reset request turns abortable
    assert not manager.reset_pending
    assert manager.state is S.ABORTABLE_ERROR and isinstance(manager.error, errors.UnknownProducerIdError)
    with pytest.raises(errors.UnknownProducerIdError):
        manager.prepare_commit()
    manager.prepare_abort()
    manager.on_failed(batch, errors.ProducerClosedError("aborted"), in_flight=False)
    manager.end_succeeded()
    assert manager.state is S.INITIALIZING  # sequences unknown: bump with our own id and epoch first
    assert manager.init_request() == ("tx-1", 1000, 9, 3)
    manager.init_failed(errors.ProducerFencedError("newer instance"), bumping=True)
    assert manager.state is S.FATAL_ERROR  # a transactional producer never falls back to a new id


def test_transactional_bump_on_a_broker_below_v3_is_fatal():
    manager = transactional()
    manager.begin_transaction()
    manager.abortable_error(errors.UnknownProducerIdError())
    manager.request_reset(errors.UnknownProducerIdError())
    manager.prepare_abort()
    manager.end_succeeded()
    with pytest.raises(errors.UnsupportedVersionError):
        manager.init_request(supports_bump=False)
    assert manager.fatal


def test_begin_init_refuses_while_batches_are_out():
    manager = idempotent()
    batch = drain(manager, make_batch())
    manager.request_reset(errors.UnknownProducerIdError())
    with pytest.raises(errors.IllegalStateError, match="in flight"):
        manager.begin_init()
    manager.on_success(batch)
    manager.begin_init()


# -- sequences -----------------------------------------------------------------------------------------------
def test_sequences_per_partition_and_retries_keep_theirs():
    manager = idempotent(pid=5, epoch=2)
    a = drain(manager, make_batch("t", 0, records=3))
    b = drain(manager, make_batch("t", 0, records=2))
    c = drain(manager, make_batch("t", 1, records=4))
    assert [(x.producer_id, x.producer_epoch, x.base_sequence) for x in (a, b, c)] == [(5, 2, 0), (5, 2, 3), (5, 2, 0)]
    payload = a.payload
    manager.on_retriable(a)
    assert not manager.sendable("t", 0)  # blocked until b is back too
    manager.on_success(b)
    assert manager.sendable("t", 0)
    drain(manager, a)
    assert a.base_sequence == 0 and a.payload is payload  # the same bytes go again
    assert drain(manager, make_batch("t", 0)).base_sequence == 5
    assert manager.sequences("t", 1).next_sequence == 4


def test_sequence_wraps_at_2_31():
    manager = idempotent()
    manager.sequences("t", 0).next_sequence = SEQUENCE_MASK - 1  # two before the wrap
    first = drain(manager, make_batch(records=3))
    second = drain(manager, make_batch(records=1))
    assert first.base_sequence == SEQUENCE_MASK - 1
    assert second.base_sequence == 1  # 2**31 - 1, then 0, then this batch
    assert manager.sequences("t", 0).next_sequence == 2


# -- in-doubt batches ----------------------------------------------------------------------------------------
def test_unknown_outcome_blocks_a_reset_until_settled():
    manager = idempotent()
    lost = drain(manager, make_batch("t", 0))
    failed = drain(manager, make_batch("t", 1))
    manager.on_unknown(lost)
    assert lost.outcome_unknown and manager.in_doubt == 1
    manager.on_failed(failed, errors.InvalidRecordError(), in_flight=True)
    assert manager.reset_pending and not manager.reset_allowed()
    # While the reset waits, only the partition holding the in-doubt batch is drained, with its old identity.
    assert manager.sendable("t", 0) and not manager.sendable("t", 1) and not manager.sendable("t", 2)
    assert drain(manager, lost).base_sequence == 0
    with pytest.raises(errors.IllegalStateError, match="reset waits"):
        manager.on_drain(make_batch("t", 0), 1)  # nothing new is numbered under the old identity
    manager.on_success(lost)  # e.g. DUPLICATE_SEQUENCE_NUMBER
    assert manager.in_doubt == 0 and not lost.outcome_unknown and manager.reset_allowed()


def test_in_doubt_behind_a_known_retry_still_blocks_the_reset():
    """The defect this replaces: only queue heads were looked at, and a retry of known outcome can be
    requeued in front of one of unknown outcome. The count here does not depend on queue order."""
    manager = idempotent()
    known = drain(manager, make_batch("t", 0))
    doubtful = drain(manager, make_batch("t", 0))
    manager.on_retriable(known)   # NOT_LEADER: certainly not written; requeued first (drain order)
    manager.on_unknown(doubtful)  # connection cut: maybe written; requeued behind it
    manager.request_reset(errors.UnknownProducerIdError())
    assert not manager.reset_allowed() and manager.sendable("t", 0)
    drain(manager, known)
    manager.on_success(known)
    assert not manager.reset_allowed()
    drain(manager, doubtful)
    manager.on_retriable(doubtful)  # this attempt was not written; the first one may have been
    assert doubtful.outcome_unknown and not manager.reset_allowed()
    drain(manager, doubtful)
    manager.on_not_written(doubtful)  # OUT_OF_ORDER_SEQUENCE: the broker has no such batch
    assert not doubtful.outcome_unknown and manager.reset_allowed()


def test_while_a_reset_waits_a_new_batch_never_goes_even_beside_an_in_doubt_one_in_flight():
    """The in-doubt batch was re-sent and is in flight (not blocked: nothing else of the partition was out),
    so the partition's head is a new batch: it must wait for the new identity, not take an old number."""
    manager = idempotent()
    doubtful = drain(manager, make_batch("t", 0))
    manager.on_unknown(doubtful)
    manager.request_reset(errors.UnknownProducerIdError())
    drain(manager, doubtful)  # the retry, in flight again
    assert manager.sendable("t", 0, head_numbered=True)
    assert not manager.sendable("t", 0, head_numbered=False)
    manager.on_success(doubtful)
    assert manager.reset_allowed()


def test_a_batch_stays_in_doubt_until_acknowledged():
    manager = idempotent()
    batch = drain(manager, make_batch())
    manager.on_unknown(batch)
    drain(manager, batch)
    manager.on_unknown(batch)  # twice in doubt is still one batch in doubt
    assert manager.in_doubt == 1
    drain(manager, batch)
    manager.on_retriable(batch)
    assert manager.in_doubt == 1 and batch.outcome_unknown
    drain(manager, batch)
    manager.on_success(batch)
    assert manager.in_doubt == 0 and not batch.outcome_unknown


def test_in_doubt_batch_that_expires_is_forgotten():
    manager = idempotent()
    batch = drain(manager, make_batch())
    manager.on_unknown(batch)
    manager.on_failed(batch, errors.KafkaTimeoutError("deadline"), in_flight=False)
    assert manager.in_doubt == 0 and manager.in_flight == 0 and manager.reset_allowed()


def test_outcome_for_a_partition_with_nothing_in_flight_is_refused():
    manager = idempotent()
    with pytest.raises(errors.IllegalStateError, match="nothing in flight"):
        manager.on_success(make_batch())


# -- partitions of a transaction -----------------------------------------------------------------------------
def test_new_partitions_are_collected_for_one_add_partitions_request():
    manager = transactional()
    manager.begin_transaction()
    for partition in (2, 0, 1):
        assert not manager.sendable("a", partition)
    assert not manager.sendable("b", 0)
    assert manager.partitions_to_add() == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert manager.partitions_to_add() == []  # in flight: not asked for twice
    assert not manager.sendable("a", 0)
    manager.partitions_added([("a", 0), ("a", 1)])
    manager.partitions_add_failed([("a", 2), ("b", 0)], errors.ConcurrentTransactionsError())
    assert manager.sendable("a", 0) and manager.sendable("a", 1) and not manager.sendable("a", 2)
    assert manager.partitions_to_add() == [("a", 2), ("b", 0)]  # retriable: asked for again


def test_while_aborting_only_partitions_of_the_transaction_drain_and_none_is_added():
    manager = transactional()
    manager.begin_transaction()
    manager.partitions_added([("t", 0)])
    assert manager.sendable("t", 0)
    batch = drain(manager, make_batch())
    manager.on_failed(batch, errors.MessageTooLargeError("big"), in_flight=True)
    assert manager.state is S.ABORTABLE_ERROR
    assert isinstance(manager.error, errors.TransactionFailedError)
    assert isinstance(manager.error.__cause__, errors.MessageTooLargeError)
    # Retries of the transaction's partitions still settle; no partition is added any more.
    assert manager.sendable("t", 0) and not manager.sendable("t", 1)
    manager.prepare_abort()
    assert manager.sendable("t", 0) and not manager.sendable("t", 1)
    assert manager.partitions_to_add() == []
    manager.end_succeeded()
    assert not manager.sendable("t", 0)  # READY: no transaction, nothing drains


def test_expired_in_flight_batch_is_released_by_its_answer():
    manager = idempotent()
    batch = drain(manager, make_batch())
    manager.on_failed(batch, errors.KafkaTimeoutError("deadline"), in_flight=False)
    assert manager.reset_pending and not manager.reset_allowed() and manager.in_flight == 1
    manager.release(batch)
    assert manager.in_flight == 0 and manager.reset_allowed()


def test_send_offsets_marks_the_group_once():
    manager = transactional()
    manager.begin_transaction()
    with pytest.raises(ValueError, match="group_id"):
        manager.check_can_send_offsets("")
    assert not manager.offsets_added("g")
    manager.mark_offsets_added("g")
    assert manager.offsets_added("g") and manager.needs_end_txn()
    manager.prepare_commit()
    manager.end_succeeded()
    assert not manager.offsets_added("g")


def test_error_kinds_are_visible_as_bases():
    assert issubclass(errors.ProducerFencedError, errors.FatalError)
    assert issubclass(errors.InvalidProducerEpochError, errors.FatalError)
    assert issubclass(errors.TransactionalIdAuthorizationFailedError, errors.FatalError)
    assert issubclass(errors.AuthenticationError, errors.FatalError)
    assert issubclass(errors.TransactionAbortableError, errors.AbortableError)
    assert issubclass(errors.TransactionFailedError, errors.AbortableError)
    assert issubclass(errors.TopicAuthorizationFailedError, errors.AbortableError)
    for cls in (errors.NotCoordinatorError, errors.CoordinatorLoadInProgressError,
                errors.ConcurrentTransactionsError, errors.KafkaConnectionError, errors.KafkaTimeoutError):
        assert issubclass(cls, errors.RetriableError) and cls.retriable
    for code, cls in errors.ERROR_CLASSES.items():
        kinds = [k for k in (errors.RetriableError, errors.AbortableError, errors.FatalError) if issubclass(cls, k)]
        assert len(kinds) <= 1, (cls, kinds)
        assert issubclass(cls, errors.RetriableError) == cls.retriable


def test_a_refused_last_batch_gives_its_sequence_back_in_a_transaction():
    manager = transactional()
    manager.begin_transaction()
    manager.partitions_added([("t", 0)])
    first = drain(manager, make_batch(records=2))
    manager.on_success(first)
    refused = drain(manager, make_batch(records=3))
    manager.on_failed(refused, errors.InvalidRecordError(), in_flight=True)
    assert manager.sequences("t", 0).next_sequence == 2  # the broker still expects 2
    manager.prepare_abort()
    manager.end_succeeded()
    assert manager.state is S.READY  # no epoch bump needed


def test_no_sequence_is_given_back_when_a_later_batch_was_numbered_or_the_batch_was_in_doubt():
    manager = transactional()
    manager.begin_transaction()
    manager.partitions_added([("t", 0)])
    refused = drain(manager, make_batch())
    later = drain(manager, make_batch())
    manager.on_failed(refused, errors.InvalidRecordError(), in_flight=True)
    assert manager.sequences("t", 0).next_sequence == 2
    manager.on_failed(later, errors.OutOfOrderSequenceNumberError(), in_flight=True)
    manager.prepare_abort()
    manager.end_succeeded()
    assert manager.state is S.INITIALIZING  # a bump is needed

    manager = transactional()
    manager.begin_transaction()
    manager.partitions_added([("t", 0)])
    doubtful = drain(manager, make_batch())
    manager.on_unknown(doubtful)
    drain(manager, doubtful)
    manager.on_failed(doubtful, errors.InvalidRecordError(), in_flight=True)  # its first attempt may be written
    assert manager.sequences("t", 0).next_sequence == 1
    manager.prepare_abort()
    manager.end_succeeded()
    assert manager.state is S.INITIALIZING


def test_a_retry_numbered_under_a_gone_identity_is_renumbered():
    """A retry known to be unwritten, still carrying the numbers of the identity before a reset, gets new
    ones (whoever forgot to clear them): never the old identity's numbers beside the new identity's."""
    manager = idempotent(pid=5, epoch=0)
    batch = drain(manager, make_batch(records=2))
    manager.on_not_written(batch)
    manager.request_reset(errors.UnknownProducerIdError())
    manager.begin_init()
    manager.init_succeeded(6, 0)
    assert drain(manager, batch).producer_id == 6 and batch.base_sequence == 0
    assert drain(manager, make_batch()).base_sequence == 2


def test_not_written_settles_every_doubt_of_the_partition():
    """Broker restarted: a known-unwritten retry heads the queue with an in-doubt batch behind it. Its
    UNKNOWN_PRODUCER_ID answer says the broker has nothing of ours there: the batch behind it can no longer
    be settled under the old identity either, so the reset may go on (it would wait for ever otherwise)."""
    manager = idempotent()
    head = drain(manager, make_batch("t", 0))
    behind = drain(manager, make_batch("t", 0))
    other = drain(manager, make_batch("t", 1))
    manager.on_retriable(head)
    manager.on_unknown(behind)
    manager.on_unknown(other)
    manager.request_reset(errors.UnknownProducerIdError())
    drain(manager, head)
    manager.on_not_written(head)
    assert not behind.outcome_unknown and manager.in_doubt == 1  # partition 1's doubt is another matter
    assert not manager.reset_allowed()
    drain(manager, other)
    manager.on_success(other)
    assert manager.reset_allowed()
