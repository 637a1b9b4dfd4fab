"""The fast path of ``Producer.send``: the compiled ``aiokprod._native.appender`` or its pure-Python twin.

``IMPLEMENTATION`` says which one loaded ("native" or "python"); ``AIOKPROD_NO_EXTENSIONS=1`` forces Python.
"""
from __future__ import annotations

from aiokprod._impl import load

_impl_module, IMPLEMENTATION = load("appender")

RecordAppender = _impl_module.RecordAppender

__all__ = ["IMPLEMENTATION", "RecordAppender"]
