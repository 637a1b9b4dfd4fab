"""The event envelope both web examples put on the wire, and its JSON serializer.

One Kafka record per event:

    key      the id of the entity the event is about (``?key=`` of the request), UTF-8; None without one,
             so every event of one entity lands on one partition, in order
    value    JSON: {"id": <uuid4>, "type": ..., "source": ..., "time": <RFC 3339, UTC, ms>, "data": ...}
    headers  event-type, event-source, correlation-id (UTF-8): a consumer can route or trace a record
             without parsing its value

``Envelope`` is what a handler builds; ``serialize`` is the producer's ``value_serializer``
(``Producer(..., value_serializer=envelope.serialize, key_serializer=envelope.serialize_key)``), and
``Envelope.headers()`` the record's headers. ``parse`` reads a record back (a consumer's side; the tests use
it). ``from_body`` checks a decoded request body ({"type": "<non-empty string>", "data": <any JSON>}) for
apps that have no schema library doing it for them (the aiohttp example; the FastAPI one states the same
shape as a pydantic model).
"""
from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

HEADER_TYPE = "event-type"
HEADER_SOURCE = "event-source"
HEADER_CORRELATION_ID = "correlation-id"


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> str:
    """The current UTC time in RFC 3339 with milliseconds: ``2026-11-29T09:20:00.123Z``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Envelope:
    type: str
    data: Any
    source: str
    entity_id: Optional[str] = None
    correlation_id: str = field(default_factory=new_id)
    id: str = field(default_factory=new_id)
    time: str = field(default_factory=now)

    def headers(self) -> list[tuple[str, bytes]]:
        return [(HEADER_TYPE, self.type.encode()), (HEADER_SOURCE, self.source.encode()),
                (HEADER_CORRELATION_ID, self.correlation_id.encode())]


def serialize(envelope: Envelope) -> bytes:
    """The record value: the envelope's fields as compact UTF-8 JSON (the key and headers carry the rest)."""
    return json.dumps({"id": envelope.id, "type": envelope.type, "source": envelope.source,
                       "time": envelope.time, "data": envelope.data},
                      separators=(",", ":"), ensure_ascii=False).encode()


def serialize_key(entity_id: Optional[str]) -> Optional[bytes]:
    return None if entity_id is None else entity_id.encode()


def parse(key: Optional[bytes], value: bytes, headers) -> Envelope:
    """An envelope back from a record's key, value and headers (``[(name, bytes), ...]``)."""
    body = json.loads(value)
    header = {name: raw.decode() for name, raw in headers or () if raw is not None}
    return Envelope(type=body["type"], data=body["data"], source=body["source"],
                    entity_id=None if key is None else key.decode(),
                    correlation_id=header.get(HEADER_CORRELATION_ID, ""), id=body["id"], time=body["time"])


class BadBody(ValueError):
    """The request body is not {"type": "<non-empty string>", "data": <any JSON>}."""


def from_body(body: Any, *, source: str, entity_id: Optional[str], correlation_id: str) -> Envelope:
    if not isinstance(body, dict):
        raise BadBody(f"the body must be a JSON object with 'type' and 'data', got {type(body).__name__}")
    event_type = body.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise BadBody(f"'type' must be a non-empty string, got {event_type!r}")
    if "data" not in body:
        raise BadBody("'data' is missing (any JSON value, null included)")
    return Envelope(type=event_type, data=body["data"], source=source, entity_id=entity_id,
                    correlation_id=correlation_id)
