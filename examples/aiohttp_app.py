"""An aiohttp service that publishes events to Kafka with one aiokprod producer for the app's lifetime.

Run it from the repository root (without KAFKA_BOOTSTRAP_SERVERS it starts an embedded broker):

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m aiohttp.web -H 127.0.0.1 -P 8080 aiohttp_app:create_app

(``python -m`` puts the current directory on sys.path, not examples/: the repository root's
``aiohttp_app.py`` loads this file for that command. From elsewhere: ``PYTHONPATH=examples python -m aiohttp.web
... aiohttp_app:create_app``.)

The routes, the body, the envelope and the error answers are those of ``fastapi_app.py``:

    POST /events/{topic}[?key=ENTITY]        awaits delivery; 200 {"topic", "partition", "offset"}
    POST /events/{topic}/async[?key=ENTITY]  fire-and-forget: 202 {"id"} once the record is buffered
    GET  /health                             200 {"connected": true, ...}, 503 while no broker is connected

The producer lives in a ``cleanup_ctx`` (started before the server takes requests; on SIGTERM aiohttp stops
listening, lets the handlers in flight finish, then leaves the context, which flushes and stops it) and is
handed to handlers under an ``AppKey``. One middleware turns producer errors into answers
(``aiokprod.web.http_error``), so the handlers have no error handling of their own.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

from aiohttp import web

from _common import WEB_PRODUCER_SETTINGS, kafka_bootstrap
from envelope import BadBody, Envelope, from_body, new_id, serialize, serialize_key

from aiokprod import Producer
from aiokprod.errors import KafkaError
from aiokprod.web import DeliveryTracker, http_error, producer_lifespan

SOURCE = "aiokprod-examples/aiohttp_app"

PRODUCER = web.AppKey("producer", Producer)
DELIVERIES = web.AppKey("deliveries", DeliveryTracker)


def create_app(argv: Optional[list] = None, *, bootstrap: Optional[str] = None,
               **producer_settings) -> web.Application:
    """The app. ``python -m aiohttp.web`` passes its unparsed arguments as ``argv`` (unused); ``bootstrap``
    (else $KAFKA_BOOTSTRAP_SERVERS, else an embedded broker) and producer settings are for tests."""
    settings = {**WEB_PRODUCER_SETTINGS, **producer_settings}
    retry_after = settings["max_block_ms"] / 1000.0

    async def producer_context(app: web.Application):
        # python -m aiohttp.web has configured logging already (at DEBUG); this is for other runners.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
        async with kafka_bootstrap(bootstrap) as servers:
            producer = Producer(servers, key_serializer=serialize_key, value_serializer=serialize, **settings)
            deliveries = DeliveryTracker()
            async with producer_lifespan(producer, deliveries=deliveries):
                app[PRODUCER] = producer
                app[DELIVERIES] = deliveries
                yield

    @web.middleware
    async def producer_errors(request: web.Request, handler):
        try:
            return await handler(request)
        except KafkaError as exc:
            answer = http_error(exc, retry_after=retry_after)
            return web.json_response({"detail": answer.detail}, status=answer.status, headers=answer.headers)

    app = web.Application(middlewares=[producer_errors])
    app.cleanup_ctx.append(producer_context)
    app.router.add_post("/events/{topic}", publish)
    app.router.add_post("/events/{topic}/async", publish_nowait)
    app.router.add_get("/health", health)
    return app


async def _envelope(request: web.Request) -> Envelope:
    """The request's event, or a 422 naming what is wrong with the body."""
    correlation_id = request.headers.get("X-Correlation-ID") or new_id()
    if len(correlation_id) > 200:
        raise _unprocessable("X-Correlation-ID is longer than 200 characters")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _unprocessable(f"the body is not JSON: {exc}") from None
    try:
        return from_body(body, source=SOURCE, entity_id=request.query.get("key"), correlation_id=correlation_id)
    except BadBody as exc:
        raise _unprocessable(str(exc)) from None


def _unprocessable(detail: str) -> web.HTTPUnprocessableEntity:
    return web.HTTPUnprocessableEntity(text=json.dumps({"detail": detail}), content_type="application/json")


async def publish(request: web.Request) -> web.Response:
    envelope = await _envelope(request)
    producer = request.app[PRODUCER]
    metadata = await producer.send_and_wait(request.match_info["topic"], envelope, key=envelope.entity_id,
                                            headers=envelope.headers())
    return web.json_response({"topic": metadata.topic, "partition": metadata.partition, "offset": metadata.offset},
                             headers={"X-Correlation-ID": envelope.correlation_id})


async def publish_nowait(request: web.Request) -> web.Response:
    envelope = await _envelope(request)
    producer = request.app[PRODUCER]
    # send() returns once the record is buffered; the tracker logs the record if its delivery fails later.
    handle = await producer.send(request.match_info["topic"], envelope, key=envelope.entity_id,
                                 headers=envelope.headers())
    request.app[DELIVERIES].track(handle)
    return web.json_response({"id": envelope.id}, status=202, headers={"X-Correlation-ID": envelope.correlation_id})


async def health(request: web.Request) -> web.Response:
    connected = request.app[PRODUCER].connected
    return web.json_response({"connected": connected, "deliveries": request.app[DELIVERIES].as_dict()},
                             status=200 if connected else 503)

