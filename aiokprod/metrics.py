"""Producer metrics, kept as plain counters the sender updates per batch (never per record on the hot path)
and read as a dict with ``Producer.metrics()``."""
from __future__ import annotations

from typing import Any, Callable


class ProducerMetrics:
    __slots__ = (
        "records_sent", "bytes_sent", "batches_sent", "requests_sent", "retries", "record_errors",
        "batch_errors", "request_latency_total_ms", "request_latency_max_ms", "responses",
        "metadata_refreshes", "buffer_memory", "buffer_used_fn",
    )

    def __init__(self, buffer_memory: int, buffer_used_fn: Callable[[], int]) -> None:
        self.records_sent = 0
        self.bytes_sent = 0
        self.batches_sent = 0
        self.requests_sent = 0
        self.retries = 0
        self.record_errors = 0
        self.batch_errors = 0
        self.request_latency_total_ms = 0.0
        self.request_latency_max_ms = 0.0
        self.responses = 0
        self.metadata_refreshes = 0
        self.buffer_memory = buffer_memory
        self.buffer_used_fn = buffer_used_fn

    def request_latency(self, millis: float) -> None:
        self.responses += 1
        self.request_latency_total_ms += millis
        if millis > self.request_latency_max_ms:
            self.request_latency_max_ms = millis

    def as_dict(self) -> dict[str, Any]:
        used = self.buffer_used_fn()
        return {
            "records_sent": self.records_sent,
            "bytes_sent": self.bytes_sent,
            "batches_sent": self.batches_sent,
            "requests_sent": self.requests_sent,
            "retries": self.retries,
            "record_errors": self.record_errors,
            "batch_errors": self.batch_errors,
            "request_latency_avg_ms": (self.request_latency_total_ms / self.responses) if self.responses else 0.0,
            "request_latency_max_ms": self.request_latency_max_ms,
            "metadata_refreshes": self.metadata_refreshes,
            "buffer_total_bytes": self.buffer_memory,
            "buffer_used_bytes": used,
            "buffer_available_bytes": self.buffer_memory - used,
        }
