"""Kafka record-batch codec (magic 2), pure-Python twin of ``aiokprod._native.codec``.

Same names, same signatures and the same bytes as the compiled module; ``aiokprod.codec`` picks one.
The batch layout is written out next to :meth:`RecordBatchBuilder.build`, the record layout next to
:meth:`RecordBatchBuilder.append`.
"""
from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence

from crc32c import crc32c as _crc32c_untyped

from aiokprod.compression import CODEC_NAMES, CODEC_NONE, codec_id, compress, decompress
from aiokprod.errors import CorruptRecordError

# The types of the compiled twin's stub (aiokprod/_native/codec.pyi): both twins have one API.
_BytesLike = bytes | bytearray | memoryview
_Header = tuple[str | bytes, _BytesLike | None]
_Headers = Sequence[_Header] | None
# The built batch's identity: (base_offset, producer_id, producer_epoch, base_sequence, transactional, count).
_BuildKey = tuple[int, int, int, int, bool, int]

# The crc32c package ships no type information; the name is rebound once with its type, so calls cost nothing.
_crc32c: Callable[[_BytesLike], int] = _crc32c_untyped

__all__ = (
    "crc32c", "murmur2", "key_partition",
    "encode_varint", "encode_uvarint", "decode_varint", "decode_uvarint", "size_of_varint", "size_of_uvarint",
    "record_size_upper_bound", "RecordBatchBuilder", "RecordBatch", "Record", "decode_record_batches",
    "BATCH_HEADER_SIZE", "RECORD_OVERHEAD_MAX",
)

# Batch header, big-endian (61 bytes):
#   0 baseOffset int64        8 batchLength int32 (bytes after this field)   12 partitionLeaderEpoch int32
#  16 magic int8 (=2)        17 crc uint32 (CRC-32C of bytes 21..end)         21 attributes int16
#  23 lastOffsetDelta int32  27 baseTimestamp int64   35 maxTimestamp int64    43 producerId int64
#  51 producerEpoch int16    53 baseSequence int32    57 recordsCount int32    61 records...
_HEADER = struct.Struct(">qiibIhiqqqhii")
BATCH_HEADER_SIZE = 61
_CRC_OFFSET = 17
_ATTRIBUTES_OFFSET = 21
_LOG_OVERHEAD = 12  # baseOffset + batchLength: the part batchLength does not count
# Worst case of a record's fixed part: length varint (5) + attributes (1) + timestampDelta varlong (10)
# + offsetDelta varint (5).
RECORD_OVERHEAD_MAX = 21

_ATTR_TRANSACTIONAL = 0x10
_ATTR_CONTROL = 0x20
_ATTR_TIMESTAMP_TYPE = 0x08

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_MASK64 = _UINT64_MAX


def crc32c(data: _BytesLike) -> int:
    """CRC-32C (Castagnoli) of a bytes-like object, by the ``crc32c`` package's C code."""
    return _crc32c(data)


# --- murmur2 ------------------------------------------------------------------------------------------

def murmur2(data: _BytesLike) -> int:
    """The Java client's murmur2 (seed 0x9747b28c), as a signed 32-bit int like Java's ``int``.

    Java works on signed ints with wrapping multiplication and ``>>>``; unsigned 32-bit arithmetic gives the
    same bits, so we mask to 32 bits after each multiply and convert to signed at the end.
    """
    if not isinstance(data, bytes):
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise TypeError(f"murmur2 data must be bytes-like, not {type(data).__name__}") from None
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end4 = length & ~3
    for i in range(0, end4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end4 + 2] << 16
    if rest >= 2:
        h ^= data[end4 + 1] << 8
    if rest >= 1:
        h ^= data[end4]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def key_partition(key: _BytesLike, num_partitions: int) -> int:
    """The Java default partitioner for a keyed record: ``(murmur2(key) & 0x7fffffff) % num_partitions``."""
    num_partitions = operator.index(num_partitions)
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


# --- varints ------------------------------------------------------------------------------------------
# Unsigned LEB128: 7 bits per byte, least significant group first, high bit = "more follows".
# Signed values are zig-zag mapped first ((v << 1) ^ (v >> 63)) so small negatives stay short.

def _check_int64(value: int) -> int:
    value = operator.index(value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"{value} does not fit a signed 64-bit varint")
    return value


def _check_uint64(value: int) -> int:
    value = operator.index(value)
    if not 0 <= value <= _UINT64_MAX:
        raise OverflowError(f"{value} does not fit an unsigned 64-bit varint")
    return value


def _uvarint_bytes(u: int) -> bytes:
    out = bytearray()
    while u > 0x7F:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _zigzag(value: int) -> int:
    return ((value << 1) ^ (value >> 63)) & _MASK64


def _write(buf: bytearray, pos: int, encoded: bytes) -> int:
    if not isinstance(buf, bytearray):
        raise TypeError(f"buf must be a bytearray, not {type(buf).__name__}")
    pos = operator.index(pos)
    if pos < 0:
        raise ValueError(f"pos must be >= 0, got {pos}")
    end = pos + len(encoded)
    if end > len(buf):
        buf.extend(bytes(end - len(buf)))
    buf[pos:end] = encoded
    return end


def encode_varint(buf: bytearray, pos: int, value: int) -> int:
    """Write ``value`` (signed 64-bit, zig-zag) at ``buf[pos]``, growing ``buf`` if needed; return the end."""
    return _write(buf, pos, _uvarint_bytes(_zigzag(_check_int64(value))))


def encode_uvarint(buf: bytearray, pos: int, value: int) -> int:
    """Write ``value`` (unsigned 64-bit) at ``buf[pos]``, growing ``buf`` if needed; return the end."""
    return _write(buf, pos, _uvarint_bytes(_check_uint64(value)))


def decode_uvarint(data: _BytesLike, pos: int) -> tuple[int, int]:
    """Read an unsigned varint at ``data[pos]``: ``(value, new_pos)``. CorruptRecordError if truncated or
    longer than 10 bytes. Bits beyond 64 in a 10th byte are dropped, as Java's ByteUtils does."""
    pos = operator.index(pos)
    if pos < 0:
        raise ValueError(f"pos must be >= 0, got {pos}")
    return _uvarint_at(data, pos, len(data))


def _uvarint_at(data: _BytesLike, pos: int, end: int) -> tuple[int, int]:
    # ``end`` bounds the read so a record's fields cannot run into the next record.
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise CorruptRecordError(f"varint truncated at byte {pos} (started at byte {start})")
        if shift > 63:
            raise CorruptRecordError(f"varint at byte {start} is longer than 10 bytes")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _MASK64, pos
        shift += 7


def decode_varint(data: _BytesLike, pos: int) -> tuple[int, int]:
    """Read a zig-zag signed varint at ``data[pos]``: ``(value, new_pos)``."""
    u, pos = decode_uvarint(data, pos)
    return (u >> 1) ^ -(u & 1), pos


def _varint_at(data: _BytesLike, pos: int, end: int) -> tuple[int, int]:
    u, pos = _uvarint_at(data, pos, end)
    return (u >> 1) ^ -(u & 1), pos


def size_of_uvarint(value: int) -> int:
    u = _check_uint64(value)
    size = 1
    while u > 0x7F:
        u >>= 7
        size += 1
    return size


def size_of_varint(value: int) -> int:
    return size_of_uvarint(_zigzag(_check_int64(value)))


# --- records ------------------------------------------------------------------------------------------

def _as_buffer(obj: _BytesLike | None, field: str) -> tuple[_BytesLike | None, int]:
    """``(buffer, length)`` for a bytes-like field; ``(None, -1)`` for None; TypeError naming the field."""
    if obj is None:
        return None, -1
    if isinstance(obj, bytes):
        return obj, len(obj)
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{field} must be bytes-like or None, not {type(obj).__name__}") from None
    if not view.c_contiguous:
        copy = view.tobytes()
        return copy, len(copy)
    return view, view.nbytes


def _header_key(key: str | _BytesLike) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"header key must be str or bytes, not {type(key).__name__}")


def _encode_headers(headers: _Headers) -> tuple[int, list[bytes]]:
    """Headers as ``(count, [bytes pieces...])``: headersCount varint, then per header
    keyLength varint, key (UTF-8), valueLength varint (-1 = null), value."""
    if headers is None:
        return 0, [b"\x00"]
    if not isinstance(headers, (list, tuple)):
        raise TypeError(f"headers must be a list of (str, bytes | None) pairs, not {type(headers).__name__}")
    if not headers:
        return 0, [b"\x00"]
    pieces = [_uvarint_bytes(_zigzag(len(headers)))]
    for header in headers:
        if not isinstance(header, tuple) or len(header) != 2:
            if isinstance(header, list) and len(header) == 2:
                header = tuple(header)
            else:
                raise TypeError(f"each header must be a (str, bytes | None) pair, not {header!r}")
        hkey = _header_key(header[0])
        hval, hlen = _as_buffer(header[1], "header value")
        pieces.append(_uvarint_bytes(_zigzag(len(hkey))))
        pieces.append(hkey)
        pieces.append(_uvarint_bytes(_zigzag(hlen)))
        if hval is not None:
            pieces.append(bytes(hval))
    return len(headers), pieces


def record_size_upper_bound(key: _BytesLike | None, value: _BytesLike | None, headers: _Headers) -> int:
    """Most bytes one record with these fields can take in a batch, plus the 61-byte batch header."""
    _, klen = _as_buffer(key, "key")
    _, vlen = _as_buffer(value, "value")
    _, hpieces = _encode_headers(headers)
    size = BATCH_HEADER_SIZE + RECORD_OVERHEAD_MAX
    size += size_of_varint(klen) + max(klen, 0) + size_of_varint(vlen) + max(vlen, 0)
    size += sum(len(p) for p in hpieces)
    return size


def _check_int(value: int, bits: int, name: str) -> int:
    value = operator.index(value)
    limit = 1 << (bits - 1)
    if not -limit <= value < limit:
        raise OverflowError(f"{name}={value} does not fit a signed {bits}-bit field")
    return value


class RecordBatchBuilder:
    """Accumulates records of one magic-2 batch; :meth:`build` freezes it with the producer's fields."""

    __slots__ = ("_codec", "_level", "_batch_size", "_buf", "_count", "_first_ts", "_max_ts",
                 "_payload", "_payload_count", "_built", "_built_key")

    def __init__(
        self, compression: str = "none", batch_size: int = 16384, compression_level: int | None = None
    ) -> None:
        self._codec = codec_id(compression)
        self._batch_size = operator.index(batch_size)
        self._level = None if compression_level is None else operator.index(compression_level)
        self._buf = bytearray(BATCH_HEADER_SIZE)  # header reserved, written by build()
        self._count = 0
        self._first_ts = 0
        self._max_ts = 0
        self._payload: bytes | None = None  # compressed records, valid while _payload_count == _count
        self._payload_count = -1
        self._built: bytes | None = None  # last build() result, valid for _built_key
        self._built_key: _BuildKey | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def size_in_bytes(self) -> int:
        """Exact uncompressed size of the batch as it stands (61-byte header + records)."""
        return len(self._buf)

    @property
    def first_timestamp(self) -> int | None:
        return self._first_ts if self._count else None

    @property
    def max_timestamp(self) -> int | None:
        return self._max_ts if self._count else None

    def append(
        self, timestamp_ms: int, key: _BytesLike | None, value: _BytesLike | None, headers: _Headers = None
    ) -> bool:
        """Add one record; False (nothing added) if it would push a non-empty batch past batch_size.

        Record layout: length varint (of what follows), attributes int8 (0), timestampDelta varlong,
        offsetDelta varint, keyLength varint (-1 = null), key, valueLength varint, value, headers.
        """
        timestamp_ms = _check_int64(timestamp_ms)
        kbuf, klen = _as_buffer(key, "key")
        vbuf, vlen = _as_buffer(value, "value")
        _, hpieces = _encode_headers(headers)
        count = self._count
        first = timestamp_ms if count == 0 else self._first_ts
        delta = timestamp_ms - first
        if not _INT64_MIN <= delta <= _INT64_MAX:
            raise OverflowError(f"timestamp {timestamp_ms} is too far from the batch's first ({first})")
        body = bytearray(b"\x00")  # attributes
        body += _uvarint_bytes(_zigzag(delta))
        body += _uvarint_bytes(_zigzag(count))
        body += _uvarint_bytes(_zigzag(klen))
        if kbuf is not None:
            body += kbuf
        body += _uvarint_bytes(_zigzag(vlen))
        if vbuf is not None:
            body += vbuf
        for piece in hpieces:
            body += piece
        prefix = _uvarint_bytes(_zigzag(len(body)))
        if count and len(self._buf) + len(prefix) + len(body) > self._batch_size:
            return False
        if count >= 0x7FFFFFFF:
            return False  # offset deltas are int32
        self._buf += prefix
        self._buf += body
        if count == 0:
            self._first_ts = self._max_ts = timestamp_ms
        elif timestamp_ms > self._max_ts:
            self._max_ts = timestamp_ms
        self._count = count + 1
        return True

    def build(self, base_offset: int = 0, producer_id: int = -1, producer_epoch: int = -1,
              base_sequence: int = -1, transactional: bool = False) -> bytes:
        """The batch as bytes, with header and CRC-32C. Repeating a call with the same arguments (a retry)
        returns the same object; other arguments re-patch the header over the same (compressed) records."""
        base_offset = _check_int(base_offset, 64, "base_offset")
        producer_id = _check_int(producer_id, 64, "producer_id")
        producer_epoch = _check_int(producer_epoch, 16, "producer_epoch")
        base_sequence = _check_int(base_sequence, 32, "base_sequence")
        key: _BuildKey = (base_offset, producer_id, producer_epoch, base_sequence, bool(transactional), self._count)
        if self._built is not None and key == self._built_key:
            return self._built
        if self._count == 0:
            raise ValueError("cannot build an empty record batch")
        if transactional and producer_id < 0:
            raise ValueError("a transactional batch needs a producer id")
        if self._codec == CODEC_NONE:
            out = bytearray(self._buf)
        else:
            payload = self._payload
            if payload is None or self._payload_count != self._count:
                payload = self._payload = compress(self._codec, memoryview(self._buf)[BATCH_HEADER_SIZE:],
                                                   self._level)
                self._payload_count = self._count
            out = bytearray(BATCH_HEADER_SIZE)
            out += payload
        attributes = self._codec | (_ATTR_TRANSACTIONAL if transactional else 0)
        _HEADER.pack_into(
            out, 0,
            base_offset, len(out) - _LOG_OVERHEAD, -1, 2, 0, attributes, self._count - 1,
            self._first_ts, self._max_ts, producer_id, producer_epoch, base_sequence, self._count,
        )
        struct.pack_into(">I", out, _CRC_OFFSET, _crc32c(memoryview(out)[_ATTRIBUTES_OFFSET:]))
        result = bytes(out)
        self._built = result
        self._built_key = key
        return result


# --- decoding -----------------------------------------------------------------------------------------

class Record:
    """One decoded record; ``offset`` is absolute (baseOffset + offsetDelta)."""

    __slots__ = ("offset", "timestamp_ms", "key", "value", "headers")

    def __init__(self, offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes | None]]) -> None:
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.key = key
        self.value = value
        self.headers = headers

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.offset, self.timestamp_ms, self.key, self.value, self.headers) == (
            other.offset, other.timestamp_ms, other.key, other.value, other.headers)

    def __repr__(self) -> str:
        return (f"Record(offset={self.offset}, timestamp_ms={self.timestamp_ms}, key={self.key!r}, "
                f"value={self.value!r}, headers={self.headers!r})")


class RecordBatch:
    """One decoded magic-2 batch: the header fields, ``compression`` by name, and its ``records``."""

    __slots__ = ("base_offset", "batch_length", "partition_leader_epoch", "magic", "crc", "attributes",
                 "last_offset_delta", "base_timestamp", "max_timestamp", "producer_id", "producer_epoch",
                 "base_sequence", "records")

    def __init__(self, header: tuple[int, ...], records: list[Record]) -> None:
        (self.base_offset, self.batch_length, self.partition_leader_epoch, self.magic, self.crc,
         self.attributes, self.last_offset_delta, self.base_timestamp, self.max_timestamp,
         self.producer_id, self.producer_epoch, self.base_sequence, _count) = header
        self.records = records

    @property
    def compression(self) -> str:
        return CODEC_NAMES.get(self.attributes & 0x07, "unknown")

    @property
    def timestamp_type(self) -> int:
        """0 = create time, 1 = log-append time."""
        return 1 if self.attributes & _ATTR_TIMESTAMP_TYPE else 0

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & _ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _ATTR_CONTROL)

    def __repr__(self) -> str:
        return (f"RecordBatch(base_offset={self.base_offset}, compression={self.compression!r}, "
                f"records={len(self.records)}, producer_id={self.producer_id})")


def _read_bytes(data: bytes, pos: int, end: int, what: str) -> tuple[bytes | None, int]:
    length, pos = _varint_at(data, pos, end)
    if length == -1:
        return None, pos
    if length < -1:
        raise CorruptRecordError(f"negative {what} length {length} at byte {pos}")
    if pos + length > end:
        raise CorruptRecordError(f"{what} of {length} bytes at byte {pos} runs past the record's end ({end})")
    return bytes(data[pos:pos + length]), pos + length


def _decode_records(data: bytes, count: int, base_offset: int, base_ts: int) -> list[Record]:
    records: list[Record] = []
    pos = 0
    end = len(data)
    for index in range(count):
        length, pos = decode_varint(data, pos)
        if length < 0 or pos + length > end:
            raise CorruptRecordError(f"record {index} claims {length} bytes at byte {pos}, "
                                     f"{end - pos} are left")
        # A record must end where its length says; every read is bounded by rec_end so a lying length
        # is caught instead of reading into the next record.
        rec_end = pos + length
        view = data
        if pos >= rec_end:
            raise CorruptRecordError(f"record {index} is empty at byte {pos}")
        pos += 1  # attributes (unused in magic 2)
        ts_delta, pos = _varint_at(view, pos, rec_end)
        offset_delta, pos = _varint_at(view, pos, rec_end)
        key, pos = _read_bytes(view, pos, rec_end, "key")
        value, pos = _read_bytes(view, pos, rec_end, "value")
        nheaders, pos = _varint_at(view, pos, rec_end)
        if nheaders < 0 or nheaders > rec_end - pos:
            raise CorruptRecordError(f"record {index} has an impossible header count {nheaders}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(nheaders):
            hkey, pos = _read_bytes(view, pos, rec_end, "header key")
            if hkey is None:
                raise CorruptRecordError(f"record {index} has a null header key")
            # Java's consumer decodes header keys with replacement characters, never failing; so do we.
            hkey_str = hkey.decode("utf-8", "replace")
            hval, pos = _read_bytes(view, pos, rec_end, "header value")
            headers.append((hkey_str, hval))
        if pos != rec_end:
            raise CorruptRecordError(f"record {index} has {rec_end - pos} unread bytes at byte {pos}")
        timestamp = base_ts + ts_delta
        records.append(Record(base_offset + offset_delta, timestamp, key, value, headers))
    if pos != end:
        raise CorruptRecordError(f"{end - pos} bytes after the last of {count} records")
    return records


def decode_record_batches(data: _BytesLike, allow_partial_tail: bool = False) -> list[RecordBatch]:
    """Decode every magic-2 batch in ``data``; CRC-checked. A truncated final batch is dropped silently
    with ``allow_partial_tail=True`` (Fetch responses may end mid-batch); every other defect raises
    CorruptRecordError."""
    try:
        data = bytes(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
    batches: list[RecordBatch] = []
    pos = 0
    total = len(data)
    while pos < total:
        if total - pos < _LOG_OVERHEAD:
            if allow_partial_tail:
                break
            raise CorruptRecordError(f"record batch truncated at byte {total}: {total - pos} bytes of a "
                                     f"12-byte offset/length prefix at byte {pos}")
        batch_length = struct.unpack_from(">i", data, pos + 8)[0]
        if batch_length < BATCH_HEADER_SIZE - _LOG_OVERHEAD:
            raise CorruptRecordError(f"impossible batch length {batch_length} at byte {pos + 8}")
        end = pos + _LOG_OVERHEAD + batch_length
        if end > total:
            if allow_partial_tail:
                break
            raise CorruptRecordError(f"record batch at byte {pos} truncated at byte {total}: "
                                     f"needs {end - pos} bytes, has {total - pos}")
        header = _HEADER.unpack_from(data, pos)
        magic = header[3]
        if magic != 2:
            raise CorruptRecordError(f"bad magic {magic} in record batch at byte {pos} (only magic 2 is read)")
        actual = _crc32c(memoryview(data)[pos + _ATTRIBUTES_OFFSET:end])
        if actual != header[4]:
            raise CorruptRecordError(f"bad CRC in record batch at byte {pos}: expected {header[4]:#010x} "
                                     f"(stored), actual {actual:#010x}")
        count = header[12]
        if count < 0:
            raise CorruptRecordError(f"negative record count {count} in batch at byte {pos}")
        payload = data[pos + BATCH_HEADER_SIZE:end]
        codec = header[5] & 0x07
        if codec != CODEC_NONE:
            payload = decompress(codec, payload)
        if count > len(payload):  # every record takes at least 1 byte: a cheap guard before allocating
            raise CorruptRecordError(f"batch at byte {pos} claims {count} records in {len(payload)} bytes")
        records = _decode_records(payload, count, header[0], header[7])
        batches.append(RecordBatch(header, records))
        pos = end
    return batches
