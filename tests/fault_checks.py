"""What the fault tests (test_faults_*.py, test_chaos.py) check after a run, from outside the producer.

A :class:`Ledger` keeps every record a test sent (its index, the partition it asked for) and its delivery
handle, and counts how often each handle's done-callbacks ran, so "settled exactly once" is observed, not
assumed. :func:`read_log` reads what the broker really holds (``log_reader.read_batches``: a raw Fetch,
with offsets and producer fields). :func:`check_log` then states the invariants every fault test shares:

* every record whose handle succeeded is in the log, at the partition it reported, and at the offset it
  reported when the broker gave one (Tansu answers a deduplicated retry with offset -1);
* nothing in the log that we did not send, and nothing at a partition other than the one reported;
* with idempotence, no record twice;
* per partition, records are in the order they were sent (for duplicates, their first copies).

Values are ``b"%07d" % index``, so a log record names the send it came from.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from log_reader import read_batches


def value_of(index: int, pad: bytes = b"") -> bytes:
    return b"%07d" % index + pad


def index_of(value: bytes) -> int:
    return int(value[:7])


@dataclass
class Sent:
    index: int
    handle: object
    outcome: object = None   # RecordMetadata or the exception, once settled
    failed: bool = False


@dataclass
class Ledger:
    records: list[Sent] = field(default_factory=list)
    callbacks: Counter = field(default_factory=Counter)

    def add(self, handle) -> Sent:
        sent = Sent(len(self.records), handle)
        self.records.append(sent)
        # Counted at the handle: a batch settled twice would run its callbacks twice.
        handle.add_done_callback(lambda _h, i=sent.index: self.callbacks.__setitem__(i, self.callbacks[i] + 1))
        return sent

    def next_value(self, pad: bytes = b"") -> bytes:
        return value_of(len(self.records), pad)

    async def settle(self, guard: float) -> None:
        """Wait (at most ``guard`` seconds: a hang guard, not a timing assertion) for every handle."""
        handles = [r.handle for r in self.records]
        results = await asyncio.wait_for(asyncio.gather(*handles, return_exceptions=True), guard)
        await asyncio.sleep(0)  # let the last done-callbacks run
        for sent, result in zip(self.records, results):
            sent.outcome = result
            sent.failed = isinstance(result, BaseException)

    def assert_settled_once(self) -> None:
        never = [r.index for r in self.records if self.callbacks[r.index] == 0]
        twice = {i: n for i, n in self.callbacks.items() if n > 1}
        assert not never, f"{len(never)} handle(s) never settled, e.g. {never[:5]}"
        assert not twice, f"handles settled more than once: {dict(list(twice.items())[:5])}"

    def successes(self) -> list[Sent]:
        return [r for r in self.records if not r.failed]

    def failures(self) -> list[Sent]:
        return [r for r in self.records if r.failed]


async def read_log(broker, topic: str, partitions) -> dict[int, list[tuple[int, bytes]]]:
    """{partition: [(offset, value), ...]} as the broker holds it."""
    log = {}
    for partition in partitions:
        batches = await read_batches(broker.host, broker.port, topic, partition)
        log[partition] = [(record.offset, record.value) for batch in batches for record in batch.records]
    return log


def check_log(ledger: Ledger, log: dict, *, idempotent: bool, checked: Optional[set] = None,
              may_be_absent: Optional[set] = None, name: str = "log") -> None:
    """The shared invariants (module docstring). ``checked``: the indexes whose presence is required
    (default: every success); ``may_be_absent``: successes that may be missing from ``log`` (acknowledged
    by a broker whose memory was lost in a restart)."""
    may_be_absent = may_be_absent or set()
    by_index = {r.index: r for r in ledger.records}
    where: dict[int, list[tuple[int, int]]] = {}
    for partition, records in log.items():
        for offset, value in records:
            where.setdefault(index_of(value), []).append((partition, offset))
    problems = []
    for index, places in where.items():
        sent = by_index.get(index)
        if sent is None:
            problems.append(f"record {index} is in the log at {places} but was never sent")
            continue
        if idempotent and len(places) > 1:
            problems.append(f"record {index} written {len(places)} times: {places}")
        if sent.failed:
            continue  # an in-doubt failure may have been written; its place is unknown
        meta = sent.outcome
        if any(p != meta.partition for p, _ in places):
            problems.append(f"record {index} reported partition {meta.partition}, log has it at {places}")
        if meta.offset >= 0 and (meta.partition, meta.offset) not in places and index not in may_be_absent:
            problems.append(f"record {index} reported offset {meta.offset}, log has it at {places}")
    required = checked if checked is not None else {r.index for r in ledger.successes()}
    for index in sorted(required - set(where) - may_be_absent):
        sent = by_index[index]
        if not sent.failed:
            problems.append(f"record {index} succeeded ({sent.outcome}) but is not in the log")
    for partition, records in log.items():
        first = []  # (index, offset) of each record's first copy
        seen = set()
        for offset, value in records:
            index = index_of(value)
            if index not in seen:
                seen.add(index)
                first.append((index, offset))
        out_of_order = [(a, b) for a, b in zip(first, first[1:]) if b[0] < a[0]]
        if out_of_order:
            problems.append(f"partition {partition} out of send order at (index, offset) pairs "
                            f"{out_of_order[:5]}")
    assert not problems, f"{len(problems)} problem(s) in the {name}:\n" + "\n".join(problems[:20])


def duplicates(log: dict) -> int:
    counts = Counter(index_of(value) for records in log.values() for _, value in records)
    return sum(n - 1 for n in counts.values() if n > 1)
