"""OpenTelemetry for the producer, as a hook: ``Producer(..., hooks=[OpenTelemetryHook()])``.

Needs the optional extra ``aiokprod[otel]`` (``opentelemetry-api``); the application brings the SDK and its
exporters. ``None`` providers mean the global ones (``opentelemetry.trace.set_tracer_provider`` ...).

Tracing: a PRODUCER span per record, ``send {topic}``, from ``send()`` to the broker's answer (not to
enqueueing), with the messaging semantic conventions' attributes (``messaging.system=kafka``,
``messaging.destination.name``, ``messaging.operation.name/type``, ``messaging.kafka.message.key`` where the
key is given, and, once acknowledged, ``messaging.destination.partition.id`` and ``messaging.kafka.offset``),
error status and ``error.type`` on failure, including records ``send()`` itself rejects. The span's context
is injected into the record's headers with the global propagator (W3C ``traceparent``/``tracestate`` by
default), so a consumer continues the trace. Registering this hook makes every ``send()`` take the general
path (a span per record is per-record work); without it the compiled fast path is untouched.

Metrics: the producer's own metrics (``Producer.metrics()``, the Java core set) as observable instruments
named ``aiokprod.producer.<name>`` (read when the exporter collects, nothing recorded per event), plus two
instruments of the semantic conventions recorded per batch or request: ``messaging.client.sent.messages``
(counter, records, with ``error.type`` on failures) and ``messaging.client.operation.duration`` (histogram,
seconds, one per Produce request).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test without the package
    raise ImportError("aiokprod.opentelemetry needs the optional extra: pip install 'aiokprod[otel]' "
                      "(opentelemetry-api)") from exc

__all__ = ["OpenTelemetryHook"]

SYSTEM = "kafka"
_SCOPE = "aiokprod"

# Producer.metrics() keys exported as observable instruments: (name, unit, description, kind) where kind is
# "counter" (monotonic totals) or "gauge".
_OBSERVED = (
    ("record_send_rate", "{record}/s", "Records acknowledged per second over the last 30 s", "gauge"),
    ("record_send_total", "{record}", "Records acknowledged", "counter"),
    ("record_error_rate", "{record}/s", "Records failed per second over the last 30 s", "gauge"),
    ("record_error_total", "{record}", "Records failed", "counter"),
    ("record_retry_rate", "{record}/s", "Records re-sent per second over the last 30 s", "gauge"),
    ("record_retry_total", "{record}", "Records re-sent", "counter"),
    ("batch_size_avg", "By", "Average batch size on the wire over the last 30 s", "gauge"),
    ("batch_size_max", "By", "Largest batch on the wire over the last 30 s", "gauge"),
    ("records_per_request_avg", "{record}", "Average records per Produce request over the last 30 s", "gauge"),
    ("compression_rate_avg", "1", "Average compressed/uncompressed batch size over the last 30 s", "gauge"),
    ("request_latency_avg", "ms", "Average Produce request latency over the last 30 s", "gauge"),
    ("request_latency_max", "ms", "Largest Produce request latency over the last 30 s", "gauge"),
    ("produce_throttle_time_avg", "ms", "Average broker throttle time over the last 30 s", "gauge"),
    ("produce_throttle_time_max", "ms", "Largest broker throttle time over the last 30 s", "gauge"),
    ("requests_in_flight", "{request}", "Produce requests sent and not answered", "gauge"),
    ("buffer_total_bytes", "By", "buffer_memory", "gauge"),
    ("buffer_available_bytes", "By", "buffer_memory not reserved by batches", "gauge"),
    ("buffer_exhausted_total", "{error}", "send() calls that raised BufferExhaustedError", "counter"),
    ("waiting_senders", "{call}", "send() calls waiting for buffer_memory", "gauge"),
    ("metadata_refresh_total", "{refresh}", "Metadata refreshes", "counter"),
    ("connection_count", "{connection}", "Open broker connections", "gauge"),
)


def _key_attribute(key: Any) -> Optional[str]:
    if key is None:
        return None
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "replace")
    return str(key)


class OpenTelemetryHook:
    """Spans per record and the producer's metrics as OpenTelemetry instruments (see the module docstring)."""

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None,
                 meter_provider: Optional[otel_metrics.MeterProvider] = None) -> None:
        from aiokprod import __version__

        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        meter = otel_metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._snapshot: Optional[Callable[[], dict[str, Any]]] = None
        self._attributes: dict[str, Any] = {"messaging.system": SYSTEM}
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}",
            description="Number of messages the producer attempted to send to the broker")
        self._duration = meter.create_histogram(
            "messaging.client.operation.duration", unit="s",
            description="Duration of a Produce request, from sending it to its answer")
        for name, unit, description, kind in _OBSERVED:
            callback = functools.partial(self._observe, name)
            if kind == "counter":
                meter.create_observable_counter(f"aiokprod.producer.{name}", [callback], unit=unit,
                                                description=description)
            else:
                meter.create_observable_gauge(f"aiokprod.producer.{name}", [callback], unit=unit,
                                              description=description)

    # -- metrics ---------------------------------------------------------------------------------------------
    def on_producer_start(self, producer: Any) -> None:
        self._snapshot = producer.metrics
        client_id = getattr(getattr(producer, "config", None), "client_id", None)
        if client_id:
            self._attributes = {"messaging.system": SYSTEM, "messaging.client.id": client_id}

    def _observe(self, name: str, options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshot
        if snapshot is None:
            return []
        return [Observation(snapshot()[name], self._attributes)]

    def on_request_answered(self, node: int, latency_ms: float, throttle_time_ms: int,
                            error: Optional[BaseException]) -> None:
        attributes = dict(self._attributes, **{"messaging.operation.name": "send", "messaging.operation.type": "send"})
        if error is not None:
            attributes["error.type"] = type(error).__qualname__
        self._duration.record(latency_ms / 1000.0, attributes)

    def on_batch_acknowledged(self, topic: str, partition: int, records: int, base_offset: int,
                              wire_bytes: int) -> None:
        self._sent.add(records, dict(self._attributes, **{"messaging.destination.name": topic,
                                                          "messaging.operation.name": "send"}))

    def on_batch_failed(self, topic: str, partition: int, records: int, error: BaseException) -> None:
        self._sent.add(records, dict(self._attributes, **{"messaging.destination.name": topic,
                                                          "messaging.operation.name": "send",
                                                          "error.type": type(error).__qualname__}))

    # -- tracing ---------------------------------------------------------------------------------------------
    def on_record_send(self, topic: str, key: Any,
                       headers: list[tuple[str, Optional[bytes]]]) -> Callable[[Any, Optional[BaseException]], None]:
        attributes: dict[str, Any] = dict(self._attributes, **{
            "messaging.destination.name": topic,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        })
        key_text = _key_attribute(key)
        if key_text is not None:
            attributes["messaging.kafka.message.key"] = key_text
        span = self._tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, otel_context.get_current()))
        for name, value in carrier.items():
            headers.append((name, value.encode("ascii")))
        return functools.partial(_end_span, span)


def _end_span(span: trace.Span, metadata: Any, error: Optional[BaseException]) -> None:
    """The record's outcome is known (acknowledged, failed, or rejected by send()): end its span."""
    if error is not None:
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    elif metadata is not None:
        span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
        if metadata.offset >= 0:
            span.set_attribute("messaging.kafka.offset", metadata.offset)
    span.end()
