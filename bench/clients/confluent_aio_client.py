"""confluent-kafka's asyncio producer (confluent_kafka.aio.AIOProducer, librdkafka underneath)."""
from __future__ import annotations

import asyncio

from ..workloads import AWAIT_EACH, FIRE_AND_FORGET, SERVICE
from .base import Adapter
from .confluent_client import librdkafka_config

START_TIMEOUT = 30.0


class ConfluentAIOAdapter(Adapter):
    name = "confluent-aio"
    module = "confluent_kafka.aio"
    modes = (FIRE_AND_FORGET, AWAIT_EACH)
    mode_reasons = {SERVICE: "AIOProducer resolves a delivery future only when a later produce() or flush() "
                             "polls librdkafka, or after its 1 s buffer_timeout: send-and-wait in N tasks "
                             "runs at about N records/s"}
    # produce() only buffers (1000 records, AIOProducer's batch_size) and its futures resolve when librdkafka
    # is polled: the await-each loop must flush before the futures can all be done.
    flush_before_gather = True

    async def open(self, bootstrap, topic, workload, overrides):
        from confluent_kafka.aio import AIOProducer

        config = librdkafka_config(bootstrap, workload, overrides)
        self.producer = AIOProducer(config)
        try:
            await asyncio.wait_for(self.producer.list_topics(topic, timeout=START_TIMEOUT), START_TIMEOUT + 5)
        except BaseException:
            await self.producer.close()
            raise
        self.send = self.producer.produce
        return {k: v for k, v in config.items() if k != "bootstrap.servers"}

    async def flush(self):
        await self.producer.flush()

    async def close(self):
        await asyncio.wait_for(self.producer.close(), START_TIMEOUT)
