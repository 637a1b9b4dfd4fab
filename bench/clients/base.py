"""The one small interface every client adapter implements.

An adapter hides how its client is configured, started, stopped and asked what it delivered. The per-record
loops are the runner's (bench/runner.py), the same for every async client: the adapter hands out the client's
own bound ``send`` and ``send_and_wait`` so that no wrapper call sits between the loop and the client (a Python
call is ~0.05 us, a tenth of the cheapest figure measured here).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional

from ..workloads import AWAIT_EACH, FIRE_AND_FORGET, SERVICE, Workload


class Adapter:
    """Base of the async adapters. After ``open()``:

    - ``send(topic, value, key)`` is awaited per record and returns an awaitable handle (a future-like
      object with ``add_done_callback``), which fire-and-forget drops and await-each gathers;
    - ``send_and_wait(topic, value, key)`` is awaited per record in the service workloads.
    """

    name = ""                       # the client's name in the table: aiokprod, aiokafka, confluent-aio
    module = ""                     # what must be importable for the client to be "installed"
    is_async = True
    modes = (FIRE_AND_FORGET, AWAIT_EACH, SERVICE)
    flush_before_gather = False     # await-each: the client resolves its futures only when flushed
    send: Callable[..., Awaitable[Any]]
    send_and_wait: Callable[..., Awaitable[Any]]

    def unsupported(self, workload: Workload, embedded_broker: bool) -> Optional[str]:
        """Why this client cannot run ``workload`` (shown as n/a), or None."""
        if workload.mode not in self.modes:
            return self.mode_reasons.get(workload.mode, f"{self.name} has no {workload.mode} mode")
        return None

    mode_reasons: dict = {}

    async def open(self, bootstrap: str, topic: str, workload: Workload, overrides: dict) -> dict:
        """Create and start the client with ``workload``'s settings and ``overrides`` (-X) on top, wait until
        it is connected and knows ``topic``'s partitions; return the configuration it was given."""
        raise NotImplementedError

    async def warm_up(self, topic: str, partitions: int) -> None:
        """One record to each partition, awaited, before the timed section: connections to every leader open
        and the producer id known (librdkafka fetches it in the background after the first produce), so no
        client pays its start-up inside the timed section. The delivery check counts these records too."""
        handles = [await self.send(topic, b"warm-up", None, partition=p) for p in range(partitions)]
        if self.flush_before_gather:
            await self.flush()
        for handle in handles:
            await handle

    async def flush(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def acknowledged(self) -> Optional[int]:
        """Records the client itself counts as acknowledged by the broker, or None if it keeps no count
        (fire-and-forget then rests on the broker's count alone)."""
        return None

    def extra(self) -> dict:
        """Client-specific figures for the JSON (batches, requests, retries ...)."""
        return {}


def parse_value(text: str) -> Any:
    """-X values: ints, floats and true/false become Python values; anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
