"""Chooses between the compiled modules in ``aiokprod._native`` and their pure-Python twins.

Every native module ``aiokprod._native.X`` has a twin ``aiokprod._python.X`` with the same names and
signatures. The public selector modules (``aiokprod.codec``, ...) call :func:`load` once at import.
``AIOKPROD_NO_EXTENSIONS=1`` forces the Python twins. A native module that fails to import falls back to its
twin, but the failure is kept in :data:`LOAD_ERRORS` so the test suite (and ``python -m aiokprod info``) can
refuse a silent fallback.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

NO_EXTENSIONS = os.environ.get("AIOKPROD_NO_EXTENSIONS", "").strip() not in ("", "0")

# name -> "native" | "python", for every module selected so far.
LOADED: dict[str, str] = {}
# name -> repr of the ImportError that made a native module fall back.
LOAD_ERRORS: dict[str, str] = {}


def load(name: str) -> tuple[ModuleType, str]:
    """Return ``(module, "native" | "python")`` for the twin pair called ``name``."""
    if not NO_EXTENSIONS:
        try:
            module = importlib.import_module(f"aiokprod._native.{name}")
        except ImportError as exc:
            LOAD_ERRORS[name] = repr(exc)
        else:
            LOADED[name] = "native"
            return module, "native"
    module = importlib.import_module(f"aiokprod._python.{name}")
    LOADED[name] = "python"
    return module, "python"


def python_twin(name: str) -> ModuleType:
    return importlib.import_module(f"aiokprod._python.{name}")


def native_twin(name: str) -> ModuleType:
    return importlib.import_module(f"aiokprod._native.{name}")
