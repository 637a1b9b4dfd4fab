"""Frame-level helpers the protocol-aware test proxies share (SASL gateway, fault-injecting proxy).

A Kafka connection is a sequence of ``int32 size | payload`` frames. A request payload starts with
``api_key int16, api_version int16, correlation_id int32`` whatever its header version, so a proxy can route
on those 8 bytes without knowing the API; it needs the header version only to find the body.
"""
from __future__ import annotations

import asyncio
import struct

from aiokprod.protocol import RequestHeader, request_header_version, response_header_version

_SIZE = struct.Struct(">i")
_REQ_PREFIX = struct.Struct(">hhi")

# A generous bound: the proxies buffer whole frames, and a garbage size must not make them allocate 2 GiB.
MAX_FRAME = 128 * 1024 * 1024


class FrameError(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The payload of the next frame (without its size), or None at a clean EOF between frames."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    (size,) = _SIZE.unpack(head)
    if size < 0 or size > MAX_FRAME:
        raise FrameError(f"impossible frame size {size}")
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return _SIZE.pack(len(payload)) + payload


class RequestInfo:
    """What a proxy needs to know about one request frame."""

    __slots__ = ("api_key", "api_version", "correlation_id", "client_id", "header_version", "body_offset")

    def __init__(self, payload: bytes) -> None:
        if len(payload) < 8:
            raise FrameError(f"request frame of {len(payload)} bytes is shorter than a header")
        self.api_key, self.api_version, self.correlation_id = _REQ_PREFIX.unpack_from(payload, 0)
        self.client_id = None
        try:
            self.header_version = request_header_version(self.api_key, self.api_version)
        except Exception:  # noqa: BLE001 - an API the generated module does not know
            # Forwarded untouched; the body offset is never needed for APIs we do not decode.
            self.header_version = None
            self.body_offset = None
            return
        header, self.body_offset = RequestHeader.decode_prefix(memoryview(payload), 0, self.header_version)
        self.client_id = header.client_id

    @property
    def response_header_version(self) -> int:
        return response_header_version(self.api_key, self.api_version)

    def body(self, payload: bytes) -> memoryview:
        return memoryview(payload)[self.body_offset:]


def response_payload(correlation_id: int, header_version: int, body: bytes) -> bytes:
    """A response payload (no size prefix): correlation id, empty tagged fields if header v1, body."""
    head = struct.pack(">i", correlation_id) + (b"\x00" if header_version >= 1 else b"")
    return head + body


def encode_response(request: RequestInfo, message) -> bytes:
    """Frame a generated response message as the answer to ``request`` (same version, same correlation)."""
    return frame(response_payload(request.correlation_id, request.response_header_version,
                                  message.encode(request.api_version)))
