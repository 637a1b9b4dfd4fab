"""The instrumentation seam: hooks a user registers with ``Producer(..., hooks=[...])``.

A hook is any object. It implements whichever of the small optional methods below it cares about; the
producer looks them up ONCE, when it is built (:class:`Hooks`), and keeps one tuple of bound methods per
event. A call site then costs one falsy check when nobody listens::

    if hooks.on_batch_acknowledged:
        for fn in hooks.on_batch_acknowledged:
            fn(topic, partition, records, base_offset, wire_bytes)

Events are per batch, per request, per connection or per metadata refresh, never per record, with one
exception: ``on_record_send``, which a tracing hook needs to start a span and put its trace context in the
record's headers. While a hook implements it, ``send()`` leaves its compiled fast path (as it does for
interceptors) so that every record passes through it; with no such hook the fast path is untouched.

The events (every argument positional; times in milliseconds)::

    on_producer_start(producer)                         started; e.g. to read producer.metrics() later
    on_record_send(topic, key, headers) -> ack | None   per record, before partitioning; ``headers`` is a
                                                        list the hook may append (str, bytes) pairs to;
                                                        ``ack(metadata, error)`` is called once with the
                                                        record's outcome (also when send() rejects it)
    on_batch_drained(topic, partition, records, uncompressed_bytes, wire_bytes, attempt)
    on_request_sent(node, batches, records, wire_bytes)
    on_request_answered(node, latency_ms, throttle_time_ms, error)    error None: an answer came
    on_batch_acknowledged(topic, partition, records, base_offset, wire_bytes)
    on_batch_retry(topic, partition, records, error, attempt)
    on_batch_failed(topic, partition, records, error)   every failure, fire-and-forget records included
    on_metadata_refresh(error)                          error None: the refresh succeeded
    on_connection_opened(node, host, port)
    on_connection_lost(node, host, port, error)
    on_buffer_wait(topic, partition, size)              a send() starts waiting for buffer_memory
    on_buffer_wait_done(waited_ms, exhausted)           ... and stops (exhausted: BufferExhaustedError)

A hook method that raises is logged and skipped: instrumentation never breaks delivery. Hooks run on the
event loop, inside the sender's bookkeeping: they must be quick and must not block.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

log = logging.getLogger("aiokprod.hooks")

#: Every event a hook may implement, by method name.
EVENTS = (
    "on_producer_start",
    "on_record_send",
    "on_batch_drained",
    "on_request_sent",
    "on_request_answered",
    "on_batch_acknowledged",
    "on_batch_retry",
    "on_batch_failed",
    "on_metadata_refresh",
    "on_connection_opened",
    "on_connection_lost",
    "on_buffer_wait",
    "on_buffer_wait_done",
)

_Fns = tuple[Callable[..., Any], ...]


def _guarded(hook: object, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` with its exceptions logged and swallowed (one frame more per call; calls are per batch)."""

    def call(*args: Any) -> Any:
        try:
            return method(*args)
        except Exception:
            log.exception("hook %r raised in %s; skipped", hook, name)
            return None

    call.__qualname__ = f"{type(hook).__name__}.{name}"
    return call


class Hooks:
    """The registered hooks, as one tuple of callables per event (empty: nobody listens).

    ``trusted`` hooks (the producer's own metrics) are called as they are; user hooks are wrapped so that
    one that raises is logged and skipped.
    """

    __slots__ = EVENTS + ("hooks",)

    on_producer_start: _Fns
    on_record_send: _Fns
    on_batch_drained: _Fns
    on_request_sent: _Fns
    on_request_answered: _Fns
    on_batch_acknowledged: _Fns
    on_batch_retry: _Fns
    on_batch_failed: _Fns
    on_metadata_refresh: _Fns
    on_connection_opened: _Fns
    on_connection_lost: _Fns
    on_buffer_wait: _Fns
    on_buffer_wait_done: _Fns

    def __init__(self, hooks: Iterable[object] = (), trusted: Iterable[object] = ()) -> None:
        if isinstance(hooks, (str, bytes)) or not hasattr(hooks, "__iter__"):
            raise TypeError(f"hooks must be a list of hook objects, got {hooks!r}")
        user = list(hooks)
        for hook in user:
            if not any(callable(getattr(hook, name, None)) for name in EVENTS):
                raise TypeError(f"hook {hook!r} implements none of the hook methods ({', '.join(EVENTS)})")
        own = list(trusted)
        self.hooks: tuple[object, ...] = tuple(own + user)
        for name in EVENTS:
            fns: list[Callable[..., Any]] = []
            for hook in own:
                method = getattr(hook, name, None)
                if callable(method):
                    fns.append(method)
            for hook in user:
                method = getattr(hook, name, None)
                if callable(method):
                    fns.append(_guarded(hook, name, method))
            setattr(self, name, tuple(fns))

    @property
    def per_record(self) -> bool:
        """Whether some hook needs every record (``send()`` then leaves its compiled fast path)."""
        return bool(self.on_record_send)


#: No hooks at all: for parts built without a producer (tests of the sans-IO pieces).
NO_HOOKS = Hooks()
