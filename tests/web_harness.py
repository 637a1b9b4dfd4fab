"""What the web-app tests share: the two example apps in-process behind one small client interface, the apps as
real servers (subprocesses started with the documented commands), and the check that a response's
partition and offset hold the record the request sent.

In-process, the FastAPI app is driven through httpx's ASGI transport; httpx does not run the ASGI lifespan,
so asgi-lifespan's ``LifespanManager`` runs it (startup starts the producer, shutdown flushes and stops it,
as uvicorn would). The aiohttp app runs in aiohttp's own ``TestServer`` (a real socket on the test's loop),
which runs its ``cleanup_ctx``. Both clients answer ``Answer(status, headers, body)``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

import envelope  # noqa: E402  (examples/envelope.py)

FRAMEWORKS = ("fastapi", "aiohttp")
SUMMARY = re.compile(
    r"producer stopped: (?P<delivered>\d+) record\(s\) delivered, (?P<failed>\d+) failed; fire-and-forget: "
    r"(?P<accepted>\d+) accepted, (?P<ff_delivered>\d+) delivered, (?P<ff_failed>\d+) failed, "
    r"(?P<pending>\d+) pending")


@dataclass
class Answer:
    status: int
    headers: Any  # case-insensitive mapping
    body: Any  # decoded JSON, or the text when it is not JSON


class AppClient:
    """One example app, running, and a client for it. ``producer`` is the app's own producer."""

    def __init__(self, framework: str, producer, request) -> None:
        self.framework = framework
        self.producer = producer
        self._request = request

    async def post(self, path: str, json: Any = None, *, content: Optional[bytes] = None,
                   params: Optional[dict] = None, headers: Optional[dict] = None) -> Answer:
        return await self._request("POST", path, json=json, content=content, params=params, headers=headers)

    async def get(self, path: str) -> Answer:
        return await self._request("GET", path)


@contextlib.asynccontextmanager
async def running_app(framework: str, bootstrap: str, **producer_settings):
    if framework == "fastapi":
        async with _fastapi(bootstrap, producer_settings) as client:
            yield client
    else:
        async with _aiohttp(bootstrap, producer_settings) as client:
            yield client


@contextlib.asynccontextmanager
async def _fastapi(bootstrap: str, settings: dict):
    import httpx
    from asgi_lifespan import LifespanManager

    import fastapi_app

    app = fastapi_app.create_app(bootstrap, **settings)
    # shutdown_timeout: the lifespan's shutdown is the producer's flush, which a fault test can make slow.
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
            async def request(method, path, *, json=None, content=None, params=None, headers=None):
                kwargs = {"params": params, "headers": headers}
                if content is not None:
                    kwargs["content"] = content
                elif json is not None:
                    kwargs["json"] = json
                response = await http.request(method, path, **kwargs)
                try:
                    body = response.json()
                except ValueError:
                    body = response.text
                return Answer(response.status_code, response.headers, body)

            yield AppClient("fastapi", app.state.producer, request)


@contextlib.asynccontextmanager
async def _aiohttp(bootstrap: str, settings: dict):
    from aiohttp.test_utils import TestClient, TestServer

    import aiohttp_app

    app = aiohttp_app.create_app(bootstrap=bootstrap, **settings)
    async with TestClient(TestServer(app)) as http:
        async def request(method, path, *, json=None, content=None, params=None, headers=None):
            kwargs = {"params": params, "headers": headers}
            if content is not None:
                kwargs["data"] = content
            elif json is not None:
                kwargs["json"] = json
            async with http.request(method, path, **kwargs) as response:
                text = await response.text()
                try:
                    body = jsonlib.loads(text)
                except ValueError:
                    body = text
                return Answer(response.status, response.headers, body)

        yield AppClient("aiohttp", app[aiohttp_app.PRODUCER], request)


# -- what landed --------------------------------------------------------------------------------------------
def check_landed(stored, delivered: list, accepted: list = ()) -> None:
    """``delivered``: ``(answer body, sent envelope fields)`` of 200s; ``accepted``: ``(event id, fields)`` of
    202s. Every 200 is at the partition and offset it named, with what was sent; every 202 is in the log
    exactly once. ``fields`` is a dict of what the request sent: type, data, key, correlation_id (or None)."""
    at = {(record.partition, record.offset): record for record in stored}
    by_id: dict = {}
    for record in stored:
        by_id.setdefault(envelope.parse(record.key, record.value, record.headers).id, []).append(record)
    for body, fields in delivered:
        record = at.get((body["partition"], body["offset"]))
        assert record is not None, f"nothing at {body} in the log ({len(stored)} records read back)"
        assert record.topic == body["topic"]
        _check_record(record, fields)
    for event_id, fields in accepted:
        records = by_id.get(event_id, [])
        assert len(records) == 1, f"event {event_id} (answered 202) is {len(records)} times in the log"
        _check_record(records[0], fields)


def _check_record(record, fields: dict) -> None:
    event = envelope.parse(record.key, record.value, record.headers)
    assert (event.type, event.data, event.entity_id) == (fields["type"], fields["data"], fields["key"]), (
        f"record at {record.partition}/{record.offset} is {event}, the request sent {fields}")
    headers = dict(record.headers)
    assert headers[envelope.HEADER_TYPE] == fields["type"].encode()
    assert headers[envelope.HEADER_SOURCE].startswith(b"aiokprod-examples/")
    if fields.get("correlation_id") is not None:
        assert headers[envelope.HEADER_CORRELATION_ID] == fields["correlation_id"].encode()


# -- real servers -------------------------------------------------------------------------------------------
class Server:
    """An example app as a real server: the documented command, run from the repository root, on a free port.

    Its output goes to a file (hundreds of access-log lines must not fill a pipe nobody reads)."""

    def __init__(self, framework: str, port: int, bootstrap: Optional[str]) -> None:
        self.framework = framework
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        if framework == "fastapi":
            uvicorn = os.path.join(os.path.dirname(sys.executable), "uvicorn")
            command = [uvicorn] if os.path.exists(uvicorn) else [sys.executable, "-m", "uvicorn"]
            # The documented command, plus the address (the documented one serves on uvicorn's default port).
            self.command = command + ["--app-dir", "examples", "fastapi_app:app", "--host", "127.0.0.1",
                                      "--port", str(port)]
        else:
            self.command = [sys.executable, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(port),
                            "aiohttp_app:create_app"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        if bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        self._env = env
        self._log = tempfile.TemporaryFile()
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "Server":
        # A session of its own: if the test fails, the server and any broker it started die together.
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self._env, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.command} exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        pytest.fail(f"{self.command} did not answer /health within {timeout}s:\n{self.log_text()}")

    def terminate(self, timeout: float = 60.0) -> None:
        """SIGTERM to the server process (not its group: an embedded broker must outlive the flush); wait
        for it to exit, and check it went through its graceful shutdown."""
        self.process.send_signal(signal.SIGTERM)
        self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 60.0) -> None:
        """Wait for the exit that a SIGTERM started, and check it was the graceful one.

        uvicorn shuts down gracefully, then re-raises the signal it caught so that its exit status says it
        was terminated (-SIGTERM, by design); aiohttp.web exits 0 after printing "Stopped". Both must have
        run the app's shutdown, which logs the producer's summary line last.
        """
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within {timeout}s of SIGTERM:\n{self.log_text()[-5000:]}")
        log_text = self.log_text()
        if self.framework == "fastapi":
            assert code == -signal.SIGTERM, f"uvicorn exited {code}:\n{log_text[-5000:]}"
            assert "Application shutdown complete." in log_text, log_text[-5000:]
        else:
            assert code == 0, f"aiohttp.web exited {code}:\n{log_text[-5000:]}"
            assert log_text.rstrip().endswith("Stopped"), log_text[-5000:]
        assert SUMMARY.search(log_text), f"no shutdown summary in the log:\n{log_text[-5000:]}"

    def log_text(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def summary(self) -> dict:
        match = SUMMARY.search(self.log_text())
        assert match, f"no shutdown summary in the log:\n{self.log_text()[-5000:]}"
        return {name: int(value) for name, value in match.groupdict().items()}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` (async or not) until true; a guard against hangs, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() >= deadline:
            return bool(value)
        await asyncio.sleep(interval)
