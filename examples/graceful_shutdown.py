"""Graceful shutdown: on SIGTERM or Ctrl-C stop taking work, give what is buffered a bounded time to be
delivered (``producer.stop(timeout)``), and report exactly what was left undelivered.

What ``stop()`` cannot deliver in time fails with ``ProducerClosedError``; ``on_delivery_error`` hands each
such record over (topic, partition, key, value, headers, timestamp), so it can be written to a local file
for replay, or at least counted and named. A record whose request got no answer may still have been
written by the broker: the report says "not confirmed", not "lost".

    python examples/graceful_shutdown.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
                                         [--seconds N] [--stop-timeout S]

``--seconds N`` sends this process SIGTERM after N seconds (a stand-in for the orchestrator's signal).
"""
import asyncio
import collections
import os
import signal
import sys

from _common import run

from aiokprod import Producer


async def main(bootstrap: str, topic: str, args) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if args.seconds is not None:
        loop.call_later(args.seconds, os.kill, os.getpid(), signal.SIGTERM)

    undelivered = []
    producer = Producer(bootstrap, linger_ms=20,
                        on_delivery_error=lambda error, record: undelivered.append((error, record)))
    await producer.start()
    sent = 0
    try:
        print(f"producing to {topic}; send SIGTERM (or Ctrl-C) to stop", flush=True)
        while not stopping.is_set():
            for _ in range(50):
                await producer.send(topic, b"event %d" % sent, key=b"k%d" % (sent % 10))
                sent += 1
            await asyncio.sleep(0.01)
        print(f"signal received after {sent} records: stopping (at most {args.stop_timeout}s to deliver)",
              flush=True)
    finally:
        # Flush within the timeout, then fail what is left; every handle is settled when stop() returns.
        await producer.stop(timeout=args.stop_timeout)
        await asyncio.sleep(0)  # the failed records' callbacks run on the loop's next turn
    metrics = producer.metrics()
    print(f"delivered {metrics['record_send_total']} of {sent}; not confirmed {len(undelivered)}")
    by_partition = collections.Counter((record.topic, record.partition) for _, record in undelivered)
    for (name, partition), count in sorted(by_partition.items()):
        print(f"  not confirmed: {count} record(s) of {name}-{partition}")
    for error, record in undelivered[:3]:
        print(f"  e.g. key {record.key.decode()} value {record.value.decode()!r}: {type(error).__name__}: {error}")
    if metrics["record_send_total"] + len(undelivered) != sent:
        raise SystemExit("some records are neither delivered nor reported: that would be a bug")


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=None, help="send ourselves SIGTERM after N seconds")
    parser.add_argument("--stop-timeout", type=float, default=5.0, help="seconds stop() may take to deliver")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
