"""Compress and decompress record-batch payloads, one function pair shared by both codec twins.

A magic-2 batch stores its codec in attribute bits 0-2 and, when compressed, everything after
``recordsCount`` as one block. The block formats are the ones the Java client writes, because that is
what every broker and consumer is tested against:

- gzip (1): a gzip stream (RFC 1952). We write mtime=0 so the same records always give the same bytes
  (the twins' byte-for-byte tests and producer retries rely on it).
- snappy (2): snappy-java's "xerial" framing, see :func:`_xerial_frame`. Brokers and librdkafka also send
  plain raw snappy, so the reader accepts both.
- lz4 (3): the standard LZ4 frame format.
- zstd (4): a zstd frame (needs Produce v7+, the sender's concern, not ours).

Decompression failures of any kind surface as :class:`~aiokprod.errors.CorruptRecordError`.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from typing import Union, cast

import lz4.frame
import snappy
import zstandard

from aiokprod.errors import CorruptRecordError

BytesLike = Union[bytes, bytearray, memoryview]

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4

CODEC_IDS = {"none": CODEC_NONE, "gzip": CODEC_GZIP, "snappy": CODEC_SNAPPY, "lz4": CODEC_LZ4, "zstd": CODEC_ZSTD}
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}

# xerial header: 8 magic bytes, then big-endian int32 version (1) and int32 minimum compatible version (1).
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
# snappy-java's default block size: each 32 KiB of input becomes one length-prefixed raw snappy chunk.
_XERIAL_BLOCK = 32 * 1024
_INT32 = struct.Struct(">i")

# Java's GZIPOutputStream uses zlib's default level; so do we unless told otherwise.
_GZIP_DEFAULT_LEVEL = 6
_ZSTD_DEFAULT_LEVEL = 3

# ZstdCompressor objects are reusable and cost a context allocation each; keep one per level.
_zstd_compressors: dict[int, zstandard.ZstdCompressor] = {}


def codec_id(name: str) -> int:
    """The attribute bits for a codec name; ValueError naming the bad value otherwise."""
    try:
        return CODEC_IDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown compression {name!r}: expected one of 'none', 'gzip', 'snappy', 'lz4', 'zstd'"
        ) from None


def _xerial_frame(data: BytesLike) -> bytes:
    # header | (int32 length, raw snappy chunk of <= 32 KiB input)*
    view = memoryview(data)
    if len(view) <= _XERIAL_BLOCK:  # the common case (batch.size 16 KiB): one chunk, no slicing copies
        chunk = snappy.compress(data if isinstance(data, bytes) else view.tobytes())
        return b"".join((_XERIAL_HEADER, _INT32.pack(len(chunk)), chunk))
    parts = [_XERIAL_HEADER]
    for start in range(0, len(view), _XERIAL_BLOCK):
        chunk = snappy.compress(view[start:start + _XERIAL_BLOCK].tobytes())
        parts.append(_INT32.pack(len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


def _xerial_unframe(data: bytes) -> bytes:
    # The version/compat ints are ignored on purpose: some producers write them little-endian, and there
    # has only ever been one xerial block layout.
    out = []
    pos = 16
    end = len(data)
    while pos < end:
        if pos + 4 > end:
            raise CorruptRecordError(f"snappy (xerial) stream truncated in a chunk length at byte {pos}")
        (size,) = _INT32.unpack_from(data, pos)
        pos += 4
        if size < 0 or pos + size > end:
            raise CorruptRecordError(
                f"snappy (xerial) chunk of {size} bytes at byte {pos} runs past the end ({end} bytes)"
            )
        out.append(snappy.decompress(data[pos:pos + size]))
        pos += size
    return b"".join(out)


def compress(codec: int, data: BytesLike, level: int | None = None) -> bytes:
    """Compress ``data`` (any bytes-like) as the Java client does for ``codec`` (a CODEC_* id)."""
    if codec == CODEC_GZIP:
        # mtime=0: deterministic output (Python 3.11 then takes zlib's one-shot path).
        return gzip.compress(data, compresslevel=_GZIP_DEFAULT_LEVEL if level is None else level, mtime=0)
    if codec == CODEC_SNAPPY:
        return _xerial_frame(data)
    if codec == CODEC_LZ4:
        return cast(bytes, lz4.frame.compress(data, compression_level=0 if level is None else level))
    if codec == CODEC_ZSTD:
        key = _ZSTD_DEFAULT_LEVEL if level is None else level
        compressor = _zstd_compressors.get(key)
        if compressor is None:
            compressor = _zstd_compressors[key] = zstandard.ZstdCompressor(level=key)
        return compressor.compress(data)
    if codec == CODEC_NONE:
        return bytes(data)
    raise ValueError(f"unknown codec id {codec}")


def decompress(codec: int, data: BytesLike) -> bytes:
    """Inverse of :func:`compress`; also reads raw snappy. Any failure raises CorruptRecordError."""
    data = bytes(data)
    name = CODEC_NAMES.get(codec, f"codec id {codec}")
    try:
        if codec == CODEC_GZIP:
            # wbits 16+MAX: gzip header required, as Java's GZIPInputStream requires it.
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
        if codec == CODEC_SNAPPY:
            if data[:8] == _XERIAL_MAGIC and len(data) >= 16:
                return _xerial_unframe(data)
            return cast(bytes, snappy.decompress(data))
        if codec == CODEC_LZ4:
            return cast(bytes, lz4.frame.decompress(data))
        if codec == CODEC_ZSTD:
            # A streaming decompressor: frames without a content size (librdkafka writes those) decode too.
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if codec == CODEC_NONE:
            return data
    except CorruptRecordError:
        raise
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - every library's error means the same thing here
        raise CorruptRecordError(f"cannot decompress {name} payload ({len(data)} bytes): {exc!r}") from exc
    raise CorruptRecordError(f"unknown compression codec id {codec} in batch attributes")
