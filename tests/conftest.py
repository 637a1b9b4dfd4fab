"""Shared fixtures: the compiled-module guard, both event loops, and the embedded broker."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import _impl
from aiokprod._native import MODULES as NATIVE_MODULES
from aiokprod.testing import EmbeddedBroker

try:
    import uvloop
except ImportError:  # uvloop is in the test extra; without it only asyncio runs
    uvloop = None


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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "one_loop_per_implementation: a long test run on uvloop with the compiled modules and on "
        "asyncio's loop with the pure twins, not on both loops each time (CI runs the suite once per "
        "implementation, so both loops are still covered)")


def pytest_asyncio_loop_factories(config, item):
    """Every async test runs once on asyncio's loop and once on uvloop's (one of them, for a test marked
    ``one_loop_per_implementation``)."""
    factories = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    if item.get_closest_marker("one_loop_per_implementation") is not None and len(factories) > 1:
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
