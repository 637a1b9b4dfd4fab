"""Thousands of senders blocked on a full buffer get through in the order they came, as memory frees, and
the buffer bound holds throughout (real broker)."""
from __future__ import annotations

import asyncio

import pytest

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


async def test_an_expired_wait_lets_the_sender_queued_behind_it_through(broker, topic_name):
    """Waits past max_block_ms end with BufferExhaustedError naming their own record, in the order they
    queued; the sender that fitted all along but queued behind the big one (FIFO) gets its memory the moment
    the big one leaves the queue, though nothing was freed. Later waits still time out (the waits' one timer
    re-arms) and still get through when memory frees."""
    from aiokprod import errors

    # max_block_ms well above the 50 ms between two waits queuing, so a loaded machine cannot reorder them.
    async with Producer(broker.bootstrap, batch_size=1024, buffer_memory=4096, linger_ms=60_000,
                        max_block_ms=1000) as producer:
        await producer.partitions_for(topic_name)
        filler = [await producer.send(topic_name, b"f" * 900, partition=p) for p in (0, 1)]  # 2048 used
        failed = []

        async def sender(value, partition):
            try:
                return await producer.send(topic_name, value, partition=partition)
            except errors.BufferExhaustedError as exc:
                failed.append((partition, str(exc)))
                raise

        big = asyncio.ensure_future(sender(b"B" * 3000, 2))  # needs ~3 kB: more than is left
        await asyncio.sleep(0.05)
        small = asyncio.ensure_future(sender(b"s" * 100, 3))  # 1024 would fit: it waits behind "big"
        await asyncio.sleep(0)
        assert not big.done() and not small.done()
        assert producer.metrics()["buffer_used_bytes"] == 2048
        with pytest.raises(errors.BufferExhaustedError, match=rf"for {topic_name}-2: .*max_block_ms \(1000 ms\)"):
            await asyncio.wait_for(big, 30)
        handle = await asyncio.wait_for(small, 30)  # granted when "big" expired, not by a release
        assert producer.metrics()["buffer_used_bytes"] == 3072
        assert [partition for partition, _ in failed] == [2]
        # Another round: two waiters expire in the order they queued; then one is granted by a flush. (To a
        # partition without an open batch: a record that closed a full one would make it ready, and its
        # delivery would free memory.)
        first = asyncio.ensure_future(sender(b"1" * 1500, 2))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(sender(b"2" * 1600, 2))
        for task in (first, second):
            with pytest.raises(errors.BufferExhaustedError):
                await asyncio.wait_for(task, 30)
        assert [partition for partition, _ in failed] == [2, 2, 2]
        # Each error names its own record (by size: 3000, then 1500 and 1600 bytes of value).
        assert [int(message.split("no room for a ")[1].split("-byte")[0]) // 100 for _, message in failed] == [30, 15, 16]
        assert all("no room for a " in message and "bytes of buffer_memory (4096 bytes)" in message
                   for _, message in failed)
        last = asyncio.ensure_future(sender(b"L" * 1500, 2))
        await asyncio.sleep(0)
        assert not last.done()
        await producer.flush()  # frees the buffer: "last" is granted, well within its max_block_ms
        last_handle = await asyncio.wait_for(last, 30)
        await producer.flush()
        metas = [await h for h in filler + [handle, last_handle]]
        assert [m.partition for m in metas] == [0, 1, 3, 2]
        metrics = producer.metrics()
        assert metrics["buffer_exhausted_total"] == 3 and metrics["buffer_used_bytes"] == 0
    stored = await read_back_async(broker.bootstrap, topic_name, range(4), 4, timeout=30)
    assert sorted(s.value[:1] for s in stored) == [b"L", b"f", b"f", b"s"]
