"""aiokprod.opentelemetry against the real broker, with the OpenTelemetry SDK's in-memory exporters: a span
per record that ends when the broker answers, trace context that a consumer (confluent-kafka) reads back,
error spans, and the producer's metrics as instruments. And the package without OpenTelemetry at all."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from aiokprod import Producer, errors
from helpers import read_back_async
from proxy_fixtures import kafka_proxy  # noqa: F401

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from aiokprod.opentelemetry import OpenTelemetryHook  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_HANG = 30.0


@pytest.fixture
def otel():
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield hook, exporter, reader, tracer_provider
    meter_provider.shutdown()
    tracer_provider.shutdown()


def _points(reader):
    """{instrument name: [data points]} from one collection."""
    found = {}
    for resource_metrics in reader.get_metrics_data().resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_a_span_per_record_ends_at_the_broker_s_answer_and_its_context_travels(broker, topic_name, otel):
    hook, exporter, _reader, tracer_provider = otel
    parent_tracer = tracer_provider.get_tracer("test")
    async with Producer(broker.bootstrap, linger_ms=300, hooks=[hook]) as producer:
        assert not producer._appender.enabled  # a per-record hook: send() takes the general path
        with parent_tracer.start_as_current_span("handle request") as parent:
            handles = [await producer.send(topic_name, b"v%d" % i, key=b"user-%d" % i, partition=i % 2,
                                           headers=[("app", b"test")]) for i in range(6)]
        # Queued, not answered: no producer span has ended yet (they end at the acknowledgement).
        assert [s.name for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER] == []
        await producer.flush()
        metas = [h.result() for h in handles]
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert len(spans) == 6
    by_key = {s.attributes["messaging.kafka.message.key"]: s for s in spans}
    for i, meta in enumerate(metas):
        span = by_key[f"user-{i}"]
        assert span.name == f"send {topic_name}"
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.destination.name"] == topic_name
        assert span.attributes["messaging.operation.type"] == "send"
        assert span.attributes["messaging.destination.partition.id"] == str(meta.partition)
        assert span.attributes["messaging.kafka.offset"] == meta.offset
        assert span.status.status_code is StatusCode.UNSET
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    # The consumer reads the W3C trace context each record carries: the record's own span.
    stored = await read_back_async(broker.bootstrap, topic_name, [0, 1], 6)
    assert len(stored) == 6
    for record in stored:
        headers = dict(record.headers)
        assert headers["app"] == b"test"  # the user's headers are kept, in front
        assert record.headers[0] == ("app", b"test")
        version, trace_id, span_id, flags = headers["traceparent"].decode().split("-")
        span = by_key[record.key.decode()]
        assert (int(trace_id, 16), int(span_id, 16)) == (span.context.trace_id, span.context.span_id)
        assert version == "00" and int(flags, 16) & 1  # the sampled flag


async def test_failed_and_rejected_records_get_error_spans(kafka_proxy, topic_name, otel):
    hook, exporter, _reader, _tp = otel

    def serializer(value):
        if value == "unserializable":
            raise ValueError("cannot encode")
        return value.encode()

    async with Producer(kafka_proxy.bootstrap, linger_ms=1, hooks=[hook], value_serializer=serializer) as producer:
        await producer.send_and_wait(topic_name, "warm", partition=0)
        kafka_proxy.fail_produce(topic_name, 0, 87, count=1, message="bad record")  # INVALID_RECORD
        with pytest.raises(errors.InvalidRecordError):
            await asyncio.wait_for(producer.send_and_wait(topic_name, "refused", partition=0), NO_HANG)
        with pytest.raises(errors.SerializationError):
            await producer.send(topic_name, "unserializable", partition=0)
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    ok, refused, unserializable = spans
    assert ok.status.status_code is StatusCode.UNSET and "messaging.kafka.offset" in ok.attributes
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.attributes["error.type"] == "InvalidRecordError"
    assert "bad record" in refused.status.description
    assert "messaging.kafka.offset" not in refused.attributes
    assert unserializable.status.status_code is StatusCode.ERROR
    assert unserializable.attributes["error.type"] == "SerializationError"
    assert [e.name for e in refused.events] == ["exception"]


async def test_the_producer_metrics_are_exported_as_instruments(broker, topic_name, otel):
    hook, _exporter, reader, _tp = otel
    async with Producer(broker.bootstrap, linger_ms=1, hooks=[hook]) as producer:
        for i in range(20):
            await producer.send(topic_name, b"m%d" % i, partition=i % 3)
        await producer.flush()
        expected = producer.metrics()
        points = _points(reader)
    assert points["aiokprod.producer.record_send_total"][0].value == 20 == expected["record_send_total"]
    assert points["aiokprod.producer.buffer_total_bytes"][0].value == expected["buffer_total_bytes"]
    assert points["aiokprod.producer.connection_count"][0].value == expected["connection_count"] >= 1
    assert points["aiokprod.producer.requests_in_flight"][0].value == 0
    sent = points["messaging.client.sent.messages"]
    assert sum(p.value for p in sent) == 20
    assert {p.attributes["messaging.destination.name"] for p in sent} == {topic_name}
    durations = points["messaging.client.operation.duration"]
    assert sum(p.count for p in durations) == expected["requests_sent"] >= 1
    assert all(p.attributes["messaging.system"] == "kafka" for p in durations)


def test_the_package_works_without_opentelemetry():
    """Blocking every opentelemetry import: aiokprod imports and produces nothing different; only
    aiokprod.opentelemetry says which extra to install."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import aiokprod, aiokprod.hooks, aiokprod.metrics\n"
        "p = aiokprod.Producer('127.0.0.1:9', hooks=[])\n"
        "try:\n"
        "    import aiokprod.opentelemetry\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ImportError: aiokprod.opentelemetry needs the optional extra: pip install 'aiokprod[otel]'" in out.stdout
