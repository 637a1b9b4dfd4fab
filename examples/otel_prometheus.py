"""The producer's metrics in Prometheus, through OpenTelemetry: ``OpenTelemetryHook`` exports them as
instruments, OpenTelemetry's Prometheus exporter serves them on ``/metrics``.

Needs ``pip install 'aiokprod[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus``. After producing,
the example scrapes its own endpoint, as Prometheus would, and prints the producer's series.

    python examples/otel_prometheus.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop] [--port P] [--count N]
"""
import asyncio
import sys
import urllib.request

from _common import run
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from aiokprod import Producer
from aiokprod.opentelemetry import OpenTelemetryHook


async def main(bootstrap: str, topic: str, args) -> None:
    server, thread = start_http_server(args.port, addr="127.0.0.1")  # prometheus_client's /metrics server
    port = server.server_port
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    try:
        hook = OpenTelemetryHook(meter_provider=meter_provider)  # tracer: the global provider (a no-op here)
        async with Producer(bootstrap, linger_ms=5, hooks=[hook]) as producer:
            for i in range(args.count):
                await producer.send(topic, b"reading %d" % i, key=b"sensor-%d" % (i % 4))
            await producer.flush()
            url = f"http://127.0.0.1:{port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        print(f"scraped {url}")
        for line in body.splitlines():
            if line.startswith(("aiokprod_producer_record_send_total", "aiokprod_producer_connection_count",
                                "aiokprod_producer_request_latency_avg", "messaging_client_sent_messages",
                                "messaging_client_operation_duration_seconds_count")):
                print(line)
    finally:
        meter_provider.shutdown()
        server.shutdown()


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port for /metrics (default: a free one)")
    parser.add_argument("--count", type=int, default=100, help="records to send (default 100)")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
