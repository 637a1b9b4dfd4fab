"""The error table and the exception hierarchy."""
from __future__ import annotations

import csv
import os
import pickle

import pytest

from aiokprod import errors
from aiokprod._error_codes import ERROR_CODES

# The committed copy of the reference table (tools/kafka-protocol; test_protocol checks it against
# ../shared when that is present).
TSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "kafka-protocol",
                   "error-codes.tsv")


def test_table_matches_tsv():
    with open(TSV, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == len(ERROR_CODES)
    for row in rows:
        name, retriable, _refresh, message = ERROR_CODES[int(row["code"])]
        assert (name, retriable, message) == (row["name"], row["retriable"] == "yes", row["message"])


def test_named_classes():
    assert errors.NotLeaderOrFollowerError.code == 6
    assert errors.UnknownTopicOrPartitionError.code == 3
    assert errors.ProducerFencedError.code == 90
    assert errors.OutOfOrderSequenceNumberError.code == 45
    assert errors.DuplicateSequenceNumberError.code == 46
    assert errors.UnknownProducerIdError.code == 59
    assert errors.MessageTooLargeError.code == 10
    assert errors.UnknownServerError.code == -1
    assert errors.KafkaStorageError.code == 56
    assert errors.NetworkError.code == 13
    assert errors.RequestTimedOutError.code == 7
    for code, cls in errors.ERROR_CLASSES.items():
        assert issubclass(cls, errors.BrokerResponseError) and cls.code == code
        assert getattr(errors, cls.__name__) is cls
        assert cls.__module__ == "aiokprod.errors"
    assert len({c.__name__ for c in errors.ERROR_CLASSES.values()}) == len(errors.ERROR_CLASSES)


def test_flags():
    assert errors.NotLeaderOrFollowerError.retriable and errors.NotLeaderOrFollowerError.needs_metadata_refresh
    assert errors.UnknownTopicOrPartitionError.needs_metadata_refresh
    assert errors.LeaderNotAvailableError.needs_metadata_refresh
    assert errors.FencedLeaderEpochError.needs_metadata_refresh
    assert errors.UnknownLeaderEpochError.needs_metadata_refresh
    assert not errors.NotEnoughReplicasError.needs_metadata_refresh and errors.NotEnoughReplicasError.retriable
    assert not errors.NotCoordinatorError.needs_metadata_refresh and errors.NotCoordinatorError.retriable
    assert not errors.ProducerFencedError.retriable
    assert not errors.OutOfOrderSequenceNumberError.retriable
    assert errors.KafkaConnectionError.retriable and errors.KafkaTimeoutError.retriable
    assert not errors.RecordTooLargeError.retriable


def test_for_code_instance_and_str():
    err = errors.for_code(6, broker_message="moved", topic="t", partition=3)
    assert isinstance(err, errors.NotLeaderOrFollowerError)
    assert (err.code, err.name, err.broker_message, err.topic, err.partition) == (
        6, "NOT_LEADER_OR_FOLLOWER", "moved", "t", 3)
    text = str(err)
    for part in ("6", "NOT_LEADER_OR_FOLLOWER", "moved", "t[3]", "retriable", "metadata refresh"):
        assert part in text
    assert "Error 90" in str(errors.for_code(90))
    assert pickle.loads(pickle.dumps(err)).partition == 3
    unknown = errors.for_code(4242, "new")
    assert type(unknown) is errors.BrokerResponseError and unknown.code == 4242 and "4242" in str(unknown)
    assert errors.UnknownServerError.code == -1 and not errors.BrokerResponseError.retriable
    with pytest.raises(ValueError):
        errors.for_code(0)


def test_hierarchy():
    for cls in (errors.CorruptFrameError, errors.BrokerResponseError, errors.KafkaConnectionError,
                errors.KafkaTimeoutError, errors.RecordTooLargeError, errors.ProducerClosedError,
                errors.IllegalStateError, errors.AuthenticationError):
        assert issubclass(cls, errors.KafkaError)
    assert issubclass(errors.CorruptRecordError, errors.CorruptFrameError)
    assert issubclass(errors.SaslAuthenticationFailedError, errors.AuthenticationError)
    assert issubclass(errors.UnsupportedSaslMechanismError, errors.AuthenticationError)
    assert issubclass(errors.UnsupportedVersionError, errors.BrokerResponseError)
    assert errors.UnsupportedVersionError.code == 35
    assert not issubclass(errors.KafkaTimeoutError, errors.BrokerResponseError)
