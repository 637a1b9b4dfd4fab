"""The command line end to end: ``python -m aiokprod produce`` as a subprocess with stdin, against the session
broker, and what it wrote read back by confluent-kafka's consumer (or the log itself, for batch fields).

The commands run synchronously (one subprocess each, not once per event loop); the log reader's coroutine
runs under its own ``asyncio.run``.
"""
from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading

import pytest
from confluent_kafka.admin import AdminClient

from aiokprod.__main__ import main as aiokprod_main
from aiokprod.testing import free_port
from helpers import JAVA_MURMUR2, java_partition, read_back
from log_reader import read_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60  # each run takes ~1 s; the slack is for loaded CI machines


def cli_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.update(extra)
    return env


def run_cli(args: list, stdin: bytes = b"", **popen) -> subprocess.CompletedProcess:
    """Run ``python -m aiokprod ARGS`` with ``stdin``; a hung run is killed with its whole session."""
    proc = subprocess.Popen([sys.executable, "-m", "aiokprod", *args], cwd=ROOT, env=popen.pop("env", cli_env()),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=popen.pop("stderr", subprocess.PIPE),
                            start_new_session=True, **popen)
    try:
        out, err = proc.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"aiokprod {args} did not exit within {TIMEOUT}s\nstdout:\n{out!r}\nstderr:\n{err!r}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(),
                                       err.decode() if err is not None else None)


def produce(broker, topic: str, stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return run_cli(["produce", "--bootstrap", broker.bootstrap, "--topic", topic, "--json", *args], stdin)


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def partition_count(bootstrap: str, topic: str) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return len(metadata.topics[topic].partitions)


def test_lines_become_records_with_fixed_headers(broker, topic_name):
    lines = [f"line {i} {'x' * (i % 7)}".encode() for i in range(500)]
    result = produce(broker, topic_name, b"\n".join(lines) + b"\n",
                     "--headers", "source=cli", "--headers", "expr=a=b")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert (summary["records"], summary["errors"], summary["lines"]) == (500, 0, 500), summary
    assert summary["bytes"] == sum(len(line) for line in lines)
    n = partition_count(broker.bootstrap, topic_name)
    stored = read_back(broker.bootstrap, topic_name, range(n), expected=500)
    # Every line once, in input order within each partition, with both headers ("=" in a value is kept).
    assert sorted(r.value for r in stored) == sorted(lines)
    for partition in range(n):
        values = [r.value for r in stored if r.partition == partition]
        assert values == [line for line in lines if line in set(values)]
    assert {r.headers for r in stored} == {(("source", b"cli"), ("expr", b"a=b"))}
    assert all(r.key is None for r in stored)
    # The summary's partitions are where the records are.
    counts = {str(p): sum(1 for r in stored if r.partition == p) for p in range(n)}
    assert summary["partitions"] == {p: c for p, c in counts.items() if c}


def test_keyed_lines_land_at_java_murmur2_partitions(broker, topic_name):
    keys = list(JAVA_MURMUR2)
    lines = [keys[i % len(keys)] + b"\t" + f"value {i}\twith a tab".encode() for i in range(60)]
    # A CRLF line ending is one line ending; the last line needs no newline.
    stdin = b"\n".join(lines[:-1]) + b"\r\n" + lines[-1]
    result = produce(broker, topic_name, stdin, "--keyed")
    assert result.returncode == 0, result.stderr
    assert summary_of(result)["records"] == 60
    n = partition_count(broker.bootstrap, topic_name)
    stored = read_back(broker.bootstrap, topic_name, range(n), expected=60)
    assert sorted((r.key, r.value) for r in stored) == sorted(tuple(line.split(b"\t", 1)) for line in lines)
    for record in stored:
        assert record.partition == java_partition(record.key, n), record


def test_a_line_without_key_separator_fails_alone(broker, topic_name):
    result = produce(broker, topic_name, b"k1\tv1\nno separator here\nk2\tv2\n", "--keyed")
    assert result.returncode == 1
    assert "error: line 2: ValueError: no key separator (<TAB>)" in result.stderr
    assert "1 of 3 records failed" in result.stderr
    summary = summary_of(result)
    assert (summary["records"], summary["errors"]) == (2, 1)
    stored = read_back(broker.bootstrap, topic_name, range(partition_count(broker.bootstrap, topic_name)), 2)
    assert sorted(r.value for r in stored) == [b"v1", b"v2"]


def test_acks_compression_and_x_settings_reach_the_producer(broker, topic_name):
    """Seen in the log: the batches are zstd-compressed (--compression), hold up to 3 records
    (-X batch.size), and carry no producer id (--acks 1 turns the defaulted idempotence off)."""
    lines = [f"{i:04d}".encode() * 10 for i in range(40)]
    result = produce(broker, topic_name, b"\n".join(lines), "--acks", "1", "--compression", "zstd",
                     "--linger-ms", "50", "-X", "batch.size=200", "-X", "partitioner=round_robin")
    assert result.returncode == 0, result.stderr
    assert summary_of(result)["records"] == 40
    n = partition_count(broker.bootstrap, topic_name)

    async def all_batches():
        return [b for p in range(n) for b in await read_batches(broker.host, broker.port, topic_name, p)]

    batches = asyncio.run(all_batches())
    assert sum(len(b.records) for b in batches) == 40
    assert {b.compression for b in batches} == {"zstd"}
    assert {b.producer_id for b in batches} == {-1}
    assert max(len(b.records) for b in batches) <= 3  # 200-byte batches: a few 40-byte records each

    default = produce(broker, topic_name + "-idempotent", b"one\ntwo\n")
    assert default.returncode == 0, default.stderr
    batches = asyncio.run(read_batches(broker.host, broker.port, topic_name + "-idempotent",
                                       int(next(iter(summary_of(default)["partitions"])))))
    assert batches and all(b.producer_id >= 0 and b.compression == "none" for b in batches)


def test_a_record_too_large_fails_and_the_rest_are_delivered(broker, topic_name):
    stdin = b"small one\n" + b"x" * 5000 + b"\nsmall two\n"
    result = produce(broker, topic_name, stdin, "-X", "max.request.size=1000")
    assert result.returncode == 1
    assert "error: line 2: RecordTooLargeError: record for " in result.stderr
    assert "max_request_size=1000" in result.stderr
    summary = summary_of(result)
    assert (summary["records"], summary["errors"], summary["error_types"]) == (2, 1, {"RecordTooLargeError": 1})
    stored = read_back(broker.bootstrap, topic_name, range(partition_count(broker.bootstrap, topic_name)), 2)
    assert sorted(r.value for r in stored) == [b"small one", b"small two"]


def test_a_closed_port_fails_with_the_connection_error(topic_name):
    port = free_port()  # bound and released: nothing listens there
    result = run_cli(["produce", "--bootstrap", f"127.0.0.1:{port}", "--topic", topic_name,
                      "-X", "socket.connection.setup.timeout.ms=2000"], b"one\n")
    assert result.returncode == 1
    assert "error: KafkaConnectionError: could not connect to any bootstrap server" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


def test_lines_are_sent_as_they_arrive_and_ctrl_c_ends_with_a_summary(broker, topic_name):
    """Interactive use: lines are produced while stdin is still open (read back before it ends); SIGINT
    then ends the run with status 130 and a summary counting what was delivered."""
    proc = subprocess.Popen([sys.executable, "-m", "aiokprod", "produce", "--bootstrap", broker.bootstrap,
                             "--topic", topic_name, "--json"], cwd=ROOT, env=cli_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.stdin.write(b"one\ntwo\nthree\n")
        proc.stdin.flush()
        # The broker auto-creates the topic with 4 partitions (shared/BROKER.md) when the producer first asks
        # for its metadata; the consumer waits for the records themselves.
        stored = read_back(broker.bootstrap, topic_name, range(4), expected=3, timeout=30)
        assert sorted(r.value for r in stored) == [b"one", b"three", b"two"]
        assert proc.poll() is None  # still reading its open stdin
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    summary = json.loads(out)
    assert (summary["records"], summary["lines"], summary["errors"]) == (3, 3, 0)


def test_an_error_that_would_hit_every_line_ends_the_run(broker, topic_name):
    """No metadata for the topic (auto-creation off, topic unknown) within max.block.ms: the first send()
    raises, the run stops there instead of failing every line after max.block.ms each."""
    result = produce(broker, topic_name, b"one\ntwo\nthree\n", "-X", "allow.auto.create.topics=false",
                     "-X", "max.block.ms=300")
    assert result.returncode == 1
    assert "error: KafkaTimeoutError: " in result.stderr, result.stderr
    assert topic_name in result.stderr
    assert "stopped at input line 1, after sending 0 records" in result.stderr
    summary = summary_of(result)
    assert (summary["records"], summary["lines"]) == (0, 1)


@pytest.mark.parametrize("args, message", [
    (["--headers", "novalue"], "argument --headers: expected name=value, got 'novalue'"),
    (["-X", "no.such.setting=1"], "unknown producer setting 'no.such.setting'"),
    (["-X", "linger.ms=soon"], "linger.ms must be a number, got 'soon'"),
    (["--acks", "1", "-X", "request.required.acks=0"], "--acks: acks is already set by -X request.required.acks"),
    (["--acks", "2"], "argument --acks: invalid choice: '2'"),
    (["--compression", "brotli"], "argument --compression: invalid choice: 'brotli'"),
    (["--linger-ms", "-1"], "linger_ms must be a number >= 0, got -1.0"),
    (["--topic", ""], "argument --topic: the topic name must not be empty"),
])
def test_bad_arguments_are_usage_errors(args, message, topic_name, capsys):
    # In-process (the real argument parsing; no broker is needed, arguments and settings are checked before
    # anything starts); test_topic_is_required checks the exit status of a real process.
    with pytest.raises(SystemExit) as exit_info:
        aiokprod_main(["produce", "--topic", topic_name, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m aiokprod produce" in err
    assert message in err, err


def test_topic_is_required():
    result = run_cli(["produce"], b"")
    assert result.returncode == 2
    assert "usage: python -m aiokprod produce" in result.stderr
    assert "the following arguments are required: --topic" in result.stderr


def test_without_bootstrap_the_embedded_broker_is_used(topic_name):
    result = run_cli(["produce", "--topic", topic_name, "--json"], b"a\nb\nc\n")
    assert result.returncode == 0, result.stderr
    assert "embedded broker (Tansu) listening on 127.0.0.1:" in result.stderr
    summary = summary_of(result)
    assert (summary["records"], summary["errors"]) == (3, 0)
    assert summary["bootstrap"] in result.stderr


def test_text_summary(broker, topic_name):
    result = run_cli(["produce", "--bootstrap", broker.bootstrap, "--topic", topic_name, "--keyed"],
                     b"k\tv1\nk\tv2\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"topic: {topic_name} at {broker.bootstrap}"
    assert lines[1] == "records: 2 delivered of 2 lines"
    assert lines[2] == "bytes: 6 (keys and values delivered)"
    assert lines[3].startswith("partitions: ") and lines[3].endswith("=2")  # one key, one partition
    assert lines[4] == "errors: 0"
    assert lines[5].startswith("rate: ")


def run_under_pty(args: list, stdin_path: str, env: dict) -> tuple[int, str, bytes]:
    """Run with stderr on a pseudo-terminal, stdin from a file and stdout a pipe; returns (status, stdout,
    what the terminal received)."""
    controller, terminal = pty.openpty()
    received = []

    def drain() -> None:  # the terminal must be read while the child writes, or it blocks
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child side is closed
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        with open(stdin_path, "rb") as stdin:
            proc = subprocess.run([sys.executable, "-m", "aiokprod", *args], cwd=ROOT, env=env, stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=terminal, timeout=TIMEOUT)
    finally:
        os.close(terminal)
        reader.join(10)
        os.close(controller)
    return proc.returncode, proc.stdout.decode(), b"".join(received)


PTY_ENV = {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}


def test_progress_bar_on_a_terminal(broker, topic_name, tmp_path):
    data = tmp_path / "records.txt"
    data.write_bytes(b"".join(f"record {i}\n".encode() for i in range(20000)))
    status, out, terminal = run_under_pty(
        ["produce", "--bootstrap", broker.bootstrap, "--topic", topic_name, "--json"], str(data),
        cli_env(**PTY_ENV))
    assert status == 0, terminal
    assert json.loads(out)["records"] == 20000
    text = terminal.decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control sequences
    # The bar's last frame: every record counted, and (stdin is a file) all of its known size read.
    assert "20,000 sent, 20,000 delivered, 0 failed" in text, text
    size = re.findall(r"(\d+\.\d)/(\d+\.\d) kB", text)
    assert size and size[-1][0] == size[-1][1] == f"{data.stat().st_size / 1000:.1f}", size
    # stdout is not the terminal: the summary there is plain JSON, no control sequences.
    assert "\x1b" not in out


def test_no_progress_bar_when_stderr_is_not_a_terminal(broker, topic_name, tmp_path):
    data = tmp_path / "records.txt"
    data.write_bytes(b"".join(f"record {i}\n".encode() for i in range(2000)))
    result = run_cli(["produce", "--bootstrap", broker.bootstrap, "--topic", topic_name],
                     data.read_bytes(), env=cli_env(**PTY_ENV))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing but errors would go there, and there were none
    # Asked not to draw one on a terminal: nothing drawn.
    status, _out, terminal = run_under_pty(
        ["produce", "--bootstrap", broker.bootstrap, "--topic", topic_name, "--no-progress"], str(data),
        cli_env(**PTY_ENV))
    assert status == 0
    assert b"delivered" not in terminal and b"\x1b[" not in terminal, terminal


def test_main_job_info_and_console_script(broker, topic_name):
    job = run_cli(["--bootstrap", broker.bootstrap, "--topic", topic_name, "--count", "50"])
    assert job.returncode == 0, job.stderr
    assert f"sent 50 records to '{topic_name}'" in job.stdout
    info = run_cli(["info"])
    assert info.returncode == 0
    expected = "python" if os.environ.get("AIOKPROD_NO_EXTENSIONS", "").strip() not in ("", "0") else "native"
    assert info.stdout.startswith("aiokprod codec: " + expected), info.stdout
    script = os.path.join(os.path.dirname(sys.executable), "aiokprod")
    if not os.path.exists(script):
        pytest.skip(f"no console script at {script} (package not installed in this environment)")
    usage = subprocess.run([script, "produce", "--help"], env=cli_env(), capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert usage.returncode == 0
    assert usage.stdout.startswith("usage: aiokprod produce ")
