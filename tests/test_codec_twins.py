"""The native and Python codec twins give the same bytes for the same records and build arguments.

Both modules are imported directly (not through the selector) so one run compares them; the native one is
skipped only when AIOKPROD_NO_EXTENSIONS=1 says so on purpose (conftest refuses a silent fallback).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiokprod import _impl
from aiokprod.errors import CorruptRecordError

pytestmark = pytest.mark.skipif(_impl.NO_EXTENSIONS, reason="AIOKPROD_NO_EXTENSIONS=1: no native twin to compare")

py = _impl.python_twin("codec")
native = None if _impl.NO_EXTENSIONS else _impl.native_twin("codec")

API = ("crc32c", "murmur2", "key_partition", "encode_varint", "encode_uvarint", "decode_varint",
       "decode_uvarint", "size_of_varint", "size_of_uvarint", "record_size_upper_bound", "RecordBatchBuilder",
       "BATCH_HEADER_SIZE", "RECORD_OVERHEAD_MAX")
# The decoder is not a twin: both implementations use the Python one (aiokprod.codec says why).
DECODER_NAMES = ("RecordBatch", "Record", "decode_record_batches")

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
bytes_or_none = st.none() | st.binary(max_size=64)
headers = st.none() | st.lists(
    st.tuples(st.text(max_size=8) | st.binary(max_size=8), bytes_or_none), max_size=3)
record = st.tuples(st.integers(-(1 << 41), 1 << 42), bytes_or_none, st.none() | st.binary(max_size=300), headers)
records = st.lists(record, min_size=1, max_size=25)


@st.composite
def build_args(draw):
    transactional = draw(st.booleans())
    pid = draw(st.integers(0 if transactional else -1, (1 << 63) - 1))
    return dict(
        base_offset=draw(st.integers(0, (1 << 63) - 1)),
        producer_id=pid,
        producer_epoch=draw(st.integers(-1, (1 << 15) - 1)),
        base_sequence=draw(st.integers(-1, (1 << 31) - 1)),
        transactional=transactional,
    )


def test_same_names():
    for name in API:
        assert hasattr(py, name) and hasattr(native, name), name
    assert py.BATCH_HEADER_SIZE == native.BATCH_HEADER_SIZE == 61
    for name in DECODER_NAMES:  # nothing may pass the Python decoder off as a native one
        assert not hasattr(native, name), name


def test_the_decoder_is_called_python():
    from aiokprod import codec

    assert codec.DECODER_IMPLEMENTATION == "python"
    assert codec.decode_record_batches is py.decode_record_batches


def _fill(module, compression, batch_size, recs):
    builder = module.RecordBatchBuilder(compression, batch_size)
    accepted = [builder.append(*r) for r in recs]
    return builder, accepted


@given(recs=records, args=build_args(), batch_size=st.sampled_from([0, 200, 1000, 16384]))
@settings(max_examples=300, deadline=None)
def test_uncompressed_batches_are_byte_identical(recs, args, batch_size):
    b_py, acc_py = _fill(py, "none", batch_size, recs)
    b_nat, acc_nat = _fill(native, "none", batch_size, recs)
    assert acc_py == acc_nat
    assert (len(b_py), b_py.size_in_bytes, b_py.first_timestamp, b_py.max_timestamp) == (
        len(b_nat), b_nat.size_in_bytes, b_nat.first_timestamp, b_nat.max_timestamp)
    assert bytes(b_py.build(**args)) == bytes(b_nat.build(**args))
    # A rebuild with other arguments (a drained batch re-sequenced) stays identical too.
    assert bytes(b_py.build()) == bytes(b_nat.build())


@given(recs=records, args=build_args(), compression=st.sampled_from(["gzip", "snappy", "lz4", "zstd"]))
@settings(max_examples=100, deadline=None)
def test_compressed_batches_identical(recs, args, compression):
    b_py, _ = _fill(py, compression, 1 << 20, recs)
    b_nat, _ = _fill(native, compression, 1 << 20, recs)
    out_py, out_nat = bytes(b_py.build(**args)), bytes(b_nat.build(**args))
    # gzip with mtime=0 and the same level is deterministic, as are the others: exact bytes.
    assert out_py == out_nat
    [decoded] = py.decode_record_batches(out_nat)
    assert [(r.key, r.value) for r in decoded.records] == [(r[1], r[2]) for r in recs]


@given(rec=record)
@settings(max_examples=200, deadline=None)
def test_record_size_upper_bound_identical(rec):
    _, key, value, hdrs = rec
    assert py.record_size_upper_bound(key, value, hdrs) == native.record_size_upper_bound(key, value, hdrs)


@given(value=INT64, pos=st.integers(0, 12), prefix=st.binary(max_size=8))
def test_varint_encoders_identical(value, pos, prefix):
    a, b = bytearray(prefix), bytearray(prefix)
    assert py.encode_varint(a, pos, value) == native.encode_varint(b, pos, value)
    assert a == b
    assert py.size_of_varint(value) == native.size_of_varint(value)
    u = value & ((1 << 64) - 1)
    a, b = bytearray(prefix), bytearray(prefix)
    assert py.encode_uvarint(a, pos, u) == native.encode_uvarint(b, pos, u)
    assert a == b
    assert py.size_of_uvarint(u) == native.size_of_uvarint(u)


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except CorruptRecordError as exc:
        return ("corrupt", str(exc))


@given(data=st.binary(max_size=14), pos=st.integers(0, 14))
def test_varint_decoders_identical(data, pos):
    assert _outcome(py.decode_varint, data, pos) == _outcome(native.decode_varint, data, pos)
    assert _outcome(py.decode_uvarint, data, pos) == _outcome(native.decode_uvarint, data, pos)


@given(data=st.binary(max_size=64), n=st.integers(1, 1000))
def test_murmur2_and_partition_identical(data, n):
    assert py.murmur2(data) == native.murmur2(data)
    assert py.key_partition(data, n) == native.key_partition(data, n)


@pytest.mark.parametrize("bad", [
    (1, "s", None, None), (1, None, 3, None), (1, None, None, "h"), (1, None, None, [("k",)]),
    (1, None, None, [(None, b"v")]), (1, None, None, [("k", 5)]), (1.0, None, None, None), (1 << 64, None, None, None),
])
def test_same_errors(bad):
    errors = []
    for module in (py, native):
        with pytest.raises(Exception) as info:
            module.RecordBatchBuilder().append(*bad)
        errors.append(type(info.value))
    assert errors[0] is errors[1]


# Levels each codec accepts; None is the codec's default.
LEVELS = {"gzip": [None, 1, 9], "snappy": [None], "lz4": [None, -4, 2, 3, 12], "zstd": [None, 1, 7]}


@given(sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=5), noise=st.booleans(),
       compression=st.sampled_from(["gzip", "snappy", "lz4", "zstd"]), pick=st.integers(0, 4),
       args=build_args(), seed=st.integers(0, 1 << 30))
@settings(max_examples=60, deadline=None)
def test_compressed_batches_identical_across_frame_blocks(sizes, noise, compression, pick, args, seed):
    # Records from empty to 40 kB, random (incompressible: LZ4 stores such a block as is) or repetitive: the
    # batches cross the sizes where the compiled twin frames a batch itself (one 64 KiB LZ4 block, one
    # 32 KiB xerial chunk) and where it falls back to aiokprod.compression; every level picks its compressor.
    import random
    rnd = random.Random(seed)
    levels = LEVELS[compression]
    level = levels[pick % len(levels)]
    values = [rnd.randbytes(n) if noise else (b"value-%d-" % n) * (n // 10) for n in sizes]
    b_py = py.RecordBatchBuilder(compression, 1 << 20, level)
    b_nat = native.RecordBatchBuilder(compression, 1 << 20, level)
    for i, value in enumerate(values):
        assert b_py.append(i, b"k", value) and b_nat.append(i, b"k", value)
    first = bytes(b_nat.build(**args))
    assert bytes(b_py.build(**args)) == first
    [decoded] = py.decode_record_batches(first)
    assert [r.value for r in decoded.records] == values
    # A rebuild with other arguments reuses the compressed records; one more record compresses again.
    assert bytes(b_py.build()) == bytes(b_nat.build())
    assert bytes(b_nat.build(**args)) == first
    assert b_py.append(99, None, b"late") and b_nat.append(99, None, b"late")
    assert bytes(b_py.build(**args)) == bytes(b_nat.build(**args))
