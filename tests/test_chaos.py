"""A seeded chaos run: keyed records flow through the proxy while a random schedule cuts connections, holds
answers back, loses acknowledgements (with and without a cut), answers NOT_LEADER_OR_FOLLOWER and
NOT_ENOUGH_REPLICAS, refuses requests before forwarding them, and restarts the broker once. Then the
invariants are checked from the broker's log (see fault_checks), not from what the producer says.

The restart loses the broker's memory, so the log is read twice: just before the restart (the producer's
loop is blocked meanwhile, so nothing moves on its side) and at the end. Every record acknowledged before
the first read is in it at the place it was reported; every record sent after the restart is in the final
log at its place; a record in flight at the restart is in one of the two (or, acknowledged by the old broker
between the read and the stop, in neither; it was still pending at the first read).

Bounded: ``AIOKPROD_CHAOS_SECONDS`` of traffic (default 4, a test of about 10 s); ``AIOKPROD_CHAOS_SEED``
replays a schedule (the seed is printed, and shown when the test fails). The schedule is reproducible; the
interleaving with the loop is not, so a replay exercises the same faults, not necessarily the same race.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import time

import pytest

from aiokprod import Producer
from aiokprod.admin import create_topics
from fault_checks import Ledger, check_log, index_of, read_log
from kafka_proxy import KafkaProxy

SECONDS = float(os.environ.get("AIOKPROD_CHAOS_SECONDS", "4"))
SEED = os.environ.get("AIOKPROD_CHAOS_SEED")
PARTITIONS = 6
KEYS = 500
GUARD = 120.0  # hang guard only


def schedule(rng: random.Random, seconds: float, num_brokers: int) -> list[tuple[float, str, dict]]:
    """[(at, fault, arguments)], in time order, with one restart somewhere in the middle third."""
    events = [(rng.uniform(seconds / 3, 2 * seconds / 3), "restart", {})]
    at = 0.0
    kinds = ["cut", "delay", "lose_cut", "lose_silent", "not_leader", "not_enough_replicas", "cut_before"]
    weights = [3, 4, 4, 1, 4, 2, 2]
    while True:
        at += rng.uniform(0.03, 0.25)
        if at >= seconds:
            break
        kind = rng.choices(kinds, weights)[0]
        partition = rng.randrange(PARTITIONS)
        node = rng.randint(1, num_brokers)
        args = {
            "cut": {},
            "delay": dict(seconds=rng.uniform(0.05, 0.6), node_id=node, count=rng.randint(1, 5)),
            "lose_cut": dict(partition=partition),
            "lose_silent": dict(partition=partition),
            "not_leader": dict(partition=partition, count=rng.randint(1, 3)),
            "not_enough_replicas": dict(partition=partition, count=rng.randint(1, 3)),
            "cut_before": dict(partition=partition),
        }[kind]
        events.append((at, kind, args))
    return sorted(events, key=lambda e: e[0])


def apply(proxy: KafkaProxy, topic: str, kind: str, args: dict) -> None:
    if kind == "cut":
        proxy.cut_connections()
    elif kind == "delay":
        proxy.delay_responses(args["seconds"], api="Produce", node_id=args["node_id"], count=args["count"])
    elif kind in ("lose_cut", "lose_silent"):
        proxy.lose_responses(topic=topic, partition=args["partition"], cut=kind == "lose_cut")
    elif kind == "not_leader":
        proxy.fail_produce(topic, args["partition"], 6, count=args["count"])
    elif kind == "not_enough_replicas":
        proxy.fail_produce(topic, args["partition"], 19, count=args["count"])
    elif kind == "cut_before":
        proxy.cut_before(topic=topic, partition=args["partition"])
    else:
        raise ValueError(kind)


def _in_thread(coro_fn, *args):
    """Run a coroutine on a loop of its own in another thread and wait (blocks the caller's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn(*args))).result(60)


@pytest.mark.one_loop_per_implementation  # ~8 s a run; see conftest
@pytest.mark.timeout(max(120, SECONDS * 10))  # a long run (AIOKPROD_CHAOS_SECONDS) on a loaded machine
@pytest.mark.parametrize("mode", ["idempotent", "plain"])
async def test_chaos(fresh_broker, topic_name, mode):
    seed = int(SEED) if SEED else random.SystemRandom().randrange(2 ** 32)
    loop = type(asyncio.get_running_loop()).__module__
    print(f"chaos seed {seed} on {loop} (replay: AIOKPROD_CHAOS_SEED={seed} AIOKPROD_CHAOS_SECONDS={SECONDS})")
    try:
        await _chaos(fresh_broker, topic_name, mode, seed)
    except AssertionError as exc:
        raise AssertionError(f"[chaos seed {seed}, mode {mode}] {exc}") from exc


async def _chaos(broker, topic: str, mode: str, seed: int) -> None:
    idempotent = mode == "idempotent"
    settings = dict(linger_ms=5, batch_size=4096, retry_backoff_ms=20, retry_backoff_max_ms=200,
                    request_timeout_ms=1500, delivery_timeout_ms=120000)
    if idempotent:
        settings.update(max_in_flight_requests_per_connection=5)
    else:
        # Without idempotence only one request in flight keeps a partition's order through retries.
        settings.update(enable_idempotence=False, acks="all", max_in_flight_requests_per_connection=1)
    events = schedule(random.Random(seed), SECONDS, 3)
    traffic = random.Random(seed + 1)
    await create_topics(broker.bootstrap, {topic: PARTITIONS})
    ledger = Ledger()
    applied = []
    with KafkaProxy(broker.host, broker.port, num_brokers=3) as proxy:
        async with Producer(proxy.bootstrap, **settings) as producer:
            await producer.partitions_for(topic)
            start = time.monotonic()
            pending = list(events)
            sent_before_restart = None
            while time.monotonic() - start < SECONDS:
                elapsed = time.monotonic() - start
                while pending and pending[0][0] <= elapsed:
                    _, kind, args = pending.pop(0)
                    applied.append(kind)
                    if kind == "restart":
                        # The loop is blocked from here to the end of the restart: read the old log, restart,
                        # create the topic again (see the module docstring).
                        sent_before_restart = len(ledger.records)
                        settled_at_restart = {r.index for r in ledger.records if r.handle.done()}
                        old_log = _in_thread(read_log, broker, topic, range(PARTITIONS))
                        broker.restart()
                        _in_thread(create_topics, broker.bootstrap, {topic: PARTITIONS})
                    else:
                        apply(proxy, topic, kind, args)
                for _ in range(traffic.randint(1, 40)):
                    key = b"k%d" % traffic.randrange(KEYS)
                    ledger.add(await producer.send(topic, ledger.next_value(), key=key))
                await asyncio.sleep(0.005)
            proxy.clear_faults()
            await asyncio.wait_for(producer.flush(), GUARD)
            await ledger.settle(GUARD)
            metrics = producer.metrics()
        new_log = await read_log(broker, topic, range(PARTITIONS))
        events_seen = dict(proxy.events)
    print(f"{len(ledger.records)} records; faults applied: {sorted(set(applied))}; proxy: {events_seen}; "
          f"retries {metrics['retries']}")

    ledger.assert_settled_once()
    assert not ledger.failures(), [(r.index, r.outcome) for r in ledger.failures()[:5]]
    assert metrics["records_sent"] == len(ledger.records)
    assert sent_before_restart is not None and "restart" in applied
    assert len(ledger.records) > 1000 and metrics["retries"] > 0

    # Before the restart: whatever was acknowledged by then is in the old log, where it was reported.
    acked_before = {i for i in settled_at_restart}
    print(f"restart after record {sent_before_restart}")
    check_log(ledger, old_log, idempotent=idempotent, checked=acked_before,
              may_be_absent=set(range(len(ledger.records))) - acked_before, name="before the restart")
    # After it: every record sent after the restart is in the new log, where it was reported.
    after = set(range(sent_before_restart, len(ledger.records)))
    check_log(ledger, new_log, idempotent=idempotent, checked=after, may_be_absent=set(range(sent_before_restart)),
              name="after the restart")
    # In flight at the restart: in one log or the other, unless acknowledged between the read and the stop.
    in_old = {index_of(v) for records in old_log.values() for _, v in records}
    in_new = {index_of(v) for records in new_log.values() for _, v in records}
    lost = [i for i in range(sent_before_restart) if i not in in_old | in_new and i in acked_before]
    assert not lost, f"acknowledged before the restart but in neither log: {lost[:10]}"
    # Offsets: a record written to both brokers reported one of its two places; check_log above checked
    # each log only for the records it must hold. Here: every success with an offset is at that offset in
    # one of the logs, or was still pending at the read (acknowledged by the old broker after it).
    places = {}
    for log in (old_log, new_log):
        for partition, records in log.items():
            for offset, value in records:
                places.setdefault(index_of(value), set()).add((partition, offset))
    wrong = []
    for record in ledger.records:
        meta = record.outcome
        if meta.offset < 0 or (record.index not in places and record.index not in acked_before):
            continue
        if (meta.partition, meta.offset) not in places.get(record.index, ()):
            wrong.append((record.index, meta.partition, meta.offset, sorted(places.get(record.index, ()))))
    assert not wrong, f"reported places not in the log: {wrong[:10]}"
