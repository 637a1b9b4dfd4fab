"""The producer's identity, sequences and transaction state: one owner, no I/O, no loop.

``TransactionManager`` is the only place that knows

* the producer identity (id, epoch) and whether it must be (re)acquired;
* each partition's next sequence, how many of its batches are in flight, which of its batches are *in
  doubt* (the broker may have written them: no answer came, or an answer that does not say), and whether it
  is *blocked* (a batch came back for a retry: nothing new goes until everything in flight is back, so the
  retries go out again in sequence order);
* the transaction state machine and the partitions of the open transaction.

It decides nothing by I/O: the sender asks it, when it drains a batch, for ``(producer_id, epoch,
base_sequence, transactional)`` (:meth:`on_drain`) and reports every outcome to it (:meth:`on_success`,
:meth:`on_retriable`, :meth:`on_unknown`, :meth:`on_failed`); the transaction driver (``transactions.py``)
sends the requests it asks for (InitProducerId, AddPartitionsToTxn, EndTxn, ...) and reports their answers.
Every state change goes through :meth:`_transition`, which refuses a change the table does not allow with an
``IllegalStateError`` naming both states; every public operation checks its state the same way.

States (``TxnState``) and the moves between them::

    UNINITIALIZED -> INITIALIZING -> READY                    start(): InitProducerId
    READY -> INITIALIZING -> READY                            idempotent reset: epoch bump (KIP-360) or new id
    READY -> IN_TRANSACTION                                   begin_transaction()
    IN_TRANSACTION -> COMMITTING -> READY                     commit_transaction(): flush, EndTxn(commit)
    IN_TRANSACTION | ABORTABLE_ERROR -> ABORTING -> READY     abort_transaction(): EndTxn(abort)
    ABORTING -> INITIALIZING -> READY                         after an abort that left sequences unknown: bump
    IN_TRANSACTION | COMMITTING -> ABORTABLE_ERROR            a record or a request of the transaction failed
    any -> FATAL_ERROR                                        fenced, not authorised: only stop() is left

Why a reset waits for in-doubt batches: a batch of unknown outcome may be in the broker's log. Re-sent with
its old (id, epoch, sequence) the broker recognises it (DUPLICATE_SEQUENCE_NUMBER, or its offset); renumbered
under a new identity it would be written twice. So a reset (new epoch, sequences from 0) happens only when no
batch anywhere is in doubt and none is in flight; until then, only partitions holding an in-doubt batch are
drained, with their old identity, to settle it. The in-doubt batches are counted here, per partition, as the
outcomes are reported, not found by looking at queue heads: a retry whose outcome is known can be requeued in
front of one whose outcome is not.

A transactional producer never resets its identity on a produce error (a new id would fence nobody but
ourselves, and an InitProducerId without our epoch would fence a newer instance): sequence trouble makes the
transaction abortable, and the epoch is bumped with our current (id, epoch) after the abort.
"""
from __future__ import annotations

import copy
import enum
from typing import Callable, Iterable, NoReturn, Optional, Protocol

from . import errors

SEQUENCE_MASK = 0x7FFFFFFF  # sequences are int32 and wrap to 0 after 2**31 - 1 (as the broker expects)
EPOCH_MAX = 0x7FFF          # epochs are int16: at the last one, a bump must take a new producer id


# Answers to an epoch bump that say "not allowed at all", not "cannot bump": no point asking for a new id.
_NOT_A_BUMP_REFUSAL = frozenset({31, 53})  # CLUSTER_ / TRANSACTIONAL_ID_AUTHORIZATION_FAILED


TopicPartition = tuple[str, int]


class SequencedBatch(Protocol):
    """What the manager reads and marks on a batch (``accumulator.ProducerBatch``). A protocol, not an import:
    this module stays below the accumulator, and only these fields are its business. Batches are hashed
    (kept in a partition's ``in_doubt`` set) by identity."""

    # Read-only here: the accumulator owns them (``freeze()`` sets the identity fields).
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def producer_id(self) -> int: ...
    @property
    def producer_epoch(self) -> int: ...
    @property
    def base_sequence(self) -> int: ...
    @property
    def transactional(self) -> bool: ...
    @property
    def record_count(self) -> int: ...

    # Set and cleared by the manager as outcomes are reported.
    outcome_unknown: bool


class TxnState(enum.Enum):
    UNINITIALIZED = "UNINITIALIZED"
    INITIALIZING = "INITIALIZING"
    READY = "READY"
    IN_TRANSACTION = "IN_TRANSACTION"
    COMMITTING = "COMMITTING"
    ABORTING = "ABORTING"
    ABORTABLE_ERROR = "ABORTABLE_ERROR"
    FATAL_ERROR = "FATAL_ERROR"


S = TxnState
#: target -> the states it may be entered from.
ALLOWED: dict[TxnState, frozenset[TxnState]] = {
    S.UNINITIALIZED: frozenset(),
    S.INITIALIZING: frozenset({S.UNINITIALIZED, S.READY, S.ABORTING}),
    S.READY: frozenset({S.INITIALIZING, S.COMMITTING, S.ABORTING}),
    S.IN_TRANSACTION: frozenset({S.READY}),
    S.COMMITTING: frozenset({S.IN_TRANSACTION}),
    S.ABORTING: frozenset({S.IN_TRANSACTION, S.ABORTABLE_ERROR}),
    S.ABORTABLE_ERROR: frozenset({S.IN_TRANSACTION, S.COMMITTING}),
    S.FATAL_ERROR: frozenset(set(TxnState) - {S.FATAL_ERROR}),
}
# States in which a transaction's partitions are drained.
_TXN_DRAINING = frozenset({S.IN_TRANSACTION, S.COMMITTING, S.ABORTING, S.ABORTABLE_ERROR})
# States in which batches may be drained (carry the current identity).
_SENDING = frozenset({S.READY, S.IN_TRANSACTION, S.COMMITTING, S.ABORTING, S.ABORTABLE_ERROR})


class PartitionSequences:
    """The idempotence state of one partition (owned by the manager; the sender only reads ``sendable``)."""

    __slots__ = ("topic", "partition", "next_sequence", "in_flight", "in_doubt", "blocked")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.next_sequence = 0
        self.in_flight = 0
        self.in_doubt: set[SequencedBatch] = set()  # batches (queued or in flight) the broker may have written
        self.blocked = False


class TransactionManager:
    def __init__(self, *, idempotent: bool, transactional_id: Optional[str] = None,
                 transaction_timeout_ms: int = 60000) -> None:
        if transactional_id is not None and not idempotent:
            raise errors.IllegalStateError("a transactional producer must be idempotent")
        self.idempotent = idempotent
        self.transactional_id = transactional_id
        self.transactional = transactional_id is not None
        self.transaction_timeout_ms = transaction_timeout_ms
        self.producer_id = -1
        self.epoch = -1
        # Without idempotence there is no identity to acquire: batches go as they are, from the start.
        self.state = S.UNINITIALIZED if idempotent else S.READY
        self._partitions: dict[TopicPartition, PartitionSequences] = {}
        self._in_flight = 0
        self._in_doubt = 0
        self._reset_pending = False
        self._bump_refused = False      # the broker refused an epoch bump: the next init asks for a new id
        self._bump_after_abort = False  # sequences of this transaction are unknown: bump once it is aborted
        self._error: Optional[BaseException] = None  # the abortable or fatal error of the current state
        # Partitions of the open transaction: confirmed by the coordinator, asked for, or still to ask for.
        self._txn_partitions: set[TopicPartition] = set()
        self._adding: set[TopicPartition] = set()
        self._to_add: set[TopicPartition] = set()
        self._offsets_added: set[str] = set()  # consumer groups added to the open transaction (AddOffsetsToTxn)
        # Told (no arguments) after every state change: the producer turns its send() fast path on or off.
        self.on_change: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return (f"<TransactionManager {self.state.value} id={self.producer_id} epoch={self.epoch}"
                f" transactional_id={self.transactional_id!r}>")

    # -- states -------------------------------------------------------------------------------------------
    def _transition(self, target: TxnState) -> None:
        if self.state not in ALLOWED[target]:
            raise errors.IllegalStateError(
                f"transaction state {self.state.value} cannot move to {target.value}")
        self.state = target
        self.on_change()

    def _refuse(self, operation: str, detail: str = "") -> NoReturn:
        """Raise for ``operation`` attempted in the current state: the fatal error itself once fatal (a
        fenced producer's every call says it is fenced), else IllegalStateError naming the state."""
        if self.state is S.FATAL_ERROR and self._error is not None:
            raise self._copy_error()
        if self.state is S.ABORTABLE_ERROR and self._error is not None and operation != "begin_transaction":
            raise self._copy_error()
        raise errors.IllegalStateError(
            f"{operation}() is not allowed in transaction state {self.state.value}" + (f": {detail}" if detail else ""))

    def _copy_error(self) -> BaseException:
        # A fresh exception each time (re-raising one instance would pile up tracebacks), chained to the first.
        error = self._error
        if error is None:
            raise errors.IllegalStateError(
                f"transaction state {self.state.value} has no error recorded to raise")
        exc = copy.copy(error)
        exc.__cause__ = error
        exc.__traceback__ = None
        return exc

    @property
    def error(self) -> Optional[BaseException]:
        """The abortable or fatal error that put the manager in its current state, if any."""
        return self._error

    @property
    def fatal(self) -> bool:
        return self.state is S.FATAL_ERROR

    def check_not_fatal(self) -> None:
        if self.state is S.FATAL_ERROR:
            raise self._copy_error()

    def fatal_error(self, error: BaseException) -> None:
        """Nothing can be done any more (fenced, not authorised): every later operation raises ``error``."""
        if self.state is S.FATAL_ERROR:
            return
        self._error = error
        self._transition(S.FATAL_ERROR)

    def abortable_error(self, error: BaseException) -> None:
        """The open transaction cannot commit any more. Kept: the first error (the later ones follow it)."""
        if self.state in (S.ABORTABLE_ERROR, S.ABORTING, S.FATAL_ERROR):
            return
        if not self.transactional:
            raise errors.IllegalStateError("an abortable error on a producer that has no transactions")
        self._error = error
        self._transition(S.ABORTABLE_ERROR)

    # -- identity (InitProducerId) ------------------------------------------------------------------------
    @property
    def has_identity(self) -> bool:
        """Batches may be drained: an identity is held (or none is needed) and no reset is waiting."""
        return self.state in _SENDING and not self._reset_pending

    @property
    def needs_init(self) -> bool:
        return self.state is S.UNINITIALIZED or self.state is S.INITIALIZING or (
            self._reset_pending and self.state is S.READY)

    def begin_init(self) -> None:
        """Start acquiring an identity (start(), a reset, or a bump after an abort)."""
        if self.state is S.INITIALIZING:
            return  # a retry of the same InitProducerId
        if self.state is S.READY and not self._reset_pending:
            self._refuse("begin_init", "the producer already has its identity")
        if self._in_flight or self._in_doubt:
            raise errors.IllegalStateError(
                f"InitProducerId with {self._in_flight} batch(es) in flight and {self._in_doubt} in doubt")
        self._transition(S.INITIALIZING)

    def init_request(self, supports_bump: bool = True) -> tuple[Optional[str], int, int, int]:
        """The fields of the InitProducerId to send: ``(transactional_id, transaction_timeout_ms,
        producer_id, producer_epoch)``. With an identity already held (a reset, or a bump after an abort)
        and a broker that takes v3+, our current id and epoch (KIP-360: the broker bumps the epoch and keeps
        the id, and knows it is us, not a new instance); else -1/-1 (a new id, or the first one)."""
        if self.state is not S.INITIALIZING:
            self._refuse("init_request")
        if self.transactional and self.producer_id >= 0 and not supports_bump:
            self.fatal_error(errors.UnsupportedVersionError(
                "the broker's InitProducerId is below v3: a transactional producer cannot bump its epoch"))
            raise self._copy_error()
        if self.producer_id >= 0 and supports_bump and (
                # A transactional producer always names itself: -1/-1 would fence whoever holds the id now
                # (a newer instance, if we are the zombie); the coordinator handles an exhausted epoch.
                self.transactional or (not self._bump_refused and self.epoch < EPOCH_MAX)):
            return (self.transactional_id, self.transaction_timeout_ms, self.producer_id, self.epoch)
        return (self.transactional_id, self.transaction_timeout_ms, -1, -1)

    def init_succeeded(self, producer_id: int, epoch: int) -> None:
        """A new identity: every partition starts again at sequence 0."""
        if self.state is not S.INITIALIZING:
            self._refuse("init_succeeded")
        if producer_id < 0 or epoch < 0:
            raise errors.IllegalStateError(f"InitProducerId answered producer id {producer_id} epoch {epoch}")
        self.producer_id = producer_id
        self.epoch = epoch
        self._reset_pending = False
        self._bump_refused = False
        self._bump_after_abort = False
        self._error = None
        for sequences in self._partitions.values():
            sequences.next_sequence = 0
            sequences.blocked = False
        self._transition(S.READY)

    def init_failed(self, error: BaseException, bumping: bool) -> None:
        """InitProducerId failed. Retriable: stay INITIALIZING (the driver retries). An idempotent producer
        whose epoch bump was refused asks for a new id next time. Anything else is fatal."""
        if self.state is not S.INITIALIZING:
            self._refuse("init_failed")
        if getattr(error, "retriable", False):
            return
        if bumping and not self.transactional and getattr(error, "code", None) not in _NOT_A_BUMP_REFUSAL:
            self._bump_refused = True
            return
        if bumping and self.transactional and getattr(error, "code", None) not in _NOT_A_BUMP_REFUSAL:
            # Without a bump the sequences of the aborted transaction stay unknown, and asking for the id
            # anew (-1/-1) could fence a newer instance: stopping is the only safe way on.
            fatal = errors.FatalError(
                f"the broker refused to bump the epoch of transactional producer {self.transactional_id!r} "
                f"after an abort ({error}): stop this producer and start a new one")
            fatal.__cause__ = error
            error = fatal
        self.fatal_error(error)

    # -- resets (idempotent producer) ---------------------------------------------------------------------
    def request_reset(self, error: BaseException) -> None:
        """The broker forgot our id, or its sequences and ours diverged, or a sequence will never be
        acknowledged. Idempotent producer: a new epoch once nothing is in doubt. Transactional producer:
        the transaction is lost (abortable); the epoch is bumped after the abort, never before."""
        if not self.idempotent:
            return
        if self.transactional:
            self._bump_after_abort = True
            if self.state in (S.IN_TRANSACTION, S.COMMITTING):
                self.abortable_error(error)
            return
        if self.state is S.READY:
            self._reset_pending = True

    @property
    def reset_pending(self) -> bool:
        return self._reset_pending

    def reset_allowed(self) -> bool:
        """A reset may start: nothing in flight (its answer may still change what we know) and nothing in
        doubt anywhere, queued or not."""
        return self._reset_pending and self._in_flight == 0 and self._in_doubt == 0

    @property
    def in_doubt(self) -> int:
        return self._in_doubt

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- the sender's side: draining and outcomes ---------------------------------------------------------
    def sequences(self, topic: str, partition: int) -> PartitionSequences:
        key = (topic, partition)
        state = self._partitions.get(key)
        if state is None:
            state = self._partitions[key] = PartitionSequences(topic, partition)
        return state

    def sendable(self, topic: str, partition: int, head_numbered: bool = True) -> bool:
        """May the sender drain this partition's head now (``head_numbered``: the head already has a
        sequence, it is a retry)? Not while the partition is blocked; while a reset waits, only a retry of
        a partition holding a batch in doubt (it goes with its old identity, to settle it; a new batch would
        need a number under an identity that is about to go, and its in-doubt batch may be in flight, not at
        the head); in a transaction, only partitions the coordinator has added (the others are collected for
        one AddPartitionsToTxn, see :meth:`partitions_to_add`)."""
        state = self._partitions.get((topic, partition))
        if state is not None and state.blocked:
            return False
        if self._reset_pending:
            return head_numbered and state is not None and bool(state.in_doubt)
        if self.transactional:
            key = (topic, partition)
            if key in self._txn_partitions:
                # Aborting, or abortable: what is still queued there is retries (the abort failed the rest),
                # settled under their sequences so that nothing the broker waits for goes missing.
                return self.state in _TXN_DRAINING
            if self.state in (S.IN_TRANSACTION, S.COMMITTING) and key not in self._adding:
                self._to_add.add(key)
            return False
        return True

    def blocked(self, topic: str, partition: int) -> bool:
        state = self._partitions.get((topic, partition))
        return state is not None and state.blocked

    def on_drain(self, batch: SequencedBatch, record_count: int) -> tuple[int, int, int, bool]:
        """A batch leaves its queue: ``(producer_id, epoch, base_sequence, transactional)`` for its bytes.
        A retry keeps what it had (its bytes are reused; the broker recognises it). A new batch takes the
        partition's next sequence, which moves on by its record count (wrapping at 2**31)."""
        if not self.idempotent:
            return (-1, -1, -1, False)
        if self.state not in _SENDING:
            self._refuse("on_drain", "no producer identity")
        state = self.sequences(batch.topic, batch.partition)
        if batch.base_sequence >= 0 and (batch.outcome_unknown or (
                batch.producer_id == self.producer_id and batch.producer_epoch == self.epoch)):
            # A retry under the current identity, or in doubt (a reset never happens while one is, so that
            # is the current identity too): the same numbers, so that the broker recognises it.
            state.in_flight += 1
            self._in_flight += 1
            return (batch.producer_id, batch.producer_epoch, batch.base_sequence, batch.transactional)
        # New, or numbered under an identity that is gone (known unwritten: a reset waits for in-doubt ones).
        if self._reset_pending:
            raise errors.IllegalStateError(
                f"a new batch of {batch.topic}-{batch.partition} drained while a reset waits")
        state.in_flight += 1
        self._in_flight += 1
        sequence = state.next_sequence
        state.next_sequence = (sequence + record_count) & SEQUENCE_MASK
        return (self.producer_id, self.epoch, sequence, self.transactional)

    def _returned(self, batch: SequencedBatch) -> PartitionSequences:
        state = self._partitions.get((batch.topic, batch.partition))
        if state is None or state.in_flight <= 0:
            raise errors.IllegalStateError(f"an outcome for {batch.topic}-{batch.partition}, which has nothing in flight")
        state.in_flight -= 1
        self._in_flight -= 1
        return state

    def _settled_doubt(self, state: PartitionSequences, batch: SequencedBatch) -> None:
        if batch.outcome_unknown:
            batch.outcome_unknown = False
            state.in_doubt.discard(batch)
            self._in_doubt -= 1

    def _unblock(self, state: PartitionSequences) -> None:
        if state.blocked and state.in_flight == 0:
            state.blocked = False

    def release(self, batch: SequencedBatch) -> None:
        """The request of a batch already failed (its deadline passed while in flight) ended: it no longer
        counts as in flight. Its failure was reported with :meth:`on_failed` (``in_flight=False``)."""
        if not self.idempotent:
            return
        self._unblock(self._returned(batch))

    def on_success(self, batch: SequencedBatch) -> None:
        """Written (or already written: a duplicate of an earlier attempt)."""
        if not self.idempotent:
            return
        state = self._returned(batch)
        self._settled_doubt(state, batch)
        self._unblock(state)

    def on_retriable(self, batch: SequencedBatch) -> None:
        """A definite answer that *this attempt* was not written (NOT_LEADER, NOT_ENOUGH_REPLICAS...): it
        goes back to its queue with its sequence; the partition is blocked until everything in flight is
        back. A batch in doubt from an earlier attempt stays in doubt: that attempt may be in the log
        whatever this one was told (only an acknowledgement, or :meth:`on_not_written`, settles it)."""
        if not self.idempotent:
            return
        state = self._returned(batch)
        state.blocked = True
        self._unblock(state)

    def on_not_written(self, batch: SequencedBatch) -> None:
        """The broker has no batch of ours there: OUT_OF_ORDER_SEQUENCE_NUMBER (had an earlier attempt been
        written, it would answer DUPLICATE_SEQUENCE_NUMBER) or UNKNOWN_PRODUCER_ID (it forgot our identity,
        so nothing can be deduplicated against it any more). The batch is no longer in doubt; the caller
        asks for a reset (:meth:`request_reset`) and it goes back to its queue.

        The answer settles every batch in doubt on that partition, not only this one: the broker has no
        sequence state of ours there it could match them against (forgotten, or diverged: a batch behind
        a refused one cannot have been written), so re-sending them under the old identity could never
        settle them, and waiting for that would hold the reset (and them) until they expire."""
        if not self.idempotent:
            return
        state = self._returned(batch)
        self._settled_doubt(state, batch)
        for other in state.in_doubt:
            other.outcome_unknown = False
        self._in_doubt -= len(state.in_doubt)
        state.in_doubt.clear()
        state.blocked = True
        self._unblock(state)

    def on_unknown(self, batch: SequencedBatch) -> None:
        """No answer (lost, timed out, cut), or an answer that does not say (REQUEST_TIMED_OUT,
        NOT_ENOUGH_REPLICAS_AFTER_APPEND): the broker may have written it. It goes back to its queue and
        is only ever re-sent with its old identity and sequence."""
        if not self.idempotent:
            return
        state = self._returned(batch)
        if not batch.outcome_unknown:
            batch.outcome_unknown = True
            state.in_doubt.add(batch)
            self._in_doubt += 1
        state.blocked = True
        self._unblock(state)

    def on_failed(self, batch: SequencedBatch, error: BaseException, in_flight: bool) -> None:
        """The batch fails for good (a fatal answer, its deadline, the producer closing). If it carried a
        sequence, that sequence will never be acknowledged: later batches of the partition would leave a
        gap, so the identity must change (idempotent) or the transaction abort (transactional). In a
        transaction any failed record makes the transaction abortable."""
        if not self.idempotent:
            return
        # Refused by the broker in answer to this very attempt, and no earlier attempt in doubt: not written.
        refused = in_flight and not batch.outcome_unknown
        state = self._returned(batch) if in_flight else self._partitions.get((batch.topic, batch.partition))
        if state is not None:
            self._settled_doubt(state, batch)
            self._unblock(state)
        if not self.transactional:
            if batch.base_sequence >= 0:
                self.request_reset(error)
            return
        if batch.base_sequence >= 0 and not (refused and self._take_back(state, batch)):
            self._bump_after_abort = True
        if self.state in (S.IN_TRANSACTION, S.COMMITTING):
            failed = errors.TransactionFailedError(
                f"a batch of {batch.topic}-{batch.partition} failed in transaction "
                f"{self.transactional_id!r}, which must be aborted: {error}", (error,))
            failed.__cause__ = error
            self.abortable_error(failed)

    @staticmethod
    def _take_back(state: Optional[PartitionSequences], batch: SequencedBatch) -> bool:
        """Give a refused batch's sequence back if nothing after it was numbered and nothing of the partition
        is out: the broker still expects it, so the next batch takes it and no gap is left (no epoch bump,
        which some brokers refuse, is needed after the abort)."""
        if state is None or state.in_flight or state.in_doubt:
            return False
        if state.next_sequence != (batch.base_sequence + batch.record_count) & SEQUENCE_MASK:
            return False
        state.next_sequence = batch.base_sequence
        return True

    # -- transactions: the user's side --------------------------------------------------------------------
    def _require_transactional(self, operation: str) -> None:
        if not self.transactional:
            raise errors.IllegalStateError(f"{operation}() needs a transactional_id (this producer has none)")

    def begin_transaction(self) -> None:
        self._require_transactional("begin_transaction")
        if self.state is not S.READY:
            self._refuse("begin_transaction",
                         "a transaction is already open" if self.state is S.IN_TRANSACTION else "")
        self._transition(S.IN_TRANSACTION)

    def check_can_send(self) -> None:
        """A transactional producer takes records only inside a transaction."""
        if self.state is S.IN_TRANSACTION:
            return
        if self.state is S.FATAL_ERROR or self.state is S.ABORTABLE_ERROR:
            raise self._copy_error()
        raise errors.IllegalStateError(
            f"send() on transactional producer {self.transactional_id!r} outside a transaction (state "
            f"{self.state.value}): call begin_transaction() first")

    def prepare_commit(self) -> None:
        """IN_TRANSACTION -> COMMITTING (a second call while committing resumes the same commit)."""
        self._require_transactional("commit_transaction")
        if self.state is S.COMMITTING:
            return
        if self.state is not S.IN_TRANSACTION:
            self._refuse("commit_transaction")
        self._transition(S.COMMITTING)

    def prepare_abort(self) -> None:
        """IN_TRANSACTION or ABORTABLE_ERROR -> ABORTING (a second call while aborting resumes it)."""
        self._require_transactional("abort_transaction")
        if self.state is S.ABORTING:
            return
        if self.state not in (S.IN_TRANSACTION, S.ABORTABLE_ERROR):
            self._refuse("abort_transaction")
        self._transition(S.ABORTING)

    @property
    def committing(self) -> bool:
        return self.state is S.COMMITTING

    @property
    def aborting(self) -> bool:
        return self.state is S.ABORTING

    def needs_end_txn(self) -> bool:
        """Whether EndTxn must be sent: only if the coordinator knows of the transaction (a partition or a
        group was added); a transaction that wrote nothing ends here."""
        return bool(self._txn_partitions or self._offsets_added or self._adding)

    def end_succeeded(self) -> None:
        """EndTxn answered (or was not needed). The transaction is over. After an abort that left
        sequences unknown the epoch is bumped first (INITIALIZING); else READY."""
        if self.state not in (S.COMMITTING, S.ABORTING):
            self._refuse("end_succeeded")
        self._txn_partitions.clear()
        self._adding.clear()
        self._to_add.clear()
        self._offsets_added.clear()
        self._error = None
        if self.state is S.ABORTING and self._bump_after_abort:
            self._transition(S.INITIALIZING)
        else:
            self._transition(S.READY)

    # -- transactions: partitions and offsets -------------------------------------------------------------
    def partitions_to_add(self) -> list[TopicPartition]:
        """The partitions drained-for but not yet in the transaction, all at once (one AddPartitionsToTxn
        per drain pass): they move to *adding* until :meth:`partitions_added` or :meth:`partitions_add_failed`."""
        if not self._to_add or self.state not in (S.IN_TRANSACTION, S.COMMITTING):
            return []
        batch = sorted(self._to_add)
        self._adding.update(self._to_add)
        self._to_add.clear()
        return batch

    def partitions_added(self, partitions: Iterable[TopicPartition]) -> None:
        for key in partitions:
            self._adding.discard(key)
            self._txn_partitions.add(key)

    def partitions_add_failed(self, partitions: Iterable[TopicPartition], error: BaseException) -> None:
        """Retriable: they are asked for again next time. Otherwise the error is abortable or fatal (the
        caller says which by calling :meth:`abortable_error` / :meth:`fatal_error`)."""
        for key in partitions:
            self._adding.discard(key)
            if getattr(error, "retriable", False):
                self._to_add.add(key)

    @property
    def adding_partitions(self) -> bool:
        return bool(self._adding)

    def in_transaction(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._txn_partitions

    @property
    def transaction_partitions(self) -> frozenset[TopicPartition]:
        return frozenset(self._txn_partitions)

    def check_can_send_offsets(self, group_id: str) -> None:
        self._require_transactional("send_offsets_to_transaction")
        if not isinstance(group_id, str) or not group_id:
            raise ValueError(f"group_id must be a non-empty str, got {group_id!r}")
        if self.state is not S.IN_TRANSACTION:
            self._refuse("send_offsets_to_transaction")

    def offsets_added(self, group_id: str) -> bool:
        return group_id in self._offsets_added

    def mark_offsets_added(self, group_id: str) -> None:
        if self.state is not S.IN_TRANSACTION:
            self._refuse("mark_offsets_added")
        self._offsets_added.add(group_id)
