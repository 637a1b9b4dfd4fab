"""Cross-check the generated messages against kafka-python 3.0.12, an implementation no one here wrote.

Two oracles:
* ``kafka.protocol.old``: kafka-python's hand-written per-version structs (Produce/Metadata up to v8,
  the transaction APIs up to v2, ...). Our request encoding must equal theirs byte for byte, and our
  decoder must read back what they encode for responses.
* ``kafka.protocol`` (new): kafka-python's own JSON-schema-driven messages covering every version it
  knows; same checks for every version both sides support.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aiokprod.protocol as proto
from test_protocol import instances

from kafka.protocol.old import (  # kafka-python is pinned in the test extra: an oracle, never skipped
    add_offsets_to_txn, add_partitions_to_txn, admin, api_versions, end_txn, find_coordinator,
    init_producer_id, list_offsets, metadata, produce, sasl_authenticate, sasl_handshake,
    txn_offset_commit,
)
from kafka.protocol.old.types import Array, BitField, Schema, TaggedFields

OLD_MODULES = {
    "ApiVersions": api_versions, "Metadata": metadata, "Produce": produce,
    "InitProducerId": init_producer_id, "FindCoordinator": find_coordinator,
    "AddPartitionsToTxn": add_partitions_to_txn, "AddOffsetsToTxn": add_offsets_to_txn,
    "EndTxn": end_txn, "TxnOffsetCommit": txn_offset_commit, "SaslHandshake": sasl_handshake,
    "SaslAuthenticate": sasl_authenticate, "CreateTopics": admin, "ListOffsets": list_offsets,
}


def _present(cls, version):
    return [(attr, typ, struct_name) for attr, typ, versions, _n, tag, struct_name in cls._FIELDS
            if tag is None and versions[0] <= version <= versions[1]]


def to_old(obj, top, version, schema):
    """Our struct -> the positional tuple kafka-python's old Schema encodes, walking both together."""
    ours = _present(type(obj), version)
    fields = [f for f in schema.fields if f is not TaggedFields]
    assert len(ours) == len(fields), (type(obj).__qualname__, version, schema.names)
    values = []
    for (attr, _typ, struct_name), ftype in zip(ours, fields):
        value = getattr(obj, attr)
        if isinstance(ftype, Array) and value is not None and struct_name is not None:
            item_cls = getattr(top, struct_name)
            if isinstance(ftype.array_of, Schema):
                value = [to_old(item, top, version, ftype.array_of) for item in value]
            else:
                # kafka-python flattens a one-field struct into its value (Metadata v0-8 topics).
                (only,) = _present(item_cls, version)
                value = [getattr(item, only[0]) for item in value]
        elif ftype is BitField:
            # kafka-python holds authorized-operations bit fields as a set of bit numbers.
            value = {b for b in range(32) if (value & 0xFFFFFFFF) >> b & 1}
        values.append(value)
    if schema.fields and schema.fields[-1] is TaggedFields:
        values.append({})
    return tuple(values)


def _old_cases(kind):
    cases = []
    for name, module in OLD_MODULES.items():
        ours = getattr(proto, name + kind)
        for old_cls in getattr(module, name + kind):
            cases.append(pytest.param(ours, old_cls, id=f"{name}{kind}-v{old_cls.API_VERSION}"))
    return cases


@pytest.mark.parametrize("ours,old_cls", _old_cases("Request"))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_requests_equal_kafka_python_old(ours, old_cls, data):
    version = old_cls.API_VERSION
    obj = data.draw(instances(ours, version, tagged=False))
    theirs = old_cls(*to_old(obj, ours, version, old_cls.SCHEMA)).encode()
    assert obj.encode(version) == theirs


@pytest.mark.parametrize("ours,old_cls", _old_cases("Response"))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_responses_from_kafka_python_old_decode(ours, old_cls, data):
    version = old_cls.API_VERSION
    obj = data.draw(instances(ours, version, tagged=False))
    theirs = old_cls(*to_old(obj, ours, version, old_cls.SCHEMA)).encode()
    assert ours.decode(theirs, version) == obj
    assert obj.encode(version) == theirs


# ------------------------------------------------------------------------------------------------------
# kafka-python's schema-driven messages (every version it knows)
# ------------------------------------------------------------------------------------------------------

def _new_style_classes():
    import kafka.protocol.admin as k_admin
    import kafka.protocol.consumer as k_consumer
    import kafka.protocol.metadata as k_metadata
    import kafka.protocol.producer as k_producer

    found = {}
    for module in (k_admin, k_consumer, k_metadata, k_producer):
        for name in dir(module):
            if name.endswith(("Request", "Response")):
                found.setdefault(name, getattr(module, name))
    return found


NEW = _new_style_classes()
NAMES = ["ApiVersions", "Metadata", "Produce", "InitProducerId", "FindCoordinator", "AddPartitionsToTxn",
         "AddOffsetsToTxn", "EndTxn", "TxnOffsetCommit", "SaslHandshake", "SaslAuthenticate",
         "CreateTopics", "ListOffsets", "Fetch", "DescribeProducers"]


def _new_cases():
    cases = []
    for name in NAMES:
        for kind in ("Request", "Response"):
            theirs = NEW.get(name + kind)
            if theirs is None:
                continue
            ours = getattr(proto, name + kind)
            lo = max(ours.VALID_VERSIONS[0], theirs.min_version)
            hi = min(ours.VALID_VERSIONS[1], theirs.max_version)
            cases += [pytest.param(ours, theirs, v, id=f"{name}{kind}-v{v}") for v in range(lo, hi + 1)]
    return cases


def to_new(obj, their_cls, version):
    """Our struct -> keyword arguments of kafka-python's schema-driven class ``their_cls`` (its nested
    classes sit under their parent, ours all under the message): the fields present in ``version``."""
    kwargs = {}
    for attr, _typ, versions, _n, _tag, _struct in type(obj)._FIELDS:
        if not versions[0] <= version <= versions[1]:
            continue
        value = getattr(obj, attr)
        if isinstance(value, proto.Struct):
            value = _new_struct(value, their_cls, version)
        elif isinstance(value, list) and value and isinstance(value[0], proto.Struct):
            value = [_new_struct(v, their_cls, version) for v in value]
        if not hasattr(their_cls, attr) and attr.endswith("_authorized_operations"):
            # kafka-python's Metadata schema calls both fields plain `authorized_operations`.
            # ... and holds it as a set of bit numbers.
            attr = "authorized_operations"
            value = {b for b in range(32) if (value & 0xFFFFFFFF) >> b & 1}
        kwargs[attr] = value
    return kwargs


def _new_struct(obj, container, version):
    their_cls = getattr(container, type(obj).__qualname__.rsplit(".", 1)[-1])
    return their_cls(**to_new(obj, their_cls, version))


@pytest.mark.parametrize("ours,theirs,version", _new_cases())
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_equal_kafka_python_schema_messages(ours, theirs, version, data):
    obj = data.draw(instances(ours, version))
    their_bytes = theirs(**to_new(obj, theirs, version)).encode(version=version)
    assert obj.encode(version) == their_bytes
    assert ours.decode(their_bytes, version) == obj
