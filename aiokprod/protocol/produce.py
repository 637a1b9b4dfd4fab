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

from aiokprod.errors import UnsupportedVersionError
from aiokprod.protocol.framing import encode_request_header
from aiokprod.protocol.primitives import BytesLike, write_compact_string, write_string, write_uvarint

__all__ = ["encode_produce_request", "PRODUCE_API_KEY", "MIN_VERSION", "MAX_VERSION"]

PRODUCE_API_KEY = 0
MIN_VERSION = 3  # the first version carrying magic-2 record batches and transactional_id
MAX_VERSION = 11
_FIRST_FLEXIBLE = 9

_pack_i16_i32 = struct.Struct(">hi").pack
_pack_i32 = struct.Struct(">i").pack


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
    cur = bytearray(b"\0\0\0\0")
    encode_request_header(cur, PRODUCE_API_KEY, api_version, correlation_id, client_id,
                          2 if flex else 1)
    if flex:
        write_compact_string(cur, transactional_id)
        cur += _pack_i16_i32(acks, timeout_ms)
        write_uvarint(cur, len(topics) + 1)
    else:
        write_string(cur, transactional_id)
        cur += _pack_i16_i32(acks, timeout_ms)
        cur += _pack_i32(len(topics))
    for name, partitions in topics:
        if flex:
            write_compact_string(cur, name)
            write_uvarint(cur, len(partitions) + 1)
        else:
            write_string(cur, name)
            cur += _pack_i32(len(partitions))
        for index, batch in partitions:
            cur += _pack_i32(index)
            if batch is None:
                cur += b"\0" if flex else b"\xff\xff\xff\xff"
                if flex:
                    cur.append(0)  # partition's tagged fields
                continue
            view = batch if isinstance(batch, memoryview) else memoryview(batch)
            size = view.nbytes
            if flex:
                write_uvarint(cur, size + 1)
            else:
                cur += _pack_i32(size)
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
