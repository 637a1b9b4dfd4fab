"""Makes ``python -m aiohttp.web -H 127.0.0.1 -P 8080 aiohttp_app:create_app`` work from the repository root.

``python -m`` puts the current directory on sys.path, and aiohttp.web imports the module named on its command
line from there; it has no option like uvicorn's ``--app-dir``. So this module, found first, loads the
example, ``examples/aiohttp_app.py``, and hands on its ``create_app``. See that file for what the app does.
"""
import importlib.util
import os
import sys

_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
sys.path.insert(0, _EXAMPLES)  # the example's own imports: _common, envelope
_spec = importlib.util.spec_from_file_location("examples_aiohttp_app", os.path.join(_EXAMPLES, "aiohttp_app.py"))
_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example)

create_app = _example.create_app

