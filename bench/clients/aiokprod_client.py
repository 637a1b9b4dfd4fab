"""aiokprod's adapter."""
from __future__ import annotations

import asyncio

from .base import Adapter

START_TIMEOUT = 30.0


class AiokprodAdapter(Adapter):
    name = "aiokprod"
    module = "aiokprod"

    async def open(self, bootstrap, topic, workload, overrides):
        from aiokprod import Producer
        from aiokprod.config import DOTTED_NAMES

        config = {"bootstrap_servers": bootstrap, "acks": "all" if workload.acks == "all" else int(workload.acks),
                  "linger_ms": workload.linger_ms, "batch_size": 16384,
                  "compression_type": None if workload.compression == "none" else workload.compression,
                  "enable_idempotence": workload.idempotence}
        # -X names may be dotted (linger.ms) or keyword (linger_ms); either replaces the workload's setting.
        config.update({DOTTED_NAMES.get(name, name): value for name, value in overrides.items()})
        self.producer = Producer.from_config(config)
        await asyncio.wait_for(self.producer.start(), START_TIMEOUT)
        await asyncio.wait_for(self.producer.partitions_for(topic), START_TIMEOUT)
        self.send = self.producer.send
        self.send_and_wait = self.producer.send_and_wait
        return {k: v for k, v in config.items() if k != "bootstrap_servers"}

    async def flush(self):
        await self.producer.flush()

    async def close(self):
        await asyncio.wait_for(self.producer.stop(), START_TIMEOUT)

    def acknowledged(self):
        return self.producer.metrics()["records_sent"]

    def extra(self):
        metrics = self.producer.metrics()
        out = {k: metrics[k] for k in ("batches_sent", "requests_sent", "retries", "record_errors",
                                       "request_latency_avg_ms")}
        out["idempotent"] = self.producer.config.idempotent
        return out
