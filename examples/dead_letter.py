"""A dead-letter topic: records whose delivery failed are sent to ``<topic>.dlq`` with why they failed.

``Producer(..., on_delivery_error=fn)`` calls ``fn(error, record)`` once for every record that failed, with
the record as it was appended (topic, partition, key, value, headers, timestamp_ms), recovered from its
batch when the batch fails. It runs on the event loop, outside the producer's own bookkeeping, so it may
start a task that sends the record elsewhere. Here the dead-letter copy keeps the key, value and headers
and adds ``dlq.error``, ``dlq.topic``, ``dlq.partition`` and ``dlq.timestamp_ms``.

Against a healthy broker nothing fails and nothing is dead-lettered; the test runs it behind the fault proxy,
which refuses one partition's writes (INVALID_RECORD, not retriable).

    python examples/dead_letter.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop] [--count N]
"""
import asyncio
import sys

from _common import run

from aiokprod import Producer


async def main(bootstrap: str, topic: str, args) -> None:
    dlq_topic = f"{topic}.dlq"
    dead_letters: set = set()  # the dead-letter sends in progress

    async def dead_letter(error, record) -> None:
        headers = list(record.headers) + [
            ("dlq.error", f"{type(error).__name__}: {error}".encode()),
            ("dlq.topic", record.topic.encode()),
            ("dlq.partition", str(record.partition).encode()),
            ("dlq.timestamp_ms", str(record.timestamp_ms).encode()),
        ]
        metadata = await producer.send_and_wait(dlq_topic, record.value, key=record.key, headers=headers)
        print(f"dead-lettered key {record.key.decode()} from partition {record.partition} "
              f"({type(error).__name__}) -> {dlq_topic} partition {metadata.partition} offset {metadata.offset}")

    def on_delivery_error(error, record) -> None:
        if record.topic == dlq_topic:  # the dead-letter copy failed too: say so, do not loop
            print(f"LOST key {record.key.decode()}: could not dead-letter it either: {error}")
            return
        task = asyncio.get_running_loop().create_task(dead_letter(error, record))
        dead_letters.add(task)
        task.add_done_callback(dead_letters.discard)

    async with Producer(bootstrap, linger_ms=5, retries=2, on_delivery_error=on_delivery_error) as producer:
        partitions = await producer.partitions_for(topic)
        print(f"topic {topic} has {len(partitions)} partitions")
        handles = [await producer.send(topic, f"order {i}".encode(), key=f"order-{i}".encode(),
                                       partition=i % len(partitions), headers={"source": b"dead_letter.py"})
                   for i in range(args.count)]
        outcomes = await asyncio.gather(*handles, return_exceptions=True)
        delivered = sum(1 for outcome in outcomes if not isinstance(outcome, BaseException))
        # Every failed record's callback ran before its handle turned done; wait for the copies to land.
        while dead_letters:
            await asyncio.gather(*list(dead_letters))
        print(f"delivered {delivered}, failed {len(outcomes) - delivered}, dead-letter topic {dlq_topic}")


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=12, help="records to send (default 12)")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
