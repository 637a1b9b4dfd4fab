"""The two web examples as real servers, started with the documented commands from the repository root
(``uvicorn --app-dir examples fastapi_app:app``, ``python -m aiohttp.web -H 127.0.0.1 -P PORT
aiohttp_app:create_app``), under hundreds of concurrent HTTP requests, and stopped with SIGTERM under load.
confluent-kafka's consumer reads the topic back: every 200 is at the partition and offset it named, every
202 is in the log once, and the server's shutdown summary line accounts for every record.

These tests are plain (sync) functions that drive their HTTP clients with ``asyncio.run``: the servers run
on their own loops in their own processes (uvicorn picks uvloop when it is installed, aiohttp.web asyncio's
loop), so running each test on both of the suite's event loops would only repeat it; they run once per
framework (and, in CI, once per codec implementation).
"""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from aiokprod.admin import create_topics
from aiokprod.testing import free_port
from helpers import read_back
from web_harness import FRAMEWORKS, Server, check_landed

PARTITIONS = 4
CONCURRENCY = 200
NO_HANG = 90.0


@pytest.fixture(params=FRAMEWORKS)
def framework(request):
    return request.param


@pytest.fixture
def server_factory():
    servers = []

    def make(framework: str, bootstrap):
        server = Server(framework, free_port(), bootstrap)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


def request_fields(i: int) -> dict:
    return {"type": "page.viewed" if i % 2 else "order.created", "data": {"n": i, "pad": "p" * (i % 50)},
            "key": f"entity-{i % 37}" if i % 5 else None, "correlation_id": f"load-{i}"}


class Load:
    """Workers posting events (even numbers await delivery, odd ones are fire-and-forget) and what came back."""

    def __init__(self, base_url: str, topic: str) -> None:
        self.base_url = base_url
        self.topic = topic
        self.delivered: list = []  # (200 body, fields)
        self.accepted: list = []  # (event id, fields) of 202s
        self.other: list = []  # (status, body) of any other answer
        self.failed_requests = 0  # no answer (connection refused or closed: the server is going away)
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered_at_signal = None  # answers received when SIGTERM was sent
        self._next = 0

    def take(self) -> int:
        self._next += 1
        return self._next - 1

    async def post(self, session: aiohttp.ClientSession, i: int) -> bool:
        """One request; False when it got no answer."""
        fields = request_fields(i)
        path = f"/events/{self.topic}" + ("/async" if i % 2 else "")
        params = {"key": fields["key"]} if fields["key"] is not None else None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with session.post(self.base_url + path, json={"type": fields["type"], "data": fields["data"]},
                                    params=params, headers={"X-Correlation-ID": fields["correlation_id"]}) as r:
                body = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.failed_requests += 1
            return False
        finally:
            self.in_flight -= 1
        if status == 200:
            self.delivered.append((body, fields))
        elif status == 202:
            self.accepted.append((body["id"], fields))
        else:
            self.other.append((status, body))
        return True

    @property
    def answered(self) -> int:
        return len(self.delivered) + len(self.accepted)


def session() -> aiohttp.ClientSession:
    # One connection per worker; the default 5-minute total timeout is far beyond the test's guard.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def run_fixed(load: Load, total: int) -> None:
    async with session() as http:
        async def worker():
            while (i := load.take()) < total:
                await load.post(http, i)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), NO_HANG)


async def run_until_sigterm(load: Load, server: Server, sigterm_after: int) -> None:
    """Workers post without pause; once ``sigterm_after`` requests were answered, SIGTERM the server; each
    worker stops at its first request without an answer (the server closed its connection or port)."""
    signalled = asyncio.Event()

    async with session() as http:
        async def worker():
            while True:
                if not await load.post(http, load.take()):
                    return
                if load.answered >= sigterm_after and not signalled.is_set():
                    signalled.set()
                    load.answered_at_signal = load.answered
                    server.process.terminate()  # SIGTERM, to the server process only

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), NO_HANG)
    assert signalled.is_set(), "every worker failed before the server was signalled"


def test_concurrent_requests_land_where_answered(framework, broker, topic_name, server_factory):
    asyncio.run(create_topics(broker.bootstrap, {topic_name: PARTITIONS}))
    server = server_factory(framework, broker.bootstrap)
    load = Load(server.base_url, topic_name)
    asyncio.run(run_fixed(load, 600))
    assert (len(load.delivered), len(load.accepted), load.other, load.failed_requests) == (300, 300, [], 0)
    assert load.max_in_flight == CONCURRENCY  # hundreds in flight at once, never more than the workers
    server.terminate()
    summary = server.summary()
    assert summary == {"delivered": 600, "failed": 0, "accepted": 300, "ff_delivered": 300, "ff_failed": 0,
                       "pending": 0}, server.log_text()[-3000:]
    stored = read_back(broker.bootstrap, topic_name, range(PARTITIONS), 600)
    assert len(stored) == 600
    check_landed(stored, load.delivered, load.accepted)


def test_sigterm_under_load_loses_nothing_answered(framework, broker, topic_name, server_factory):
    asyncio.run(create_topics(broker.bootstrap, {topic_name: PARTITIONS}))
    server = server_factory(framework, broker.bootstrap)
    load = Load(server.base_url, topic_name)
    asyncio.run(run_until_sigterm(load, server, sigterm_after=400))
    server.wait_stopped(NO_HANG)
    assert load.other == [], load.other[:5]  # nothing refused: every request was answered 200/202 or not at all
    assert load.failed_requests == CONCURRENCY
    # The requests in flight at SIGTERM were finished, not dropped: answers kept coming after the signal.
    assert load.answered > load.answered_at_signal >= 400
    summary = server.summary()
    # The producer delivered every record it took (a request the server answered but whose answer was cut
    # off with its connection counts there and not here, so >=) and failed none.
    assert (summary["failed"], summary["ff_failed"], summary["pending"]) == (0, 0, 0), summary
    assert summary["delivered"] >= load.answered and summary["accepted"] >= len(load.accepted), (summary, load.answered)
    # The log holds exactly what the server says it delivered: every record once, every answered one where
    # its answer said.
    stored = read_back(broker.bootstrap, topic_name, range(PARTITIONS), summary["delivered"])
    assert len(stored) == summary["delivered"]
    check_landed(stored, load.delivered, load.accepted)


def test_embedded_broker_without_kafka_bootstrap_servers(framework, server_factory, topic_name):
    """KAFKA_BOOTSTRAP_SERVERS unset: the app starts a broker of its own, says where, serves, and on SIGTERM
    flushes and stops the producer, then the broker."""
    server = server_factory(framework, None)
    address = re.search(r"started an embedded broker on (127\.0\.0\.1:\d+)", server.log_text())
    assert address, server.log_text()
    bootstrap = address.group(1)
    answer = asyncio.run(_post_one(server.base_url, topic_name))
    assert set(answer) == {"topic", "partition", "offset"}, answer
    stored = read_back(bootstrap, topic_name, [answer["partition"]], 1)
    check_landed(stored, [(answer, request_fields(0))])
    server.terminate()
    assert server.summary()["delivered"] == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _port_open(bootstrap):
        time.sleep(0.05)
    assert not _port_open(bootstrap), "the embedded broker outlived the app"


async def _post_one(base_url: str, topic: str) -> dict:
    fields = request_fields(0)
    async with session() as http:
        async with http.post(f"{base_url}/events/{topic}", json={"type": fields["type"], "data": fields["data"]},
                             headers={"X-Correlation-ID": fields["correlation_id"]}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


def _port_open(bootstrap: str) -> bool:
    import socket

    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False
