"""The basics: open a producer, send one record and wait for it, send a few more without waiting, flush,
and print where every record landed (topic, partition, offset).

    python examples/basic_producer.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
"""
import asyncio
import sys

from _common import run

from aiokprod import Producer
from aiokprod.serializers import json_serializer, string_serializer


async def main(bootstrap: str, topic: str, args) -> None:
    # Serializers turn keys and values into bytes; without them both must already be bytes (or None).
    async with Producer(bootstrap,
                        key_serializer=string_serializer(),
                        value_serializer=json_serializer,
                        linger_ms=5) as producer:
        # send_and_wait(): append the record and wait for the broker's acknowledgement.
        metadata = await producer.send_and_wait(topic, {"event": "signup", "user": 1}, key="user-1")
        print(f"send_and_wait -> topic {metadata.topic} partition {metadata.partition} offset {metadata.offset}")

        # send() returns as soon as the record is buffered; its handle resolves once the batch is delivered.
        handles = []
        for i in range(5):
            handles.append(await producer.send(topic, {"event": "click", "n": i}, key=f"user-{i}"))
        await producer.flush()  # push everything buffered out now and wait for it
        for i, handle in enumerate(handles):
            metadata = await handle  # already resolved after flush(): returns at once
            print(f"send #{i} (key user-{i}) -> topic {metadata.topic} partition {metadata.partition} "
                  f"offset {metadata.offset}")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__))
