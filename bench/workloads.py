"""The workloads of ``python -m bench``: what is sent, how it is awaited, and the settings every client gets.

A workload is data: the runner (bench/runner.py) turns it into a loop over a client's adapter, and each
adapter translates the settings into its client's own names. The same records go to every client.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Optional

# How a workload awaits its records.
FIRE_AND_FORGET = "fire_and_forget"  # send without keeping the handle, then one flush()
AWAIT_EACH = "await_each"            # keep every record's handle, then gather them all
SERVICE = "service"                  # N tasks, each doing send_and_wait in a loop (a web service's handlers)
MODES = (FIRE_AND_FORGET, AWAIT_EACH, SERVICE)

PARTITIONS = 4
BATCH_SIZE = 16384
KEY_SPACE = 10_000      # keyed workloads: keys b"user-00000" .. b"user-09999", every record keyed
DISTINCT_VALUES = 8192  # values are cycled from this many distinct ones (memory stays flat at 1 kB x 1M)


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    mode: str
    value_bytes: int
    keyed: bool
    compression: str = "none"   # none, gzip, snappy, lz4, zstd
    acks: str = "all"           # "all" or "1"
    idempotence: bool = False   # the same for every client (aiokafka cannot be idempotent on the embedded broker)
    linger_ms: int = 5
    tasks: int = 0              # SERVICE: concurrent tasks doing send_and_wait
    about: str = ""

    def describe(self) -> str:
        how = {FIRE_AND_FORGET: "fire-and-forget + flush", AWAIT_EACH: "await each (gathered)",
               SERVICE: f"{self.tasks} tasks send_and_wait"}[self.mode]
        return (f"{self.value_bytes} B {'keyed' if self.keyed else 'keyless'}, {self.compression}, acks={self.acks}, "
                f"idempotence {'on' if self.idempotence else 'off'}, linger {self.linger_ms} ms, {how}")


def _w(name, mode, value_bytes, keyed, **kw) -> Workload:
    return Workload(name, mode, value_bytes, keyed, **kw)


WORKLOADS = [
    _w("small_ff", FIRE_AND_FORGET, 100, False, about="100 B keyless, no compression"),
    _w("small_await", AWAIT_EACH, 100, False, about="100 B keyless, no compression"),
    _w("keyed_lz4_ff", FIRE_AND_FORGET, 1000, True, compression="lz4", about="1 kB keyed, lz4"),
    _w("keyed_lz4_await", AWAIT_EACH, 1000, True, compression="lz4", about="1 kB keyed, lz4"),
    _w("svc64_linger0", SERVICE, 100, False, tasks=64, linger_ms=0, about="64 tasks send_and_wait"),
    _w("svc64_linger5", SERVICE, 100, False, tasks=64, linger_ms=5, about="64 tasks send_and_wait"),
    _w("svc1000_linger0", SERVICE, 100, False, tasks=1000, linger_ms=0, about="1000 tasks send_and_wait"),
    _w("svc1000_linger5", SERVICE, 100, False, tasks=1000, linger_ms=5, about="1000 tasks send_and_wait"),
    # Each codec on the same 1 kB keyed records (lz4 is keyed_lz4_ff above).
    _w("keyed_none_ff", FIRE_AND_FORGET, 1000, True, about="codec: none"),
    _w("keyed_gzip_ff", FIRE_AND_FORGET, 1000, True, compression="gzip", about="codec: gzip"),
    _w("keyed_snappy_ff", FIRE_AND_FORGET, 1000, True, compression="snappy", about="codec: snappy"),
    _w("keyed_zstd_ff", FIRE_AND_FORGET, 1000, True, compression="zstd", about="codec: zstd"),
    # acks 1 vs all, idempotence on vs off: each against small_ff (acks=all, idempotence off).
    _w("small_acks1_ff", FIRE_AND_FORGET, 100, False, acks="1", about="acks=1 (vs small_ff: acks=all)"),
    _w("small_idem_ff", FIRE_AND_FORGET, 100, False, idempotence=True,
       about="idempotence on (vs small_ff: off)"),
]
BY_NAME = {w.name: w for w in WORKLOADS}


def select(names: Optional[str]) -> list:
    """Workloads by comma-separated name (or prefix ending in '*', e.g. 'svc*'); all when None."""
    if not names:
        return list(WORKLOADS)
    chosen: list = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name.endswith("*"):
            matched = [w for w in WORKLOADS if w.name.startswith(name[:-1])]
        else:
            matched = [BY_NAME[name]] if name in BY_NAME else []
        if not matched:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(BY_NAME)}")
        chosen += [w for w in matched if w not in chosen]
    return chosen


def make_records(workload: Workload, count: int):
    """(keys, values): two lists of ``count``. Keys are None (keyless) or b"user-NNNNN"; values are distinct
    (up to DISTINCT_VALUES, then cycled) and mildly compressible: a counter, random bytes for half the size,
    then padding, so that compressed workloads mean something. Seeded: every client gets the same records."""
    rnd = random.Random(20240601)
    size = workload.value_bytes
    noise = rnd.randbytes(max(size, 64) * 64)
    distinct = []
    for i in range(min(count, DISTINCT_VALUES)):
        start = (i * 37) % (len(noise) - size)
        value = (b"value-%08d-" % i + noise[start:start + size // 2])[:size]
        distinct.append(value + b"x" * (size - len(value)))
    values = [distinct[i % len(distinct)] for i in range(count)]
    if workload.keyed:
        key_objects = [b"user-%05d" % k for k in range(min(KEY_SPACE, count))]
        keys = [key_objects[rnd.randrange(len(key_objects))] for _ in range(count)]
    else:
        keys = [None] * count
    return keys, values


def payload_bytes(keys, values) -> int:
    return sum(len(v) for v in values) + sum(len(k) for k in keys if k is not None)
