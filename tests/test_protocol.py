"""The generated protocol messages: freshness, round trips, decoder fuzzing, framing, fast Produce encoder.

``instances(cls, version)`` (a hypothesis strategy driven by each class's ``_FIELDS``) is shared with
the other test_protocol_* modules.
"""
from __future__ import annotations

import filecmp
import os
import struct
import subprocess
import sys
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aiokprod.protocol as proto
from aiokprod.errors import CorruptFrameError, UnsupportedVersionError
from aiokprod.protocol.produce import ProduceResponseReader, encode_produce_request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The committed copy the generator reads (tools/kafka-protocol), and the project's reference data it was
# copied from (present next to the main checkout, not in CI).
SCHEMAS = os.path.join(REPO, "tools", "kafka-protocol")
SHARED_SCHEMAS = os.path.join(REPO, "..", "shared", "kafka-protocol")

ALL_CLASSES = [c for pair in proto.MESSAGES.values() for c in pair] + [proto.RequestHeader,
                                                                       proto.ResponseHeader]
RESPONSES = [resp for _, resp in proto.MESSAGES.values()] + [proto.ResponseHeader]
CLASS_VERSIONS = [(c, v) for c in ALL_CLASSES for v in range(c.VALID_VERSIONS[0], c.VALID_VERSIONS[1] + 1)]


def _ids(param):
    if isinstance(param, type):
        return param.__name__
    return f"v{param}"


# ------------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------------

_INTS = {
    "int8": st.integers(-(2**7), 2**7 - 1),
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
}
_TEXT = st.text(max_size=12)
_BYTES = st.binary(max_size=24)
_UUIDS = st.binary(min_size=16, max_size=16).map(lambda b: uuid.UUID(bytes=b))


def _in(rng, version):
    return rng is not None and rng[0] <= version <= rng[1]


def _scalar(elem):
    if elem in _INTS:
        return _INTS[elem]
    if elem == "bool":
        return st.booleans()
    if elem == "uuid":
        return _UUIDS
    if elem == "string":
        return _TEXT
    if elem in ("bytes", "records"):
        return _BYTES
    if elem == "float64":
        return st.floats(allow_nan=False)
    raise AssertionError(elem)


def instances(cls, version, top=None, depth=0, tagged=True):
    """Random instances of a generated struct/message valid in ``version``: fields the version lacks
    keep their defaults (that is what a decode gives back). ``tagged=False`` leaves tagged fields at
    their defaults too (for oracles that cannot express them)."""
    top = top or cls
    kwargs = {}
    for attr, typ, versions, nullable, _tag, struct_name in cls._FIELDS:
        if not _in(versions, version) or (_tag is not None and not tagged):
            continue
        is_array = typ.startswith("[]")
        elem = typ[2:] if is_array else typ
        if struct_name is not None:
            inner = instances(getattr(top, struct_name), version, top, depth + 1, tagged)
        else:
            inner = _scalar(elem)
        strat = st.lists(inner, max_size=3 if depth < 2 else 1) if is_array else inner
        if _in(nullable, version):
            strat = st.none() | strat
        kwargs[attr] = strat
    return st.fixed_dictionaries(kwargs).map(lambda kw: cls(**kw))


# ------------------------------------------------------------------------------------------------------
# freshness
# ------------------------------------------------------------------------------------------------------

def test_generated_modules_are_fresh(tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_protocol.py"), "--schemas", SCHEMAS,
                    "--out-dir", str(tmp_path)], check=True, capture_output=True)
    for rel in ("aiokprod/protocol/_generated.py", "aiokprod/_error_codes.py"):
        assert filecmp.cmp(tmp_path / rel, os.path.join(REPO, rel), shallow=False), (
            f"{rel} is stale: run `python tools/gen_protocol.py` and commit the result")


@pytest.mark.skipif(not os.path.isdir(SHARED_SCHEMAS), reason="no ../shared/kafka-protocol next to this checkout")
def test_committed_schemas_are_the_reference_ones():
    """The committed copy is the reference data, unchanged, and holds every request schema it has (the
    header tables are built from all of them)."""
    committed = os.path.join(SCHEMAS, "message")
    shared = os.path.join(SHARED_SCHEMAS, "message")
    requests = sorted(f for f in os.listdir(shared) if f.endswith("Request.json"))
    assert requests and set(requests) <= set(os.listdir(committed))
    for rel in [os.path.join("message", f) for f in sorted(os.listdir(committed))] + ["error-codes.tsv"]:
        assert filecmp.cmp(os.path.join(SCHEMAS, rel), os.path.join(SHARED_SCHEMAS, rel), shallow=False), rel


# ------------------------------------------------------------------------------------------------------
# shape of the API
# ------------------------------------------------------------------------------------------------------

def test_class_attributes_and_names():
    assert proto.MetadataRequest.API_KEY == 3
    assert proto.MetadataRequest.VALID_VERSIONS == (0, 12)
    assert proto.MetadataRequest.FLEXIBLE_VERSIONS == 9
    assert proto.SaslHandshakeRequest.FLEXIBLE_VERSIONS is None
    assert proto.DescribeProducersRequest.FLEXIBLE_VERSIONS == 0
    assert proto.ProduceRequest.VALID_VERSIONS == (0, 11)
    part = proto.MetadataResponse.MetadataResponsePartition(partition_index=2, leader_id=111)
    assert part.leader_epoch == -1 and part.replica_nodes == [] and part.offline_replicas == []
    assert repr(part).startswith("MetadataResponse.MetadataResponsePartition(")
    req = proto.InitProducerIdRequest(transaction_timeout_ms=5)
    assert req.transactional_id is None and req.producer_id == -1 and req.producer_epoch == -1
    # Common structs are attributes too.
    assert proto.AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(name="t").partitions == []
    # Fresh lists per instance (no shared mutable defaults).
    a, b = proto.MetadataRequest(), proto.MetadataRequest()
    a.topics.append(1)
    assert b.topics == []


def test_snake_case_fields():
    assert "producer_id" in proto.InitProducerIdResponse.__slots__
    assert "topic_data" in proto.ProduceRequest.__slots__
    assert "throttle_time_ms" in proto.ProduceResponse.__slots__
    assert "include_cluster_authorized_operations" in proto.MetadataRequest.__slots__


def test_versions_outside_range_are_refused():
    with pytest.raises(UnsupportedVersionError):
        proto.ProduceRequest().encode(12)
    with pytest.raises(UnsupportedVersionError):
        proto.ProduceResponse.decode(b"", -1)


def test_non_nullable_none_is_refused():
    with pytest.raises(ValueError):
        proto.MetadataRequest(topics=None).encode(0)  # nullable only from v1
    assert proto.MetadataRequest.decode(proto.MetadataRequest(topics=None).encode(1), 1).topics is None


def test_tagged_fields_written_only_when_set_and_unknown_tags_skipped():
    resp = proto.ApiVersionsResponse(api_keys=[proto.ApiVersionsResponse.ApiVersion(api_key=0, max_version=11)])
    plain = resp.encode(3)
    resp.finalized_features_epoch = 7
    tagged = resp.encode(3)
    assert len(tagged) > len(plain)
    assert proto.ApiVersionsResponse.decode(tagged, 3).finalized_features_epoch == 7
    # An unknown tag (99) with 3 bytes of payload is skipped.
    body = bytearray(plain)
    assert body[-1] == 0
    body[-1:] = b"\x01\x63\x03abc"
    assert proto.ApiVersionsResponse.decode(bytes(body), 3) == proto.ApiVersionsResponse.decode(plain, 3)


def test_huge_lengths_fail_fast():
    # An array claiming 2**31-1 elements in a 4-byte body must not allocate or loop.
    with pytest.raises(CorruptFrameError):
        proto.MetadataResponse.decode(b"\x7f\xff\xff\xff", 0)
    with pytest.raises(CorruptFrameError):
        proto.FindCoordinatorResponse.decode(b"\x00\x00\x00\x00" + b"\x00\x00" + b"\xff\xff\xff\xff\x0f", 4)


# ------------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,version", CLASS_VERSIONS, ids=_ids)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls, version, data):
    obj = data.draw(instances(cls, version))
    encoded = obj.encode(version)
    assert cls.decode(encoded, version) == obj
    assert cls.decode(memoryview(bytearray(encoded)), version) == obj


# ------------------------------------------------------------------------------------------------------
# decoder fuzzing: only CorruptFrameError may escape
# ------------------------------------------------------------------------------------------------------

def _decode_or_corrupt(cls, data, version):
    try:
        cls.decode(data, version)
    except CorruptFrameError:
        pass


@pytest.mark.parametrize("cls", RESPONSES, ids=_ids)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), raw=st.binary(max_size=200))
def test_fuzz_random_bytes(cls, data, raw):
    version = data.draw(st.integers(*cls.VALID_VERSIONS))
    _decode_or_corrupt(cls, raw, version)


@pytest.mark.parametrize("cls", RESPONSES, ids=_ids)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_truncations_and_mutations(cls, data):
    version = data.draw(st.integers(*cls.VALID_VERSIONS))
    encoded = data.draw(instances(cls, version)).encode(version)
    cut = data.draw(st.integers(0, max(0, len(encoded) - 1)))
    if len(encoded):
        with pytest.raises(CorruptFrameError):
            cls.decode(encoded[:cut], version)
    mutated = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4))):
        if not mutated:
            break
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
    _decode_or_corrupt(cls, bytes(mutated), version)
    # Random bytes spliced into the middle of a valid body.
    junk = data.draw(st.binary(min_size=1, max_size=8))
    pos = data.draw(st.integers(0, len(encoded)))
    _decode_or_corrupt(cls, encoded[:pos] + junk + encoded[pos:], version)


# ------------------------------------------------------------------------------------------------------
# framing
# ------------------------------------------------------------------------------------------------------

def test_header_versions():
    assert proto.request_header_version(0, 8) == 1
    assert proto.request_header_version(0, 9) == 2
    assert proto.response_header_version(0, 8) == 0
    assert proto.response_header_version(0, 9) == 1
    assert proto.request_header_version(18, 3) == 2
    assert proto.response_header_version(18, 3) == 0  # ApiVersions: always v0
    assert proto.request_header_version(17, 1) == 1  # SaslHandshake: never flexible
    assert proto.request_header_version(7, 0) == 0  # ControlledShutdown v0: header v0
    with pytest.raises(UnsupportedVersionError):
        proto.request_header_version(9999, 0)


def test_encode_request_frame_layout():
    req = proto.MetadataRequest(topics=[proto.MetadataRequest.MetadataRequestTopic(name="t")])
    frame = proto.encode_request(req, 9, 42, "cid")
    (size,) = struct.unpack_from(">i", frame)
    assert size == len(frame) - 4
    header = proto.RequestHeader.decode(frame[4:], 2)
    assert (header.request_api_key, header.request_api_version, header.correlation_id,
            header.client_id) == (3, 9, 42, "cid")
    header_len = 2 + 2 + 4 + 2 + 3 + 1
    assert proto.MetadataRequest.decode(frame[4 + header_len:], 9) == req
    frame = proto.encode_request(req, 1, 43, None)
    assert proto.RequestHeader.decode(frame[4:], 1).client_id is None


def test_decode_response_header():
    hdr = proto.ResponseHeader(correlation_id=9).encode(1)
    assert proto.decode_response_header(memoryview(hdr + b"body"), 1) == (9, len(hdr))
    assert proto.decode_response_header(memoryview(b"\0\0\0\x05body"), 0) == (5, 4)
    # Tagged header fields are skipped.
    assert proto.decode_response_header(memoryview(b"\0\0\0\x05\x01\x00\x02xyBODY"), 1) == (5, 9)
    for bad in (b"", b"\0\0\0", b"\0\0\0\x05\x01", b"\0\0\0\x05\x01\x00\x09xy"):
        with pytest.raises(CorruptFrameError):
            proto.decode_response_header(memoryview(bad), 1)


# ------------------------------------------------------------------------------------------------------
# fast Produce encoder
# ------------------------------------------------------------------------------------------------------

_topics = st.lists(
    st.tuples(st.text(max_size=8),
              st.lists(st.tuples(st.integers(0, 2**31 - 1), st.none() | st.binary(max_size=300)), max_size=3)),
    max_size=3)


@pytest.mark.parametrize("version", range(3, 12))
@settings(max_examples=40, deadline=None)
@given(topics=_topics, txn=st.none() | st.text(max_size=8), acks=st.sampled_from([-1, 0, 1]),
       timeout=st.integers(0, 2**31 - 1), corr=st.integers(-(2**31), 2**31 - 1),
       client_id=st.none() | st.text(max_size=8))
def test_fast_produce_matches_generated(version, topics, txn, acks, timeout, corr, client_id):
    R = proto.ProduceRequest
    req = R(transactional_id=txn, acks=acks, timeout_ms=timeout, topic_data=[
        R.TopicProduceData(name=name, partition_data=[R.PartitionProduceData(index=i, records=b)
                                                      for i, b in parts])
        for name, parts in topics])
    pieces = encode_produce_request(version, corr, client_id, txn, acks, timeout, topics)
    assert b"".join(pieces) == proto.encode_request(req, version, corr, client_id)


def test_fast_produce_passes_batches_through_without_copy():
    batch = bytearray(b"x" * 1000)
    pieces = encode_produce_request(9, 1, "c", None, -1, 1000, [("t", [(0, batch), (1, batch)])])
    views = [p for p in pieces if isinstance(p, memoryview)]
    assert len(views) == 2 and all(v.obj is batch for v in views)
    with pytest.raises(UnsupportedVersionError):
        encode_produce_request(2, 1, "c", None, -1, 1000, [])


# ------------------------------------------------------------------------------------------------------
# fast Produce response reader
# ------------------------------------------------------------------------------------------------------

def _as_generated_fields(response):
    """What the reader keeps (it gives record errors as (batch_index, message) tuples), from either."""
    return (response.throttle_time_ms, [
        (t.name, [(p.index, p.error_code, p.base_offset, p.log_append_time_ms, p.log_start_offset,
                   [e if isinstance(e, tuple) else (e.batch_index, e.batch_index_error_message)
                    for e in p.record_errors], p.error_message)
                  for p in t.partition_responses])
        for t in response.responses])


@pytest.mark.parametrize("version", range(3, 12))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_produce_response_reader_matches_generated(version, data):
    response = data.draw(instances(proto.ProduceResponse, version))  # tagged fields too (skipped)
    encoded = response.encode(version)
    expected = _as_generated_fields(proto.ProduceResponse.decode(encoded, version))
    for body in (encoded, memoryview(bytearray(encoded))):
        got = ProduceResponseReader.decode(body, version)
        assert _as_generated_fields(got) == expected


@pytest.mark.parametrize("version", range(3, 12))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), raw=st.binary(max_size=200))
def test_produce_response_reader_fuzz(version, data, raw):
    """Only CorruptFrameError escapes, and a truncated body is always refused."""
    for body in (raw, data.draw(instances(proto.ProduceResponse, version)).encode(version)):
        try:
            ProduceResponseReader.decode(body, version)
        except CorruptFrameError:
            pass
        if body:
            cut = data.draw(st.integers(0, len(body) - 1))
            with pytest.raises(CorruptFrameError):
                ProduceResponseReader.decode(body[:cut], version)


def test_produce_response_reader_versions():
    with pytest.raises(UnsupportedVersionError):
        ProduceResponseReader.decode(b"", 2)
