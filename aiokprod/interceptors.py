"""Producer interceptors: ``on_send(record) -> record`` before a record is serialized and partitioned, and
``on_acknowledgement(metadata, error)`` when its delivery is known. An interceptor that raises is logged and
skipped: it never breaks a send or a delivery."""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Sequence

log = logging.getLogger("aiokprod.interceptors")


class ProducerRecord(NamedTuple):
    topic: str
    value: object
    key: object = None
    partition: Optional[int] = None
    timestamp_ms: Optional[int] = None
    headers: Optional[Sequence[tuple[str, Optional[bytes]]]] = None


class ProducerInterceptor:
    """Base class; override either method."""

    def on_send(self, record: ProducerRecord) -> ProducerRecord:
        return record

    def on_acknowledgement(self, metadata: Any, error: Optional[BaseException]) -> None:
        pass

    def close(self) -> None:
        pass


class InterceptorChain:
    def __init__(self, interceptors: Sequence[ProducerInterceptor]) -> None:
        self.interceptors = tuple(interceptors)

    def __bool__(self) -> bool:
        return bool(self.interceptors)

    def on_send(self, record: ProducerRecord) -> ProducerRecord:
        for interceptor in self.interceptors:
            try:
                result = interceptor.on_send(record)
            except Exception:
                log.exception("interceptor %r raised in on_send; skipped", interceptor)
                continue
            if isinstance(result, ProducerRecord):
                record = result
            else:
                log.error("interceptor %r returned %r from on_send, not a ProducerRecord; ignored",
                          interceptor, type(result).__name__)
        return record

    def on_acknowledgement(self, metadata: Any, error: Optional[BaseException]) -> None:
        for interceptor in self.interceptors:
            try:
                interceptor.on_acknowledgement(metadata, error)
            except Exception:
                log.exception("interceptor %r raised in on_acknowledgement; skipped", interceptor)

    def close(self) -> None:
        for interceptor in self.interceptors:
            try:
                interceptor.close()
            except Exception:
                log.exception("interceptor %r raised in close; skipped", interceptor)
