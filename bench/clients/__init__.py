"""The clients the bench compares, one adapter each, behind bench.clients.base.Adapter.

A client's name in the table is its adapter's name, with ``-uvloop`` when its event loop is uvloop.
Adapters are imported in the child process that runs the client, never in the parent.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

# client -> (module, class); uvloop variants are derived from the async ones.
ADAPTERS = {
    "aiokprod": ("bench.clients.aiokprod_client", "AiokprodAdapter", "aiokprod"),
    "aiokafka": ("bench.clients.aiokafka_client", "AiokafkaAdapter", "aiokafka"),
    "confluent": ("bench.clients.confluent_client", "ConfluentAdapter", "confluent_kafka"),
    "confluent-aio": ("bench.clients.confluent_aio_client", "ConfluentAIOAdapter", "confluent_kafka.aio"),
}
ASYNC = ("aiokprod", "aiokafka", "confluent-aio")
UVLOOP = "-uvloop"


def split(client: str) -> tuple:
    """'aiokafka-uvloop' -> ('aiokafka', 'uvloop'); 'confluent' -> ('confluent', None); 'aiokprod' -> asyncio."""
    base, loop = (client[:-len(UVLOOP)], "uvloop") if client.endswith(UVLOOP) else (client, "asyncio")
    if base not in ADAPTERS or (loop == "uvloop" and base not in ASYNC):
        raise ValueError(f"unknown client {client!r}; choose from {', '.join(known())}")
    return base, (loop if base in ASYNC else None)


def known() -> list:
    return [name for base in ADAPTERS for name in ([base, base + UVLOOP] if base in ASYNC else [base])]


def missing(client: str) -> Optional[str]:
    """Why ``client`` cannot run here (a module not installed), or None. Imports nothing heavy."""
    base, loop = split(client)
    needs = [ADAPTERS[base][2]] + (["uvloop"] if loop == "uvloop" else [])
    for module in needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            return f"{module} is not installed (pip install 'aiokprod[bench]')"
    return None


def adapter(client: str):
    base, _ = split(client)
    module, cls, _ = ADAPTERS[base]
    return getattr(importlib.import_module(module), cls)()


def default_clients(with_uvloop_peers: bool) -> list:
    """aiokprod on asyncio and on uvloop, every peer on asyncio (and on uvloop too with ``--uvloop``)."""
    out = ["aiokprod", "aiokprod" + UVLOOP, "aiokafka", "confluent", "confluent-aio"]
    if with_uvloop_peers:
        out += ["aiokafka" + UVLOOP, "confluent-aio" + UVLOOP]
    return out
