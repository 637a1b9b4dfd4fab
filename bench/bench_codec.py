"""Record-batch builder throughput: aiokprod's native builder, its Python twin, and aiokafka's Cython builder.

Every builder gets the same records (10-byte keys, 100-byte values, no headers) and builds full batches of
``--batch-size`` bytes (append until the builder says the batch is full, then build). One row per builder
and codec, records/s, and the native/aiokafka ratio. Run:

    /work/venv/bin/python bench/bench_codec.py [--seconds 1.0] [--batch-size 16384] [--codecs none] [--json]

It first prints the environment (CPU count, load average, implementation): the rates are only comparable
on an otherwise idle machine. ``--json`` prints one JSON object (environment and rows) instead of the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# Run from a checkout without installing: the repository root first on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiokafka.record.default_records import DefaultRecordBatchBuilder as AiokafkaBuilder  # noqa: E402

from aiokprod import _impl  # noqa: E402

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# aiokafka takes the attribute's codec id.
AIOKAFKA_CODEC = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def make_records(batch_size: int):
    # Enough records to overfill one batch; every batch starts again at the first. Values are mildly
    # compressible (like real payloads) so the compressed rows mean something.
    n = batch_size // 100 + 64
    rnd = os.urandom(50 * n)
    return [
        (1_700_000_000_000 + i, b"key-%06d" % i, b"value-%08d-" % i + rnd[i * 50:(i + 1) * 50] + b"x" * 35)
        for i in range(n)
    ]


# The loops below are the same shape for every builder (append until full, then build), so the loop's own
# cost (roughly 15-25 ns per record here) weighs the same on each of them.

def batches_ours(module, codec: str, records, batch_size: int, batches: int) -> int:
    builder_cls = module.RecordBatchBuilder
    done = 0
    for seq in range(batches):
        builder = builder_cls(codec, batch_size)
        append = builder.append
        for ts, key, value in records:
            if not append(ts, key, value, None):
                break
        builder.build(0, 1000, 0, seq)
        done += len(builder)
    return done


def batches_aiokafka(codec: str, records, batch_size: int, batches: int) -> int:
    codec_id = AIOKAFKA_CODEC[codec]
    done = 0
    for seq in range(batches):
        builder = AiokafkaBuilder(2, codec_id, 0, 1000, 0, seq, batch_size)
        append = builder.append
        offset = 0
        for ts, key, value in records:
            # aiokafka takes the offset delta from the caller and returns None when the batch is full.
            if append(offset, ts, key, value, []) is None:
                break
            offset += 1
        builder.build()
        done += offset
    return done


def rate(run, seconds: float) -> float:
    """Records per second: the best of several short rounds, so other load on the machine shows less."""
    batches = 8
    while True:  # calibrate a round to ~1/10 of the time budget
        start = time.perf_counter()
        run(batches)
        if time.perf_counter() - start > seconds / 20 or batches > 1 << 20:
            break
        batches *= 2
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        done = run(batches)
        best = max(best, done / (time.perf_counter() - start))
    return best


def environment() -> dict:
    """What the figures depend on: CPU count (and how many this process may use), load, versions."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    import aiokafka

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average": load,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "aiokafka": aiokafka.__version__,
        "aiokprod_native_loaded": not _impl.NO_EXTENSIONS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per row and builder")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    records = make_records(args.batch_size)
    native = None if _impl.NO_EXTENSIONS else _impl.native_twin("codec")
    python = _impl.python_twin("codec")
    env = environment()
    if not args.json:
        print(f"environment: {env['cpu_count']} CPUs ({env['cpus_usable']} usable), load average "
              f"{env['load_average']}, Python {env['python']} {env['machine']}, aiokafka {env['aiokafka']}")
        print(f"append+build of full batches: batch_size={args.batch_size}, key 10 B, value 100 B, no headers; "
              f"records/s, best of rounds over {args.seconds}s")
        print(f"{'codec':8} {'aiokprod native':>16} {'aiokprod python':>16} {'aiokafka cython':>16} "
              f"{'native/aiokafka':>16}")
    rows = []
    for codec in args.codecs.split(","):
        bs = args.batch_size
        theirs = rate(lambda n: batches_aiokafka(codec, records, bs, n), args.seconds)
        ours_py = rate(lambda n: batches_ours(python, codec, records, bs, n), args.seconds)
        ours = rate(lambda n: batches_ours(native, codec, records, bs, n), args.seconds) if native else None
        ratio = ours / theirs if ours else None
        rows.append({
            "codec": codec,
            "native_records_per_s": ours and round(ours),
            "python_records_per_s": round(ours_py),
            "aiokafka_records_per_s": round(theirs),
            "native_over_aiokafka": ratio and round(ratio, 3),
            "native_ns_per_record": ours and round(1e9 / ours, 1),
            "aiokafka_ns_per_record": round(1e9 / theirs, 1),
        })
        if not args.json:
            print(f"{codec:8} {ours or float('nan'):16,.0f} {ours_py:16,.0f} {theirs:16,.0f} "
                  f"{ratio or float('nan'):15.2f}x   ({1e9 / ours if ours else float('nan'):.0f} vs "
                  f"{1e9 / theirs:.0f} ns/record)")
    if args.json:
        # The load average again at the end: a run that overlapped other work shows it.
        env["load_average_after"] = environment()["load_average"]
        print(json.dumps({"environment": env, "batch_size": args.batch_size, "seconds": args.seconds,
                          "key_bytes": 10, "value_bytes": 100, "headers": False, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
