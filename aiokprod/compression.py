"""Compress and decompress record-batch payloads, one function pair shared by both codec twins.

A magic-2 batch stores its codec in attribute bits 0-2 and, when compressed, everything after
``recordsCount`` as one block. The block formats are the ones the Java client writes, because that is
what every broker and consumer is tested against:

- gzip (1): a gzip stream (RFC 1952). We write mtime=0 so the same records always give the same bytes
  (the twins' byte-for-byte tests and producer retries rely on it).
- snappy (2): snappy-java's "xerial" framing, see :func:`_xerial_frame`. Brokers and librdkafka also send
  plain raw snappy, so the reader accepts both.
- lz4 (3): the standard LZ4 frame format, laid out as the Java client's KafkaLZ4BlockOutputStream does:
  independent blocks of at most 64 KiB, no content size, no checksums (see LZ4_FRAME_HEADER).
- zstd (4): a zstd frame (needs Produce v7+, the sender's concern, not ours).

Decompression failures of any kind surface as :class:`~aiokprod.errors.CorruptRecordError`.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from typing import Union, cast

import cramjam
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
XERIAL_HEADER = _XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
# snappy-java's default block size: each 32 KiB of input becomes one length-prefixed raw snappy chunk.
XERIAL_BLOCK = _XERIAL_BLOCK = 32 * 1024
_INT32 = struct.Struct(">i")

# LZ4 frame (lz4_Frame_format.md) as the Java client's KafkaLZ4BlockOutputStream writes it: FLG 0x60 (version
# 01, blocks independent, no block checksum, no content size, no content checksum), BD 0x40 (blocks of at
# most 64 KiB). Every field of the descriptor is fixed, so the header is this constant (HC 0x82 is byte 1
# of xxh32(FLG BD)); tests check our frames against it.
LZ4_FRAME_HEADER = b"\x04\x22\x4d\x18\x60\x40\x82"
# lz4.frame.compress's arguments after (data, compression_level), positional because keyword parsing costs
# as much per batch as the rest of the call around the compressor: block_size, content_checksum,
# block_checksum, block_linked, store_size.
LZ4_FRAME_ARGS = (lz4.frame.BLOCKSIZE_MAX64KB, False, False, False, False)
_lz4_frame_compress = lz4.frame.compress
# The compiled codec calls these directly, without going through compress() below: same calls, same bytes.
lz4_frame_compress = lz4.frame.compress
snappy_compress_raw = _snappy_compress_raw = cramjam.snappy.compress_raw

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


def _byte_view(data: BytesLike) -> memoryview:
    """A flat view of ``data``'s bytes, to slice into blocks without copying (a copy only for a
    non-contiguous view, which has no flat bytes to point at)."""
    view = memoryview(data)
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _xerial_frame(data: BytesLike) -> bytes:
    # header | (int32 length, raw snappy chunk of <= 32 KiB input)*. cramjam's raw snappy (what
    # snappy.compress calls) hands back its own buffer; join reads it in place, where snappy.compress
    # would first copy it into bytes.
    view = _byte_view(data)
    parts: list[bytes | cramjam.Buffer] = [_XERIAL_HEADER]
    # max(..., 1): empty input is still one (empty) chunk, as it always was.
    for start in range(0, max(len(view), 1), _XERIAL_BLOCK):
        chunk = _snappy_compress_raw(view[start:start + _XERIAL_BLOCK])
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


def zstd_compressor(level: int | None) -> zstandard.ZstdCompressor:
    """The shared compressor for ``level`` (None: zstd's default, 3, as the Java client's)."""
    key = _ZSTD_DEFAULT_LEVEL if level is None else level
    compressor = _zstd_compressors.get(key)
    if compressor is None:
        compressor = _zstd_compressors[key] = zstandard.ZstdCompressor(level=key)
    return compressor


def compress(codec: int, data: BytesLike, level: int | None = None) -> bytes:
    """Compress ``data`` (any bytes-like) as the Java client does for ``codec`` (a CODEC_* id)."""
    if codec == CODEC_GZIP:
        # mtime=0: deterministic output (Python 3.11 then takes zlib's one-shot path).
        return gzip.compress(data, compresslevel=_GZIP_DEFAULT_LEVEL if level is None else level, mtime=0)
    if codec == CODEC_SNAPPY:
        return _xerial_frame(data)
    if codec == CODEC_LZ4:
        return cast(bytes, _lz4_frame_compress(data, 0 if level is None else level, *LZ4_FRAME_ARGS))
    if codec == CODEC_ZSTD:
        return zstd_compressor(level).compress(data)
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
