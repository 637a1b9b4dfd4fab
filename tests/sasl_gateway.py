"""A SASL-terminating gateway in front of the embedded broker (Tansu accepts no SASL login of its own).

It speaks the server side of Kafka's SASL exchange on each client connection, then, once the client has
authenticated, relays bytes to the broker untouched:

    client                          gateway                          broker
    ApiVersions  ----------------->  forwarded  -------------------> answered, relayed back
    SaslHandshake(mechanism) ------> answered here (v0 or v1)
    SaslAuthenticate(token) -------> answered here (v0-v2), repeated until the mechanism completes
      (handshake v0: raw size-prefixed tokens instead of SaslAuthenticate, the pre-KIP-152 form)
    everything else  ===============================================> byte relay both ways

Anything else before authentication closes the connection, as a Kafka broker does. A failed login gets a
SaslAuthenticate answer with error 58 (SASL_AUTHENTICATION_FAILED) and the reason, then the connection is
closed. ``stats`` counts what happened so tests can assert that the client really went through SASL.
"""
from __future__ import annotations

import asyncio
from collections import Counter

from aiokprod.protocol import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from kafka_frames import RequestInfo, encode_response, frame, read_frame
from proxy_thread import ThreadedProxy, close_writer, pump_both
from sasl_server import SERVER_MECHANISMS, SaslServerError, create_server_mechanism

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58


class SaslGateway(ThreadedProxy):
    """Authenticate clients against ``users`` ({name: password}), then relay them to the broker.

    ``mechanisms`` limits what the handshake offers; ``scram_iterations`` is the PBKDF2 count sent to
    clients. After :meth:`start`, ``port``/``bootstrap`` say where to connect.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        users: dict[str, str],
        mechanisms: tuple[str, ...] = SERVER_MECHANISMS,
        scram_iterations: int = 4096,
        listen_port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host)
        unknown = set(mechanisms) - set(SERVER_MECHANISMS)
        if unknown:
            raise ValueError(f"unsupported mechanisms {sorted(unknown)}")
        self.upstream = (upstream_host, upstream_port)
        self.users = dict(users)
        self.mechanisms = tuple(mechanisms)
        self.scram_iterations = scram_iterations
        self._listen_port = listen_port
        self.port: int | None = None
        # "auth_ok:<MECH>", "auth_failed:<MECH>", "handshake_v<N>", "authenticate_v<N>", "api_versions",
        # "unsupported_mechanism", "illegal_state"; plus the users who logged in.
        self.stats: Counter[str] = Counter()
        self.authenticated_users: list[str] = []

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve(self) -> None:
        self.port = await self._listen(self._listen_port)

    async def _handle(self, reader, writer, port) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.track_writer(up_writer)
        try:
            if await self._authenticate(reader, writer, up_reader, up_writer):
                await pump_both(reader, writer, up_reader, up_writer)
        finally:
            close_writer(up_writer)

    async def _authenticate(self, reader, writer, up_reader, up_writer) -> bool:
        """Run the pre-authentication part of the connection; True once the client is authenticated."""
        mechanism = None
        handshake_version = None
        while True:
            payload = await read_frame(reader)
            if payload is None:
                return False

            if mechanism is not None and handshake_version == 0:
                # Handshake v0: the client now sends bare SASL tokens, each size-prefixed, no Kafka header.
                # There is no way to report an error in this form: a failure just closes the connection.
                try:
                    answer = mechanism.evaluate(payload)
                except SaslServerError:
                    self.stats[f"auth_failed:{mechanism.name}"] += 1
                    return False
                writer.write(frame(answer))
                await writer.drain()
                if mechanism.complete:
                    return self._logged_in(mechanism)
                continue

            request = RequestInfo(payload)
            if request.api_key == API_VERSIONS:
                # The client learns SaslHandshake/SaslAuthenticate versions from here, so the broker's
                # answer (it advertises both) is the right one to give. Only one request is in flight before
                # authentication, so the next upstream frame is this answer.
                self.stats["api_versions"] += 1
                up_writer.write(frame(payload))
                await up_writer.drain()
                answer = await read_frame(up_reader)
                if answer is None:
                    return False
                writer.write(frame(answer))
                await writer.drain()
                continue

            if request.api_key == SASL_HANDSHAKE and mechanism is None:
                self.stats[f"handshake_v{request.api_version}"] += 1
                asked = SaslHandshakeRequest.decode(request.body(payload), request.api_version).mechanism
                ok = asked in self.mechanisms
                writer.write(encode_response(request, SaslHandshakeResponse(
                    error_code=0 if ok else UNSUPPORTED_SASL_MECHANISM, mechanisms=list(self.mechanisms))))
                await writer.drain()
                if not ok:
                    # Kafka brokers close after refusing a mechanism; the client may reconnect and retry.
                    self.stats["unsupported_mechanism"] += 1
                    return False
                options = {"iterations": self.scram_iterations} if asked.startswith("SCRAM") else {}
                mechanism = create_server_mechanism(asked, self.users, **options)
                handshake_version = request.api_version
                continue

            if request.api_key == SASL_AUTHENTICATE and mechanism is not None:
                self.stats[f"authenticate_v{request.api_version}"] += 1
                token = SaslAuthenticateRequest.decode(request.body(payload), request.api_version).auth_bytes
                try:
                    answer = mechanism.evaluate(bytes(token))
                except SaslServerError as exc:
                    self.stats[f"auth_failed:{mechanism.name}"] += 1
                    writer.write(encode_response(request, SaslAuthenticateResponse(
                        error_code=SASL_AUTHENTICATION_FAILED, error_message=str(exc), auth_bytes=b"")))
                    await writer.drain()
                    return False
                writer.write(encode_response(request, SaslAuthenticateResponse(auth_bytes=answer)))
                await writer.drain()
                if mechanism.complete:
                    return self._logged_in(mechanism)
                continue

            # Any other request (or a second handshake) before authentication: the broker's behaviour
            # is to drop the connection, and clients must treat that as an authentication failure.
            self.stats["illegal_state"] += 1
            return False

    def _logged_in(self, mechanism) -> bool:
        self.stats[f"auth_ok:{mechanism.name}"] += 1
        self.authenticated_users.append(mechanism.username)
        return True
