"""The Kafka wire protocol: generated messages, primitives, framing and the fast Produce encoder.

* Messages (generated from the official JSON schemas by ``tools/gen_protocol.py``): one class per
  message, named as in its schema (``MetadataRequest``, ``ProduceResponse``...), with ``API_KEY``,
  ``VALID_VERSIONS`` (lo, hi), ``FLEXIBLE_VERSIONS`` (first flexible version or None),
  ``encode(version) -> bytes`` (body only) and ``decode(data, version)`` (body only; bytes or
  memoryview; raises only ``CorruptFrameError`` on malformed input). Fields are snake_case attributes;
  constructors take keyword arguments with the schema's defaults. Every struct of a message is an
  attribute of the message class under its schema type name, however deep it sits in the schema:
  ``MetadataResponse.MetadataResponseTopic``, ``MetadataResponse.MetadataResponsePartition``,
  ``ProduceRequest.TopicProduceData``, ``ProduceRequest.PartitionProduceData``.
* Versions: fields a version lacks are skipped on encode (whatever their value) and left at their
  default on decode. Tagged fields are written only when they differ from their default; unknown tags
  are skipped on decode. ``records`` fields are raw bytes (nullable); encode accepts any buffer.
* ``framing``: header versions, ``encode_request``, ``decode_response_header``.
* ``produce``: ``encode_produce_request`` returning buffers for ``transport.writelines``.
"""
from aiokprod.protocol._generated import *  # noqa: F401,F403
from aiokprod.protocol._generated import API_NAMES, FIRST_FLEXIBLE_VERSION, MESSAGES, __all__ as _gen_all
from aiokprod.protocol.framing import (
    decode_response_header,
    encode_request,
    request_header_version,
    response_header_version,
)
from aiokprod.protocol.primitives import Message, Struct

__all__ = list(_gen_all) + [
    "API_NAMES", "FIRST_FLEXIBLE_VERSION", "MESSAGES", "Message", "Struct",
    "decode_response_header", "encode_request", "request_header_version", "response_header_version",
]
