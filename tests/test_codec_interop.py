"""Truth from outside: kafka-python's record code reads what we build, and we read what it builds.

kafka-python 3.x ships its own magic-2 encoder and decoder (kafka.record.default_records), with its own
CRC-32C and codec handling; neither shares code with ours.
"""
from __future__ import annotations

import os
import struct

import crc32c as crc32c_package
import lz4.block
import lz4.frame
import pytest
import snappy
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from aiokprod import _impl
from aiokprod.codec import decode_record_batches  # one Python decoder for both twins

TWINS = ["python"] if _impl.NO_EXTENSIONS else ["python", "native"]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CODEC_ID = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.fixture(params=TWINS)
def codec(request):
    return _impl.python_twin("codec") if request.param == "python" else _impl.native_twin("codec")


fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=60)

PRODUCER_STATES = [
    dict(),  # plain producer: -1 / -1 / -1
    dict(producer_id=4242, producer_epoch=3, base_sequence=17),  # idempotent
    dict(producer_id=4242, producer_epoch=3, base_sequence=17, transactional=True),
]

RECORDS = [
    (1_700_000_000_000, b"key-0", b"value-0" * 30, [("trace", b"abc"), ("empty", b""), ("null", None)]),
    (1_700_000_000_500, None, b"value-1", None),
    (1_699_999_999_000, b"", None, [("\u00e9t\u00e9", b"\x00\xff")]),
    (1_700_000_001_000, b"key-3", b"x" * 5000, []),
]


def _kafka_python_records(data):
    batch = DefaultRecordBatch(bytes(data))
    assert batch.validate_crc()
    return batch, [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]


@pytest.mark.parametrize("compression", CODECS)
@pytest.mark.parametrize("state", PRODUCER_STATES, ids=["plain", "idempotent", "transactional"])
def test_kafka_python_reads_our_batches(codec, compression, state):
    builder = codec.RecordBatchBuilder(compression, batch_size=1 << 20)
    for record in RECORDS:
        assert builder.append(*record)
    data = builder.build(base_offset=1000, **state)
    batch, records = _kafka_python_records(data)
    assert batch.magic == 2 and batch.compression_type == CODEC_ID[compression]
    assert batch.base_offset == 1000 and batch.last_offset_delta == len(RECORDS) - 1
    assert batch.producer_id == state.get("producer_id", -1)
    assert batch.producer_epoch == state.get("producer_epoch", -1)
    assert batch.base_sequence == state.get("base_sequence", -1)
    assert batch.is_transactional == state.get("transactional", False)
    assert batch.is_control_batch is False and batch.timestamp_type == 0
    assert batch.first_timestamp == RECORDS[0][0]
    assert batch.max_timestamp == max(r[0] for r in RECORDS)
    assert batch.size_in_bytes == len(data)
    expected = [(1000 + i, ts, key, value, list(headers or [])) for i, (ts, key, value, headers) in enumerate(RECORDS)]
    assert records == expected


@given(recs=st.lists(st.tuples(st.integers(0, 1 << 42), st.none() | st.binary(max_size=40),
                               st.none() | st.binary(max_size=400),
                               st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=20)),
                                        max_size=3)),
                     min_size=1, max_size=30),
       compression=st.sampled_from(CODECS), base_offset=st.integers(0, 1 << 40))
@fixture_ok
def test_kafka_python_reads_random_batches(codec, recs, compression, base_offset):
    builder = codec.RecordBatchBuilder(compression, batch_size=1 << 20)
    for rec in recs:
        builder.append(*rec)
    _, records = _kafka_python_records(builder.build(base_offset=base_offset))
    assert records == [(base_offset + i, ts, k, v, h) for i, (ts, k, v, h) in enumerate(recs)]


def _kafka_python_batch(compression, records, **state):
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODEC_ID[compression], is_transactional=state.get("transactional", False),
        producer_id=state.get("producer_id", -1), producer_epoch=state.get("producer_epoch", -1),
        base_sequence=state.get("base_sequence", -1), batch_size=1 << 20)
    for offset, (ts, key, value, headers) in enumerate(records):
        assert builder.append(offset, ts, key, value, headers or []) is not None
    return bytes(builder.build())


@pytest.mark.parametrize("compression", CODECS)
@pytest.mark.parametrize("state", PRODUCER_STATES, ids=["plain", "idempotent", "transactional"])
def test_we_read_kafka_python_batches(codec, compression, state):
    data = _kafka_python_batch(compression, RECORDS, **state)
    [batch] = decode_record_batches(data)
    assert batch.producer_id == state.get("producer_id", -1)
    assert batch.producer_epoch == state.get("producer_epoch", -1)
    assert batch.base_sequence == state.get("base_sequence", -1)
    assert batch.is_transactional == state.get("transactional", False)
    assert batch.base_timestamp == RECORDS[0][0] and batch.max_timestamp == max(r[0] for r in RECORDS)
    assert batch.crc == DefaultRecordBatch(data).crc
    got = [(r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in batch.records]
    assert got == [(i, ts, k, v, list(h or [])) for i, (ts, k, v, h) in enumerate(RECORDS)]


def test_kafka_python_reads_multi_batch_buffer(codec):
    chunks = []
    for i, compression in enumerate(CODECS):
        builder = codec.RecordBatchBuilder(compression)
        builder.append(10 + i, b"k", b"v%d" % i, None)
        chunks.append(bytes(builder.build(base_offset=i)))
    records = MemoryRecords(b"".join(chunks))
    values = []
    while records.has_next():
        batch = records.next_batch()
        values.extend(r.value for r in batch)
    assert values == [b"v%d" % i for i in range(len(CODECS))]


def _reframe(data: bytes, codec_id: int, payload: bytes) -> bytes:
    """The batch ``data`` with its records replaced by ``payload`` under codec ``codec_id`` (new length,
    attributes and CRC): how another client might have written the same records."""
    out = bytearray(data[:61]) + payload
    struct.pack_into(">i", out, 8, len(out) - 12)
    attributes = struct.unpack_from(">h", out, 21)[0]
    struct.pack_into(">h", out, 21, (attributes & ~0x07) | codec_id)
    struct.pack_into(">I", out, 17, crc32c_package.crc32c(bytes(out[21:])))
    return bytes(out)


def test_raw_snappy_without_xerial_framing(codec):
    builder = codec.RecordBatchBuilder("none")
    for record in RECORDS:
        builder.append(*record)
    plain = bytes(builder.build())
    data = _reframe(plain, 2, snappy.compress(plain[61:]))  # brokers and librdkafka send this
    [ours] = decode_record_batches(data)
    [reference] = decode_record_batches(plain)
    assert ours.compression == "snappy" and ours.records == reference.records
    _, records = _kafka_python_records(data)  # kafka-python reads it too: the framing is valid Kafka
    assert [r[3] for r in records] == [r.value for r in reference.records]


def test_xerial_framing_matches_java_layout(codec):
    builder = codec.RecordBatchBuilder("snappy", batch_size=1 << 20)
    for i in range(100):
        builder.append(i, None, bytes(range(256)) * 4, None)  # > 32 KiB of records: several chunks
    payload = bytes(builder.build())[61:]
    assert payload[:16] == b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    pos, chunks = 16, 0
    while pos < len(payload):
        (size,) = struct.unpack_from(">i", payload, pos)
        assert len(snappy.decompress(payload[pos + 4:pos + 4 + size])) <= 32 * 1024
        pos += 4 + size
        chunks += 1
    assert pos == len(payload) and chunks > 1


@pytest.mark.parametrize("level", [None, 9])
@pytest.mark.parametrize("shape", ["one_block", "incompressible", "three_blocks"])
def test_lz4_frame_matches_java_layout(codec, shape, level):
    # KafkaLZ4BlockOutputStream's frame: FLG 0x60 (independent blocks, no checksums, no content size),
    # BD 0x40 (64 KiB blocks).
    count = 150 if shape == "three_blocks" else 10
    values = [{"one_block": b"abcdefgh" * 100, "incompressible": os.urandom(1000),
               "three_blocks": os.urandom(500) + b"z" * 500}[shape] for _ in range(count)]
    builder = codec.RecordBatchBuilder("lz4", batch_size=1 << 20, compression_level=level)
    plain = codec.RecordBatchBuilder("none", batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(i, None, value)
        plain.append(i, None, value)
    records = bytes(plain.build())[61:]
    payload = bytes(builder.build())[61:]
    assert payload[:7] == b"\x04\x22\x4d\x18\x60\x40\x82"
    # Blocks: uint32 LE size (high bit: stored as is), then the block; each must decompress on its own
    # (independent blocks: a reader may not need the previous block), into 64 KiB slices of the records.
    blocks, pos = [], 7
    while True:
        (word,) = struct.unpack_from("<I", payload, pos)
        if word == 0:
            break
        size = word & 0x7FFFFFFF
        block = payload[pos + 4:pos + 4 + size]
        start = len(blocks) * 65536
        expected = records[start:start + 65536]
        assert (block if word >> 31 else lz4.block.decompress(block, uncompressed_size=len(expected))) == expected
        blocks.append(word)
        pos += 4 + size
    assert pos + 4 == len(payload) and len(blocks) * 65536 >= len(records)
    if shape == "incompressible":
        assert blocks == [len(records) | 0x80000000]  # stored as is, flagged
    else:
        assert len(blocks) == (3 if shape == "three_blocks" else 1) and not any(w >> 31 for w in blocks)
    assert lz4.frame.decompress(payload) == records
    _, decoded = _kafka_python_records(builder.build())  # and kafka-python reads it
    assert [r[3] for r in decoded] == values


def test_zstd_frame_without_content_size(codec):
    builder = codec.RecordBatchBuilder("none")
    for record in RECORDS:
        builder.append(*record)
    plain = bytes(builder.build())
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(plain[61:])
    [batch] = decode_record_batches(_reframe(plain, 4, frame))
    assert batch.records == decode_record_batches(plain)[0].records
