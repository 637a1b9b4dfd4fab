"""A producer inside a web app: its lifespan, fire-and-forget bookkeeping, and producer errors as HTTP answers.

Framework-free (no import of FastAPI, Starlette or aiohttp): ``examples/fastapi_app.py`` and
``examples/aiohttp_app.py`` use the same three pieces.

* :func:`producer_lifespan`: one producer for the app's lifetime. Enter it in the app's startup hook (a
  FastAPI/Starlette ``lifespan``, an aiohttp ``cleanup_ctx``); leaving it flushes what the handlers accepted,
  then stops the producer, and logs one summary line. By then the server has stopped taking requests and
  answered the ones it had (uvicorn and aiohttp both finish in-flight requests before running shutdown
  hooks), so an event answered 200 or 202 is in the buffer or already delivered, and the flush delivers it.
* :class:`DeliveryTracker`: a handler that answers before delivery (``202 Accepted``) hands the record's
  handle to ``track()``, so a later delivery failure is logged and counted instead of vanishing with the
  handle; the counts feed a health endpoint and the shutdown summary.
* :func:`http_error`: which HTTP answer a producer error deserves (status, message, headers), for an
  exception handler or middleware that catches :class:`~aiokprod.errors.KafkaError` once for every route.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import AsyncIterator, Mapping, Optional

from . import errors
from .handle import DeliveryHandle
from .producer import Producer

__all__ = ["DeliveryTracker", "HttpError", "http_error", "producer_lifespan"]

log = logging.getLogger("aiokprod.web")


@contextlib.asynccontextmanager
async def producer_lifespan(producer: Producer, *, stop_timeout: Optional[float] = None,
                            deliveries: Optional["DeliveryTracker"] = None) -> AsyncIterator[Producer]:
    """Start ``producer``; on exit flush it (within ``stop_timeout`` seconds, default the producer's
    ``stop_timeout_ms``), stop it, and log what it delivered (and, given ``deliveries``, what became of the
    fire-and-forget records).

    ``Producer.stop()`` is the flush-then-close: it sends everything buffered and waits for the answers, and
    only what is still undelivered after the timeout fails (``ProducerClosedError``), which the summary line
    and ``deliveries`` then count as failed. A producer that cannot reach its bootstrap servers fails here,
    at startup, so a misconfigured service does not come up.
    """
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop(stop_timeout)
        metrics = producer.metrics()
        summary = (f"producer stopped: {metrics['records_sent']} record(s) delivered, "
                   f"{metrics['record_errors']} failed")
        if deliveries is not None:
            summary += (f"; fire-and-forget: {deliveries.accepted} accepted, {deliveries.delivered} delivered, "
                        f"{deliveries.failed} failed, {deliveries.pending} pending")
        log.info("%s", summary)


class DeliveryTracker:
    """Outcome counts of records whose handles nobody awaits, and a log line for each that failed.

    ``track(handle)`` adds one done-callback to the handle (not the producer's hot path: the caller chose
    to look after the record). Counters only go up; ``pending`` is what is neither delivered nor failed yet.
    """

    def __init__(self, logger: Optional[logging.Logger] = None) -> None:
        self.accepted = 0
        self.delivered = 0
        self.failed = 0
        self._log = logger or log

    @property
    def pending(self) -> int:
        return self.accepted - self.delivered - self.failed

    def track(self, handle: DeliveryHandle) -> DeliveryHandle:
        """Count ``handle`` as accepted and watch its outcome; returns it."""
        self.accepted += 1
        handle.add_done_callback(self._done)
        return handle

    def _done(self, handle: DeliveryHandle) -> None:
        error: Optional[BaseException]
        if handle.cancelled():
            error = errors.KafkaError("delivery handle cancelled")
        else:
            error = handle.exception()
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        self._log.warning("fire-and-forget record not delivered: %s: %s", type(error).__name__, error)

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "delivered": self.delivered, "failed": self.failed,
                "pending": self.pending}


@dataclass(frozen=True)
class HttpError:
    """An HTTP answer for a producer error: ``status``, a one-line ``detail`` and extra ``headers``."""

    status: int
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)


def http_error(exc: BaseException, *, retry_after: float = 1.0) -> Optional[HttpError]:
    """The HTTP answer that ``exc``, raised by ``send()`` or by awaiting a delivery handle, deserves.

    * :class:`~aiokprod.errors.BufferExhaustedError` (``send()`` waited ``max_block_ms`` for buffer room:
      back-pressure): 503 with ``Retry-After`` (``retry_after`` seconds, rounded up): the service is up
      and asks the client to come back.
    * the record is too large, for this producer (:class:`~aiokprod.errors.RecordTooLargeError`) or for the
      broker (``MessageTooLargeError``, code 10): 413.
    * the broker is unreachable or too slow: a connection error, a delivery or metadata timeout
      (:class:`~aiokprod.errors.KafkaTimeoutError`, whose ``__cause__`` says what was tried), a retriable
      broker error, a producer that is stopping: 503, without ``Retry-After`` (nobody knows when it clears).
    * an invalid topic name (``InvalidTopicError``): 400, the client named it.
    * any other Kafka error (the broker refused the record, the producer failed): 502.
    * anything else: None. It is not a producer error; let the framework answer it (500).
    """
    if not isinstance(exc, errors.KafkaError):
        return None
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, errors.BufferExhaustedError):
        return HttpError(503, detail, {"Retry-After": str(max(1, math.ceil(retry_after)))})
    if isinstance(exc, (errors.RecordTooLargeError, errors.MessageTooLargeError)):
        return HttpError(413, detail)
    if isinstance(exc, errors.InvalidTopicError):
        return HttpError(400, detail)
    if exc.retriable or isinstance(exc, errors.ProducerClosedError):
        return HttpError(503, detail)
    return HttpError(502, detail)
