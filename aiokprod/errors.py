"""aiokprod's exceptions.

``KafkaError`` is the base of everything the package raises on purpose. Broker error codes map to
``BrokerResponseError`` subclasses through the table in ``aiokprod._error_codes`` (generated from the
protocol's error-code table); see :func:`for_code`.
"""
from __future__ import annotations


class KafkaError(Exception):
    """Base class of aiokprod's errors."""

    retriable = False


class CorruptFrameError(KafkaError):
    """A protocol frame (or a part of it) is malformed, truncated or carries an impossible length."""


class CorruptRecordError(CorruptFrameError):
    """A record batch is malformed: bad CRC, bad magic, truncated, or an impossible length."""
