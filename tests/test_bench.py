"""The bench suite (`python -m bench`): it runs, it checks delivery, and its delivery check can fail.

Never its timings: the machine is shared and the figures mean nothing here.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer as ConfluentProducer

from aiokprod import codec
from aiokprod.admin import create_topics, list_offsets
from bench import clients, verify, workloads
from bench.suite import finish_row
from proxy_fixtures import kafka_proxy  # noqa: F401 - fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 300  # records per run: every client and workload in well under a minute


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_quick_suite_runs_every_client_and_workload_and_verifies_delivery(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "ratios.png"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--records", str(TINY),
                           "--json", str(out_json), "--plot", str(out_png)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" not in done.stdout
    document = json.loads(out_json.read_text())

    names = document["settings"]["clients"]
    assert names == clients.default_clients(with_uvloop_peers=False)
    rows = {(r["client"], r["workload"]): r for r in document["results"]}
    assert set(rows) == {(c, w.name) for c in names for w in workloads.WORKLOADS}
    for (client, workload), row in rows.items():
        if row["status"] == "n/a":
            # Only what a client cannot do, said so: never a run that was tried and lost.
            adapter = clients.adapter(client)
            assert row["reason"] == adapter.unsupported(workloads.BY_NAME[workload], embedded_broker=True)
            continue
        assert row["status"] == "ok" and row["verified"], (client, workload, row.get("reason"))
        assert row["records"] == TINY and row["stored"] == TINY + row["warm_up_records"] == TINY + 4
        assert row["verified_by"] == "librdkafka consumer"
        assert row["errors"] == 0
        assert row["aiokprod_codec"] == codec.IMPLEMENTATION  # the child ran the implementation under test
        if workloads.BY_NAME[workload].mode != workloads.FIRE_AND_FORGET:
            assert row["delivered"] == TINY and row["latency"]["samples"] > 0
    # The three kinds of client each ran: ours on both loops, the asyncio peers and the sync one.
    for client in ("aiokprod", "aiokprod-uvloop", "aiokafka", "confluent", "confluent-aio"):
        assert rows[(client, "small_ff")]["status"] == "ok"
    assert rows[("aiokprod", "small_ff")]["acknowledged"] == TINY  # the client's own count, checked too
    assert {r["peer"] for r in document["ratios"] if r["aiokprod"] == "aiokprod"} == {
        "aiokafka", "confluent", "confluent-aio"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_whose_records_were_acknowledged_but_not_written_is_printed_as_failed(kafka_proxy, tmp_path):
    # The proxy answers every Produce for partition 0 (of any topic) with success itself, never forwarding
    # it: the client sees every record acknowledged, the broker's log lacks partition 0's share.
    kafka_proxy.fail_produce(None, 0, 0, count=None)
    out_json = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--bootstrap", kafka_proxy.bootstrap, "--clients",
                           "aiokprod", "--workloads", "small_ff", "--records", "400", "--json", str(out_json)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 run(s) FAILED: aiokprod/small_ff" in done.stdout
    [row] = json.loads(out_json.read_text())["results"]
    assert (row["status"], row["verified"], row["acknowledged"], row["errors"]) == ("FAILED", False, 400, 0)
    assert kafka_proxy.events["injected_error"] >= 1
    assert 0 < row["stored"] < 404
    assert row["reason"] == f"the broker's log holds {row['stored']} records, expected 404 (400 + 4 warm-up)"


def _produce_in_many_batches(bootstrap: str, topic: str, count: int) -> None:
    """``count`` records through librdkafka, in batches of at most 10 so that every partition's log ends
    in a batch of several records (where the embedded broker's high watermark differs from Kafka's)."""
    producer = ConfluentProducer({"bootstrap.servers": bootstrap, "batch.num.messages": 10, "linger.ms": 2})
    for i in range(count):
        producer.produce(topic, b"v%d" % i, key=b"k%d" % i)
    assert producer.flush(20) == 0


def test_stored_counts_read_to_the_end_of_the_log_with_either_reader(broker, topic_name):
    empty = topic_name + "-empty"
    asyncio.run(create_topics(broker.bootstrap, {topic_name: 4, empty: 2}))
    _produce_in_many_batches(broker.bootstrap, topic_name, 1000)
    watermarks = sum(asyncio.run(list_offsets(broker.bootstrap, topic_name)).values())

    by_librdkafka = verify.count_with_librdkafka(broker.bootstrap, [topic_name, empty])
    by_aiokprod = asyncio.run(verify.count_with_aiokprod(broker.bootstrap, [topic_name, empty]))

    assert by_librdkafka == by_aiokprod == {topic_name: 1000, empty: 0}, f"watermarks sum to {watermarks}"
    assert verify.stored_counts(broker.bootstrap, [topic_name]) == ({topic_name: 1000}, "librdkafka consumer")


def test_a_run_the_broker_does_not_hold_in_full_fails_and_says_why():
    result = {"workload": "small_ff", "topic": "t", "records": 1000, "payload_bytes": 100_000, "wall_s": 0.01,
              "cpu_user_s": 0.001, "cpu_system_s": 0.0, "delivered": None, "acknowledged": 1000, "errors": 0,
              "first_error": None, "latency": {}, "warm_up_records": 4}
    lost = finish_row("aiokprod", result, stored=994, verified_by="librdkafka consumer")
    assert (lost["ok"], lost["status"], lost["verified"]) == (False, "FAILED", False)
    assert lost["reason"] == "the broker's log holds 994 records, expected 1004 (1000 + 4 warm-up)"
    unread = finish_row("aiokprod", result, stored=None, verified_by="librdkafka consumer")
    assert unread["status"] == "FAILED" and unread["reason"] == "the broker's log could not be read"
    assert finish_row("aiokprod", result, stored=1004, verified_by="x")["status"] == "ok"


@pytest.mark.parametrize("acknowledged, delivered, errors, expected", [
    (999, None, 0, ["the client counts 999 of 1000 records acknowledged"]),
    (None, 998, 2, ["2 records failed (first: KafkaTimeoutError())",
                    "the application saw 998 of 1000 records delivered"]),
])
def test_delivery_check_names_each_shortfall(acknowledged, delivered, errors, expected):
    first = "KafkaTimeoutError()" if errors else None
    assert verify.check(1000, acknowledged, delivered, errors, first, stored=1000) == expected
    assert verify.check(1000, None, None, 0, None, stored=1000, warm_up=4) == [
        "the broker's log holds 1000 records, expected 1004 (1000 + 4 warm-up)"]


def test_overrides_go_to_every_client_or_to_the_one_named():
    from bench.__main__ import parse_overrides

    got = parse_overrides(["linger.ms=10", "aiokafka:max_batch_size=65536", "confluent:acks=1"],
                          ["aiokprod", "aiokafka-uvloop", "confluent"])
    assert got == {"aiokprod": {"linger.ms": 10}, "aiokafka-uvloop": {"linger.ms": 10, "max_batch_size": 65536},
                   "confluent": {"linger.ms": 10, "acks": 1}}
    with pytest.raises(ValueError, match="unknown client 'kafkajs'"):
        parse_overrides(["kafkajs:acks=1"], ["aiokprod"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides(["linger.ms"], ["aiokprod"])


def test_workload_selection_by_name_and_prefix():
    assert [w.name for w in workloads.select("svc64*,small_ff")] == ["svc64_linger0", "svc64_linger5", "small_ff"]
    with pytest.raises(ValueError, match="unknown workload 'tiny'"):
        workloads.select("tiny")
