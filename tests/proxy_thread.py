"""The machinery the test proxies share: an event loop in a background thread, and a clean stop.

Each proxy runs on its own loop in its own thread, so that a synchronous test (confluent-kafka, kafka-python)
and an async test (on asyncio's loop or uvloop's) can both use it, and so that a test blocking its own loop
cannot stall the proxy. Everything the proxy does happens on its loop; the public methods hop onto it with
``run_coroutine_threadsafe``/``call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Awaitable, Callable


class ThreadedProxy:
    """Base class: subclasses implement ``_serve()`` (start listeners) and ``_handle(reader, writer, port)``.

    ``start()``/``stop()`` are synchronous and idempotent; the class is also a (sync and async) context
    manager. ``stop()`` closes the listeners, cancels every connection task, closes every socket and joins
    the thread, so nothing leaks into the next test.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # Unexpected exceptions on the proxy's loop: in connection handlers, in callbacks and tasks (the
        # loop's exception handler), and in shutdown. A proxy that broke mid-test would otherwise show up
        # only as a confusing client-side failure, or not at all; leaving a ``with`` block fails on them.
        self.errors: list[BaseException] = []

    # ---------------------------------------------------------------- lifecycle (called from any thread)

    def start(self, timeout: float = 10.0):
        if self._thread is not None:
            return self
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        loop.set_exception_handler(self._loop_exception)

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # run_forever returned because stop() asked; close what is left on this thread.
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}-loop", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        try:
            self.call(self._serve(), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            self.call(self._shutdown(), timeout)
        except Exception as exc:  # noqa: BLE001 - recorded: a proxy that cannot stop cleanly is a failure
            self.errors.append(exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:
            self.raise_if_failed()

    async def __aenter__(self):
        # Starting blocks briefly on another thread; keep the caller's loop free while it does.
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await asyncio.to_thread(self.stop)
        if exc_type is None:
            self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """AssertionError naming every exception the proxy itself raised (not its clients' errors)."""
        if self.errors:
            details = "; ".join(f"{type(e).__name__}: {e}" for e in self.errors)
            raise AssertionError(f"{type(self).__name__} raised {len(self.errors)} exception(s): {details}")

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError)):
            return  # a peer went away, or a socket was aborted at a cut: normal for a proxy
        self.errors.append(exc if exc is not None else RuntimeError(context.get("message", repr(context))))

    @property
    def running(self) -> bool:
        return self._thread is not None

    def call(self, coro: Awaitable[Any], timeout: float | None = 10.0) -> Any:
        """Run ``coro`` on the proxy's loop and wait for its result (from a thread other than the loop's)."""
        if self._loop is None:
            raise RuntimeError("proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is None:
            raise RuntimeError("proxy is not running")
        self._loop.call_soon_threadsafe(fn, *args)

    # ---------------------------------------------------------------- on the proxy's loop

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _listen(self, port: int = 0, ssl=None) -> int:
        """Start one listener; return its port. Each accepted connection runs ``_handle`` in a tracked task."""
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            self._tasks.add(task)
            self._writers.add(writer)
            try:
                await self._handle(reader, writer, bound_port)
            except asyncio.CancelledError:
                pass
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                pass  # a peer went away: normal for a proxy
            except Exception as exc:  # noqa: BLE001 - kept for the test to inspect, never swallowed silently
                self.errors.append(exc)
            finally:
                self._tasks.discard(task)
                self._writers.discard(writer)
                close_writer(writer)

        server = await asyncio.start_server(accepted, self.host, port, ssl=ssl)
        self._servers.append(server)
        bound_port = server.sockets[0].getsockname()[1]
        return bound_port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        raise NotImplementedError

    def track_writer(self, writer: asyncio.StreamWriter) -> None:
        """Register an upstream socket so that stop() and cut_connections() close it too."""
        self._writers.add(writer)

    async def _close_connections(self) -> None:
        for writer in list(self._writers):
            close_writer(writer)
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        await self._close_connections()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()

    def cut_connections(self) -> None:
        """Close every client and upstream connection now (listeners stay open)."""
        self.call(self._close_connections())


def close_writer(writer: asyncio.StreamWriter) -> None:
    # abort() rather than close() for TLS and plain sockets alike: we want the peer to see the cut at once,
    # not after a graceful TLS shutdown that a blocked peer might never complete.
    transport = writer.transport
    if transport is None or transport.is_closing():
        return
    with contextlib.suppress(Exception):
        transport.abort()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunk: int = 65536) -> None:
    """Copy bytes until EOF; then close the other side too (Kafka connections are never half-closed)."""
    try:
        while True:
            data = await reader.read(chunk)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        close_writer(writer)


async def pump_both(client_reader, client_writer, upstream_reader, upstream_writer) -> None:
    """Relay bytes both ways until either side closes, then close both."""
    tasks = [
        asyncio.ensure_future(pump(client_reader, upstream_writer)),
        asyncio.ensure_future(pump(upstream_reader, client_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        close_writer(client_writer)
        close_writer(upstream_writer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
