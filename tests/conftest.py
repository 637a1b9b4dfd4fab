"""Shared fixtures: the compiled-module guard, both event loops, and the embedded broker."""
from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

import aiokprod
from aiokprod import _impl
from aiokprod._native import MODULES as NATIVE_MODULES
from aiokprod.testing import EmbeddedBroker

import uvloop  # pinned in the test extra: every async test runs on both loops, never only on one


def pytest_sessionstart(session):
    """Refuse to test the Python fallback by accident: every native module must load unless forced off."""
    if _impl.NO_EXTENSIONS:
        return
    missing = {}
    for name in NATIVE_MODULES:
        try:
            _impl.native_twin(name)
        except ImportError as exc:
            missing[name] = repr(exc)
    if missing:
        raise pytest.UsageError(
            "compiled modules did not load (build them with `pip install -e .`, "
            f"or set AIOKPROD_NO_EXTENSIONS=1 to test the Python twins on purpose): {missing}"
        )


def pytest_asyncio_loop_factories(config, item):
    """Every async test runs once on asyncio's loop and once on uvloop's (one of them, for a test marked
    ``one_loop_per_implementation``)."""
    factories = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    if item.get_closest_marker("one_loop_per_implementation") is not None:
        name = "asyncio" if _impl.NO_EXTENSIONS else "uvloop"
        factories = {name: factories[name]}
    return factories


@pytest.fixture(scope="session")
def broker():
    """One embedded broker for the whole run. Tests use their own topic names so they do not interfere."""
    with EmbeddedBroker() as embedded:
        yield embedded


@pytest.fixture
def fresh_broker():
    """A broker of the test's own, for tests that stop or restart it."""
    with EmbeddedBroker() as embedded:
        yield embedded


_topic_counter = 0


@pytest.fixture
def topic_name(request):
    """A topic name unique to the test (the session broker is shared)."""
    global _topic_counter
    _topic_counter += 1
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
    return f"t{_topic_counter}-{base}"


# -- PYTHONASYNCIODEBUG=1 runs (.ci/run has one) ---------------------------------------------------------
# asyncio's debug mode logs every callback that holds the loop longer than loop.slow_callback_duration
# (100 ms) as "Executing <handle> took N seconds", and errors such as "Task was destroyed but it is
# pending!" or "Task exception was never retrieved". Never-awaited coroutines are RuntimeWarnings, made
# errors by `-W error::RuntimeWarning` on the command line (raised in a finalizer, they reach pytest as
# unraisable exceptions, already errors in pyproject's filterwarnings).
#
# What fails a test here, and why not more: a slow callback whose handle names aiokprod's own code and that
# took at least AIOKPROD_SLOW_CALLBACK_FAIL_S (default 0.25 s, 2.5 times asyncio's report threshold) on the
# test's loop, and any asyncio error logged on it. A slow callback is wall time: on a loaded 2-core machine a
# callback can be descheduled for 100 ms without doing anything wrong, so asyncio's own 100 ms would fail
# runs on noise. The test's own task (its coroutine's repr names the test file even when the time went into
# our send()) and the proxies' loops (other threads: not our code) are listed in the summary, not failed.
ASYNCIO_DEBUG = os.environ.get("PYTHONASYNCIODEBUG", "") not in ("", "0")
SLOW_CALLBACK_FAIL_S = float(os.environ.get("AIOKPROD_SLOW_CALLBACK_FAIL_S", "0.25"))
_PACKAGE_DIR = os.path.dirname(os.path.abspath(aiokprod.__file__)) + os.sep
_SLOW_CALLBACKS_REPORTED: list[str] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "one_loop_per_implementation: a long test run on uvloop with the compiled modules and on "
        "asyncio's loop with the pure twins, not on both loops each time (CI runs the suite once per "
        "implementation, so both loops are still covered)")
    # pytest-asyncio runs its loops with debug=False unless told otherwise, whatever PYTHONASYNCIODEBUG
    # says: pass the environment on, so that the variable alone switches debug mode on for every test loop.
    if ASYNCIO_DEBUG:
        config.option.asyncio_debug = True


class _AsyncioLogWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _asyncio_debug_watch(request):
    if not ASYNCIO_DEBUG:
        yield
        return
    watch = _AsyncioLogWatch()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(watch)
    try:
        yield
    finally:
        asyncio_logger.removeHandler(watch)
    main_thread = threading.main_thread().ident
    failures = []
    for record in watch.records:
        on_test_loop = record.thread == main_thread
        if record.msg.startswith("Executing %s took"):
            handle, seconds = record.args
            if on_test_loop and _PACKAGE_DIR in handle and seconds >= SLOW_CALLBACK_FAIL_S:
                failures.append(record.getMessage())
            else:
                where = "test loop" if on_test_loop else record.threadName
                _SLOW_CALLBACKS_REPORTED.append(f"{request.node.nodeid} ({where}): {record.getMessage()}")
        elif on_test_loop and record.levelno >= logging.ERROR:
            failures.append(record.getMessage())
    if failures:
        pytest.fail("asyncio debug mode reported, on the test's loop:\n  " + "\n  ".join(failures), pytrace=False)


def pytest_terminal_summary(terminalreporter):
    if _SLOW_CALLBACKS_REPORTED:
        terminalreporter.section("slow callbacks reported by asyncio debug mode (not failures)")
        for line in _SLOW_CALLBACKS_REPORTED:
            terminalreporter.write_line(line)
