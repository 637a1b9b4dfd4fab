"""confluent-kafka's ``Producer`` (librdkafka): synchronous, so it always works fire-and-forget, with a
delivery callback per record, ``poll(0)`` every POLL_EVERY records and one ``flush()`` at the end."""
from __future__ import annotations

from ..workloads import AWAIT_EACH, FIRE_AND_FORGET, SERVICE
from .base import Adapter

POLL_EVERY = 1000
START_TIMEOUT = 30.0


def librdkafka_config(bootstrap, workload, overrides) -> dict:
    config = {"bootstrap.servers": bootstrap, "acks": workload.acks, "linger.ms": workload.linger_ms,
              "batch.size": 16384, "compression.type": workload.compression,
              "enable.idempotence": workload.idempotence}
    config.update(overrides)
    return config


class ConfluentAdapter(Adapter):
    name = "confluent"
    module = "confluent_kafka"
    is_async = False
    modes = (FIRE_AND_FORGET,)
    mode_reasons = {AWAIT_EACH: "a synchronous producer: no handle to await (it works with delivery callbacks)",
                    SERVICE: "a synchronous producer: no send-and-wait for tasks on an event loop"}

    def open_sync(self, bootstrap, topic, workload, overrides) -> dict:
        from confluent_kafka import Producer

        config = librdkafka_config(bootstrap, workload, overrides)
        self.producer = Producer(config)
        self.producer.list_topics(topic, timeout=START_TIMEOUT)  # connected, metadata known
        self.delivered = self.errors = self.buffer_full = 0
        self.first_error = None
        return {k: v for k, v in config.items() if k != "bootstrap.servers"}

    def warm_up_sync(self, topic, partitions: int) -> None:
        """As Adapter.warm_up: one record to each partition, delivered, then the counts start from zero."""
        for partition in range(partitions):
            self.producer.produce(topic, b"warm-up", None, partition=partition)
        if self.producer.flush(START_TIMEOUT):
            raise RuntimeError(f"warm-up records not delivered within {START_TIMEOUT}s")

    def produce_all(self, topic, keys, values, timeout: float) -> None:
        """The timed loop: produce every record, serving callbacks; wait until all are delivered or failed."""
        def on_delivery(err, _msg):
            if err is None:
                self.delivered += 1
            else:
                self.errors += 1
                self.first_error = self.first_error or str(err)

        produce, poll = self.producer.produce, self.producer.poll
        for i, value in enumerate(values):
            while True:
                try:
                    produce(topic, value, keys[i], on_delivery=on_delivery)
                    break
                except BufferError:  # queue.buffering.max.messages reached: serve callbacks, retry
                    self.buffer_full += 1
                    poll(0.1)
            if i % POLL_EVERY == 0:
                poll(0)
        left = self.producer.flush(timeout)
        if left:
            self.errors += left
            self.first_error = self.first_error or f"{left} records still queued after flush({timeout})"

    def close_sync(self) -> None:
        self.producer = None  # librdkafka's handle is destroyed with the object (everything was flushed)

    def acknowledged(self):
        return self.delivered

    def extra(self):
        return {"buffer_full_retries": self.buffer_full}
