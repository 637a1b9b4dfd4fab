"""A FastAPI service that publishes events to Kafka with one aiokprod producer for the app's lifetime.

Run it from the repository root (without KAFKA_BOOTSTRAP_SERVERS it starts an embedded broker):

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 uvicorn --app-dir examples fastapi_app:app

    curl -X POST 'localhost:8000/events/orders?key=order-17' -H 'content-type: application/json' \\
         -d '{"type": "order.created", "data": {"total": 42}}'
    {"topic":"orders","partition":2,"offset":0}

Routes:

    POST /events/{topic}[?key=ENTITY]        awaits delivery; 200 {"topic", "partition", "offset"}
    POST /events/{topic}/async[?key=ENTITY]  fire-and-forget: 202 {"id"} once the record is buffered
    GET  /health                             200 {"connected": true, ...}, 503 while no broker is connected

The body is {"type": "<event type>", "data": <any JSON>}; it goes out in the envelope of ``envelope.py``
(the key is the entity id; headers carry the type, the source and the X-Correlation-ID of the request, one
is made when the request has none, and the response echoes it). Errors: a bad body is 422, a record
too large 413, back-pressure (no buffer room within max_block_ms) 503 with Retry-After, a broker that is
unreachable or a delivery that timed out 503 (``aiokprod.web.http_error``).

Shutdown (SIGTERM, Ctrl-C): uvicorn stops accepting connections and finishes the requests it has, then the
lifespan flushes the producer and stops it, so every event answered 200 or 202 has been handed to the broker.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any, Optional

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from _common import WEB_PRODUCER_SETTINGS, kafka_bootstrap
from envelope import Envelope, new_id, serialize, serialize_key

from aiokprod import Producer
from aiokprod.errors import KafkaError
from aiokprod.web import DeliveryTracker, http_error, producer_lifespan

SOURCE = "aiokprod-examples/fastapi_app"


class EventIn(BaseModel):
    type: str = Field(min_length=1, description="the event type, e.g. order.created")
    data: Any = Field(description="the event's payload: any JSON value")


class Delivered(BaseModel):
    topic: str
    partition: int
    offset: int


class Accepted(BaseModel):
    id: str


def get_producer(request: Request) -> Producer:
    return _state(request).producer


def get_deliveries(request: Request) -> DeliveryTracker:
    return _state(request).deliveries


def _state(request: Request):
    state = request.app.state
    if not hasattr(state, "producer"):
        raise RuntimeError("the app's lifespan has not run: no producer (serve it with uvicorn, or wrap it "
                           "in asgi_lifespan.LifespanManager in tests)")
    return state


ProducerDep = Annotated[Producer, Depends(get_producer)]
DeliveriesDep = Annotated[DeliveryTracker, Depends(get_deliveries)]
CorrelationId = Annotated[Optional[str], Header(alias="X-Correlation-ID", max_length=200)]


def create_app(bootstrap: Optional[str] = None, **producer_settings) -> FastAPI:
    """The app; ``bootstrap`` (else $KAFKA_BOOTSTRAP_SERVERS, else an embedded broker) and producer settings
    over ``WEB_PRODUCER_SETTINGS`` are for tests and embedding."""
    settings = {**WEB_PRODUCER_SETTINGS, **producer_settings}
    retry_after = settings["max_block_ms"] / 1000.0

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
        async with kafka_bootstrap(bootstrap) as servers:
            producer = Producer(servers, key_serializer=serialize_key, value_serializer=serialize, **settings)
            deliveries = DeliveryTracker()
            async with producer_lifespan(producer, deliveries=deliveries):
                app.state.producer = producer
                app.state.deliveries = deliveries
                try:
                    yield
                finally:
                    del app.state.producer, app.state.deliveries

    app = FastAPI(title="aiokprod events", lifespan=lifespan)

    @app.exception_handler(KafkaError)
    async def producer_error(request: Request, exc: KafkaError) -> JSONResponse:
        answer = http_error(exc, retry_after=retry_after)
        return JSONResponse({"detail": answer.detail}, status_code=answer.status, headers=dict(answer.headers))

    @app.post("/events/{topic}", response_model=Delivered)
    async def publish(topic: str, event: EventIn, producer: ProducerDep, response: Response,
                      key: Optional[str] = None, correlation_id: CorrelationId = None) -> Delivered:
        envelope = Envelope(type=event.type, data=event.data, source=SOURCE, entity_id=key,
                            correlation_id=correlation_id or new_id())
        response.headers["X-Correlation-ID"] = envelope.correlation_id
        metadata = await producer.send_and_wait(topic, envelope, key=key, headers=envelope.headers())
        return Delivered(topic=metadata.topic, partition=metadata.partition, offset=metadata.offset)

    @app.post("/events/{topic}/async", status_code=202, response_model=Accepted)
    async def publish_nowait(topic: str, event: EventIn, producer: ProducerDep, deliveries: DeliveriesDep,
                             response: Response, key: Optional[str] = None,
                             correlation_id: CorrelationId = None) -> Accepted:
        envelope = Envelope(type=event.type, data=event.data, source=SOURCE, entity_id=key,
                            correlation_id=correlation_id or new_id())
        response.headers["X-Correlation-ID"] = envelope.correlation_id
        # send() returns once the record is buffered (it waits only for buffer room or a new topic's
        # metadata); the tracker logs the record if its delivery fails later.
        deliveries.track(await producer.send(topic, envelope, key=key, headers=envelope.headers()))
        return Accepted(id=envelope.id)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state = _state(request)
        connected = state.producer.connected
        return JSONResponse({"connected": connected, "deliveries": state.deliveries.as_dict()},
                            status_code=200 if connected else 503)

    return app


app = create_app()
