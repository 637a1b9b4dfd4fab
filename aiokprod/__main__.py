"""``python -m aiokprod`` (or ``aiokprod``): the main job, and the commands.

    python -m aiokprod                     # the main job: embedded broker, 10,000 records, where they went
    python -m aiokprod --bootstrap host:9092 --topic demo --count 1000
    python -m aiokprod produce --topic T   # stdin lines -> topic T (see: python -m aiokprod produce --help)
    python -m aiokprod info                # which implementation (native or python) is loaded

The main job starts the embedded broker (unless ``--bootstrap`` names one), produces records, keyed and
keyless, and prints where they went. ``demo`` names it explicitly (``python -m aiokprod demo --count 10``).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from typing import Optional, Sequence


def _info() -> int:
    import importlib

    from . import _impl
    from ._native import MODULES

    # Import each selector module (aiokprod.codec, aiokprod.handle, ...): that is what picks the twin.
    chosen = {name: importlib.import_module(f"aiokprod.{name}").IMPLEMENTATION for name in MODULES}
    print("aiokprod " + ", ".join(f"{name}: {implementation}" for name, implementation in chosen.items()))
    # Not a twin pair: one Python decoder serves both implementations (never on the producer's path).
    from .codec import DECODER_IMPLEMENTATION

    print(f"  record decoder: {DECODER_IMPLEMENTATION} (one decoder for both implementations)")
    for name, error in _impl.LOAD_ERRORS.items():
        print(f"  native {name} did not load: {error}")
    return 0


async def _produce(bootstrap: str, topic: str, count: int, compression: str, use_uvloop: bool) -> None:
    from . import Producer, codec

    started = time.perf_counter()
    async with Producer(bootstrap, compression_type=compression, linger_ms=5) as producer:
        first = await producer.send_and_wait(topic, b"hello from aiokprod", key=b"greeting")
        print(f"first record -> topic {first.topic} partition {first.partition} offset {first.offset}")
        handles = []
        for i in range(count):
            key = f"user-{i % 10}".encode() if i % 2 == 0 else None
            handles.append(await producer.send(topic, f"record {i}".encode(), key=key))
        results = await asyncio.gather(*handles)
        elapsed = time.perf_counter() - started
        per_partition = collections.Counter(meta.partition for meta in results)
        offsets = collections.defaultdict(list)
        for meta in results:
            offsets[meta.partition].append(meta.offset)
        print(f"sent {len(results)} records to {topic!r} in {elapsed:.2f}s "
              f"({len(results) / elapsed:,.0f} records/s, codec {codec.IMPLEMENTATION}, "
              f"compression {compression}, loop {'uvloop' if use_uvloop else 'asyncio'})")
        for partition in sorted(per_partition):
            print(f"  partition {partition}: {per_partition[partition]} records, offsets "
                  f"{min(offsets[partition])}..{max(offsets[partition])}")
        metrics = producer.metrics()
        print(f"  batches {metrics['batches_sent']}, requests {metrics['requests_sent']}, "
              f"avg request latency {metrics['request_latency_avg_ms']:.2f} ms")


def _prog() -> str:
    """How the user called us, for usage lines: the console script or ``python -m``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "aiokprod" if name in ("aiokprod", "aiokprod.exe") else "python -m aiokprod"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch on the first argument: ``produce`` and ``info`` are commands; anything else (options, or
    nothing) is the main job, so ``python -m aiokprod --count 10`` keeps working."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _prog()
    if argv and argv[0] == "produce":
        from . import cli

        return cli.main(argv[1:], prog=f"{prog} produce")
    if argv and argv[0] == "info":
        argparse.ArgumentParser(prog=f"{prog} info", description="Say which twin (native or python) of each "
                                "compiled module loaded.").parse_args(argv[1:])
        return _info()
    if argv and argv[0] == "demo":
        argv = argv[1:]
    return _main_job(argv, prog)


def _main_job(argv: Sequence[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="host:port of a broker; default: start the embedded broker")
    parser.add_argument("--topic", default="aiokprod-demo")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--compression", default="none", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            parser.error("--uvloop needs uvloop: pip install 'aiokprod[uvloop]'")
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from .testing import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
        print(f"embedded broker (Tansu) listening on {bootstrap}")
    try:
        coroutine = _produce(bootstrap, args.topic, args.count, args.compression, args.uvloop)
        if args.uvloop:
            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
