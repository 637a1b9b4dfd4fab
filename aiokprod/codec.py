"""The record-batch codec: the compiled ``aiokprod._native.codec`` or its pure-Python twin.

``IMPLEMENTATION`` says which one loaded ("native" or "python"); ``AIOKPROD_NO_EXTENSIONS=1`` forces Python.

The record-batch decoder (``decode_record_batches``, ``RecordBatch``, ``Record``) is Python in both: the
producer never decodes on its path (the decoder serves tests, the log reader and tools), so a compiled twin
would be a second decoder to keep identical for no gain. ``DECODER_IMPLEMENTATION`` says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiokprod._impl import load
from aiokprod._python import codec as _python_codec

_impl_module, IMPLEMENTATION = load("codec")

if TYPE_CHECKING:  # both twins have this API; the stub of the compiled one states it
    from aiokprod._native.codec import (
        crc32c,
        murmur2,
        key_partition,
        encode_varint,
        encode_uvarint,
        decode_varint,
        decode_uvarint,
        size_of_varint,
        size_of_uvarint,
        record_size_upper_bound,
        RecordBatchBuilder,
        BATCH_HEADER_SIZE,
        RECORD_OVERHEAD_MAX,
    )
else:
    crc32c = _impl_module.crc32c
    murmur2 = _impl_module.murmur2
    key_partition = _impl_module.key_partition
    encode_varint = _impl_module.encode_varint
    encode_uvarint = _impl_module.encode_uvarint
    decode_varint = _impl_module.decode_varint
    decode_uvarint = _impl_module.decode_uvarint
    size_of_varint = _impl_module.size_of_varint
    size_of_uvarint = _impl_module.size_of_uvarint
    record_size_upper_bound = _impl_module.record_size_upper_bound
    RecordBatchBuilder = _impl_module.RecordBatchBuilder
    BATCH_HEADER_SIZE = _impl_module.BATCH_HEADER_SIZE
    RECORD_OVERHEAD_MAX = _impl_module.RECORD_OVERHEAD_MAX

# One record decoder for both implementations (see the module docstring).
RecordBatch = _python_codec.RecordBatch
Record = _python_codec.Record
decode_record_batches = _python_codec.decode_record_batches
DECODER_IMPLEMENTATION = "python"

__all__ = (
    "IMPLEMENTATION", "DECODER_IMPLEMENTATION", "crc32c", "murmur2", "key_partition",
    "encode_varint", "encode_uvarint", "decode_varint", "decode_uvarint", "size_of_varint", "size_of_uvarint",
    "record_size_upper_bound", "RecordBatchBuilder", "RecordBatch", "Record", "decode_record_batches",
    "BATCH_HEADER_SIZE", "RECORD_OVERHEAD_MAX",
)
