"""Reader and writer primitives of the Kafka wire protocol, used by the generated messages.

Conventions (the generated code in ``_generated.py`` depends on them):

* Writers append to a ``bytearray`` (``out``) and return nothing. Fixed-width integers are written
  inline by the generated code with the pre-bound ``struct`` packers below (``pack_i32(v)``).
* Readers take ``(buf, pos)`` where ``buf`` is a ``memoryview`` (or ``bytes``) and return
  ``(value, new_pos)``. Fixed-width integers are read inline with the pre-bound unpackers.
* Every length read from the wire is checked against the bytes that remain *before* anything is
  allocated, so a bogus length of 2**31 fails with :class:`CorruptFrameError` instead of allocating or
  looping. The remaining failure modes of inline code (``struct.error`` on a short buffer, a bad UTF-8
  string) are turned into :class:`CorruptFrameError` once, in :meth:`Message.decode`.

Encodings, for reference:

* classic string: int16 length (-1 = null) + UTF-8; classic bytes/records: int32 length (-1 = null);
  classic array: int32 count (-1 = null).
* compact (flexible versions): unsigned varint of N+1 (0 = null) for strings, bytes and arrays.
* tagged-field section (flexible versions, at the end of every struct): unsigned varint count, then
  per field: unsigned varint tag, unsigned varint size, ``size`` bytes.
"""
from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn, Optional, Self, Union

from aiokprod.errors import CorruptFrameError, UnsupportedVersionError

#: What a bytes or records field holds: decoded as bytes; any buffer encodes.
BytesLike = Union[bytes, bytearray, memoryview]
#: What the readers read from (a memoryview of a frame, or bytes in tests).
Buf = Union[bytes, bytearray, memoryview]

__all__ = [
    "BytesLike",
    "Struct",
    "Message",
    "EMPTY",
    "ZERO_UUID",
]

# Pre-bound packers and unpackers: attribute lookups avoided on the hot path.
pack_i8 = struct.Struct(">b").pack
pack_i16 = struct.Struct(">h").pack
pack_u16 = struct.Struct(">H").pack
pack_i32 = struct.Struct(">i").pack
pack_u32 = struct.Struct(">I").pack
pack_i64 = struct.Struct(">q").pack
pack_f64 = struct.Struct(">d").pack
unpack_i8 = struct.Struct(">b").unpack_from
unpack_i16 = struct.Struct(">h").unpack_from
unpack_u16 = struct.Struct(">H").unpack_from
unpack_i32 = struct.Struct(">i").unpack_from
unpack_u32 = struct.Struct(">I").unpack_from
unpack_i64 = struct.Struct(">q").unpack_from
unpack_f64 = struct.Struct(">d").unpack_from

#: Default of array arguments in generated constructors (an immutable marker, replaced by a new list).
EMPTY: tuple[()] = ()
ZERO_UUID = uuid.UUID(int=0)
_UUID = uuid.UUID


# ---------------------------------------------------------------------------------------------------
# varints
# ---------------------------------------------------------------------------------------------------

def write_uvarint(out: bytearray, value: int) -> None:
    """Unsigned LEB128 varint (the protocol's compact lengths and tag numbers)."""
    if value < 0:
        raise ValueError(f"unsigned varint cannot be negative: {value}")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def read_uvarint(buf: Buf, pos: int) -> tuple[int, int]:
    """Read an unsigned varint of at most 5 bytes (a uint32: every protocol use fits)."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise CorruptFrameError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 28:
            raise CorruptFrameError("varint longer than 5 bytes")


# ---------------------------------------------------------------------------------------------------
# lengths (checked against what remains before anything is allocated)
# ---------------------------------------------------------------------------------------------------

def _check(buf: Buf, pos: int, n: int) -> int:
    end = pos + n
    if end > len(buf):
        raise CorruptFrameError(f"length {n} at offset {pos} runs past the end ({len(buf)} bytes)")
    return end


def read_array_len(buf: Buf, pos: int) -> tuple[int, int]:
    """Classic array count (int32, -1 = null). A count above the remaining bytes is corrupt: every
    element of every protocol array takes at least one byte."""
    (n,) = unpack_i32(buf, pos)
    pos += 4
    if n < -1 or n > len(buf) - pos:
        raise CorruptFrameError(f"impossible array length {n} at offset {pos - 4}")
    return n, pos


def read_compact_array_len(buf: Buf, pos: int) -> tuple[int, int]:
    """Compact array count (uvarint N+1, 0 = null); returns -1 for null."""
    n, pos = read_uvarint(buf, pos)
    n -= 1
    if n > len(buf) - pos:
        raise CorruptFrameError(f"impossible compact array length {n} at offset {pos}")
    return n, pos


def write_array_len(out: bytearray, items: Optional[Sequence[Any]]) -> None:
    out += pack_i32(-1 if items is None else len(items))


def write_compact_array_len(out: bytearray, items: Optional[Sequence[Any]]) -> None:
    write_uvarint(out, 0 if items is None else len(items) + 1)


# ---------------------------------------------------------------------------------------------------
# strings
# ---------------------------------------------------------------------------------------------------

def read_string(buf: Buf, pos: int) -> tuple[Optional[str], int]:
    """Classic string (int16 length). Returns None for -1; callers of non-nullable fields reject it."""
    (n,) = unpack_i16(buf, pos)
    pos += 2
    if n < 0:
        if n == -1:
            return None, pos
        raise CorruptFrameError(f"negative string length {n}")
    end = _check(buf, pos, n)
    return str(buf[pos:end], "utf-8"), end


def read_compact_string(buf: Buf, pos: int) -> tuple[Optional[str], int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = _check(buf, pos, n - 1)
    return str(buf[pos:end], "utf-8"), end


def write_string(out: bytearray, value: Optional[str]) -> None:
    if value is None:
        out += b"\xff\xff"
        return
    data = value.encode()
    if len(data) > 0x7FFF:
        raise ValueError(f"string of {len(data)} bytes is too long for the protocol (max 32767)")
    out += pack_i16(len(data))
    out += data


def write_compact_string(out: bytearray, value: Optional[str]) -> None:
    if value is None:
        out.append(0)
        return
    data = value.encode()
    write_uvarint(out, len(data) + 1)
    out += data


# ---------------------------------------------------------------------------------------------------
# bytes and records (records are raw bytes here: the codec owns their content)
# ---------------------------------------------------------------------------------------------------

def read_bytes(buf: Buf, pos: int) -> tuple[Optional[bytes], int]:
    (n,) = unpack_i32(buf, pos)
    pos += 4
    if n < 0:
        if n == -1:
            return None, pos
        raise CorruptFrameError(f"negative bytes length {n}")
    end = _check(buf, pos, n)
    return bytes(buf[pos:end]), end


def read_compact_bytes(buf: Buf, pos: int) -> tuple[Optional[bytes], int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = _check(buf, pos, n - 1)
    return bytes(buf[pos:end]), end


def write_bytes(out: bytearray, value: Optional[BytesLike]) -> None:
    if value is None:
        out += b"\xff\xff\xff\xff"
        return
    out += pack_i32(len(value) if not isinstance(value, memoryview) else value.nbytes)
    out += value


def write_compact_bytes(out: bytearray, value: Optional[BytesLike]) -> None:
    if value is None:
        out.append(0)
        return
    write_uvarint(out, (len(value) if not isinstance(value, memoryview) else value.nbytes) + 1)
    out += value


# ---------------------------------------------------------------------------------------------------
# uuid, bool
# ---------------------------------------------------------------------------------------------------

def read_uuid(buf: Buf, pos: int) -> tuple[uuid.UUID, int]:
    end = _check(buf, pos, 16)
    return _UUID(bytes=bytes(buf[pos:end])), end


def write_uuid(out: bytearray, value: uuid.UUID) -> None:
    out += value.bytes


def read_bool(buf: Buf, pos: int) -> tuple[bool, int]:
    (v,) = unpack_i8(buf, pos)
    return v != 0, pos + 1


# ---------------------------------------------------------------------------------------------------
# tagged fields
# ---------------------------------------------------------------------------------------------------

def read_tag_header(buf: Buf, pos: int) -> tuple[int, int, int]:
    """Read one tagged field's tag and size; returns (tag, start, end) with end checked."""
    tag, pos = read_uvarint(buf, pos)
    size, pos = read_uvarint(buf, pos)
    return tag, pos, _check(buf, pos, size)


def read_tag_count(buf: Buf, pos: int) -> tuple[int, int]:
    n, pos = read_uvarint(buf, pos)
    # Each tagged field takes at least two bytes (tag and size).
    if n * 2 > len(buf) - pos:
        raise CorruptFrameError(f"impossible tagged field count {n} at offset {pos}")
    return n, pos


def write_tagged_fields(out: bytearray, fields: Sequence[tuple[int, BytesLike]]) -> None:
    """``fields`` is a list of (tag, bytes) in ascending tag order (the generator sorts them)."""
    write_uvarint(out, len(fields))
    for tag, data in fields:
        write_uvarint(out, tag)
        write_uvarint(out, len(data))
        out += data


def corrupt(what: str) -> NoReturn:
    """Raise CorruptFrameError (generated code calls this for a null in a non-nullable field)."""
    raise CorruptFrameError(what)


# ---------------------------------------------------------------------------------------------------
# base classes of the generated messages
# ---------------------------------------------------------------------------------------------------

class Struct:
    """Base of every generated struct: equality and repr over ``__slots__``.

    Subclasses set ``__slots__`` (the snake_case field names, in schema order) and implement
    ``_encode(self, out, version)`` and the classmethod ``_decode(cls, buf, pos, version)``.
    """

    __slots__: tuple[str, ...] = ()

    def _encode(self, out: bytearray, version: int) -> None:
        raise NotImplementedError  # every generated struct has its own

    @classmethod
    def _decode(cls, buf: memoryview, pos: int, version: int) -> tuple[Self, int]:
        raise NotImplementedError  # every generated struct has its own

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"{type(self).__qualname__}({inner})"

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable


# Exceptions that inline decode code may raise on malformed input; turned into CorruptFrameError.
_DECODE_FAILURES = (struct.error, IndexError, ValueError, TypeError, OverflowError, MemoryError,
                    RecursionError)


class Message(Struct):
    """Base of every generated request/response: the public ``encode``/``decode`` of the body."""

    __slots__ = ()
    API_KEY: int | None = None
    VALID_VERSIONS: tuple[int, int] = (0, 0)
    FLEXIBLE_VERSIONS: int | None = None

    def encode(self, version: int) -> bytes:
        """Encode the body (no size prefix, no header) in ``version``.

        Fields the version does not have are skipped silently (whatever their value).
        """
        lo, hi = self.VALID_VERSIONS
        if not lo <= version <= hi:
            raise UnsupportedVersionError(
                broker_message=f"{type(self).__name__} has no version {version} (valid {lo}-{hi})")
        out = bytearray()
        self._encode(out, version)
        return bytes(out)

    @classmethod
    def decode(cls, data: Buf, version: int) -> Self:
        """Decode a body in ``version``. Malformed or truncated input raises only CorruptFrameError.

        Trailing bytes after the body are ignored. Fields the version lacks keep their defaults;
        unknown tagged fields are skipped.
        """
        lo, hi = cls.VALID_VERSIONS
        if not lo <= version <= hi:
            raise UnsupportedVersionError(
                broker_message=f"{cls.__name__} has no version {version} (valid {lo}-{hi})")
        buf = data if isinstance(data, memoryview) else memoryview(data)
        try:
            obj, _ = cls._decode(buf, 0, version)
        except CorruptFrameError:
            raise
        except _DECODE_FAILURES as exc:
            raise CorruptFrameError(f"malformed {cls.__name__} v{version}: {exc!r}") from None
        return obj

    @classmethod
    def decode_prefix(cls, buf: memoryview, pos: int, version: int) -> tuple[Self, int]:
        """Like :meth:`decode` from ``pos`` of a memoryview; returns ``(message, end_pos)``."""
        try:
            return cls._decode(buf, pos, version)
        except CorruptFrameError:
            raise
        except _DECODE_FAILURES as exc:
            raise CorruptFrameError(f"malformed {cls.__name__} v{version}: {exc!r}") from None
