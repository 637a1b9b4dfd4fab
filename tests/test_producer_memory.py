"""Thousands of senders blocked on a full buffer get through in the order they came, as memory frees, and
the buffer bound holds throughout (real broker)."""
from __future__ import annotations

import asyncio

from aiokprod import Producer
from helpers import read_back_async

SENDERS = 2000


async def test_thousands_of_blocked_senders_get_through_in_order(broker, topic_name):
    buffer_memory = 8192
    async with Producer(broker.bootstrap, batch_size=1024, buffer_memory=buffer_memory, linger_ms=2,
                        max_block_ms=60000) as producer:
        await producer.partitions_for(topic_name)
        order = []
        peak = [0]

        async def sender(i):
            handle = await producer.send(topic_name, b"%05d" % i + b"m" * 195, partition=i % 4)
            order.append(i)
            peak[0] = max(peak[0], producer.metrics()["buffer_used_bytes"])
            return await handle

        tasks = [asyncio.ensure_future(sender(i)) for i in range(SENDERS)]
        await asyncio.sleep(0)  # every task has run up to its first wait: most are queued for memory
        blocked = SENDERS - len(order)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        assert producer.metrics()["buffer_used_bytes"] == 0
    assert blocked > SENDERS // 2, f"only {blocked} senders blocked: the buffer was not the bottleneck"
    assert order == list(range(SENDERS))  # FIFO: nobody overtook anybody
    assert peak[0] <= buffer_memory
    stored = await read_back_async(broker.bootstrap, topic_name, range(4), SENDERS, timeout=30)
    assert len(stored) == SENDERS == len({(m.partition, m.offset) for m in results})
    for partition in range(4):
        values = [int(s.value[:5]) for s in stored if s.partition == partition]
        assert values == sorted(values)  # and stored in that order, partition by partition
