"""aiokafka's adapter (AIOKafkaProducer)."""
from __future__ import annotations

import asyncio

from .base import Adapter

START_TIMEOUT = 30.0
# Dotted (Java/librdkafka) names a -X may use, in aiokafka's spelling; any other name is passed as given.
DOTTED = {"linger.ms": "linger_ms", "batch.size": "max_batch_size", "acks": "acks",
          "compression.type": "compression_type", "enable.idempotence": "enable_idempotence",
          "request.timeout.ms": "request_timeout_ms", "max.request.size": "max_request_size",
          "client.id": "client_id"}

TANSU_INIT_PRODUCER_ID = ("aiokafka 0.14 only speaks InitProducerId v0, which the embedded broker (Tansu 0.6) "
                          "always answers with error -1: it cannot be idempotent there")


class AiokafkaAdapter(Adapter):
    name = "aiokafka"
    module = "aiokafka"
    producer = None

    def unsupported(self, workload, embedded_broker):
        if workload.idempotence and embedded_broker:
            return TANSU_INIT_PRODUCER_ID
        return super().unsupported(workload, embedded_broker)

    async def open(self, bootstrap, topic, workload, overrides):
        from aiokafka import AIOKafkaProducer

        config = {"acks": "all" if workload.acks == "all" else int(workload.acks), "linger_ms": workload.linger_ms,
                  "max_batch_size": 16384,
                  "compression_type": None if workload.compression == "none" else workload.compression,
                  "enable_idempotence": workload.idempotence}
        config.update({DOTTED.get(name, name): value for name, value in overrides.items()})
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **config)
        try:
            await asyncio.wait_for(self.producer.start(), START_TIMEOUT)
            await asyncio.wait_for(self.producer.partitions_for(topic), START_TIMEOUT)
        except BaseException:
            await self.producer.stop()
            raise
        self.send = self.producer.send
        self.send_and_wait = self.producer.send_and_wait
        return config

    async def flush(self):
        await self.producer.flush()

    async def close(self):
        await asyncio.wait_for(self.producer.stop(), START_TIMEOUT)
