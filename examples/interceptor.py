"""A producer interceptor: ``on_send`` sees (and may replace) every record before it is serialized and
partitioned, ``on_acknowledgement`` hears how each delivery ended. This one stamps a header on every record
and counts acknowledgements per partition.

    python examples/interceptor.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
"""
import asyncio
import collections
import sys

from _common import run

from aiokprod import Producer, ProducerInterceptor


class CountingInterceptor(ProducerInterceptor):
    def __init__(self, origin: str) -> None:
        self.origin = origin.encode()
        self.sent = 0
        self.acked = collections.Counter()  # partition -> acknowledged records
        self.failed = 0
        self.last_headers = None

    def on_send(self, record):
        # Records are immutable named tuples: return a copy with one more header (headers are (str, bytes)).
        self.sent += 1
        headers = list(record.headers or []) + [("x-origin", self.origin), ("x-seq", str(self.sent).encode())]
        self.last_headers = headers
        return record._replace(headers=headers)

    def on_acknowledgement(self, metadata, error) -> None:
        # Called once per record: metadata on success, (None, exception) on failure. Keep it quick and
        # never raise here (an interceptor that raises is logged and skipped).
        if error is None:
            self.acked[metadata.partition] += 1
        else:
            self.failed += 1


async def main(bootstrap: str, topic: str, args) -> None:
    counter = CountingInterceptor(origin="examples/interceptor.py")
    async with Producer(bootstrap, interceptors=[counter]) as producer:
        handles = [await producer.send(topic, f"event {i}".encode(), key=f"k{i}".encode(),
                                       headers=[("x-user", b"demo")]) for i in range(20)]
        results = await asyncio.gather(*handles)
        for metadata in results[:3]:
            print(f"record -> topic {metadata.topic} partition {metadata.partition} offset {metadata.offset}")
        print(f"headers of the last record (x-user ours, the rest the interceptor's): {counter.last_headers}")
        # Acknowledgement callbacks were registered before gather()'s, so they have all run by now.
        print(f"interceptor: on_send {counter.sent}, acked {sum(counter.acked.values())}, failed {counter.failed}, "
              f"acked per partition {dict(sorted(counter.acked.items()))}")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__))
