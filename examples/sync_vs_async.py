"""Why ``send()`` returns a handle: waiting for each record before sending the next (``send_and_wait`` in a
loop) pays one broker round trip per record; sending them all first and then gathering the handles lets
the producer batch them, many records per request.

    python examples/sync_vs_async.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop] [--count N]
"""
import asyncio
import sys
import time

from _common import run

from aiokprod import Producer


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=2000, help="records per style (default 2000)")


async def main(bootstrap: str, topic: str, args) -> None:
    count = args.count
    value = b"v" * 100
    async with Producer(bootstrap, linger_ms=5) as producer:
        await producer.partitions_for(topic)  # fetch metadata first so neither style pays for it

        # Style 1: one at a time. Each iteration waits for its record's acknowledgement (and linger_ms).
        one_by_one = max(count // 10, 1)  # fewer records: this style is slow
        started = time.perf_counter()
        for i in range(one_by_one):
            await producer.send_and_wait(topic, value)
        sync_rate = one_by_one / (time.perf_counter() - started)
        print(f"send_and_wait one by one: {one_by_one} records, {sync_rate:,.0f} records/s")

        # Style 2: send everything (each send only buffers the record), then await all the handles.
        started = time.perf_counter()
        handles = [await producer.send(topic, value) for _ in range(count)]
        results = await asyncio.gather(*handles)
        async_rate = count / (time.perf_counter() - started)
        partitions = sorted({metadata.partition for metadata in results})
        print(f"send many then gather: {count} records, {async_rate:,.0f} records/s "
              f"(to partitions {partitions})")
        print(f"speed-up: {async_rate / sync_rate:.1f}x; producer metrics: {producer.metrics()['batches_sent']} "
              f"batches in {producer.metrics()['requests_sent']} requests")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
