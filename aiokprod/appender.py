"""The fast path of ``Producer.send``: the compiled ``aiokprod._native.appender`` or its pure-Python twin.

``IMPLEMENTATION`` says which one loaded ("native" or "python"); ``AIOKPROD_NO_EXTENSIONS=1`` forces Python.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiokprod._impl import load

_impl_module, IMPLEMENTATION = load("appender")

if TYPE_CHECKING:  # both twins have this API; the stub of the compiled one states it
    from aiokprod._native.appender import RecordAppender
else:
    RecordAppender = _impl_module.RecordAppender

__all__ = ["IMPLEMENTATION", "RecordAppender"]
