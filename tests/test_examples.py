"""Every example in examples/ runs as a script against the session broker, exits 0, and prints what it claims."""
from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import time
import sys

import pytest
import uvloop  # noqa: F401 - pinned in the test extra: the uvloop example runs, never skips

from aiokprod.codec import key_partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
TIMEOUT = 10  # each example takes ~0.5-2 s; the slack is for loaded CI machines



def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    # A session of its own, so a hung example is killed together with any broker it started.
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # Ctrl-C first (the example then stops the broker it started), the whole group if that is not enough.
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{name} did not exit within {TIMEOUT}s; it printed:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def num_partitions(out: str) -> int:
    return int(re.search(r"^topic \S+ has (\d+) partitions", out, re.M).group(1))


def test_basic_producer(broker):
    out = run_example("basic_producer.py", "--bootstrap", broker.bootstrap)
    landed = re.findall(r"-> topic (\S+) partition (\d+) offset (\d+)$", out, re.M)
    assert len(landed) == 6, out
    assert len({topic for topic, _, _ in landed}) == 1
    # Offsets are distinct within each partition.
    assert len({(p, o) for _, p, o in landed}) == 6, out
    keyed = re.findall(r"^send #(\d+) \(key (\S+)\) -> topic \S+ partition (\d+)", out, re.M)
    assert [int(i) for i, _, _ in keyed] == list(range(5)), out
    # The send_and_wait record was keyed user-1 too: same key, same partition.
    first = re.search(r"^send_and_wait -> topic \S+ partition (\d+)", out, re.M).group(1)
    assert dict((key, p) for _, key, p in keyed)["user-1"] == first, out


def test_basic_producer_on_uvloop(broker):
    out = run_example("basic_producer.py", "--bootstrap", broker.bootstrap, "--uvloop")
    assert out.startswith("send_and_wait -> topic "), out


def test_embedded_broker_when_no_bootstrap():
    out = run_example("basic_producer.py")
    assert re.match(r"started an embedded broker on 127\.0\.0\.1:\d+\n", out), out
    assert "send_and_wait -> topic " in out


def test_keyed_vs_keyless(broker):
    out = run_example("keyed_vs_keyless.py", "--bootstrap", broker.bootstrap)
    n = num_partitions(out)
    keyed = re.findall(r"^keyed: key (\S+) -> partition\(s\) (\[[\d, ]*\]), murmur2 says (\d+)$", out, re.M)
    assert len(keyed) == 6, out
    for key, landed, said in keyed:
        expected = key_partition(key.encode(), n)
        assert ast.literal_eval(landed) == [expected], f"key {key}: landed on {landed}, murmur2 says {expected}"
        assert int(said) == expected
    match = re.search(r"^keyless: (\d+) records in (\d+) sticky runs, per partition (\{.*\})$", out, re.M)
    assert match, out
    total, runs, counts = int(match.group(1)), int(match.group(2)), ast.literal_eval(match.group(3))
    assert sum(counts.values()) == total
    assert runs < total // 10  # sticky: long runs on one partition, not one record per partition
    if n > 1:
        assert runs > 1 and len(counts) > 1  # ~40 KB over 4 KB batches: the sticky partition moved


def test_custom_partitioner(broker):
    out = run_example("custom_partitioner.py", "--bootstrap", broker.bootstrap)
    n = num_partitions(out)
    vip = re.findall(r"^vip_first: key (\S+) -> partition (\d+) offset \d+$", out, re.M)
    assert len(vip) == 5, out
    for key, partition in vip:
        if key.startswith("vip-") or n == 1:
            assert int(partition) == 0, out
        else:
            assert int(partition) != 0, out
    order = re.search(r"^round_robin: 8 records with key same-key -> partitions (\[.*\])$", out, re.M)
    assert order, out
    assert ast.literal_eval(order.group(1)) == [i % n for i in range(8)]


def test_interceptor(broker):
    out = run_example("interceptor.py", "--bootstrap", broker.bootstrap)
    match = re.search(r"^interceptor: on_send (\d+), acked (\d+), failed (\d+), acked per partition (\{.*\})$",
                      out, re.M)
    assert match, out
    sent, acked, failed = int(match.group(1)), int(match.group(2)), int(match.group(3))
    assert (sent, acked, failed) == (20, 20, 0)
    assert sum(ast.literal_eval(match.group(4)).values()) == 20
    headers = re.search(r"^headers of the last record .*: (\[.*\])$", out, re.M)
    assert headers, out
    assert ast.literal_eval(headers.group(1)) == [
        ("x-user", b"demo"), ("x-origin", b"examples/interceptor.py"), ("x-seq", b"20")]


def test_sync_vs_async(broker):
    out = run_example("sync_vs_async.py", "--bootstrap", broker.bootstrap, "--count", "500")
    sync = re.search(r"^send_and_wait one by one: (\d+) records, ([\d,]+) records/s$", out, re.M)
    many = re.search(r"^send many then gather: (\d+) records, ([\d,]+) records/s", out, re.M)
    assert sync and many, out
    assert (int(sync.group(1)), int(many.group(1))) == (50, 500)
    assert int(sync.group(2).replace(",", "")) > 0 and int(many.group(2).replace(",", "")) > 0
    assert re.search(r"^speed-up: [\d.]+x", out, re.M), out


# -- transactions -------------------------------------------------------------------------------------------

def _read_committed_topic(broker, topic, partitions=range(4)):
    """Everything a read_committed reader must see in ``topic``, and every data record stored, from the log."""
    import asyncio

    from log_reader import read_batches, read_committed

    async def read():
        visible, stored = [], []
        for partition in partitions:
            values, _ = await read_committed(broker.host, broker.port, topic, partition)
            visible += values
            stored += [r.value for b in await read_batches(broker.host, broker.port, topic, partition)
                       if not b.is_control for r in b.records]
        return visible, stored

    return asyncio.run(read())


def test_transactional_ledger(broker, topic_name):
    out = run_example("transactional_ledger.py", "--bootstrap", broker.bootstrap, "--topic", topic_name)
    committed = [int(n) for n in re.findall(r"^committed transfer #(\d+): ", out, re.M)]
    aborted = [int(n) for n in re.findall(r"^aborted transfer #(\d+): .*cannot pay", out, re.M)]
    assert (committed, aborted) == ([1, 2, 4], [3]), out
    assert re.search(r'^balances \{"alice": 65, "bob": 40, "carol": 55\}$', out, re.M), out
    import json

    for side in ("debits", "credits"):
        visible, _ = _read_committed_topic(broker, f"{topic_name}-{side}")
        assert sorted(json.loads(v)["transfer"] for v in visible) == [1, 2, 4], (side, visible)


def test_consume_transform_produce_exactly_once_across_a_crash(broker, topic_name):
    """The example is killed (SIGKILL) inside its third transaction, after sending that transaction's
    records; restarted, it fences the dead instance and resumes from the offsets committed with the last
    committed transaction. Every input is in the committed output exactly once, though the dead
    transaction's records are in the log."""
    script = os.path.join(EXAMPLES, "consume_transform_produce.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, script, "--bootstrap", broker.bootstrap, "--topic", topic_name, "--batch", "10"]
    proc = subprocess.Popen(args + ["--fill", "60", "--pause", "0.5"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("committed transaction 2:"):
                break
        else:
            pytest.fail("the example ended before its second commit:\n" + "".join(lines) + proc.stderr.read())
        time.sleep(0.2)  # inside transaction 3: its records sent, its commit 0.3 s away
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    out = run_example("consume_transform_produce.py", "--bootstrap", broker.bootstrap, "--topic", topic_name,
                      "--batch", "10")
    assert re.search(r"^done: \d+ transactions", out, re.M), out
    visible, stored = _read_committed_topic(broker, f"{topic_name}-out")
    expected = [b"INPUT-%04d" % i for i in range(60)]
    assert sorted(visible) == expected  # each input exactly once
    assert len(stored) > len(visible)  # the killed transaction's records were written, and stay hidden
