"""Delivery handles: one :class:`BatchCompletion` per partition batch, one :class:`DeliveryHandle` per record.

Selects the compiled twin (``aiokprod._native.handle``) or the pure-Python one (``aiokprod._python.handle``)
once at import; :data:`IMPLEMENTATION` says which ("native" or "python").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiokprod._impl import load
from aiokprod.metadata import RecordMetadata

_impl_module, IMPLEMENTATION = load("handle")

if TYPE_CHECKING:  # both twins have this API; the stub of the compiled one states it
    from aiokprod._native.handle import BatchCompletion, DeliveryHandle
else:
    BatchCompletion = _impl_module.BatchCompletion
    DeliveryHandle = _impl_module.DeliveryHandle

__all__ = ["BatchCompletion", "DeliveryHandle", "IMPLEMENTATION", "RecordMetadata"]
