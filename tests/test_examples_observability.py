"""The observability examples run as scripts (tests/test_examples.py's runner) against the session broker,
behind the fault proxy where the example is about failures; what they claim is checked from outside (the
broker's log read back by confluent-kafka, /metrics scraped on a free port)."""
from __future__ import annotations

import re
import socket

import pytest

from helpers import read_back
from proxy_fixtures import kafka_proxy  # noqa: F401
from test_examples import run_example

INVALID_RECORD = 87


def test_dead_letter_topic_gets_every_failed_record_with_why(broker, kafka_proxy, topic_name):
    kafka_proxy.fail_produce(topic_name, 1, INVALID_RECORD, count=None, message="refused by policy")
    out = run_example("dead_letter.py", "--bootstrap", kafka_proxy.bootstrap, "--topic", topic_name)
    assert re.search(rf"^delivered 9, failed 3, dead-letter topic {re.escape(topic_name)}\.dlq$", out, re.M), out
    moved = re.findall(r"^dead-lettered key (\S+) from partition (\d+) \(InvalidRecordError\)", out, re.M)
    assert sorted(moved) == [("order-1", "1"), ("order-5", "1"), ("order-9", "1")], out
    stored = read_back(broker.bootstrap, f"{topic_name}.dlq", range(4), 3)
    assert sorted(s.key for s in stored) == [b"order-1", b"order-5", b"order-9"]
    for record in stored:
        headers = dict(record.headers)
        assert record.value == b"order " + record.key.split(b"-")[1]
        assert headers["source"] == b"dead_letter.py"
        assert headers["dlq.topic"] == topic_name.encode() and headers["dlq.partition"] == b"1"
        assert headers["dlq.error"].startswith(b"InvalidRecordError: [Error 87] INVALID_RECORD")
        assert b"refused by policy" in headers["dlq.error"]
    # The partitions that were not refused hold the other nine, once each.
    assert len(read_back(broker.bootstrap, topic_name, [0, 2, 3], 9)) == 9


def test_monitoring_prints_metrics_every_second(broker):
    out = run_example("monitoring.py", "--bootstrap", broker.bootstrap, "--seconds", "2.5", "--rate", "1000")
    lines = re.findall(r"^metrics t=\d+s record_send_rate=([\d.]+) record_send_total=(\d+) .*$", out, re.M)
    assert len(lines) >= 2, out  # one a second while producing, then the final one
    totals = [int(total) for _rate, total in lines]
    assert totals == sorted(totals) and totals[-1] > 0
    final = re.search(r"^sent (\d+); final metrics .* record_send_total=(\d+) .*requests_in_flight=0 .*"
                      r"errors_by_code=\{\}$", out, re.M)
    assert final and final.group(1) == final.group(2), out


def test_profiles_show_what_each_setting_does(broker):
    out = run_example("profiles.py", "--bootstrap", broker.bootstrap, "--count", "500")
    results = dict(re.findall(r"^profile (\w+): (idempotent=.*)$", out, re.M))
    assert set(results) == {"throughput", "latency", "durability"}, out
    for name, line in results.items():
        assert "delivered=500 record_send_total=500" in line, line
    assert "idempotent=True" in results["durability"] and "idempotent=False" in results["throughput"]
    rate = {name: float(re.search(r"compression_rate_avg=([\d.]+)", line).group(1)) for name, line in results.items()}
    assert rate["throughput"] < 0.5 and rate["latency"] == 1.0 and rate["durability"] == 1.0
    assert re.search(r"^profile durability: acks=all enable_idempotence=True", out, re.M), out


def test_graceful_shutdown_reports_what_was_left_undelivered(kafka_proxy):
    # Every Produce answer held back longer than stop() may wait: what stop() cannot confirm is reported.
    kafka_proxy.delay_responses(30, api="Produce", count=None)
    out = run_example("graceful_shutdown.py", "--bootstrap", kafka_proxy.bootstrap, "--seconds", "1",
                      "--stop-timeout", "0.5")
    sent = int(re.search(r"^signal received after (\d+) records", out, re.M).group(1))
    match = re.search(r"^delivered (\d+) of (\d+); not confirmed (\d+)$", out, re.M)
    assert match, out
    delivered, total, unconfirmed = map(int, match.groups())
    assert total == sent and delivered == 0 and unconfirmed == sent > 0
    counts = [int(n) for n in re.findall(r"^  not confirmed: (\d+) record\(s\) of ", out, re.M)]
    assert sum(counts) == sent
    assert re.search(r"^  e\.g\. key k\d value 'event \d+': ProducerClosedError: ", out, re.M), out
    assert kafka_proxy.count("Produce") >= 1  # the requests were sent; their answers came too late


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_otel_metrics_scraped_from_prometheus_endpoint(broker):
    pytest.importorskip("opentelemetry.exporter.prometheus")
    port = _free_port()
    out = run_example("otel_prometheus.py", "--bootstrap", broker.bootstrap, "--port", str(port), "--count", "50")
    assert f"scraped http://127.0.0.1:{port}/metrics" in out, out
    sent = re.search(r"^aiokprod_producer_record_send_total\{.*\} ([\d.]+)$", out, re.M)
    assert sent and float(sent.group(1)) == 50.0, out
    messages = re.search(r'^messaging_client_sent_messages_total\{.*messaging_system="kafka".*\} ([\d.]+)$', out, re.M)
    assert messages and float(messages.group(1)) == 50.0, out
    assert re.search(r"^messaging_client_operation_duration_seconds_count\{.*\} [1-9]", out, re.M), out
