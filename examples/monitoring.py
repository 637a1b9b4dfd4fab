"""Watching a producer's metrics while it works: a snapshot of ``producer.metrics()`` every second.

The names are the Java producer's (``record-send-rate`` -> ``record_send_rate``); rates, averages and maxima
cover the last 30 s, ``*_total`` counts since start, ``errors_by_code`` counts errors by name. They are kept
per batch and per request by the producer's own hook (``aiokprod/hooks.py``), so watching costs nothing.

    python examples/monitoring.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop] [--seconds N] [--rate R]
"""
import asyncio
import sys
import time

from _common import run

from aiokprod import Producer

SHOWN = ("record_send_rate", "record_send_total", "record_error_total", "record_retry_total", "batch_size_avg",
         "records_per_request_avg", "compression_rate_avg", "request_latency_avg", "request_latency_max",
         "requests_in_flight", "buffer_available_bytes", "connection_count", "errors_by_code")


def line(elapsed: float, metrics: dict) -> str:
    parts = []
    for name in SHOWN:
        value = metrics[name]
        parts.append(f"{name}={value:.1f}" if isinstance(value, float) else f"{name}={value}")
    return f"metrics t={elapsed:.0f}s " + " ".join(parts)


async def monitor(producer: Producer, started: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            print(line(time.monotonic() - started, producer.metrics()), flush=True)


async def main(bootstrap: str, topic: str, args) -> None:
    async with Producer(bootstrap, linger_ms=10, compression_type="lz4") as producer:
        started = time.monotonic()
        stop = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(monitor(producer, started, stop))
        sent = 0
        # Produce at about --rate records/s for --seconds.
        while time.monotonic() - started < args.seconds:
            for _ in range(args.rate // 20):
                await producer.send(topic, b'{"reading": %d, "unit": "celsius"}' % sent, key=b"sensor-%d" % (sent % 8))
                sent += 1
            await asyncio.sleep(0.05)
        await producer.flush()
        stop.set()
        await watcher
        print(f"sent {sent}; final " + line(time.monotonic() - started, producer.metrics()))


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to produce (default 3)")
    parser.add_argument("--rate", type=int, default=2000, help="records per second (default 2000)")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
