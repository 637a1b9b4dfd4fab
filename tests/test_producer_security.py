"""The producer end to end over TLS and over SASL (PLAIN, SCRAM-SHA-256/512), through the test proxies that
terminate them in front of the embedded broker (Tansu itself can do neither), read back with confluent-kafka
through the same proxy."""
from __future__ import annotations

import asyncio

import pytest

from aiokprod import Producer, errors
from helpers import read_back_async
from proxy_fixtures import SASL_USERS, sasl_broker, tls_broker  # noqa: F401 - fixtures


async def _produce(producer, topic, count=50):
    handles = [await producer.send(topic, b"secure-%d" % i, key=b"k%d" % (i % 5)) for i in range(count)]
    await producer.flush()
    return [handle.result() for handle in handles]


async def test_producer_over_tls(tls_broker, topic_name):
    async with Producer(tls_broker.bootstrap, security_protocol="SSL",
                        ssl_context=tls_broker.proxy.client_ssl_context(), linger_ms=2) as producer:
        metas = await _produce(producer, topic_name)
        connections = list(producer._cluster._connections.values())
        assert connections and all(c._transport.get_extra_info("ssl_object") is not None for c in connections)
    assert tls_broker.proxy.connections >= 1
    stored = await read_back_async(tls_broker.bootstrap, topic_name, range(4), 50, consumer_config={
        "security.protocol": "SSL", "ssl.ca.location": tls_broker.proxy.ca_file})
    assert sorted(s.value for s in stored) == sorted(b"secure-%d" % i for i in range(50))
    assert {(m.partition, m.offset) for m in metas} == {(s.partition, s.offset) for s in stored}


async def test_producer_refuses_an_untrusted_certificate(tls_broker):
    producer = Producer(tls_broker.bootstrap, security_protocol="SSL", request_timeout_ms=3000)  # system CAs
    with pytest.raises(errors.KafkaConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        await asyncio.wait_for(producer.start(), 20)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_producer_over_sasl(sasl_broker, topic_name, mechanism):
    async with Producer(sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                        sasl_plain_username="alice", sasl_plain_password=SASL_USERS["alice"],
                        linger_ms=2) as producer:
        metas = await _produce(producer, topic_name)
    assert sasl_broker.proxy.stats[f"auth_ok:{mechanism}"] >= 1
    stored = await read_back_async(sasl_broker.bootstrap, topic_name, range(4), 50, consumer_config={
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
        "sasl.username": "alice", "sasl.password": SASL_USERS["alice"]})
    assert {(m.partition, m.offset) for m in metas} == {(s.partition, s.offset) for s in stored}


async def test_producer_with_a_wrong_password_fails_start_clearly(sasl_broker):
    producer = Producer(sasl_broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                        sasl_plain_username="alice", sasl_plain_password="not-her-password")
    with pytest.raises(errors.AuthenticationError, match="SCRAM-SHA-512"):
        await asyncio.wait_for(producer.start(), 20)
