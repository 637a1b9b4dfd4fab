"""The two web examples in-process (FastAPI through httpx's ASGI transport with its lifespan run by
asgi-lifespan; aiohttp in its TestServer), against the embedded broker: every answer is checked against what
confluent-kafka's consumer reads back, and every error answer comes from a real cause (a record over the
limit, a broker answering MESSAGE_TOO_LARGE through the proxy, a stopped broker, a frozen one).

Each test runs for both frameworks (the ``framework`` fixture) and, like every async test here, on asyncio's
loop and on uvloop.
"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from aiokprod.codec import key_partition
from helpers import read_back_async
from proxy_fixtures import kafka_proxy  # noqa: F401
from web_harness import FRAMEWORKS, check_landed, running_app, wait_until

NO_HANG = 30.0


@pytest.fixture(params=FRAMEWORKS)
def framework(request):
    return request.param


def event(i: int, key=None, correlation_id=None) -> dict:
    return {"type": "order.created", "data": {"n": i, "note": "ünïcode ok"}, "key": key,
            "correlation_id": correlation_id}


async def post_event(app, topic: str, fields: dict, path_suffix: str = ""):
    params = {"key": fields["key"]} if fields["key"] is not None else None
    headers = {"X-Correlation-ID": fields["correlation_id"]} if fields["correlation_id"] else None
    return await app.post(f"/events/{topic}{path_suffix}", {"type": fields["type"], "data": fields["data"]},
                          params=params, headers=headers)


async def test_publish_answers_where_each_record_landed(framework, broker, topic_name):
    sent = [event(i, key=f"order-{i % 4}" if i % 3 else None, correlation_id=f"corr-{i}") for i in range(30)]
    async with running_app(framework, broker.bootstrap) as app:
        answers = await asyncio.wait_for(asyncio.gather(*(post_event(app, topic_name, f) for f in sent)), NO_HANG)
        partitions = await app.producer.partitions_for(topic_name)
    for fields, answer in zip(sent, answers):
        assert answer.status == 200, answer
        assert set(answer.body) == {"topic", "partition", "offset"} and answer.body["topic"] == topic_name
        assert answer.headers["X-Correlation-ID"] == fields["correlation_id"]
        if fields["key"] is not None:  # the entity id is the key: the Java client's partition for it
            assert answer.body["partition"] == key_partition(fields["key"].encode(), len(partitions))
    assert len({(a.body["partition"], a.body["offset"]) for a in answers}) == 30
    stored = await read_back_async(broker.bootstrap, topic_name, partitions, 30)
    assert len(stored) == 30
    check_landed(stored, [(a.body, f) for a, f in zip(answers, sent)])


async def test_fire_and_forget_answers_202_and_delivers(framework, broker, topic_name):
    sent = [event(i, key=f"user-{i}") for i in range(30)]
    async with running_app(framework, broker.bootstrap) as app:
        answers = await asyncio.wait_for(
            asyncio.gather(*(post_event(app, topic_name, f, "/async") for f in sent)), NO_HANG)
        assert all(a.status == 202 for a in answers), answers
        # No X-Correlation-ID sent: the app made one per request and says which.
        assert len({a.headers["X-Correlation-ID"] for a in answers}) == 30
        assert await wait_until(lambda: app.producer.metrics()["records_sent"] == 30, NO_HANG)

        async def all_delivered() -> bool:
            # The sender counts a batch (records_sent) before the batch's loop callback runs the handles'
            # callbacks, the tracker's among them: ask until /health says so (a hang guard, no time bound).
            health = await app.get("/health")
            return health.status == 200 and health.body["deliveries"]["pending"] == 0

        assert await wait_until(all_delivered, NO_HANG)
        health = await app.get("/health")
        assert health.status == 200
        assert health.body["deliveries"] == {"accepted": 30, "delivered": 30, "failed": 0, "pending": 0}
        partitions = await app.producer.partitions_for(topic_name)
    stored = await read_back_async(broker.bootstrap, topic_name, partitions, 30)
    check_landed(stored, [], [(a.body["id"], f) for a, f in zip(answers, sent)])
    assert len(stored) == 30


async def test_shutdown_flushes_what_was_accepted(framework, broker, topic_name):
    """Records answered 202 but still lingering in the buffer when the app shuts down are delivered by the
    shutdown (flush, then stop), not dropped: linger_ms is far longer than the test."""
    sent = [event(i) for i in range(10)]
    async with running_app(framework, broker.bootstrap, linger_ms=60_000, delivery_timeout_ms=120_000,
                           batch_size=1 << 20) as app:
        answers = await asyncio.gather(*(post_event(app, topic_name, f, "/async") for f in sent))
        assert all(a.status == 202 for a in answers), answers
        assert app.producer.metrics()["records_sent"] == 0  # all still buffered
        partitions = await app.producer.partitions_for(topic_name)
    assert app.producer.metrics()["records_sent"] == 10 and app.producer.metrics()["record_errors"] == 0
    stored = await read_back_async(broker.bootstrap, topic_name, partitions, 10)
    check_landed(stored, [], [(a.body["id"], f) for a, f in zip(answers, sent)])


# (body, what FastAPI's validation says: {(error type, location)}, what the aiohttp app's check says)
BAD_BODIES = [
    (b"{not json", {("json_invalid", ("body", 1))}, "the body is not json"),
    (b'["a list"]', {("model_attributes_type", ("body",))}, "the body must be a json object"),
    (b'{"data": 1}', {("missing", ("body", "type"))}, "'type' must be a non-empty string, got none"),
    (b'{"type": "", "data": 1}', {("string_too_short", ("body", "type"))}, "'type' must be a non-empty string"),
    (b'{"type": 5, "data": 1}', {("string_type", ("body", "type"))}, "'type' must be a non-empty string, got 5"),
    (b'{"type": "t"}', {("missing", ("body", "data"))}, "'data' is missing"),
]


@pytest.mark.parametrize("body, fastapi_errors, aiohttp_error", BAD_BODIES)
async def test_bad_body_is_422_and_sends_nothing(framework, broker, topic_name, body, fastapi_errors,
                                                 aiohttp_error):
    async with running_app(framework, broker.bootstrap) as app:
        for suffix in ("", "/async"):
            answer = await app.post(f"/events/{topic_name}{suffix}", content=body,
                                    headers={"Content-Type": "application/json"})
            assert answer.status == 422, answer
            if framework == "fastapi":
                assert {(e["type"], tuple(e["loc"])) for e in answer.body["detail"]} == fastapi_errors, answer.body
            else:
                assert answer.body["detail"].lower().startswith(aiohttp_error), answer.body
        assert app.producer.metrics()["records_sent"] == 0


async def test_record_too_large_is_413(framework, broker, topic_name):
    async with running_app(framework, broker.bootstrap, max_request_size=64 * 1024) as app:
        big = {"type": "blob", "data": "x" * (100 * 1024), "key": None, "correlation_id": None}
        for suffix in ("", "/async"):
            answer = await post_event(app, topic_name, big, suffix)
            assert answer.status == 413, answer
            assert answer.body["detail"].startswith("RecordTooLargeError: record for ")
            assert "max_request_size=65536" in answer.body["detail"]
        # The app still works, and the refused records went nowhere.
        ok = await post_event(app, topic_name, event(1))
        assert ok.status == 200, ok
        assert app.producer.metrics()["records_sent"] == 1


async def test_broker_refusing_a_record_as_too_large_is_413(framework, kafka_proxy, topic_name):  # noqa: F811
    async with running_app(framework, kafka_proxy.bootstrap) as app:
        warm = await post_event(app, topic_name, event(0, key="k"))
        assert warm.status == 200, warm
        kafka_proxy.fail_produce(topic_name, warm.body["partition"], 10, message="record too big for this topic")
        answer = await post_event(app, topic_name, event(1, key="k"))
        assert answer.status == 413, answer
        assert "MESSAGE_TOO_LARGE" in answer.body["detail"] and "record too big for this topic" in answer.body["detail"]
        assert kafka_proxy.events["injected_error"] == 1


async def test_broker_gone_is_503(framework, fresh_broker, topic_name):
    """A stopped broker: a record for a known topic times out in delivery, one for a new topic times out
    waiting for metadata; both 503, neither with Retry-After (nobody knows when the broker returns), and
    /health says the producer is not connected."""
    settings = dict(delivery_timeout_ms=1500, request_timeout_ms=500, max_block_ms=500, retry_backoff_ms=50,
                    stop_timeout_ms=1000)
    async with running_app(framework, fresh_broker.bootstrap, **settings) as app:
        warm = await post_event(app, topic_name, event(0))
        assert warm.status == 200, warm
        assert (await app.get("/health")).body["connected"] is True
        fresh_broker.stop()

        answer = await asyncio.wait_for(post_event(app, topic_name, event(1)), NO_HANG)
        assert answer.status == 503, answer
        assert "Retry-After" not in answer.headers
        assert answer.body["detail"].startswith("DeliveryTimeoutError: 1 record(s) for ")
        assert "not delivered within delivery_timeout_ms" in answer.body["detail"]

        answer = await asyncio.wait_for(post_event(app, topic_name + "-new", event(2)), NO_HANG)
        assert answer.status == 503, answer
        assert "Retry-After" not in answer.headers
        assert "not present in metadata" in answer.body["detail"]

        health = await app.get("/health")
        assert (health.status, health.body["connected"]) == (503, False)


async def test_health_recovers_without_traffic(framework, fresh_broker, topic_name):
    """After an outage the periodic metadata refresh reconnects an idle producer: /health goes back to 200
    with no request sent (a load balancer sends none to an instance answering 503)."""
    async with running_app(framework, fresh_broker.bootstrap, metadata_max_age_ms=300, retry_backoff_ms=50) as app:
        assert (await post_event(app, topic_name, event(0))).status == 200
        fresh_broker.stop()
        assert await wait_until(lambda: not app.producer.connected, NO_HANG)
        health = await app.get("/health")
        assert (health.status, health.body["connected"]) == (503, False)
        await asyncio.to_thread(fresh_broker.start)
        assert await wait_until(lambda: app.producer.connected, NO_HANG)
        health = await app.get("/health")
        assert (health.status, health.body["connected"]) == (200, True)


async def test_back_pressure_is_503_with_retry_after(framework, fresh_broker, topic_name):
    """A frozen broker (SIGSTOP: connections stay open, nothing is answered) and a buffer of one batch: the
    first batch holds all the memory, the next record waits max_block_ms for room and is refused with 503 and
    Retry-After. Thawed, the broker takes everything that was answered 202."""
    settings = dict(buffer_memory=4096, batch_size=4096, linger_ms=0, max_block_ms=300)
    pid = fresh_broker._process.pid
    async with running_app(framework, fresh_broker.bootstrap, **settings) as app:
        assert (await post_event(app, topic_name, event(0, key="k"))).status == 200  # metadata cached
        os.kill(pid, signal.SIGSTOP)
        try:
            accepted = []
            refused = None
            for i in range(1, 50):
                fields = event(i, key="k")
                answer = await asyncio.wait_for(post_event(app, topic_name, fields, "/async"), NO_HANG)
                if answer.status == 202:
                    accepted.append((answer.body["id"], fields))
                    continue
                refused = answer
                break
            assert refused is not None, "50 records fitted in a 4 KB buffer with a frozen broker"
            assert refused.status == 503, refused
            assert refused.headers["Retry-After"] == "1"
            assert refused.body["detail"].startswith("BufferExhaustedError: no room for a ")
            assert accepted, "not even the first batch was accepted"
            assert (await app.get("/health")).body["connected"] is True  # frozen, not gone
        finally:
            os.kill(pid, signal.SIGCONT)
        partitions = await app.producer.partitions_for(topic_name)
    stored = await read_back_async(fresh_broker.bootstrap, topic_name, partitions, len(accepted) + 1)
    check_landed(stored, [], accepted)
