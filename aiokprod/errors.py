"""aiokprod's exceptions.

The hierarchy::

    KafkaError                          base of everything the package raises on purpose; .retriable
    ├── RetriableError                  kind: the condition may clear; the producer retries these itself
    ├── AbortableError                  kind: the transaction must be aborted; the producer can go on
    ├── FatalError                      kind: the producer can do nothing more but stop()
    ├── CorruptFrameError               a protocol frame is malformed, truncated or has an impossible length
    │   └── CorruptRecordError          a record batch is malformed (CRC, magic, lengths)
    ├── BrokerResponseError             an error code from the broker (.code .name .retriable
    │   │                               .needs_metadata_refresh .broker_message .topic .partition)
    │   ├── NotLeaderOrFollowerError    one subclass per code of the protocol's error table, named in
    │   ├── UnknownTopicOrPartitionError  CamelCase from the code's name + "Error" (a trailing
    │   ├── ...                         _ERROR/_EXCEPTION folds into "Error": UnknownServerError,
    │   │                               NetworkError, InvalidTopicError, KafkaStorageError)
    │   ├── UnsupportedVersionError     code 35; the client raises it too when version negotiation finds
    │   │                               no version both sides support (code 35, its own message)
    │   └── RequestTimedOutError        code 7: the *broker* timed out (e.g. acks=-1 replication)
    ├── KafkaConnectionError            the connection failed or closed (a RetriableError)
    ├── KafkaTimeoutError               a client-side deadline passed (delivery, metadata wait, request);
    │   │                               a RetriableError like Java's TimeoutException
    │   ├── DeliveryTimeoutError        a record was not delivered within delivery_timeout_ms
    │   └── BufferExhaustedError        send() found no room in buffer_memory within max_block_ms
    │                                   (back-pressure; Java's BufferExhaustedException)
    ├── RecordTooLargeError             client-side: a record is larger than max_request_size /
    │                                   buffer_memory (the broker's is MessageTooLargeError, code 10)
    ├── ProducerClosedError             send() after close(), or pending records failed by close
    ├── IllegalStateError               an operation not allowed in the current state (transactions)
    ├── SerializationError              a key or value serializer raised (.topic, .field "key"/"value";
    │                                   the serializer's exception is the __cause__)
    ├── RetriesExhaustedError           a record failed ``retries`` + 1 attempts (.attempts, .topic,
    │                                   .partition, .last_error: the broker's last error, also __cause__)
    ├── TransactionFailedError          an AbortableError: records of the transaction failed, so it
    │                                   cannot commit (the first record error is its __cause__)
    ├── TransactionAbortedError         an AbortableError: the record's transaction was aborted before it
    │                                   was sent
    ├── TransactionTimedOutError        an AbortableError: open longer than transaction_timeout_ms
    ├── AuthenticationError             SASL/TLS authentication failed (a FatalError); the broker's SASL
    │                                   codes (UnsupportedSaslMechanismError 33, IllegalSaslStateError 34,
    │                                   SaslAuthenticationFailedError 58) are subclasses of it too
    └── AuthorizationError              the broker refused an operation to an authenticated client; the
                                        broker's *_AUTHORIZATION_FAILED codes (TopicAuthorizationFailedError
                                        29, GroupAuthorizationFailedError 30, ClusterAuthorizationFailedError
                                        31, TransactionalIdAuthorizationFailedError 53,
                                        DelegationTokenAuthorizationFailedError 65) are subclasses of it too

The three *kinds* (KIP-1050's split, as the Java client has it) are bases that a class has besides its
place above, so that ``except errors.AbortableError`` catches every error after which the transaction
must be aborted, whatever raised it:

* ``RetriableError``: every broker code the protocol marks retriable, ``KafkaConnectionError``,
  ``KafkaTimeoutError``. The producer retries these inside (within ``delivery_timeout_ms``); a user sees
  one only when that budget ran out.
* ``AbortableError``: ``TransactionFailedError``, ``TransactionAbortedError``, ``TransactionTimedOutError``, TOPIC/GROUP_AUTHORIZATION_FAILED (29, 30),
  OUT_OF_ORDER_SEQUENCE_NUMBER (45), INVALID_PRODUCER_ID_MAPPING (49), UNKNOWN_PRODUCER_ID (59),
  TRANSACTION_ABORTABLE (120). Abort the transaction, then go on with the next one.
* ``FatalError``: PRODUCER_FENCED (90), INVALID_PRODUCER_EPOCH (47), INVALID_TXN_STATE (48),
  TRANSACTION_COORDINATOR_FENCED (52), TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), CLUSTER_AUTHORIZATION_FAILED
  (31), UNSUPPORTED_VERSION (35), ``AuthenticationError``. Only ``stop()`` is left.

Broker codes come from the generated table ``aiokprod._error_codes.ERROR_CODES`` (code -> name,
retriable, needs_metadata_refresh, message). :func:`for_code` turns a code into an instance; the classes
are created from the table at import, and every one is a module attribute (``from aiokprod.errors import
ProducerFencedError`` works). ``needs_metadata_refresh`` marks the codes meaning stale metadata (the Java
client's InvalidMetadataException family: UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, KAFKA_STORAGE_ERROR,
UNKNOWN_TOPIC_ID, INCONSISTENT_TOPIC_ID).
"""
from __future__ import annotations

from typing import Any

from aiokprod._error_codes import ERROR_CODES


class KafkaError(Exception):
    """Base class of aiokprod's errors."""

    retriable = False


class RetriableError(KafkaError):
    """Kind: the condition may clear by itself (the producer retries these within its deadlines)."""

    retriable = True


class AbortableError(KafkaError):
    """Kind: the current transaction cannot commit and must be aborted; the producer can go on after."""


class FatalError(KafkaError):
    """Kind: the producer cannot go on (fenced, not authorised, unsupported): only ``stop()`` is left."""


class CorruptFrameError(KafkaError):
    """A protocol frame (or a part of it) is malformed, truncated or carries an impossible length."""


class CorruptRecordError(CorruptFrameError):
    """A record batch is malformed: bad CRC, bad magic, truncated, or an impossible length."""


class KafkaConnectionError(RetriableError):
    """A connection to a broker failed, was closed, or broke mid-request. Retriable."""

    retriable = True


class KafkaTimeoutError(RetriableError):
    """A client-side deadline passed (delivery timeout, metadata wait, request timeout).

    Retriable in the Java sense (the condition may clear); whether the caller retries is its choice.
    Not to be confused with :class:`RequestTimedOutError`, the broker's error code 7.
    """

    retriable = True


class DeliveryTimeoutError(KafkaTimeoutError):
    """A record was not delivered within ``delivery_timeout_ms`` (the sender expired its batch).

    ``__cause__`` is the error of the batch's last attempt (None if it was never sent, or if it was in flight
    with no answer yet). ``may_have_been_written`` is True when the last attempt got no answer, so the broker
    may have written the record after all. ``attempts`` counts the requests that carried it.
    """

    topic: str | None = None
    partition: int | None = None
    attempts = 0
    may_have_been_written = False


class BufferExhaustedError(KafkaTimeoutError):
    """``send()`` waited ``max_block_ms`` for room in ``buffer_memory`` and found none: back-pressure.

    A subclass of :class:`KafkaTimeoutError` (what it was before it had a name of its own), so code catching
    that still catches it; a caller that wants to tell "slow down and retry" from "the broker is gone" (a web
    handler answering 503 with Retry-After) catches this one first.
    """


class RecordTooLargeError(KafkaError):
    """Client-side: a record is larger than ``max_request_size`` (or ``buffer_memory``)."""


class ProducerClosedError(KafkaError):
    """The producer is closed (or closing) and cannot accept or deliver the record."""


class IllegalStateError(KafkaError):
    """An operation is not allowed in the current state (e.g. a transaction method out of order)."""


class AuthenticationError(FatalError):
    """SASL (or TLS) authentication failed. The broker's SASL error codes are subclasses of this."""


class AuthorizationError(KafkaError):
    """The broker refused an operation to this (authenticated) client: an ACL denies it. Not retriable.
    The broker's authorization codes (29, 30, 31, 53, 65) are subclasses of this."""


class SerializationError(KafkaError):
    """A key or value serializer raised. ``topic`` and ``field`` ("key" or "value") say where; the
    serializer's own exception is the ``__cause__``. Nothing was appended."""

    def __init__(self, topic: str, field: str, cause: BaseException) -> None:
        self.topic = topic
        self.field = field
        super().__init__(f"the {field} serializer raised for a record to topic {topic!r}: "
                         f"{type(cause).__name__}: {cause}")
        self.__cause__ = cause

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return (type(self), (self.topic, self.field, self.__cause__))


class RetriesExhaustedError(KafkaError):
    """A batch failed every attempt ``retries`` allows (``retries`` + 1 in all) before its delivery
    timeout. ``last_error`` (also the ``__cause__``) is the broker's (or the connection's) last error."""

    def __init__(self, message: str, *, topic: str, partition: int, attempts: int,
                 last_error: BaseException | None) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.attempts = attempts
        self.last_error = last_error
        self.__cause__ = last_error


class TransactionAbortedError(AbortableError):
    """The record was not sent: its transaction was aborted before it left the buffer."""


class TransactionTimedOutError(AbortableError):
    """The transaction was open longer than ``transaction_timeout_ms``: the coordinator aborts such a
    transaction, so it cannot commit. Abort it."""


class TransactionFailedError(AbortableError):
    """Records of the transaction failed (or were failed by an abort), so it cannot commit: abort it.

    ``__cause__`` is the first record error; ``errors`` holds every distinct one (at most a few)."""

    def __init__(self, message: str, errors: tuple[BaseException, ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors


class BrokerResponseError(KafkaError):
    """An error code returned by a broker, with the context it applies to.

    Class attributes ``code``, ``name``, ``retriable``, ``needs_metadata_refresh`` and ``description``
    (the protocol's message for the code) are set on each per-code subclass; instances add
    ``broker_message`` (the response's error message, if any), ``topic`` and ``partition``.
    """

    code: int = -1
    name: str = "UNKNOWN_SERVER_ERROR"
    retriable = False
    needs_metadata_refresh = False
    description = ""

    def __init__(self, broker_message: str | None = None, topic: str | None = None,
                 partition: int | None = None):
        self.broker_message = broker_message
        self.topic = topic
        self.partition = partition
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.topic is not None:
            where = f" on {self.topic}" + (f"[{self.partition}]" if self.partition is not None else "")
        elif self.partition is not None:
            where = f" on partition {self.partition}"
        text = f"[Error {self.code}] {self.name}{where}"
        text += f": {self.broker_message}" if self.broker_message else (
            f": {self.description}" if self.description else "")
        flags = []
        if self.retriable:
            flags.append("retriable")
        if self.needs_metadata_refresh:
            flags.append("needs metadata refresh")
        if flags:
            text += f" ({', '.join(flags)})"
        return text

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return (type(self), (self.broker_message, self.topic, self.partition))


def _class_name(name: str) -> str:
    for suffix in ("_ERROR", "_EXCEPTION"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return "".join(part.capitalize() for part in name.split("_")) + "Error"


# Extra bases for codes that belong to a client-side family or kind as well (see the module docstring).
_EXTRA_BASES: dict[int, tuple[type[KafkaError], ...]] = {
    33: (AuthenticationError,),  # UNSUPPORTED_SASL_MECHANISM
    34: (AuthenticationError,),  # ILLEGAL_SASL_STATE
    58: (AuthenticationError,),  # SASL_AUTHENTICATION_FAILED
    # Fatal: another instance owns the transactional id, or we may not act as it, or cannot at all.
    31: (AuthorizationError, FatalError),  # CLUSTER_AUTHORIZATION_FAILED
    35: (FatalError,),          # UNSUPPORTED_VERSION
    47: (FatalError,),          # INVALID_PRODUCER_EPOCH (a newer epoch exists: we are a zombie)
    48: (FatalError,),          # INVALID_TXN_STATE
    52: (FatalError,),          # TRANSACTION_COORDINATOR_FENCED
    53: (AuthorizationError, FatalError),  # TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    90: (FatalError,),          # PRODUCER_FENCED
    # Abortable: this transaction is lost, the producer is not.
    29: (AuthorizationError, AbortableError),  # TOPIC_AUTHORIZATION_FAILED
    30: (AuthorizationError, AbortableError),  # GROUP_AUTHORIZATION_FAILED
    45: (AbortableError,),      # OUT_OF_ORDER_SEQUENCE_NUMBER
    49: (AbortableError,),      # INVALID_PRODUCER_ID_MAPPING
    59: (AbortableError,),      # UNKNOWN_PRODUCER_ID
    120: (AbortableError,),     # TRANSACTION_ABORTABLE
    65: (AuthorizationError,),  # DELEGATION_TOKEN_AUTHORIZATION_FAILED
}

#: code -> BrokerResponseError subclass, for every code of the table except 0 (NONE).
ERROR_CLASSES: dict[int, type[BrokerResponseError]] = {}


def _build_classes() -> None:
    namespace = globals()
    for code, (name, retriable, refresh, message) in ERROR_CODES.items():
        if code == 0:
            continue
        cls_name = _class_name(name)
        extra = _EXTRA_BASES.get(code, ())
        if retriable:
            extra += (RetriableError,)
        cls = type(cls_name, (BrokerResponseError,) + extra, {
            "__module__": __name__,
            "__doc__": f"Broker error {code} {name}: {message}",
            "code": code,
            "name": name,
            "retriable": retriable,
            "needs_metadata_refresh": refresh,
            "description": message,
        })
        ERROR_CLASSES[code] = cls
        namespace[cls_name] = cls


_build_classes()


def for_code(code: int, broker_message: str | None = None, topic: str | None = None,
             partition: int | None = None) -> BrokerResponseError:
    """The exception instance for a broker error code (an unknown code gets a plain
    ``BrokerResponseError`` carrying it). Code 0 is not an error: ValueError."""
    if code == 0:
        raise ValueError("error code 0 (NONE) is not an error")
    cls = ERROR_CLASSES.get(code)
    if cls is not None:
        return cls(broker_message, topic, partition)
    # A code newer than our table: keep the code; not retriable (the Java client's choice for
    # UnknownServerException).
    err = BrokerResponseError(broker_message, topic, partition)
    err.code = code
    err.name = f"UNKNOWN_CODE_{code}"
    err.args = (str(err),)
    return err


# Names for static analysis and `from aiokprod.errors import X` of the common ones. They are assigned
# by _build_classes() above; these lines only state them (and fail loudly if the table drops one).
UnknownServerError = ERROR_CLASSES[-1]
CorruptMessageError = ERROR_CLASSES[2]
UnknownTopicOrPartitionError = ERROR_CLASSES[3]
LeaderNotAvailableError = ERROR_CLASSES[5]
NotLeaderOrFollowerError = ERROR_CLASSES[6]
RequestTimedOutError = ERROR_CLASSES[7]
MessageTooLargeError = ERROR_CLASSES[10]
NetworkError = ERROR_CLASSES[13]
CoordinatorLoadInProgressError = ERROR_CLASSES[14]
CoordinatorNotAvailableError = ERROR_CLASSES[15]
NotCoordinatorError = ERROR_CLASSES[16]
InvalidTopicError = ERROR_CLASSES[17]
RecordListTooLargeError = ERROR_CLASSES[18]
NotEnoughReplicasError = ERROR_CLASSES[19]
NotEnoughReplicasAfterAppendError = ERROR_CLASSES[20]
InvalidRequiredAcksError = ERROR_CLASSES[21]
TopicAuthorizationFailedError = ERROR_CLASSES[29]
GroupAuthorizationFailedError = ERROR_CLASSES[30]
ClusterAuthorizationFailedError = ERROR_CLASSES[31]
InvalidTimestampError = ERROR_CLASSES[32]
UnsupportedSaslMechanismError = ERROR_CLASSES[33]
IllegalSaslStateError = ERROR_CLASSES[34]
UnsupportedVersionError = ERROR_CLASSES[35]
TopicAlreadyExistsError = ERROR_CLASSES[36]
InvalidPartitionsError = ERROR_CLASSES[37]
InvalidReplicationFactorError = ERROR_CLASSES[38]
NotControllerError = ERROR_CLASSES[41]
InvalidRequestError = ERROR_CLASSES[42]
PolicyViolationError = ERROR_CLASSES[44]
OutOfOrderSequenceNumberError = ERROR_CLASSES[45]
DuplicateSequenceNumberError = ERROR_CLASSES[46]
InvalidProducerEpochError = ERROR_CLASSES[47]
InvalidTxnStateError = ERROR_CLASSES[48]
InvalidProducerIdMappingError = ERROR_CLASSES[49]
InvalidTransactionTimeoutError = ERROR_CLASSES[50]
ConcurrentTransactionsError = ERROR_CLASSES[51]
TransactionCoordinatorFencedError = ERROR_CLASSES[52]
TransactionalIdAuthorizationFailedError = ERROR_CLASSES[53]
DelegationTokenAuthorizationFailedError = ERROR_CLASSES[65]
OperationNotAttemptedError = ERROR_CLASSES[55]
KafkaStorageError = ERROR_CLASSES[56]
SaslAuthenticationFailedError = ERROR_CLASSES[58]
UnknownProducerIdError = ERROR_CLASSES[59]
FencedLeaderEpochError = ERROR_CLASSES[74]
UnknownLeaderEpochError = ERROR_CLASSES[75]
UnsupportedCompressionTypeError = ERROR_CLASSES[76]
InvalidRecordError = ERROR_CLASSES[87]
ThrottlingQuotaExceededError = ERROR_CLASSES[89]
ProducerFencedError = ERROR_CLASSES[90]
UnknownTopicIdError = ERROR_CLASSES[100]
TransactionalIdNotFoundError = ERROR_CLASSES[105]
TransactionAbortableError = ERROR_CLASSES[120]


# -- what the sender does with a Produce error ----------------------------------------------------------------
class ProduceAction:
    """The sender's decision for one partition's answer (see :func:`classify_produce_error`)."""

    SUCCEED = "succeed"                  # delivered (or already delivered: a duplicate of a retried batch)
    RETRY = "retry"                      # back to the queue, after backoff
    REFRESH_AND_RETRY = "refresh_retry"  # the same, after asking for fresh metadata (leader moved, ...)
    RESET_AND_RETRY = "reset_retry"      # idempotence state lost or diverged: new producer id, renumber
    RETRY_UNSURE = "retry_unsure"        # retry, but the broker may have written it: the batch is in doubt
    FAIL = "fail"                        # the batch fails with the error


def classify_produce_error(code: int, *, idempotent: bool, earlier_batch_failed: bool) -> str:
    """One place that decides retry / refresh / reset / fail for a Produce partition error code.

    ``earlier_batch_failed``: an earlier batch of the same partition failed retriably while this one was in
    flight, so an OUT_OF_ORDER_SEQUENCE answer is the expected echo of that gap, not lost broker state.
    """
    if code == 0 or code == 46:  # NONE, DUPLICATE_SEQUENCE_NUMBER (an earlier attempt was written)
        return ProduceAction.SUCCEED
    if idempotent:
        if code == 59:  # UNKNOWN_PRODUCER_ID: the broker forgot us (restart, retention)
            return ProduceAction.RESET_AND_RETRY
        if code == 7 or code == 20:
            # REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND: the leader may have appended it (the Java
            # client and franz-go treat both as "unsure if produced"); only ever re-sent under its identity.
            return ProduceAction.RETRY_UNSURE
        if code == 45:  # OUT_OF_ORDER_SEQUENCE_NUMBER
            return ProduceAction.RETRY if earlier_batch_failed else ProduceAction.RESET_AND_RETRY
    info = ERROR_CODES.get(code)
    if info is None or not info[1]:
        return ProduceAction.FAIL
    return ProduceAction.REFRESH_AND_RETRY if info[2] else ProduceAction.RETRY
