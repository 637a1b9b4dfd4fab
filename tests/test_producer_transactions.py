"""Transactions against the real broker: what a read_committed reader must see (worked out from the log's
batches and COMMIT/ABORT markers, since the embedded broker's own Fetch hands out aborted records), across
two topics; misuse refused with clear errors; fencing; a transaction that outlives its timeout; offsets sent
in a transaction."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer, errors
from log_reader import ABORT, COMMIT, read_batches, read_committed

NO_HANG = 20.0


async def _committed(broker, topic, partition):
    return await read_committed(broker.host, broker.port, topic, partition)


async def test_commit_across_two_topics_then_abort(broker, topic_name):
    """A committed transaction over two topics is visible whole; an aborted one is not, though its records
    are in the log (the ABORT marker hides them)."""
    other = topic_name + "-b"
    async with Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=5) as producer:
        producer.begin_transaction()
        handles = [await producer.send(topic_name, b"a%d" % i, partition=i % 2) for i in range(6)]
        handles += [await producer.send(other, b"b%d" % i, partition=0) for i in range(3)]
        await asyncio.wait_for(producer.commit_transaction(), NO_HANG)
        assert all(handle.done() and not handle.exception() for handle in handles)

        producer.begin_transaction()
        aborted = [await producer.send(topic_name, b"gone", partition=0), await producer.send(other, b"gone", partition=0)]
        await producer.flush()  # written to the log, then aborted
        await asyncio.wait_for(producer.abort_transaction(), NO_HANG)
        producer_id = producer._manager.producer_id
    assert all(not handle.exception() for handle in aborted)  # delivered; the abort hides them
    assert await _committed(broker, topic_name, 0) == ([b"a0", b"a2", b"a4"], [(producer_id, COMMIT), (producer_id, ABORT)])
    assert await _committed(broker, topic_name, 1) == ([b"a1", b"a3", b"a5"], [(producer_id, COMMIT)])
    values, markers = await _committed(broker, other, 0)
    assert values == [b"b0", b"b1", b"b2"] and markers == [(producer_id, COMMIT), (producer_id, ABORT)]
    data = [b for b in await read_batches(broker.host, broker.port, topic_name, 0) if not b.is_control]
    assert all(b.is_transactional and b.producer_id == producer_id for b in data)
    assert [r.value for b in data for r in b.records] == [b"a0", b"a2", b"a4", b"gone"]


async def test_context_manager_commits_on_success_and_aborts_on_error(broker, topic_name):
    async with Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=1) as producer:
        async with producer.transaction():
            await producer.send(topic_name, b"kept", partition=0)
        with pytest.raises(RuntimeError, match="application failed"):
            async with producer.transaction():
                await producer.send_and_wait(topic_name, b"dropped", partition=0)
                raise RuntimeError("application failed")
        async with producer.transaction():  # the producer goes on
            await producer.send(topic_name, b"kept-too", partition=0)
    values, markers = await _committed(broker, topic_name, 0)
    assert values == [b"kept", b"kept-too"]
    assert [kind for _, kind in markers] == [COMMIT, ABORT, COMMIT]


async def test_abort_fails_records_still_buffered(broker, topic_name):
    """Records that never left the buffer fail with TransactionAbortedError; none reaches the log."""
    async with Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=60_000) as producer:
        producer.begin_transaction()
        handles = [await producer.send(topic_name, b"r%d" % i, partition=i % 3) for i in range(30)]
        await asyncio.wait_for(producer.abort_transaction(), NO_HANG)
        for handle in handles:
            with pytest.raises(errors.TransactionAbortedError, match=f"transaction '{topic_name}' was aborted"):
                await handle
        assert isinstance(handles[0].exception(), errors.AbortableError)
        assert producer.metrics()["buffer_used_bytes"] == 0
        async with producer.transaction():
            await producer.send(topic_name, b"next", partition=0)
    assert await _committed(broker, topic_name, 0) == ([b"next"], [(producer._manager.producer_id, COMMIT)])
    assert await read_batches(broker.host, broker.port, topic_name, 1) == []


async def test_misuse_is_refused_with_clear_errors(broker, topic_name):
    async with Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=1) as producer:
        with pytest.raises(errors.IllegalStateError, match="outside a transaction .*begin_transaction"):
            await producer.send(topic_name, b"x", partition=0)
        with pytest.raises(errors.IllegalStateError, match="commit_transaction.*READY"):
            await producer.commit_transaction()
        with pytest.raises(errors.IllegalStateError, match="abort_transaction.*READY"):
            await producer.abort_transaction()
        producer.begin_transaction()
        with pytest.raises(errors.IllegalStateError, match="already open"):
            producer.begin_transaction()
        await producer.send_and_wait(topic_name, b"in", partition=0)  # the fast path is on inside
        with pytest.raises(ValueError, match="offset for"):
            await producer.send_offsets_to_transaction({(topic_name, 0): -1}, "group")
        await producer.commit_transaction()
        with pytest.raises(errors.IllegalStateError, match="outside a transaction"):
            await producer.send(topic_name, b"after", partition=0)  # the fast path is off again
    async with Producer(broker.bootstrap, linger_ms=1) as plain:
        with pytest.raises(errors.IllegalStateError, match="needs a transactional_id"):
            plain.begin_transaction()


async def test_second_instance_fences_the_first(broker, topic_name):
    """Same transactional_id: the newer InitProducerId fences the older producer. The zombie's next
    operation raises ProducerFencedError (a FatalError); it can never write again; the new one commits."""
    zombie = Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=1)
    await zombie.start()
    try:
        zombie.begin_transaction()
        await zombie.send_and_wait(topic_name, b"zombie-1", partition=0)
        async with Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=1) as successor:
            assert successor._manager.epoch > zombie._manager.epoch
            handle = await zombie.send(topic_name, b"zombie-2", partition=0)
            with pytest.raises(errors.FatalError) as caught:
                await asyncio.wait_for(handle, NO_HANG)
            assert isinstance(caught.value, (errors.ProducerFencedError, errors.InvalidProducerEpochError))
            for operation in (zombie.commit_transaction(), zombie.send(topic_name, b"zombie-3", partition=0)):
                with pytest.raises(type(caught.value)):
                    await operation
            with pytest.raises(type(caught.value)):
                zombie.begin_transaction()
            async with successor.transaction():
                await successor.send(topic_name, b"successor", partition=0)
            successor_id = successor._manager.producer_id
    finally:
        await zombie.stop()
    values, markers = await _committed(broker, topic_name, 0)
    # The successor's InitProducerId ended the zombie's open transaction; only the successor's records count.
    assert values == [b"successor"]
    assert markers[-1] == (successor_id, COMMIT)
    stored = [r.value for b in await read_batches(broker.host, broker.port, topic_name, 0) for r in b.records
              if not b.is_control]
    assert b"zombie-2" not in stored and b"zombie-3" not in stored


async def test_transaction_outliving_its_timeout_cannot_commit(broker, topic_name):
    """A transaction open longer than transaction_timeout_ms is one the coordinator aborts: commit refuses it
    (TransactionTimedOutError, an AbortableError), the application aborts, and the producer goes on."""
    async with Producer(broker.bootstrap, transactional_id=topic_name, transaction_timeout_ms=300,
                        linger_ms=1) as producer:
        producer.begin_transaction()
        await producer.send_and_wait(topic_name, b"late", partition=0)
        await asyncio.sleep(0.4)
        with pytest.raises(errors.TransactionTimedOutError, match="transaction_timeout_ms \\(300\\)"):
            await producer.commit_transaction()
        with pytest.raises(errors.TransactionTimedOutError):  # still refused until aborted
            await producer.commit_transaction()
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic_name, b"in-time", partition=0)
    values, markers = await _committed(broker, topic_name, 0)
    assert values == [b"in-time"] and [kind for _, kind in markers] == [ABORT, COMMIT]


async def test_stop_aborts_an_open_transaction(broker, topic_name):
    producer = Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=1)
    await producer.start()
    producer.begin_transaction()
    await producer.send_and_wait(topic_name, b"never-committed", partition=0)
    await producer.stop()
    values, markers = await _committed(broker, topic_name, 0)
    assert values == [] and [kind for _, kind in markers] == [ABORT]


async def test_offsets_sent_in_a_transaction_are_committed_with_it(broker, topic_name):
    """send_offsets_to_transaction: AddOffsetsToTxn, then TxnOffsetCommit to the group coordinator; the
    group's committed offsets, read by confluent-kafka's consumer, are those of the committed transaction
    only."""
    group = topic_name + "-group"
    async with Producer(broker.bootstrap, transactional_id=topic_name, linger_ms=1) as producer:
        async with producer.transaction():
            await producer.send(topic_name, b"out-1", partition=0)
            await producer.send_offsets_to_transaction({(topic_name, 0): 7, (topic_name, 1): 3}, group)
        producer.begin_transaction()
        await producer.send_offsets_to_transaction({(topic_name, 0): 99}, group)
        await producer.abort_transaction()
    committed = await asyncio.get_running_loop().run_in_executor(
        None, _committed_offsets, broker.bootstrap, group, topic_name, [0, 1])
    assert committed == {0: 7, 1: 3}


def _committed_offsets(bootstrap, group, topic, partitions):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        answer = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in answer}
    finally:
        consumer.close()
