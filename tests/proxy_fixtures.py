"""pytest fixtures for the test proxies. Import the ones a test module needs:

    from proxy_fixtures import tls_broker, sasl_broker, kafka_proxy  # noqa: F401

Why dedicated brokers for TLS and SASL: a client bootstraps through the proxy and then connects to the
brokers that Metadata advertises. The session broker advertises its own plaintext port, which would take the
client around the proxy. So these fixtures start a broker of their own on a pre-chosen port, advertising the
proxy's port instead (Tansu starts in milliseconds). ``kafka_proxy`` needs no such thing: it rewrites
Metadata itself, so it fronts the session broker.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from aiokprod.testing import EmbeddedBroker, free_port

SASL_USERS = {"alice": "alice-secret", "bob": "bob-secret"}


@dataclass
class ProxiedBroker:
    broker: EmbeddedBroker
    proxy: object

    @property
    def bootstrap(self) -> str:
        return self.proxy.bootstrap


@pytest.fixture
def tls_broker():
    """A broker reachable only through a TLS proxy: ``.bootstrap``, ``.proxy.ca_file``, ``.proxy.client_ssl_context()``."""
    from tls_proxy import TlsProxy

    broker_port = free_port()
    # The proxy connects upstream per client connection, so it can start before the broker exists.
    with TlsProxy("127.0.0.1", broker_port) as proxy:
        with EmbeddedBroker(port=broker_port, advertised_port=proxy.port) as broker:
            yield ProxiedBroker(broker, proxy)


@pytest.fixture
def sasl_broker():
    """A broker behind the SASL gateway (users in ``SASL_USERS``): ``.bootstrap``, ``.proxy.stats``."""
    from sasl_gateway import SaslGateway

    broker_port = free_port()
    with SaslGateway("127.0.0.1", broker_port, users=SASL_USERS) as gateway:
        with EmbeddedBroker(port=broker_port, advertised_port=gateway.port) as broker:
            yield ProxiedBroker(broker, gateway)


@pytest.fixture
def kafka_proxy(broker):
    """A 3-broker view of the session broker through the fault-injecting proxy."""
    from kafka_proxy import KafkaProxy

    with KafkaProxy(broker.host, broker.port, num_brokers=3) as proxy:
        yield proxy
