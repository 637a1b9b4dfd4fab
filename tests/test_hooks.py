"""The instrumentation seam and what is built on it, as plain functions: hook discovery, the metrics' sliding
window and snapshot, the new error classes, Java-signature partitioners, mapping headers, records recovered
from a failed batch, and the "never retrieved" report of both handle twins."""
from __future__ import annotations

import asyncio
import gc
import logging
import pickle

import pytest

from aiokprod import errors
from aiokprod._impl import NO_EXTENSIONS, native_twin, python_twin
from aiokprod.accumulator import ProducerBatch
from aiokprod.codec import RecordBatchBuilder
from aiokprod.delivery import DeliveryErrorReporter, FailedRecord, batch_records
from aiokprod.hooks import EVENTS, Hooks
from aiokprod.metrics import ProducerMetrics, WindowedStat
from aiokprod.partitioner import (CallablePartitioner, ClusterView, PartitionInfo, RecordPartitioner,
                                  make_partitioner)
from aiokprod.producer import _header_list
from aiokprod.cluster import TopicInfo


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- hooks ------------------------------------------------------------------------------------------------
class AckOnly:
    def __init__(self):
        self.seen = []

    def on_batch_acknowledged(self, topic, partition, records, base_offset, wire_bytes):
        self.seen.append((topic, partition, records, base_offset, wire_bytes))


def test_hooks_find_each_method_once_and_leave_other_events_empty():
    hook = AckOnly()
    hooks = Hooks([hook])
    assert len(hooks.on_batch_acknowledged) == 1
    for name in EVENTS:
        if name != "on_batch_acknowledged":
            assert getattr(hooks, name) == (), name
    assert not hooks.per_record
    for fn in hooks.on_batch_acknowledged:
        fn("t", 1, 3, 40, 100)
    assert hook.seen == [("t", 1, 3, 40, 100)]


def test_no_hooks_every_event_is_an_empty_tuple():
    hooks = Hooks()
    assert all(getattr(hooks, name) == () for name in EVENTS)


def test_a_hook_with_no_hook_method_is_refused():
    with pytest.raises(TypeError, match="implements none of the hook methods"):
        Hooks([object()])
    with pytest.raises(TypeError, match="hooks must be a list"):
        Hooks("metrics")


def test_per_record_event_is_reported():
    class Tracer:
        def on_record_send(self, topic, key, headers):
            return None

    assert Hooks([Tracer()]).per_record


def test_a_user_hook_that_raises_is_logged_and_skipped(caplog):
    class Broken:
        def on_batch_failed(self, topic, partition, records, error):
            raise RuntimeError("hook bug")

    after = AckOnly()
    hooks = Hooks([Broken(), after])
    with caplog.at_level(logging.ERROR, logger="aiokprod.hooks"):
        for fn in hooks.on_batch_failed:
            fn("t", 0, 1, errors.KafkaError("x"))
    assert "raised in on_batch_failed" in caplog.text and "hook bug" in caplog.text


def test_trusted_hooks_come_first_and_are_not_wrapped():
    own, user = AckOnly(), AckOnly()
    hooks = Hooks([user], trusted=[own])
    first, second = hooks.on_batch_acknowledged
    assert first == own.on_batch_acknowledged  # the bound method itself: no extra frame for our metrics
    assert second != user.on_batch_acknowledged  # wrapped: a user's exception is contained
    assert hooks.hooks == (own, user)


# -- the sliding window ---------------------------------------------------------------------------------------
def test_window_rate_avg_max_slide_by_the_second():
    clock = Clock(1000.0)
    stat = WindowedStat(30, clock)
    clock.now = 1010.0
    for value in (10, 20, 30):
        stat.record(value)
    # 10 s since the start: the rate divides by the elapsed time, not the whole window.
    assert stat.rate() == pytest.approx(60 / 10)
    assert stat.count_rate() == pytest.approx(3 / 10)
    assert stat.avg() == 20 and stat.max() == 30
    clock.now = 1030.5
    stat.record(4)
    assert stat.rate() == pytest.approx(64 / 30)  # the window is full: divide by 30 s
    clock.now = 1040.2  # second 1010 left the window (oldest kept: 1011)
    assert stat.avg() == 4 and stat.max() == 4 and stat.rate() == pytest.approx(4 / 30)
    clock.now = 1100.0
    assert stat.rate() == 0 and stat.avg() == 0 and stat.max() == 0
    assert stat.total == 64 and stat.count == 4  # totals are cumulative


def test_window_read_between_records_of_one_second_counts_them_once():
    """Reading closes the current second's bucket; records after the read in the same second join it (one
    bucket per second however often the window is read), and nothing is counted twice or lost."""
    clock = Clock(2000.0)
    stat = WindowedStat(30, clock)
    clock.now = 2010.2
    stat.record(5)
    assert stat.avg() == 5 and stat.max() == 5 and stat.count == 1
    clock.now = 2010.7  # the same second
    stat.record(1)
    stat.record(9)
    assert stat.avg() == 5 and stat.max() == 9 and stat.count_rate() == pytest.approx(3 / 10.7)
    assert stat.total == 15 and stat.count == 3
    clock.now = 2011.1  # the next second: a new bucket
    stat.record(3)
    assert stat.total == 18 and stat.avg() == pytest.approx(18 / 4) and stat.max() == 9
    clock.now = 2040.5  # second 2010 left the window, 2011 is still in it
    assert stat.avg() == 3 and stat.max() == 3 and stat.count == 4


def test_rate_of_a_fresh_stat_divides_by_at_least_one_second():
    clock = Clock(5.0)
    stat = WindowedStat(30, clock)
    stat.record(7)
    assert stat.rate() == 7.0


def test_metrics_snapshot_from_events():
    clock = Clock(100.0)
    used = [4096]
    metrics = ProducerMetrics(65536, lambda: used[0], lambda: 2, clock)
    clock.now = 110.0
    metrics.on_connection_opened(1, "h", 1)
    metrics.on_connection_opened(2, "h", 2)
    metrics.on_connection_lost(2, "h", 2, errors.KafkaConnectionError("gone"))
    metrics.on_metadata_refresh(None)
    metrics.on_batch_drained("t", 0, 10, 1000, 400, 1)
    metrics.on_batch_drained("t", 1, 5, 500, 500, 2)  # a retry: its records count as retried
    metrics.on_request_sent(1, 2, 15, 900)
    metrics.on_request_sent(1, 1, 5, 100)
    metrics.on_request_answered(1, 12.0, 3, None)
    metrics.on_batch_acknowledged("t", 0, 10, 0, 400)
    metrics.on_batch_failed("t", 1, 5, errors.for_code(10, topic="t", partition=1))
    metrics.on_batch_retry("t", 1, 5, errors.NotLeaderOrFollowerError(), 1)
    metrics.on_buffer_wait_done(60000.0, True)
    snap = metrics.as_dict()
    assert snap["record_send_total"] == 10 and snap["record_send_rate"] == pytest.approx(1.0)
    assert snap["record_error_total"] == 5 and snap["record_error_rate"] == pytest.approx(0.5)
    assert snap["record_retry_total"] == 5
    assert snap["batch_size_avg"] == 450 and snap["batch_size_max"] == 500
    assert snap["compression_rate_avg"] == pytest.approx((0.4 + 1.0) / 2)
    assert snap["records_per_request_avg"] == 10
    assert snap["request_latency_avg"] == 12.0 and snap["request_latency_max"] == 12.0
    assert snap["produce_throttle_time_avg"] == 3 and snap["produce_throttle_time_max"] == 3
    assert snap["requests_in_flight"] == 1  # two sent, one answered
    assert snap["buffer_total_bytes"] == 65536 and snap["buffer_available_bytes"] == 65536 - 4096
    assert snap["buffer_exhausted_total"] == 1 and snap["waiting_senders"] == 2
    assert snap["metadata_refresh_total"] == 1 and snap["connection_count"] == 1
    assert snap["errors_by_code"] == {"MESSAGE_TOO_LARGE": 1, "NOT_LEADER_OR_FOLLOWER": 1}
    # The keys reported before the Java names are still there.
    assert snap["records_sent"] == 10 and snap["record_errors"] == 5 and snap["batch_errors"] == 1
    assert snap["requests_sent"] == 2 and snap["buffer_used_bytes"] == 4096


def test_errors_by_code_counts_the_cause_of_a_timeout_and_lost_requests():
    metrics = ProducerMetrics(1024, lambda: 0)
    timeout = errors.KafkaTimeoutError("not delivered within delivery_timeout_ms")
    timeout.__cause__ = errors.NotEnoughReplicasError()
    metrics.on_batch_failed("t", 0, 1, timeout)
    metrics.on_request_answered(1, 5.0, 0, errors.KafkaConnectionError("cut"))
    metrics.on_batch_retry("t", 0, 1, errors.KafkaConnectionError("cut"), 1)  # counted once, above
    assert metrics.as_dict()["errors_by_code"] == {"NOT_ENOUGH_REPLICAS": 1, "KafkaConnectionError": 1}


# -- errors -------------------------------------------------------------------------------------------------
def test_authorization_codes_share_a_base():
    for code in (29, 30, 31, 53, 65):
        cls = errors.ERROR_CLASSES[code]
        assert issubclass(cls, errors.AuthorizationError) and issubclass(cls, errors.BrokerResponseError)
    assert not issubclass(errors.NotLeaderOrFollowerError, errors.AuthorizationError)
    assert isinstance(errors.for_code(29, topic="secret"), errors.AuthorizationError)


def test_serialization_error_names_topic_and_field_and_keeps_the_cause():
    cause = ValueError("not JSON")
    exc = errors.SerializationError("orders", "value", cause)
    assert exc.topic == "orders" and exc.field == "value" and exc.__cause__ is cause
    assert "value serializer" in str(exc) and "'orders'" in str(exc) and "not JSON" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert (again.topic, again.field, str(again)) == ("orders", "value", str(exc))


def test_retries_exhausted_carries_the_last_error():
    last = errors.NotLeaderOrFollowerError("moved", topic="t", partition=1)
    exc = errors.RetriesExhaustedError("retries=2 reached", topic="t", partition=1, attempts=3, last_error=last)
    assert exc.last_error is last and exc.__cause__ is last and exc.attempts == 3
    assert not isinstance(exc, errors.KafkaTimeoutError)


# -- partitioners ---------------------------------------------------------------------------------------------
def test_java_signature_callables_and_objects_are_recognised():
    def java(topic, key, key_bytes, value, value_bytes, cluster):
        return 0

    class JavaObject:
        def partition(self, topic, key, key_bytes, value, value_bytes, cluster):
            return 1

    def simple(topic, key_bytes, partitions):
        return 0

    assert isinstance(make_partitioner(java, 16384), RecordPartitioner)
    assert isinstance(make_partitioner(JavaObject(), 16384), RecordPartitioner)
    assert isinstance(make_partitioner(simple, 16384), CallablePartitioner)
    assert isinstance(make_partitioner(lambda *a: 0, 16384), CallablePartitioner)  # *args: the simple call


def test_cluster_view_lists_partitions_available_ones_and_leaders():
    topics = {"t": TopicInfo("t", {0: 1, 1: -1, 2: 3})}
    view = ClusterView(topics)
    assert view.partitions_for_topic("t") == [PartitionInfo("t", 0, 1), PartitionInfo("t", 1, -1),
                                              PartitionInfo("t", 2, 3)]
    assert [p.partition for p in view.available_partitions_for_topic("t")] == [0, 2]
    assert view.partition_count_for_topic("t") == 3 and view.leader_for("t", 2) == 3
    assert view.partitions_for_topic("other") == [] and view.leader_for("other", 0) == -1
    topics["t"] = TopicInfo("t", {0: 2, 1: 2})  # the view reads the live cache
    assert view.partition_count_for_topic("t") == 2


# -- headers --------------------------------------------------------------------------------------------------
def test_mapping_headers_become_pairs_and_bad_ones_are_named():
    assert _header_list("t", {"a": b"1", "b": None}) == [("a", b"1"), ("b", None)]
    with pytest.raises(TypeError, match="headers for topic 't': header name must be a str"):
        _header_list("t", {1: b"x"})
    with pytest.raises(TypeError, match="header 'a': value must be bytes"):
        _header_list("t", {"a": "text"})


# -- records recovered from a failed batch --------------------------------------------------------------------
def _batch_with(records, topic="orders", partition=3):
    builder = RecordBatchBuilder("lz4", 16384)
    for ts, key, value, headers in records:
        assert builder.append(ts, key, value, headers)
    return ProducerBatch(topic, partition, builder, None, 0.0, 1.0)


def test_batch_records_decodes_an_unsent_and_a_frozen_batch():
    sent = [(1000, b"k1", b"v1", [("trace", b"abc")]), (1001, None, b"v2", None), (1005, b"k3", None, [])]
    expected = [FailedRecord("orders", 3, b"k1", b"v1", [("trace", b"abc")], 1000),
                FailedRecord("orders", 3, None, b"v2", [], 1001),
                FailedRecord("orders", 3, b"k3", None, [], 1005)]
    batch = _batch_with(sent)
    assert batch_records(batch) == expected  # never drained: built now
    batch.freeze(7, 0, 42, False)
    assert batch_records(batch) == expected  # drained: from the bytes it was sent with


async def test_reporter_calls_fn_per_record_from_the_batch_callback_and_clears_the_log_flag():
    from aiokprod.handle import BatchCompletion

    loop = asyncio.get_running_loop()
    batch = _batch_with([(1000, b"k1", b"v1", None), (1001, b"k2", b"v2", None)])
    batch.completion = BatchCompletion(loop, "orders", 3)
    handles = [batch.completion.add(1000), batch.completion.add(1001)]
    seen = []

    def fn(error, record):
        seen.append((error, record.key, record.value, all(h.done() for h in handles)))
        if record.key == b"k1":
            raise RuntimeError("callback bug")  # logged; the next record is still reported

    error = errors.KafkaTimeoutError("expired")
    batch.completion.fail(error)  # the sender's order: fail, then report
    DeliveryErrorReporter(fn).batch_failed(batch, error)
    assert not batch.completion.log_unretrieved
    assert seen == []  # not inside the sender's bookkeeping
    await asyncio.sleep(0)
    assert seen == [(error, b"k1", b"v1", True), (error, b"k2", b"v2", True)]


# -- "never retrieved", both twins ---------------------------------------------------------------------------------
TWINS = [
    pytest.param("native", marks=pytest.mark.skipif(NO_EXTENSIONS, reason="AIOKPROD_NO_EXTENSIONS=1")),
    "python",
]


@pytest.fixture(params=TWINS)
def hm(request):
    return native_twin("handle") if request.param == "native" else python_twin("handle")


async def _failed_batch(hm, n=3):
    completion = hm.BatchCompletion(asyncio.get_running_loop(), "t", 4)
    handles = [completion.add(1000 + i) for i in range(n)]
    completion.fail(errors.KafkaTimeoutError("nobody waited"))
    await asyncio.sleep(0)
    return completion, handles


def _reports() -> list:
    """What reaches the running loop's exception handler (each test's loop is its own)."""
    seen: list = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def test_an_unretrieved_failed_batch_is_reported_once_when_collected(hm):
    reports = _reports()
    completion, handles = await _failed_batch(hm)
    assert completion.log_unretrieved
    del completion, handles
    gc.collect()
    assert len(reports) == 1
    assert reports[0]["message"].startswith("3 record(s) for t-4 failed and the error was never retrieved")
    assert isinstance(reports[0]["exception"], errors.KafkaTimeoutError)


@pytest.mark.parametrize("how", ["exception", "result", "await"])
async def test_retrieving_one_handle_s_error_counts_for_the_batch(hm, how):
    reports = _reports()
    completion, handles = await _failed_batch(hm)
    if how == "exception":
        assert isinstance(handles[1].exception(), errors.KafkaTimeoutError)
    elif how == "result":
        with pytest.raises(errors.KafkaTimeoutError):
            handles[2].result()
    else:
        with pytest.raises(errors.KafkaTimeoutError):
            await handles[0]
    assert not completion.log_unretrieved
    del completion, handles
    gc.collect()
    assert reports == []


async def test_a_successful_or_pending_batch_is_never_reported(hm):
    reports = _reports()
    loop = asyncio.get_running_loop()
    ok = hm.BatchCompletion(loop, "t", 0)
    ok.add(1)
    ok.resolve(5)
    pending = hm.BatchCompletion(loop, "t", 1)
    pending.add(1)
    await asyncio.sleep(0)
    assert not ok.log_unretrieved and not pending.log_unretrieved
    del ok, pending
    gc.collect()
    assert reports == []


def test_every_error_the_readme_lists_is_exported_from_aiokprod_errors():
    import os
    import re

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
                  encoding="utf-8").read()
    section = readme.split("## Errors you may catch", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", section, re.M))
    listed = {name for pair in names for name in pair if name}
    assert {"RetriesExhaustedError", "SerializationError", "AuthorizationError", "DeliveryTimeoutError",
            "BufferExhaustedError"} <= listed
    for name in listed:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.KafkaError), name
