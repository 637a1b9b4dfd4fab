"""The three producer configurations every Kafka guide describes, side by side: throughput, latency and
durability, with what each setting does. Each profile sends the same records; the metrics show the effect.

    python examples/profiles.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop] [--count N]
"""
import asyncio
import sys

from _common import run

from aiokprod import Producer

PROFILES = {
    # Fewer, bigger, compressed requests: more records per second, each waits a little longer.
    "throughput": {
        "linger_ms": 50,                # wait up to 50 ms for a batch to fill before sending it
        "batch_size": 256 * 1024,       # big batches (bytes per partition batch)
        "compression_type": "lz4",      # cheap compression: fewer bytes on the wire and on disk
        "acks": 1,                      # the leader's write is enough (no wait for replicas)
        "buffer_memory": 64 * 1024 * 1024,  # room to keep batching while the broker is busy
    },
    # Every record leaves at once: the lowest time to acknowledgement, more requests.
    "latency": {
        "linger_ms": 0,                 # send as soon as the sender is free: no waiting for company
        "batch_size": 16 * 1024,        # the default; batches only form when records arrive faster than sends
        "compression_type": "none",     # no CPU spent compressing
        "acks": 1,                      # answered after the leader's write
    },
    # Nothing lost, nothing duplicated, order kept, even through broker failures and retries.
    "durability": {
        "acks": "all",                  # answered once every in-sync replica has the record
        "enable_idempotence": True,     # sequence numbers: a retried batch is never written twice
        "max_in_flight_requests_per_connection": 5,  # the most idempotence allows while keeping order
        "retries": None,                # retry until delivery_timeout_ms (the default: no count limit)
        "delivery_timeout_ms": 300_000,  # give a record 5 minutes to get through a broker outage
        "linger_ms": 5,
        # Broker/topic side, not the producer's: min.insync.replicas=2 with replication factor 3.
    },
}


async def run_profile(bootstrap: str, topic: str, name: str, settings: dict, count: int) -> None:
    async with Producer(bootstrap, **settings) as producer:
        handles = [await producer.send(topic, b'{"order": %d, "items": ["book", "pen", "lamp"]}' % i,
                                       key=b"customer-%d" % (i % 50)) for i in range(count)]
        metadata = await asyncio.gather(*handles)
        metrics = producer.metrics()
        print(f"profile {name}: {' '.join(f'{k}={v}' for k, v in settings.items())}")
        print(f"profile {name}: idempotent={producer.config.idempotent} delivered={len(metadata)} "
              f"record_send_total={metrics['record_send_total']} batch_size_avg={metrics['batch_size_avg']:.0f} "
              f"records_per_request_avg={metrics['records_per_request_avg']:.1f} "
              f"compression_rate_avg={metrics['compression_rate_avg']:.2f} "
              f"request_latency_avg={metrics['request_latency_avg']:.1f}ms")


async def main(bootstrap: str, topic: str, args) -> None:
    for name, settings in PROFILES.items():
        await run_profile(bootstrap, f"{topic}-{name}", name, settings, args.count)


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=2000, help="records per profile (default 2000)")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
