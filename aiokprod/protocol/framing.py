"""Request and response headers and the size-prefixed frame.

Wire layout::

    request  = int32 size | header | body          (size counts header + body)
    header v0 = api_key int16, api_version int16, correlation_id int32
    header v1 = v0 + client_id (nullable string, int16 length: *never* compact, even in v2)
    header v2 = v1 + tagged fields (used for every flexible request version)
    response = int32 size | correlation_id int32 | [tagged fields if header v1] | body

ApiVersions responses always use response header v0, even for flexible versions: a client that does
not yet know the broker's versions must be able to read the answer (KIP-511).
"""
from __future__ import annotations

import struct

from aiokprod.errors import CorruptFrameError, UnsupportedVersionError
from aiokprod.protocol._generated import FIRST_FLEXIBLE_VERSION
from aiokprod.protocol.primitives import Buf, Message, read_tag_count, read_tag_header

__all__ = [
    "request_header_version", "response_header_version", "encode_request", "encode_request_header",
    "decode_response_header",
]

_API_VERSIONS_KEY = 18
_CONTROLLED_SHUTDOWN_KEY = 7
_HEADER = struct.Struct(">hhi")
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")


def _first_flexible(api_key: int) -> int | None:
    try:
        return FIRST_FLEXIBLE_VERSION[api_key]
    except KeyError:
        raise UnsupportedVersionError(broker_message=f"unknown api key {api_key}") from None


def request_header_version(api_key: int, api_version: int) -> int:
    """2 for flexible request versions, else 1 (0 only for ControlledShutdown v0)."""
    flex = _first_flexible(api_key)
    if flex is not None and api_version >= flex:
        return 2
    if api_key == _CONTROLLED_SHUTDOWN_KEY and api_version == 0:
        return 0
    return 1


def response_header_version(api_key: int, api_version: int) -> int:
    """1 for flexible response versions, else 0; ApiVersions is always 0."""
    flex = _first_flexible(api_key)
    if api_key == _API_VERSIONS_KEY:
        return 0
    return 1 if flex is not None and api_version >= flex else 0


def encode_request_header(out: bytearray, api_key: int, api_version: int, correlation_id: int,
                          client_id: str | None, header_version: int) -> None:
    """Append a request header of ``header_version`` to ``out``."""
    out += _HEADER.pack(api_key, api_version, correlation_id)
    if header_version >= 1:
        if client_id is None:
            out += b"\xff\xff"
        else:
            data = client_id.encode()
            out += _I16.pack(len(data))
            out += data
        if header_version >= 2:
            out.append(0)  # no tagged fields


def encode_request(message: Message, api_version: int, correlation_id: int, client_id: str | None) -> bytes:
    """The full request frame (int32 size prefix, header, body) of a generated request message."""
    api_key = message.API_KEY
    if api_key is None:
        raise TypeError(f"{type(message).__name__} is a header, not a request")
    body = message.encode(api_version)
    out = bytearray(b"\0\0\0\0")
    encode_request_header(out, api_key, api_version, correlation_id, client_id,
                          request_header_version(api_key, api_version))
    out += body
    struct.pack_into(">i", out, 0, len(out) - 4)
    return bytes(out)


def decode_response_header(frame: Buf, header_version: int) -> tuple[int, int]:
    """Read a response header from ``frame`` (the bytes *after* the int32 size prefix).

    Returns ``(correlation_id, body_offset)``; the body is ``frame[body_offset:]``. Tagged header
    fields (header v1) are skipped. Malformed input raises CorruptFrameError.
    """
    if len(frame) < 4:
        raise CorruptFrameError(f"response frame of {len(frame)} bytes has no correlation id")
    (correlation_id,) = _I32.unpack_from(frame, 0)
    pos = 4
    if header_version >= 1:
        if len(frame) > 4 and frame[4] == 0:
            return correlation_id, 5  # no tagged fields: the usual header v1
        n, pos = read_tag_count(frame, pos)
        for _ in range(n):
            _tag, _start, pos = read_tag_header(frame, pos)
    return correlation_id, pos
