"""Hand-written Produce request encoder (versions 3-11) that never copies record batches.

The generated ``ProduceRequest`` copies every batch into one ``bytes``. The sender instead wants a list of
buffers for ``transport.writelines``: the small framing pieces as ``bytes`` and each pre-built batch
passed through as a ``memoryview``. A test checks ``b"".join(result)`` equals the generated encoding for
every version 3-11.

Body layout (v3-v8 classic, v9+ flexible: compact lengths = uvarint(N+1), a 0 byte = no tagged fields
after every struct)::

    transactional_id  nullable string
    acks              int16
    timeout_ms        int32
    topics            array of: name string, partitions array of:
                                  index int32, records nullable bytes (the record batch)
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

from aiokprod.errors import CorruptFrameError, UnsupportedVersionError
from aiokprod.protocol.framing import encode_request_header
from aiokprod.protocol.primitives import (
    BytesLike, read_compact_string, read_string, read_uvarint, write_compact_string, write_string, write_uvarint,
)

__all__ = ["encode_produce_request", "ProduceResponseReader", "PRODUCE_API_KEY", "MIN_VERSION", "MAX_VERSION"]

PRODUCE_API_KEY = 0
MIN_VERSION = 3  # the first version carrying magic-2 record batches and transactional_id
MAX_VERSION = 11
_FIRST_FLEXIBLE = 9

_pack_i16_i32 = struct.Struct(">hi").pack
_pack_i32 = struct.Struct(">i").pack
_pack_i32_i32 = struct.Struct(">ii").pack
# size (patched at the end), api_key, api_version, correlation_id: the start of every request frame.
_pack_frame_start = struct.Struct(">ihhi").pack

# What follows the correlation id up to the topics array (client_id, tagged fields, transactional_id, acks,
# timeout_ms) is the same for every request of a producer: built once per combination, not per request.
_PREFIX_TAILS: dict[tuple[int, str | None, str | None, int, int], bytes] = {}


def _prefix_tail(api_version: int, client_id: str | None, transactional_id: str | None, acks: int,
                 timeout_ms: int) -> bytes:
    key = (api_version, client_id, transactional_id, acks, timeout_ms)
    tail = _PREFIX_TAILS.get(key)
    if tail is None:
        flex = api_version >= _FIRST_FLEXIBLE
        out = bytearray()
        encode_request_header(out, PRODUCE_API_KEY, api_version, 0, client_id, 2 if flex else 1)
        del out[:8]  # api_key, api_version, correlation_id: written per request
        if flex:
            write_compact_string(out, transactional_id)
        else:
            write_string(out, transactional_id)
        out += _pack_i16_i32(acks, timeout_ms)
        tail = bytes(out)
        if len(_PREFIX_TAILS) >= 64:  # a few producers' worth; never grows without bound
            _PREFIX_TAILS.clear()
        _PREFIX_TAILS[key] = tail
    return tail


def encode_produce_request(api_version: int, correlation_id: int, client_id: str | None,
                           transactional_id: str | None, acks: int, timeout_ms: int,
                           topics: Sequence[tuple[str, Sequence[tuple[int, BytesLike | None]]]],
                           ) -> list[bytearray | memoryview]:
    """Encode a whole Produce request frame as a list of buffers for ``transport.writelines``.

    ``topics`` is a sequence of ``(topic_name, partitions)``; ``partitions`` a sequence of
    ``(partition_index, batch)`` where ``batch`` is the built record batch (any bytes-like object, or
    None for null records). The list starts with the int32 size prefix and header; batches appear in it
    as memoryviews of the caller's buffers (keep them alive and unchanged until written).
    """
    if not MIN_VERSION <= api_version <= MAX_VERSION:
        raise UnsupportedVersionError(
            broker_message=f"fast Produce encoder supports versions {MIN_VERSION}-{MAX_VERSION}, "
                           f"not {api_version}")
    flex = api_version >= _FIRST_FLEXIBLE
    pieces: list[bytearray | memoryview] = []
    total = 0  # bytes after the size prefix
    # `cur` collects framing bytes until the next batch; the size prefix is patched in at the end.
    cur = bytearray(_pack_frame_start(0, PRODUCE_API_KEY, api_version, correlation_id))
    cur += _prefix_tail(api_version, client_id, transactional_id, acks, timeout_ms)
    if flex:
        write_uvarint(cur, len(topics) + 1)
    else:
        cur += _pack_i32(len(topics))
    for name, partitions in topics:
        if flex:
            write_compact_string(cur, name)
            write_uvarint(cur, len(partitions) + 1)
        else:
            write_string(cur, name)
            cur += _pack_i32(len(partitions))
        for index, batch in partitions:
            if batch is None:
                cur += _pack_i32(index)
                cur += b"\0" if flex else b"\xff\xff\xff\xff"
                if flex:
                    cur.append(0)  # partition's tagged fields
                continue
            view = batch if isinstance(batch, memoryview) else memoryview(batch)
            size = view.nbytes
            if flex:
                cur += _pack_i32(index)
                write_uvarint(cur, size + 1)
            else:
                cur += _pack_i32_i32(index, size)
            pieces.append(cur)
            total += len(cur)
            pieces.append(view)
            total += size
            cur = bytearray()
            if flex:
                cur.append(0)  # partition's tagged fields
        if flex:
            cur.append(0)  # topic's tagged fields
    if flex:
        cur.append(0)  # request's tagged fields
    if cur:
        pieces.append(cur)
        total += len(cur)
    # pieces[0] is the bytearray that starts with the size prefix (a batch is never first).
    struct.pack_into(">i", pieces[0], 0, total - 4)
    return pieces


# --- the Produce response, read for the sender ------------------------------------------------------------
# The generated ProduceResponse decoder reads every field through one helper call each and builds every
# struct (a LeaderIdAndEpoch per partition even when the broker sent none): ~20 us for an answer about four
# partitions, once per request on the sender's path. This reader takes the fixed part of each partition in
# one struct call and keeps what the sender uses; tagged fields (current_leader, node_endpoints) are skipped.
# A test checks it against the generated decoder for every version 3-11.

_PART_V2 = struct.Struct(">ihqq")    # index, error_code, base_offset, log_append_time_ms
_PART_V5 = struct.Struct(">ihqqq")   # ... and log_start_offset
_I32 = struct.Struct(">i")


class ProducePartitionResult:
    """One partition's answer (the fields of ProduceResponse.PartitionProduceResponse the sender reads)."""

    __slots__ = ("index", "error_code", "base_offset", "log_append_time_ms", "log_start_offset",
                 "record_errors", "error_message")

    # Set by the reader, which fills a bare instance field by field (no __init__ call on the sender's path).
    index: int
    error_code: int
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int
    record_errors: list[tuple[int, str | None]]  # (batch_index, batch_index_error_message)
    error_message: str | None

    def __repr__(self) -> str:
        return (f"ProducePartitionResult(index={self.index}, error_code={self.error_code}, "
                f"base_offset={self.base_offset}, error_message={self.error_message!r})")


class ProduceTopicResult:
    __slots__ = ("name", "partition_responses")

    def __init__(self, name: str, partition_responses: list[ProducePartitionResult]) -> None:
        self.name = name
        self.partition_responses = partition_responses


class ProduceResult:
    __slots__ = ("responses", "throttle_time_ms")

    def __init__(self, responses: list[ProduceTopicResult], throttle_time_ms: int) -> None:
        self.responses = responses
        self.throttle_time_ms = throttle_time_ms


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:  # one byte: every length and count in a normal answer
        return b, pos + 1
    return read_uvarint(buf, pos)


def _array_len(buf: bytes, pos: int, flex: bool) -> tuple[int, int]:
    if flex:
        n, pos = _uvarint(buf, pos)
        n -= 1
    else:
        (n,) = _I32.unpack_from(buf, pos)
        pos += 4
    if n < 0 or n > len(buf) - pos:  # every element takes at least one byte
        raise CorruptFrameError(f"ProduceResponse: impossible array length {n} at byte {pos}")
    return n, pos


def _skip_tags(buf: bytes, pos: int) -> int:
    if buf[pos] == 0:  # no tagged fields: the usual case
        return pos + 1
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise CorruptFrameError("ProduceResponse: tagged field runs past the end")
    return pos


class ProduceResponseReader:
    """``decode(body, version)`` of a Produce response (versions 3-11) into ``ProduceResult``; the sender
    passes it to the connection as the response class of its Produce requests."""

    @staticmethod
    def decode(data: BytesLike, version: int) -> ProduceResult:
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise UnsupportedVersionError(
                broker_message=f"ProduceResponseReader supports versions {MIN_VERSION}-{MAX_VERSION}, not {version}")
        try:
            return _decode_produce_response(data, version)
        except CorruptFrameError:
            raise
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptFrameError(f"malformed ProduceResponse v{version}: {exc!r}") from None


def _decode_produce_response(data: BytesLike, version: int) -> ProduceResult:
    buf = bytes(data)  # an answer is small: indexing and slicing bytes is cheaper than a memoryview
    flex = version >= _FIRST_FLEXIBLE
    fixed = _PART_V5 if version >= 5 else _PART_V2
    fixed_size = fixed.size
    unpack_fixed = fixed.unpack_from
    read_str = read_compact_string if flex else read_string
    pos = 0
    topics: list[ProduceTopicResult] = []
    n_topics, pos = _array_len(buf, pos, flex)
    for _ in range(n_topics):
        name, pos = read_str(buf, pos)
        if name is None:
            raise CorruptFrameError("ProduceResponse: null topic name")
        n_parts, pos = _array_len(buf, pos, flex)
        parts: list[ProducePartitionResult] = []
        for _ in range(n_parts):
            part = ProducePartitionResult()
            if version >= 5:
                (part.index, part.error_code, part.base_offset, part.log_append_time_ms,
                 part.log_start_offset) = unpack_fixed(buf, pos)
            else:
                part.index, part.error_code, part.base_offset, part.log_append_time_ms = unpack_fixed(buf, pos)
                part.log_start_offset = -1
            pos += fixed_size
            part.record_errors = record_errors = []
            part.error_message = None
            if flex and buf[pos:pos + 3] == b"\x01\x00\x00":
                # The usual success: no record errors (1 = empty), no message (0 = null), no tagged fields.
                pos += 3
            else:
                if version >= 8:
                    n_errors, pos = _array_len(buf, pos, flex)
                    for _ in range(n_errors):
                        (batch_index,) = _I32.unpack_from(buf, pos)
                        message, pos = read_str(buf, pos + 4)
                        if flex:
                            pos = _skip_tags(buf, pos)
                        record_errors.append((batch_index, message))
                    part.error_message, pos = read_str(buf, pos)
                if flex:
                    pos = _skip_tags(buf, pos)  # current_leader (v10+) is not used by the sender
            parts.append(part)
        if flex:
            pos = _skip_tags(buf, pos)
        topics.append(ProduceTopicResult(name, parts))
    (throttle_time_ms,) = _I32.unpack_from(buf, pos)
    pos += 4
    if flex:
        _skip_tags(buf, pos)  # node_endpoints (v10+)
    return ProduceResult(topics, throttle_time_ms)
