"""Transactions and producer identity under faults, against the real broker behind the fault-injecting proxy
(three virtual brokers; the transaction coordinator is node 1): lost acknowledgements, coordinator errors on
each transaction request, a connection cut during commit, AddPartitionsToTxn batched per drain, the idempotent
producer's epoch bump and its fallback. Each test checks which mechanism acted (the proxy's counters, the
requests it recorded) and what a read_committed reader must see (the log's markers)."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer, errors
from log_reader import COMMIT, read_batches, read_committed
from proxy_fixtures import kafka_proxy  # noqa: F401

NO_HANG = 20.0
NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, CONCURRENT_TRANSACTIONS = 16, 14, 51
SETTINGS = dict(linger_ms=1, retry_backoff_ms=20, request_timeout_ms=3000)


async def _committed(broker, topic, partition):
    return await read_committed(broker.host, broker.port, topic, partition)


async def test_lost_acks_inside_a_transaction_then_commit_no_duplicates(broker, kafka_proxy, topic_name):
    """Two Produce answers are lost after the broker wrote the batches (connection cut): the retries carry
    the same sequences, the broker recognises them, and the committed transaction has each record once."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        async with producer.transaction():
            await producer.send_and_wait(topic_name, b"first", partition=0)
            proxy.lose_responses(topic=topic_name, partition=0, count=1, cut=True)
            proxy.lose_responses(topic=topic_name, partition=1, count=1, cut=True)
            handles = [await producer.send(topic_name, b"p%d-%d" % (i % 2, i), partition=i % 2) for i in range(6)]
            await asyncio.wait_for(asyncio.gather(*handles), NO_HANG)
        assert producer.metrics()["retries"] >= 2
    assert proxy.events["lost_response"] == 2
    values0, markers0 = await _committed(broker, topic_name, 0)
    values1, _ = await _committed(broker, topic_name, 1)
    assert values0 == [b"first", b"p0-0", b"p0-2", b"p0-4"] and [k for _, k in markers0] == [COMMIT]
    assert values1 == [b"p1-1", b"p1-3", b"p1-5"]


@pytest.mark.parametrize("after_write", [False, True], ids=["refused", "answer-replaced"])
async def test_not_coordinator_on_end_txn_finds_it_again(broker, kafka_proxy, topic_name, after_write):
    """EndTxn answered NOT_COORDINATOR (before the broker saw it, or after it committed): the producer looks
    the coordinator up again and retries; the transaction is committed."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        producer.begin_transaction()
        await producer.send_and_wait(topic_name, b"v", partition=0)
        lookups = proxy.count("FindCoordinator")
        proxy.inject_error("EndTxn", NOT_COORDINATOR, after_write=after_write)
        await asyncio.wait_for(producer.commit_transaction(), NO_HANG)
    assert proxy.injected["EndTxn"] == 1 and proxy.count("EndTxn") == 2
    assert proxy.count("FindCoordinator") == lookups + 1
    values, markers = await _committed(broker, topic_name, 0)
    assert values == [b"v"] and {k for _, k in markers} == {COMMIT}


async def test_not_coordinator_on_add_partitions(broker, kafka_proxy, topic_name):
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        lookups = proxy.count("FindCoordinator")
        proxy.inject_error("AddPartitionsToTxn", NOT_COORDINATOR)
        async with producer.transaction():
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"v", partition=2), NO_HANG)
    assert proxy.injected["AddPartitionsToTxn"] == 1 and proxy.count("AddPartitionsToTxn") == 2
    assert proxy.count("FindCoordinator") == lookups + 1
    assert (await _committed(broker, topic_name, 2))[0] == [b"v"]


async def test_concurrent_transactions_on_add_partitions_retries_after_a_short_backoff(broker, kafka_proxy, topic_name):
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        lookups = proxy.count("FindCoordinator")
        proxy.inject_error("AddPartitionsToTxn", CONCURRENT_TRANSACTIONS, count=3)
        async with producer.transaction():
            await asyncio.wait_for(producer.send_and_wait(topic_name, b"v", partition=1), NO_HANG)
        assert producer._driver.retries >= 3
    assert proxy.injected["AddPartitionsToTxn"] == 3 and proxy.count("AddPartitionsToTxn") == 4
    assert proxy.count("FindCoordinator") == lookups  # the coordinator did not move: no new lookup
    assert (await _committed(broker, topic_name, 1))[0] == [b"v"]


async def test_coordinator_load_in_progress_on_init_producer_id(broker, kafka_proxy, topic_name):
    """start(): the coordinator is still loading (twice); the producer looks it up again and retries."""
    proxy = kafka_proxy
    proxy.inject_error("InitProducerId", COORDINATOR_LOAD_IN_PROGRESS, count=2)
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        assert producer._manager.producer_id >= 0
        async with producer.transaction():
            await producer.send(topic_name, b"v", partition=0)
    assert proxy.injected["InitProducerId"] == 2 and proxy.count("InitProducerId") == 3
    assert proxy.count("FindCoordinator") == 3
    assert (await _committed(broker, topic_name, 0))[0] == [b"v"]


@pytest.mark.parametrize("fault", ["cut_before", "lose_response"])
async def test_connection_cut_during_commit(broker, kafka_proxy, topic_name, fault):
    """The coordinator's connection is cut as EndTxn arrives (never forwarded), or after the broker committed
    (answer lost): either way the commit is retried on a new connection and completes."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        producer.begin_transaction()
        handles = [await producer.send(topic_name, b"v%d" % i, partition=0) for i in range(5)]
        if fault == "cut_before":
            proxy.cut_before(api="EndTxn")
        else:
            proxy.lose_responses(api="EndTxn", cut=True)
        await asyncio.wait_for(producer.commit_transaction(), NO_HANG)
        assert all(not h.exception() for h in handles)
    assert proxy.count("EndTxn") == 2
    assert proxy.events["cut_before" if fault == "cut_before" else "lost_response"] == 1
    values, markers = await _committed(broker, topic_name, 0)
    assert values == [b"v%d" % i for i in range(5)] and {k for _, k in markers} == {COMMIT}


async def test_add_partitions_is_one_request_per_drain(broker, kafka_proxy, topic_name):
    """Eight partitions of two topics, new to the transaction and made ready together by the commit's
    flush: one AddPartitionsToTxn names all of them (not one per record or per partition)."""
    proxy = kafka_proxy
    other = topic_name + "-b"
    proxy.record_requests("AddPartitionsToTxn")
    async with Producer(proxy.bootstrap, transactional_id=topic_name, linger_ms=60_000) as producer:
        await producer.partitions_for(other)
        producer.begin_transaction()
        for i in range(40):
            await producer.send(topic_name if i % 2 else other, b"r%d" % i, partition=(i // 2) % 4)
        await asyncio.wait_for(producer.commit_transaction(), NO_HANG)
    [request] = proxy.recorded["AddPartitionsToTxn"]
    named = sorted((t.name, p) for t in request.v3_and_below_topics for p in t.partitions)
    assert named == sorted([(topic_name, p) for p in range(4)] + [(other, p) for p in range(4)])
    assert proxy.count("AddPartitionsToTxn") == 1


async def test_idempotent_reset_bumps_the_epoch_and_falls_back_to_a_new_id(broker, kafka_proxy, topic_name):
    """UNKNOWN_PRODUCER_ID forces a reset. KIP-360: the producer first asks for an epoch bump with its
    current id and epoch; this broker refuses bumps, so it then asks for a new id, and the batch is
    renumbered under it (it was not written)."""
    proxy = kafka_proxy
    proxy.record_requests("InitProducerId")
    async with Producer(proxy.bootstrap, **SETTINGS) as producer:
        await producer.send_and_wait(topic_name, b"before", partition=0)
        first_id, first_epoch = producer._manager.producer_id, producer._manager.epoch
        proxy.fail_produce(topic_name, 0, 59)  # UNKNOWN_PRODUCER_ID
        await asyncio.wait_for(producer.send_and_wait(topic_name, b"after", partition=0), NO_HANG)
        new_id = producer._manager.producer_id
    requests = [(r.transactional_id, r.producer_id, r.producer_epoch) for r in proxy.recorded["InitProducerId"]]
    assert requests == [(None, -1, -1), (None, first_id, first_epoch), (None, -1, -1)]
    assert new_id != first_id
    batches = await read_batches(broker.host, broker.port, topic_name, 0)
    assert [(b.producer_id, b.base_sequence, [r.value for r in b.records]) for b in batches] == [
        (first_id, 0, [b"before"]), (new_id, 0, [b"after"])]


async def test_transactional_producer_never_resets_its_id_on_a_produce_error(broker, kafka_proxy, topic_name):
    """UNKNOWN_PRODUCER_ID inside a transaction: no InitProducerId (a new id would fence nobody but a newer
    instance); the transaction becomes abortable, the commit says so, the abort goes through."""
    proxy = kafka_proxy
    proxy.record_requests("InitProducerId")
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        producer.begin_transaction()
        proxy.fail_produce(topic_name, 0, 59)
        handle = await producer.send(topic_name, b"v", partition=0)
        with pytest.raises(errors.UnknownProducerIdError):
            await asyncio.wait_for(handle, NO_HANG)
        assert len(proxy.recorded["InitProducerId"]) == 1  # start() only
        with pytest.raises(errors.AbortableError):
            await producer.commit_transaction()
        # After the abort the epoch is bumped with the producer's own id and epoch (KIP-360), never -1/-1;
        # this broker refuses bumps, so the producer is left fatal rather than fence a possible successor.
        with pytest.raises(errors.FatalError, match="refused to bump the epoch") as caught:
            await producer.abort_transaction()
        assert isinstance(caught.value.__cause__, errors.UnknownServerError)
        with pytest.raises(errors.FatalError):
            producer.begin_transaction()
    requests = [(r.producer_id, r.producer_epoch) for r in proxy.recorded["InitProducerId"]]
    assert requests[0] == (-1, -1) and len(requests) == 2 and requests[1][0] >= 0
    values, markers = await _committed(broker, topic_name, 0)
    assert values == [] and COMMIT not in [k for _, k in markers]


async def test_after_a_record_fails_send_says_the_transaction_must_be_aborted(broker, kafka_proxy, topic_name):
    """A record of the transaction is refused (INVALID_RECORD): the transaction is abortable. send() says so
    (its fast path is switched off with the state change), commit says so, the abort clears it."""
    proxy = kafka_proxy
    async with Producer(proxy.bootstrap, transactional_id=topic_name, **SETTINGS) as producer:
        producer.begin_transaction()
        assert producer._appender.enabled
        proxy.fail_produce(topic_name, 0, 87)
        with pytest.raises(errors.InvalidRecordError):
            await asyncio.wait_for(await producer.send(topic_name, b"bad", partition=0), NO_HANG)
        assert not producer._appender.enabled
        with pytest.raises(errors.TransactionFailedError, match="must be aborted") as caught:
            await producer.send(topic_name, b"more", partition=1)
        assert isinstance(caught.value.errors[0], errors.InvalidRecordError)
        with pytest.raises(errors.TransactionFailedError):
            await producer.commit_transaction()
        await producer.abort_transaction()
        # The refused batch's sequence was given back (nothing after it was numbered): no epoch bump was
        # needed after the abort, and the next transaction writes to the same partition under the same epoch.
        epoch = producer._manager.epoch
        async with producer.transaction():
            await producer.send(topic_name, b"next", partition=0)
        assert producer._manager.epoch == epoch
    assert (await _committed(broker, topic_name, 0))[0] == [b"next"]
