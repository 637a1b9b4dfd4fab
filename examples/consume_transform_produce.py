"""Consume, transform, produce: exactly once. confluent-kafka's consumer reads ``<topic>-in``; each record's
value, upper-cased, is written to ``<topic>-out``; and the consumer's position is committed *inside the same
transaction* with ``send_offsets_to_transaction``. If the process dies mid-transaction, nothing of that
transaction becomes visible and its offsets are not committed: a restart (same ``transactional_id``, which
fences the dead instance and aborts what it left open) reads those inputs again from the committed offsets,
so every input appears exactly once in the committed output.

    python examples/consume_transform_produce.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
        [--fill N]        first write N input records (non-transactionally) to <topic>-in
        [--batch N]       input records per transaction (default 10)
        [--pause SECONDS] wait this long inside each transaction before committing (to be killed there)

It stops when the input has been idle for a second. confluent-kafka is a test dependency of aiokprod, not
a runtime one (``pip install confluent-kafka``).
"""
import asyncio
import sys

from _common import run

from aiokprod import Producer, errors


def add_arguments(parser) -> None:
    parser.add_argument("--fill", type=int, default=0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.0)


def make_consumer(bootstrap: str, group: str, source: str):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
    # Assigned, not subscribed: no group rebalance to wait for after a crash. Each partition starts at the
    # group's committed offset (committed by our transactions), or at the beginning.
    consumer.assign([TopicPartition(source, p) for p in sorted(partitions)])
    return consumer


async def main(bootstrap: str, topic: str, args) -> None:
    source, sink, group = f"{topic}-in", f"{topic}-out", f"{topic}-group"
    loop = asyncio.get_running_loop()
    async with Producer(bootstrap, transactional_id=f"{topic}-ctp", linger_ms=5) as producer:
        if args.fill:
            async with Producer(bootstrap, linger_ms=5) as filler:
                for i in range(args.fill):
                    await filler.send(source, b"input-%04d" % i, key=b"%d" % i)
            print(f"filled {args.fill} input records")
        consumer = await loop.run_in_executor(None, make_consumer, bootstrap, group, source)
        try:
            transactions = 0
            while True:
                # The blocking consumer runs in a thread; the producer stays on the event loop.
                messages = await loop.run_in_executor(None, consumer.consume, args.batch, 1.0)
                messages = [m for m in messages if m.error() is None]
                if not messages:
                    break
                offsets = {}
                try:
                    async with producer.transaction():
                        for message in messages:
                            await producer.send(sink, message.value().upper(), key=message.key())
                            offsets[(message.topic(), message.partition())] = message.offset() + 1
                        await producer.send_offsets_to_transaction(offsets, group)
                        if args.pause:
                            await asyncio.sleep(args.pause)
                except errors.AbortableError as exc:
                    # Aborted: rewind to the committed offsets and do these records again.
                    print(f"transaction aborted ({exc}); rewinding")
                    await loop.run_in_executor(None, _rewind, consumer, offsets)
                    continue
                transactions += 1
                print(f"committed transaction {transactions}: {len(messages)} records, offsets "
                      f"{sorted(offsets.items())}", flush=True)
        finally:
            await loop.run_in_executor(None, consumer.close)
    print(f"done: {transactions} transactions, output in {sink}")


def _rewind(consumer, offsets) -> None:
    from confluent_kafka import TopicPartition

    committed = consumer.committed([TopicPartition(t, p) for t, p in offsets], timeout=10)
    for tp in committed:
        consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__, add_arguments))
