"""The record-batch codec, run on both twins: golden vectors from outside, varints, builder rules, decoder
errors. Twin-against-twin byte identity is in test_codec_twins.py, other clients in test_codec_interop.py."""
from __future__ import annotations

import struct

import crc32c as crc32c_package
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiokprod import _impl
from aiokprod.codec import decode_record_batches  # one Python decoder for both twins
from aiokprod.errors import CorruptRecordError
from helpers import JAVA_MURMUR2  # the Java client's values (UtilsTest), stated once for the suite

TWINS = ["python"] if _impl.NO_EXTENSIONS else ["python", "native"]


def _twin(name):
    return _impl.python_twin("codec") if name == "python" else _impl.native_twin("codec")


@pytest.fixture(params=TWINS)
def codec(request):
    return _twin(request.param)


# hypothesis with a function-scoped fixture: the fixture is a module, nothing to reset between examples.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1



def test_selector_exposes_the_expected_implementation():
    from aiokprod import codec as selected

    assert selected.IMPLEMENTATION == ("python" if _impl.NO_EXTENSIONS else "native")
    assert "codec" not in _impl.LOAD_ERRORS


# --- murmur2 / partitioner -----------------------------------------------------------------------------

@pytest.mark.parametrize("data,expected", sorted(JAVA_MURMUR2.items()))
def test_murmur2_java_vectors(codec, data, expected):
    assert codec.murmur2(data) == expected
    assert codec.murmur2(bytearray(data)) == expected
    assert codec.murmur2(memoryview(data)) == expected


@pytest.mark.parametrize("data,expected", sorted(JAVA_MURMUR2.items()))
def test_key_partition_matches_java_formula(codec, data, expected):
    for n in (1, 3, 7, 100, 2**31 - 1):
        assert codec.key_partition(data, n) == (expected & 0x7FFFFFFF) % n


def test_key_partition_rejects_no_partitions(codec):
    with pytest.raises(ValueError, match="num_partitions"):
        codec.key_partition(b"k", 0)


def test_murmur2_type_error(codec):
    with pytest.raises(TypeError):
        codec.murmur2("not bytes")


# --- crc32c --------------------------------------------------------------------------------------------

def crc32c_by_definition(data: bytes) -> int:
    """CRC-32C bit by bit from its definition (reflected Castagnoli polynomial 0x82F63B78, initial and
    final XOR 0xFFFFFFFF): slow, but independent of the ``crc32c`` package both twins call."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@given(data=st.binary(max_size=300))
@fixture_ok
def test_crc32c_matches_the_definition(codec, data):
    assert codec.crc32c(data) == crc32c_by_definition(data)
    assert codec.crc32c(bytearray(data)) == codec.crc32c(memoryview(data)) == crc32c_by_definition(data)


def test_crc32c_check_value(codec):
    assert codec.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c_by_definition(b"123456789") == 0xE3069283  # and the reference agrees with it


# RFC 3720 (iSCSI), appendix B.4: CRC-32C of four 32-byte patterns.
RFC3720_VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data,expected", RFC3720_VECTORS)
def test_crc32c_rfc3720_vectors(codec, data, expected):
    assert codec.crc32c(data) == expected
    assert crc32c_by_definition(data) == expected


# --- varints -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,encoded", [
    (0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (63, b"\x7e"), (-64, b"\x7f"), (64, b"\x80\x01"),
    (300, b"\xd8\x04"), (INT64_MAX, b"\xfe" + b"\xff" * 8 + b"\x01"), (INT64_MIN, b"\xff" * 9 + b"\x01"),
])
def test_varint_known_encodings(codec, value, encoded):
    buf = bytearray()
    assert codec.encode_varint(buf, 0, value) == len(encoded)
    assert bytes(buf) == encoded
    assert codec.size_of_varint(value) == len(encoded)
    assert codec.decode_varint(encoded, 0) == (value, len(encoded))


@given(value=st.integers(INT64_MIN, INT64_MAX), prefix=st.binary(max_size=5))
@fixture_ok
def test_varint_round_trip(codec, value, prefix):
    buf = bytearray(prefix)
    end = codec.encode_varint(buf, len(prefix), value)
    assert end == len(buf) == len(prefix) + codec.size_of_varint(value)
    assert codec.decode_varint(bytes(buf), len(prefix)) == (value, end)


@given(value=st.integers(0, UINT64_MAX))
@fixture_ok
def test_uvarint_round_trip(codec, value):
    buf = bytearray(b"\xaa" * 12)
    end = codec.encode_uvarint(buf, 1, value)
    assert end == 1 + codec.size_of_uvarint(value)
    assert len(buf) == 12 and buf[0] == 0xAA and buf[end:] == b"\xaa" * (12 - end)  # writes in place
    assert codec.decode_uvarint(buf, 1) == (value, end)


def test_encode_grows_buffer_and_zero_fills_gap(codec):
    buf = bytearray(b"\x01")
    assert codec.encode_uvarint(buf, 3, 300) == 5
    assert bytes(buf) == b"\x01\x00\x00\xac\x02"


def test_varint_range_and_type_errors(codec):
    with pytest.raises(OverflowError):
        codec.encode_varint(bytearray(), 0, INT64_MAX + 1)
    with pytest.raises(OverflowError):
        codec.encode_uvarint(bytearray(), 0, -1)
    with pytest.raises(OverflowError):
        codec.encode_uvarint(bytearray(), 0, UINT64_MAX + 1)
    with pytest.raises(TypeError):
        codec.encode_varint(b"immutable", 0, 1)
    with pytest.raises(TypeError):
        codec.encode_varint(bytearray(), 0, 1.5)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\x80" * 9])
def test_decode_varint_truncated(codec, data):
    with pytest.raises(CorruptRecordError, match="truncated"):
        codec.decode_varint(data, 0)
    with pytest.raises(CorruptRecordError, match="truncated"):
        codec.decode_uvarint(data, 0)


def test_decode_varint_too_long(codec):
    with pytest.raises(CorruptRecordError, match="longer than 10 bytes"):
        codec.decode_uvarint(b"\x80" * 10 + b"\x00", 0)


# --- builder rules -------------------------------------------------------------------------------------

def test_unknown_compression_named(codec):
    with pytest.raises(ValueError, match="'brotli'"):
        codec.RecordBatchBuilder("brotli")


def test_batch_size_rule(codec):
    value = b"v" * 100
    builder = codec.RecordBatchBuilder("none", batch_size=1000)
    appended = 0
    while builder.append(1000 + appended, b"k", value, None):
        appended += 1
        assert builder.size_in_bytes <= 1000
    size_before = builder.size_in_bytes
    assert appended == len(builder) and appended > 1
    # A full batch stays exactly as it was.
    assert not builder.append(5, b"k", value, None)
    assert builder.size_in_bytes == size_before and len(builder) == appended
    # The record that did not fit would have crossed batch_size.
    assert size_before + codec.record_size_upper_bound(b"k", value, None) - 61 > 1000


def test_oversize_first_record_accepted_alone(codec):
    builder = codec.RecordBatchBuilder("none", batch_size=100)
    assert builder.append(1, None, b"x" * 500, None)
    assert not builder.append(2, None, b"", None)
    assert len(builder) == 1
    [batch] = decode_record_batches(builder.build())
    assert batch.records[0].value == b"x" * 500


def test_size_in_bytes_is_exact(codec):
    builder = codec.RecordBatchBuilder("none")
    assert builder.size_in_bytes == 61 and len(builder) == 0
    builder.append(10, b"key", b"value", [("h", b"1"), ("n", None)])
    builder.append(5, None, None, None)
    assert len(builder.build()) == builder.size_in_bytes


@given(key=st.none() | st.binary(max_size=300), value=st.none() | st.binary(max_size=20000),
       headers=st.none() | st.lists(st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=200)),
                                    max_size=5))
@fixture_ok
def test_record_size_upper_bound_bounds_a_single_record_batch(codec, key, value, headers):
    builder = codec.RecordBatchBuilder("none")
    builder.append(2**40, key, value, headers)
    bound = codec.record_size_upper_bound(key, value, headers)
    assert builder.size_in_bytes <= bound <= builder.size_in_bytes + 21


def test_timestamps(codec):
    builder = codec.RecordBatchBuilder("none")
    assert builder.first_timestamp is None and builder.max_timestamp is None
    for ts in (1000, 3000, 500):
        builder.append(ts, None, b"v", None)
    assert builder.first_timestamp == 1000 and builder.max_timestamp == 3000
    [batch] = decode_record_batches(builder.build(base_offset=40))
    assert batch.base_timestamp == 1000 and batch.max_timestamp == 3000
    assert [r.timestamp_ms for r in batch.records] == [1000, 3000, 500]
    assert [r.offset for r in batch.records] == [40, 41, 42]
    assert batch.last_offset_delta == 2


@pytest.mark.parametrize("field,args", [
    ("key", (1, "text", b"v", None)),
    ("value", (1, b"k", 42, None)),
    ("headers", (1, b"k", b"v", {"a": b"b"})),
    ("header key", (1, b"k", b"v", [(1, b"x")])),
    ("header value", (1, b"k", b"v", [("a", "text")])),
])
def test_type_errors_name_the_field(codec, field, args):
    builder = codec.RecordBatchBuilder()
    with pytest.raises(TypeError, match=field):
        builder.append(*args)
    assert len(builder) == 0 and builder.size_in_bytes == 61


def test_timestamp_must_be_int(codec):
    with pytest.raises(TypeError):
        codec.RecordBatchBuilder().append(1.5, b"k", b"v", None)


def test_bytes_like_inputs(codec):
    import array

    builder = codec.RecordBatchBuilder()
    builder.append(1, bytearray(b"ka"), memoryview(b"xvaluex")[1:-1], [(b"hk", bytearray(b"hv"))])
    builder.append(2, memoryview(b"abcdef")[::2], array.array("B", b"arr"), ())
    records = decode_record_batches(builder.build())[0].records
    assert (records[0].key, records[0].value, records[0].headers) == (b"ka", b"value", [("hk", b"hv")])
    assert (records[1].key, records[1].value, records[1].headers) == (b"ace", b"arr", [])


def test_build_rules(codec):
    builder = codec.RecordBatchBuilder()
    with pytest.raises(ValueError, match="empty"):
        builder.build()
    builder.append(1, None, b"v", None)
    with pytest.raises(ValueError, match="producer id"):
        builder.build(transactional=True)
    with pytest.raises(OverflowError):
        builder.build(producer_epoch=1 << 15)


def test_rebuild_with_other_args_and_after_append(codec):
    builder = codec.RecordBatchBuilder("lz4")
    builder.append(1, b"a", b"1", None)
    first = builder.build(0, 10, 1, 0)
    assert builder.build(0, 10, 1, 0) is first  # a retry re-uses the bytes
    other = builder.build(7, 11, 2, 5, True)
    [batch] = decode_record_batches(other)
    assert (batch.base_offset, batch.producer_id, batch.producer_epoch, batch.base_sequence) == (7, 11, 2, 5)
    assert batch.is_transactional and batch.compression == "lz4"
    builder.append(2, b"b", b"2", None)
    [batch] = decode_record_batches(builder.build(0, 10, 1, 0))
    assert [r.value for r in batch.records] == [b"1", b"2"]


# --- decoder errors ------------------------------------------------------------------------------------

def _batch(codec, compression="none", n=3):
    builder = codec.RecordBatchBuilder(compression)
    for i in range(n):
        builder.append(1000 + i, b"k%d" % i, b"value-%d" % i, [("h", b"x")])
    return bytes(builder.build(100, 5, 0, 0))


def test_decode_multiple_batches(codec):
    data = _batch(codec, "none") + _batch(codec, "zstd", 5) + _batch(codec, "gzip", 1)
    batches = decode_record_batches(data)
    assert [b.compression for b in batches] == ["none", "zstd", "gzip"]
    assert [len(b.records) for b in batches] == [3, 5, 1]


def test_decode_bad_crc(codec):
    data = bytearray(_batch(codec))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="CRC"):
        decode_record_batches(data)


def test_decode_bad_magic(codec):
    data = bytearray(_batch(codec))
    data[16] = 1
    with pytest.raises(CorruptRecordError, match="magic"):
        decode_record_batches(data)


def test_decode_impossible_length(codec):
    data = bytearray(_batch(codec))
    struct.pack_into(">i", data, 8, 10)
    with pytest.raises(CorruptRecordError, match="length"):
        decode_record_batches(data)


@pytest.mark.parametrize("cut", [1, 11, 12, 30, 61, -1])
def test_decode_truncated(codec, cut):
    whole = _batch(codec)
    data = whole + whole[:cut]
    with pytest.raises(CorruptRecordError, match="truncated"):
        decode_record_batches(data)
    # Fetch responses may end mid-batch: the complete batch is kept, the partial one dropped.
    assert len(decode_record_batches(data, allow_partial_tail=True)) == 1


def _refresh_crc(data: bytearray) -> bytearray:
    struct.pack_into(">I", data, 17, crc32c_package.crc32c(bytes(data[21:])))
    return data


@given(data=st.data())
@settings(fixture_ok, max_examples=300)
def test_decode_fuzz_only_corrupt_record_error(codec, data):
    compression = data.draw(st.sampled_from(["none", "gzip", "snappy", "lz4", "zstd"]))
    raw = bytearray(_batch(codec, compression, data.draw(st.integers(1, 4))))
    mode = data.draw(st.sampled_from(["flip", "flip-recrc", "truncate", "random", "splice"]))
    if mode in ("flip", "flip-recrc"):
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        if mode == "flip-recrc":
            _refresh_crc(raw)  # get past the CRC so the record parser and decompressors see the damage
    elif mode == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif mode == "random":
        raw = bytearray(data.draw(st.binary(max_size=200)))
    else:  # a valid header over fuzzed records
        raw = raw[:61] + bytearray(data.draw(st.binary(max_size=100)))
        struct.pack_into(">i", raw, 8, len(raw) - 12)
        _refresh_crc(raw)
    try:
        batches = decode_record_batches(bytes(raw))
    except CorruptRecordError:
        return
    for batch in batches:
        for record in batch.records:
            assert record.key is None or isinstance(record.key, bytes)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_built_bytes_never_change_afterwards(codec, compression):
    builder = codec.RecordBatchBuilder(compression, batch_size=1 << 20)
    builder.append(1, b"a", b"1", None)
    first = builder.build(0, 10, 1, 0)
    snapshot = bytes(first)
    other = builder.build(5, 11, 2, 3)  # a rebuild with other arguments
    assert bytes(first) == snapshot and bytes(other) != snapshot
    for i in range(2000):  # appends after build, growing past the first buffer
        assert builder.append(2 + i, b"b", b"2" * 10, None)
    assert bytes(first) == snapshot
    [batch] = decode_record_batches(builder.build(0, 10, 1, 0))
    assert len(batch.records) == 2001 and bytes(first) == snapshot
    [batch] = decode_record_batches(first)
    assert [r.value for r in batch.records] == [b"1"]
