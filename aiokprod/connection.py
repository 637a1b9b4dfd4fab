"""One asyncio connection to one broker: framing, correlation ids, pipelining, timeouts, TLS and SASL.

Requests are written as soon as they are made and answered in order (Kafka answers a connection's requests
in the order it received them), so the pending requests are a FIFO and a response must carry the correlation
id at its head; anything else means the stream is corrupt and the connection is closed. There is no task per
request: ``data_received`` cuts frames and resolves each request's future directly.

A request that times out leaves the stream in an unknown state (its answer may still come, and would be taken
for the next request's), so, like the Java client, a timeout closes the connection and fails every request
pending on it with ``KafkaTimeoutError`` (client-side, retriable; not the broker's ``RequestTimedOutError``);
the caller decides whether to retry. The timer always tracks the earliest deadline among the pending
requests, so a short per-request ``timeout`` queued behind a longer one still fires on time.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import ssl
import struct
from collections.abc import Sequence
from typing import Any, Callable, Optional

from . import errors
from .protocol import ApiVersionsRequest, ApiVersionsResponse, SaslAuthenticateRequest, SaslAuthenticateResponse
from .protocol import SaslHandshakeRequest, SaslHandshakeResponse
from .protocol.primitives import Message
from .protocol.framing import decode_response_header, encode_request, request_header_version, response_header_version

log = logging.getLogger("aiokprod.connection")

# A response frame bigger than this is taken as a corrupt length rather than an allocation to make.
MAX_FRAME_SIZE = 512 * 1024 * 1024

# The response header version of each (api_key, api_version), worked out once (send_frame runs per request).
_HEADER_VERSIONS: dict[tuple[int, int], int] = {}

_I32 = struct.Struct(">i")

# The versions of each API this client can encode, lowest and highest (from the generated classes).
CLIENT_VERSIONS: dict[int, tuple[int, int]] = {}


class _Pending:
    __slots__ = ("correlation_id", "future", "response_class", "version", "header_version", "deadline", "sent_at")

    def __init__(self, correlation_id: int, future: asyncio.Future[Any], response_class: type[Message],
                 version: int, header_version: int, deadline: float, sent_at: float) -> None:
        self.correlation_id = correlation_id
        self.future = future
        self.response_class = response_class
        self.version = version
        self.header_version = header_version
        self.deadline = deadline
        self.sent_at = sent_at


class BrokerConnection(asyncio.Protocol):
    """Use ``await BrokerConnection.open(...)``; then ``request(...)`` returns a future of the response."""

    def __init__(self, host: str, port: int, *, node_id: int = -1, client_id: str = "aiokprod",
                 request_timeout_ms: int = 30000, ssl_context: Optional[ssl.SSLContext] = None, sasl_mechanism: Optional[str] = None,
                 sasl_username: Optional[str] = None, sasl_password: Optional[str] = None) -> None:
        self.host = host
        self.port = port
        self.node_id = node_id
        self.client_id = client_id
        self.request_timeout = request_timeout_ms / 1000.0
        self.ssl_context = ssl_context
        self.sasl_mechanism = sasl_mechanism
        self.sasl_username = sasl_username
        self.sasl_password = sasl_password
        self.api_versions: dict[int, tuple[int, int]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._transport: Optional[asyncio.Transport] = None
        self._buffer = bytearray()
        self._pending: collections.deque[_Pending] = collections.deque()
        # Correlation ids of requests sent expecting no answer (acks=0 Produce). Kafka brokers send none, but
        # some (Tansu) answer anyway; such an answer is recognised here and dropped, not taken for a corrupt
        # stream (which would close the connection and lose the writes still in its buffer). Answers come in
        # request order, so the ids before a recognised one are dropped too; the bound keeps a broker that
        # never answers from growing it.
        self._unanswered: collections.deque[int] = collections.deque(maxlen=4096)
        self._next_correlation_id = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_deadline = 0.0  # the time.monotonic() deadline self._timer was armed for
        self._closed_exc: Optional[BaseException] = None
        self._close_waiter: Optional[asyncio.Future[None]] = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Set by the owner (the cluster): called once with (connection, exc) when it closes.
        self.on_close: Optional[Callable[[BrokerConnection, BaseException], None]] = None
        self.on_writable: Optional[Callable[[], None]] = None  # after the transport's buffer drained below its low-water mark

    def __repr__(self) -> str:
        return f"<BrokerConnection node={self.node_id} {self.host}:{self.port}>"

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, host: str, port: int, *, connect_timeout_ms: Optional[int] = None,
                   **kwargs: Any) -> "BrokerConnection":
        connection = cls(host, port, **kwargs)
        timeout = (connect_timeout_ms / 1000.0) if connect_timeout_ms else connection.request_timeout
        try:
            await asyncio.wait_for(connection._open(), timeout)
        except asyncio.TimeoutError:
            connection.close(errors.KafkaConnectionError(f"timed out connecting to {host}:{port} after {timeout:.1f}s"))
            raise errors.KafkaConnectionError(f"timed out connecting to {host}:{port} after {timeout:.1f}s") from None
        except errors.KafkaError:
            connection.close()
            raise
        except OSError as exc:
            connection.close()
            raise errors.KafkaConnectionError(f"cannot connect to {host}:{port}: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    async def _open(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._close_waiter = loop.create_future()
        await loop.create_connection(
            lambda: self, self.host, self.port, ssl=self.ssl_context,
            server_hostname=self.host if self.ssl_context is not None else None,
        )
        await self._negotiate_versions()
        if self.sasl_mechanism:
            await self._authenticate()

    async def _negotiate_versions(self) -> None:
        # ApiVersions v3 carries the client's name; brokers that do not know v3 answer with error 35 and
        # their own range in a v0 body, after which v0 is what we speak.
        response = await self.request(ApiVersionsRequest(client_software_name="aiokprod",
                                                         client_software_version="0.1.0"), 3)
        if response.error_code == 35:
            response = await self.request(ApiVersionsRequest(), 0)
        if response.error_code:
            raise errors.for_code(response.error_code, "ApiVersions failed")
        self.api_versions = {item.api_key: (item.min_version, item.max_version) for item in response.api_keys}

    async def _authenticate(self) -> None:
        from .sasl import create_mechanism

        mechanism = create_mechanism(self.sasl_mechanism or "", self.sasl_username or "", self.sasl_password or "")
        handshake = await self.request(SaslHandshakeRequest(mechanism=mechanism.name),
                                       self.version_for(SaslHandshakeRequest, 1, 1))
        if handshake.error_code:
            raise _sasl_error(handshake.error_code,
                              f"broker {self.host}:{self.port} refused SASL mechanism {mechanism.name}; "
                              f"it offers {handshake.mechanisms}")
        version = self.version_for(SaslAuthenticateRequest)
        token: Optional[bytes] = mechanism.initial_response()
        while token is not None:
            answer = await self.request(SaslAuthenticateRequest(auth_bytes=token), version)
            if answer.error_code:
                raise _sasl_error(answer.error_code,
                                  f"SASL {mechanism.name} authentication to {self.host}:{self.port} failed: "
                                  f"{answer.error_message or 'no reason given'}")
            token = mechanism.evaluate(answer.auth_bytes or b"")
            if token is None or mechanism.complete:
                break

    def version_for(self, message_class: type[Message], low: Optional[int] = None, high: Optional[int] = None) -> int:
        """The highest version both sides support for this API (optionally capped to ``[low, high]``)."""
        client_low, client_high = message_class.VALID_VERSIONS
        if low is not None:
            client_low = max(client_low, low)
        if high is not None:
            client_high = min(client_high, high)
        api_key = message_class.API_KEY
        broker = self.api_versions.get(api_key) if api_key is not None else None
        if broker is None:
            raise errors.UnsupportedVersionError(
                f"broker {self.host}:{self.port} does not support {message_class.__name__[:-7]} (api key {message_class.API_KEY})")
        version = min(client_high, broker[1])
        if version < max(client_low, broker[0]):
            raise errors.UnsupportedVersionError(
                f"no common version of {message_class.__name__[:-7]}: client {client_low}-{client_high}, "
                f"broker {self.host}:{self.port} {broker[0]}-{broker[1]}")
        return version

    # -- requests -----------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed_exc is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def next_correlation_id(self) -> int:
        correlation_id = self._next_correlation_id
        self._next_correlation_id = (correlation_id + 1) & 0x7FFFFFFF
        return correlation_id

    def request(self, message: Message, version: int, *, expect_response: bool = True,
                timeout: Optional[float] = None) -> asyncio.Future[Any]:
        """Send ``message`` at ``version``; return a future of the decoded response (or None if no response)."""
        correlation_id = self.next_correlation_id()
        frame = encode_request(message, version, correlation_id, self.client_id)
        api_key = message.API_KEY
        if api_key is None:
            raise TypeError(f"{type(message).__name__} is not a request")
        return self.send_frame([frame], correlation_id, api_key, version,
                               response_class=RESPONSE_CLASSES[api_key] if expect_response else None,
                               timeout=timeout)

    def send_frame(self, buffers: Sequence[bytes | bytearray | memoryview], correlation_id: int, api_key: int,
                   version: int, *, response_class: Optional[type[Message]],
                   timeout: Optional[float] = None) -> asyncio.Future[Any]:
        """Write a pre-encoded request (a list of buffers) and register for its response."""
        loop = self._loop
        transport = self._transport
        if loop is None or transport is None:
            raise errors.IllegalStateError(f"{self!r} is not open")
        future = loop.create_future()
        if self._closed_exc is not None:
            future.set_exception(self._closed_exc)
            return future
        transport.writelines(buffers)
        if response_class is None:
            self._unanswered.append(correlation_id)
            future.set_result(None)
            return future
        now = time.monotonic()
        deadline = now + (timeout if timeout is not None else self.request_timeout)
        header_version = _HEADER_VERSIONS.get((api_key, version))
        if header_version is None:
            header_version = _HEADER_VERSIONS[(api_key, version)] = response_header_version(api_key, version)
        self._pending.append(_Pending(correlation_id, future, response_class, version, header_version, deadline, now))
        if self._timer is None:
            self._arm_timer()
        elif deadline < self._timer_deadline:
            # A shorter per-request timeout than the one the timer waits for: with the FIFO answered in
            # order, this request cannot be answered before the ones ahead of it, so waiting for their
            # deadline would let it overrun its own. Re-arm for the earlier deadline.
            self._timer.cancel()
            self._arm_timer()
        return future

    def _arm_timer(self) -> None:
        if self._pending:
            # Deadlines are in send order when every request uses the default timeout, so this is
            # usually the head; min() covers mixed per-request timeouts (the FIFO is short: in-flight only).
            deadline = min(item.deadline for item in self._pending)
            self._timer_deadline = deadline
            loop = self._loop
            if loop is not None:  # (there is nothing pending before open)
                self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._check_timeouts)
        else:
            self._timer = None

    def _check_timeouts(self) -> None:
        self._timer = None
        now = time.monotonic() + 0.001  # call_later may fire a hair early
        expired = next((item for item in self._pending if item.deadline <= now), None)
        if expired is not None:
            self.close(errors.KafkaTimeoutError(
                f"request to {self.host}:{self.port} (node {self.node_id}) got no answer within "
                f"{expired.deadline - expired.sent_at:.3g}s; connection closed"))
            return
        self._arm_timer()

    async def wait_writable(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._write_paused and self._closed_exc is None and self._loop is not None:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport: create_connection's

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            # The usual case: nothing left over from before, and ``data`` holds whole answers. Frames are
            # cut from it directly (one copy each), and only an incomplete tail is kept in the buffer.
            self._frames_from(data)
            return
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (size,) = _I32.unpack_from(buffer, start)
            if size < 4 or size > MAX_FRAME_SIZE:
                self.close(errors.CorruptFrameError(
                    f"impossible response size {size} from {self.host}:{self.port}"))
                return
            if end - start - 4 < size:
                break
            # A copy: decoded responses may keep slices of it, and the receive buffer is reused.
            frame = bytes(buffer[start + 4:start + 4 + size])
            start += 4 + size
            try:
                self._handle_frame(frame)
            except Exception as exc:  # a bug must not leave requests hanging: close and fail them
                log.exception("cannot handle a response from %s:%s", self.host, self.port)
                self.close(errors.CorruptFrameError(f"cannot handle a response from {self.host}:{self.port}: {exc!r}"))
            if self._closed_exc is not None:
                return
        if start:
            del buffer[:start]

    def _frames_from(self, data: bytes) -> None:
        """``data_received`` with an empty buffer: handle the whole frames in ``data``, keep the rest."""
        if type(data) is not bytes:  # (a transport hands bytes; anything else is copied so frames own theirs)
            data = bytes(data)
        start = 0
        end = len(data)
        unpack = _I32.unpack_from
        while end - start >= 4:
            (size,) = unpack(data, start)
            if size < 4 or size > MAX_FRAME_SIZE:
                self.close(errors.CorruptFrameError(
                    f"impossible response size {size} from {self.host}:{self.port}"))
                return
            stop = start + 4 + size
            if stop > end:
                break
            frame = data[start + 4:stop]  # bytes: a copy of its own, as decoded responses may keep slices
            start = stop
            try:
                self._handle_frame(frame)
            except Exception as exc:  # a bug must not leave requests hanging: close and fail them
                log.exception("cannot handle a response from %s:%s", self.host, self.port)
                self.close(errors.CorruptFrameError(f"cannot handle a response from {self.host}:{self.port}: {exc!r}"))
            if self._closed_exc is not None:
                return
        if start < end:
            self._buffer += data[start:] if start else data

    def _handle_frame(self, frame: bytes) -> None:
        if self._unanswered and self._is_unasked_answer(frame):
            return
        try:
            pending = self._pending.popleft()
        except IndexError:
            self.close(errors.CorruptFrameError(f"unexpected response from {self.host}:{self.port}: nothing pending"))
            return
        try:
            correlation_id, offset = decode_response_header(frame, pending.header_version)
            if correlation_id != pending.correlation_id:
                raise errors.CorruptFrameError(
                    f"response correlation id {correlation_id} from {self.host}:{self.port}, "
                    f"expected {pending.correlation_id}")
            body = memoryview(frame)[offset:]
            version = pending.version
            if (version > 0 and pending.response_class is ApiVersionsResponse and len(body) >= 2
                    and int.from_bytes(body[:2], "big", signed=True) == 35):
                # KIP-511: a broker that does not know this ApiVersions version answers UNSUPPORTED_VERSION
                # with a *v0* body (so any client can read it). Decoding it as the version we asked for
                # would fail and close the connection before _negotiate_versions could fall back to v0.
                version = 0
            response = pending.response_class.decode(body, version)
        except errors.CorruptFrameError as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            self.close(exc)
            return
        if not pending.future.done():
            pending.future.set_result(response)

    def _is_unasked_answer(self, frame: bytes) -> bool:
        """Is ``frame`` a broker's answer to a request sent expecting none? Then forget that id (and the
        older ones: answers come in order) and tell the caller to drop the frame."""
        if len(frame) < 4:
            return False
        correlation_id = int.from_bytes(frame[:4], "big", signed=True)
        if self._pending and self._pending[0].correlation_id == correlation_id:
            return False
        unanswered = self._unanswered
        if correlation_id not in unanswered:
            return False
        while unanswered.popleft() != correlation_id:
            pass
        return True

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters()
        if self.on_writable is not None:
            self.on_writable()

    @property
    def write_paused(self) -> bool:
        """The transport's write buffer is above its high-water mark: don't queue more (back-pressure,
        which acks=0 has no other source of)."""
        return self._write_paused

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._close_waiter is not None and not self._close_waiter.done():
            self._close_waiter.set_result(None)
        self.close(errors.KafkaConnectionError(
            f"connection to {self.host}:{self.port} (node {self.node_id}) lost" + (f": {exc}" if exc else "")))

    async def aclose(self, timeout: float = 2.0) -> None:
        """Close gracefully: what is already written (acks=0 produces!) still reaches the broker."""
        self.close(graceful=True)
        if self._close_waiter is not None and not self._close_waiter.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._close_waiter), timeout)
            except asyncio.TimeoutError:
                if self._transport is not None:
                    self._transport.abort()

    def close(self, exc: Optional[BaseException] = None, graceful: bool = False) -> None:
        """Close and fail every pending request with ``exc`` (a connection error by default).

        ``graceful`` lets the transport flush its write buffer first; otherwise it is aborted (a broken or
        corrupt stream must not be written to any more).
        """
        if self._closed_exc is not None:
            return
        self._closed_exc = exc or errors.KafkaConnectionError(
            f"connection to {self.host}:{self.port} (node {self.node_id}) closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            if graceful:
                self._transport.close()
            else:
                self._transport.abort()
        pending, self._pending = self._pending, collections.deque()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(self._closed_exc)
        self._wake_drain_waiters()
        if self._transport is None and self._close_waiter is not None and not self._close_waiter.done():
            self._close_waiter.set_result(None)
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self, self._closed_exc)


def _sasl_error(code: int, text: str) -> errors.AuthenticationError:
    """The broker's SASL codes (33, 34, 58) have classes that are AuthenticationErrors: use them, so callers
    can tell a refused mechanism from bad credentials. Any other code is still an authentication failure."""
    exc = errors.for_code(code, text)
    if isinstance(exc, errors.AuthenticationError):
        return exc
    return errors.AuthenticationError(f"{text} (error {code} {exc.name})")


def _response_classes() -> dict[int, type[Message]]:
    from . import protocol

    table: dict[int, type[Message]] = {}
    for name in dir(protocol):
        obj = getattr(protocol, name)
        if name.endswith("Response") and hasattr(obj, "API_KEY") and hasattr(obj, "decode"):
            table[obj.API_KEY] = obj
    return table


RESPONSE_CLASSES = _response_classes()
