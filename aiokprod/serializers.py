"""Key and value serializers. Without one, keys and values must already be bytes-like (or None)."""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

#: A key or value serializer: the object given to send() -> bytes (or None for a null key/value).
Serializer = Callable[[Any], Optional[bytes]]


def string_serializer(encoding: str = "utf-8") -> Serializer:
    def serialize(value: Any) -> Optional[bytes]:
        return None if value is None else str(value).encode(encoding)
    return serialize


def json_serializer(value: Any) -> Optional[bytes]:
    return None if value is None else json.dumps(value, separators=(",", ":")).encode()


_BYTES_LIKE = (bytes, bytearray, memoryview)


def check_bytes(what: str, topic: str, value: object, serializer_name: str) -> Any:
    """Raise a TypeError naming the field and topic unless ``value`` is bytes-like or None."""
    if value is None or isinstance(value, _BYTES_LIKE):
        return value
    raise TypeError(
        f"{what} for topic {topic!r} must be bytes, bytearray, memoryview or None, got "
        f"{type(value).__name__}; set {serializer_name} to send other types"
    )
