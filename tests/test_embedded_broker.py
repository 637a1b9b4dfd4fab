"""aiokprod.testing.EmbeddedBroker: the port it chooses is its own broker's, even when another process takes
it first (concurrent test runs each start brokers on ports chosen by binding port 0 and letting it go)."""
from __future__ import annotations

import socket
import sys

import pytest

from aiokprod.testing import BrokerStartError, EmbeddedBroker, _listens

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc ownership check is Linux's")


def _squat(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_chosen_port_taken_by_another_process_is_chosen_again():
    broker = EmbeddedBroker()
    taken = broker.port
    squatter = _squat(taken)  # what a concurrent run's broker would do between our choice and our bind
    try:
        broker.start()
        try:
            assert broker.port != taken
            assert broker.advertised_port == broker.port
            assert _listens(broker._process.pid, broker.port) is True
            assert _listens(broker._process.pid, taken) is False  # the squatter's, not ours
        finally:
            broker.stop()
    finally:
        squatter.close()


def test_a_port_the_caller_gave_is_kept_and_its_loss_is_an_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    squatter = _squat(port)
    try:
        with pytest.raises(BrokerStartError, match="exited"):
            EmbeddedBroker(port=port).start(timeout=10)
    finally:
        squatter.close()
