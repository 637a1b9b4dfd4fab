"""Record-batch builder throughput: aiokprod's native builder, its Python twin, and aiokafka's Cython builder.

Every builder gets the same records (10-byte keys, 100-byte values, no headers) and builds full batches of
``--batch-size`` bytes (append until the builder says the batch is full, then build). One row per builder
and codec, records/s, and the native/aiokafka ratio. Run:

    /work/venv/bin/python bench/bench_codec.py [--seconds 1.0] [--batch-size 16384]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Run from a checkout without installing: the repository root first on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiokafka.record.default_records import DefaultRecordBatchBuilder as AiokafkaBuilder  # noqa: E402

from aiokprod import _impl  # noqa: E402

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# aiokafka takes the attribute's codec id.
AIOKAFKA_CODEC = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def make_records(n: int = 4096):
    # Mildly compressible values (like real payloads), so the compressed rows mean something.
    rnd = os.urandom(50 * n)
    return [
        (1_700_000_000_000 + i, b"key-%06d" % i, b"value-%08d-" % i + rnd[i * 50:(i + 1) * 50] + b"x" * 35)
        for i in range(n)
    ]


def run_ours(module, codec: str, records, batch_size: int, seconds: float) -> float:
    builder_cls = module.RecordBatchBuilder
    done = 0
    n = len(records)
    i = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        builder = builder_cls(codec, batch_size)
        append = builder.append
        while True:
            ts, key, value = records[i]
            if not append(ts, key, value, None):
                break
            i += 1
            if i == n:
                i = 0
        builder.build(0, 1000, 0, done)
        done += len(builder)
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - start)


def run_aiokafka(codec: str, records, batch_size: int, seconds: float) -> float:
    codec_id = AIOKAFKA_CODEC[codec]
    done = 0
    n = len(records)
    i = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        builder = AiokafkaBuilder(2, codec_id, 0, 1000, 0, done, batch_size)
        append = builder.append
        offset = 0
        while True:
            ts, key, value = records[i]
            # aiokafka returns None when the batch is full (and takes the offset delta itself).
            if append(offset, ts, key, value, []) is None:
                break
            offset += 1
            i += 1
            if i == n:
                i = 0
        builder.build()
        done += offset
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per row")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--codecs", default=",".join(CODECS))
    args = parser.parse_args()
    records = make_records()
    native = None if _impl.NO_EXTENSIONS else _impl.native_twin("codec")
    python = _impl.python_twin("codec")
    print(f"batch_size={args.batch_size}, key 10 B, value 100 B, no headers, {args.seconds}s per row")
    print(f"{'codec':8} {'aiokprod native':>16} {'aiokprod python':>16} {'aiokafka cython':>16} {'native/aiokafka':>16}")
    for codec in args.codecs.split(","):
        theirs = run_aiokafka(codec, records, args.batch_size, args.seconds)
        ours_py = run_ours(python, codec, records, args.batch_size, args.seconds)
        ours = run_ours(native, codec, records, args.batch_size, args.seconds) if native else float("nan")
        print(f"{codec:8} {ours:16,.0f} {ours_py:16,.0f} {theirs:16,.0f} {ours / theirs:15.2f}x")


if __name__ == "__main__":
    main()
