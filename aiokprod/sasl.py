"""Sans-IO client side of the SASL mechanisms Kafka brokers offer: PLAIN and SCRAM-SHA-256/512.

No sockets here: the connection asks a mechanism for its first message, sends it in a SaslAuthenticate
request, and feeds each answer's ``auth_bytes`` back through :meth:`SaslMechanism.evaluate` until that
returns ``None``. That keeps the state machine testable against fixed vectors (RFC 7677 section 3).

SCRAM follows RFC 5802 with the hash of RFC 7677 (SHA-256) or SHA-512. Like Kafka's own client we do not
apply SASLprep to the user name or password: Kafka's broker (``ScramFormatter``) stores credentials from the
plain UTF-8 bytes, so normalising here would make logins fail for non-ASCII passwords that Java accepts.
"""
from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from typing import Any

from aiokprod.errors import AuthenticationError as _AuthBase

__all__ = [
    "SaslAuthenticationError",
    "SaslMechanism",
    "PlainMechanism",
    "ScramMechanism",
    "MECHANISMS",
    "create_mechanism",
]


class SaslAuthenticationError(_AuthBase):
    """The SASL exchange failed: bad credentials, a server we cannot verify, or a malformed message."""

    retriable = False


class SaslMechanism:
    """One client-side SASL exchange. Use a fresh instance per connection."""

    name: str = ""

    def __init__(self) -> None:
        self.complete = False

    def initial_response(self) -> bytes:
        """The first client message (sent before the server has said anything)."""
        raise NotImplementedError

    def evaluate(self, challenge: bytes) -> bytes | None:
        """Feed the server's message; return the next client message, or ``None`` when done."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} complete={self.complete}>"


class PlainMechanism(SaslMechanism):
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in one message; the server answers with nothing."""

    name = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        super().__init__()
        # NUL separates the fields, so a NUL inside one would let a user name smuggle a different identity.
        if "\0" in username or "\0" in password:
            raise ValueError("PLAIN user names and passwords cannot contain NUL")
        self._username = username
        self._password = password
        self._sent = False

    def initial_response(self) -> bytes:
        if self._sent:
            raise SaslAuthenticationError("PLAIN: initial response already sent")
        self._sent = True
        # Empty authorization id: act as the authenticated user, which is what Kafka expects.
        return b"\0" + self._username.encode() + b"\0" + self._password.encode()

    def evaluate(self, challenge: bytes) -> bytes | None:
        if not self._sent:
            raise SaslAuthenticationError("PLAIN: server message before the initial response")
        if self.complete:
            raise SaslAuthenticationError("PLAIN: exchange already complete")
        # A broker that rejects the password answers with an error code, not with these bytes, so any
        # answer that reaches us here means success. The bytes are empty from every broker we know of.
        self.complete = True
        return None


class _ScramState(enum.Enum):
    INITIAL = "initial"
    CLIENT_FIRST_SENT = "client-first sent"
    CLIENT_FINAL_SENT = "client-final sent"
    COMPLETE = "complete"
    FAILED = "failed"


# mechanism name -> hashlib name (also the digest argument of hashlib.pbkdf2_hmac and hmac.new).
_SCRAM_HASHES = {
    "SCRAM-SHA-256": "sha256",
    "SCRAM-SHA-512": "sha512",
}

# Kafka's Java client refuses fewer iterations than this (ScramMechanism.minIterations): a server, or a
# man in the middle, offering 1 iteration would make the proof cheap to brute-force offline.
MIN_SCRAM_ITERATIONS = 4096

# "n,," : no channel binding, no authorization identity. Kafka has no channel binding over TLS either.
_GS2_HEADER = b"n,,"


def _saslname(name: str) -> str:
    """RFC 5802 section 5.1: ``=`` and ``,`` in a user name become ``=3D`` and ``=2C``."""
    # "=" first, otherwise the "=" of "=2C" would itself be escaped.
    return name.replace("=", "=3D").replace(",", "=2C")


def _parse_attributes(message: bytes, what: str) -> dict[str, str]:
    """Split ``a=value,b=value`` into a dict; the RFC allows no commas inside values."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslAuthenticationError(f"SCRAM: {what} is not UTF-8") from exc
    attributes: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise SaslAuthenticationError(f"SCRAM: malformed {what}: {text!r}")
        attributes.setdefault(part[0], part[2:])
    return attributes


def _default_nonce() -> str:
    # RFC 5802: printable ASCII except ",". token_urlsafe gives [A-Za-z0-9_-], 24 bytes of entropy.
    return secrets.token_urlsafe(24)


class ScramMechanism(SaslMechanism):
    """RFC 5802 client: client-first, then client-final with the proof, then verify the server signature.

    ``nonce`` is for tests (RFC 7677's vector fixes the client nonce); leave it out otherwise.
    """

    def __init__(
        self,
        name: str,
        username: str,
        password: str,
        *,
        nonce: str | None = None,
        min_iterations: int = MIN_SCRAM_ITERATIONS,
    ) -> None:
        super().__init__()
        try:
            self._hash = _SCRAM_HASHES[name]
        except KeyError:
            raise ValueError(f"unknown SCRAM mechanism {name!r}; known: {sorted(_SCRAM_HASHES)}") from None
        self.name = name
        self._username = username
        self._password = password.encode("utf-8")
        self._nonce = nonce if nonce is not None else _default_nonce()
        if not self._nonce or "," in self._nonce or not self._nonce.isascii() or not self._nonce.isprintable():
            raise ValueError("a SCRAM nonce must be non-empty printable ASCII without ','")
        self._min_iterations = min_iterations
        self._state = _ScramState.INITIAL
        self._client_first_bare = f"n={_saslname(username)},r={self._nonce}".encode("utf-8")
        self._server_signature = b""

    @property
    def state(self) -> str:
        return self._state.value

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self._hash).digest()

    def _fail(self, message: str) -> SaslAuthenticationError:
        self._state = _ScramState.FAILED
        return SaslAuthenticationError(f"{self.name}: {message}")

    def initial_response(self) -> bytes:
        if self._state is not _ScramState.INITIAL:
            raise self._fail(f"initial response requested in state {self._state.value}")
        self._state = _ScramState.CLIENT_FIRST_SENT
        return _GS2_HEADER + self._client_first_bare

    def evaluate(self, challenge: bytes) -> bytes | None:
        if self._state is _ScramState.CLIENT_FIRST_SENT:
            return self._client_final(challenge)
        if self._state is _ScramState.CLIENT_FINAL_SENT:
            self._verify_server_final(challenge)
            return None
        raise self._fail(f"unexpected server message in state {self._state.value}")

    def _client_final(self, server_first: bytes) -> bytes:
        attrs = _parse_attributes(server_first, "server-first message")
        if "e" in attrs:
            raise self._fail(f"server error: {attrs['e']}")
        if "m" in attrs:
            # A mandatory extension we cannot understand: RFC 5802 says the client must fail.
            raise self._fail("server requires an unsupported extension")
        try:
            server_nonce = attrs["r"]
            salt = base64.b64decode(attrs["s"], validate=True)
            iterations = int(attrs["i"])
        except (KeyError, ValueError) as exc:
            raise self._fail(f"malformed server-first message: {server_first!r}") from exc
        # The server must extend our nonce, not replace it: otherwise a replayed server-first would pass.
        if not server_nonce.startswith(self._nonce) or len(server_nonce) == len(self._nonce):
            raise self._fail("server nonce does not extend the client nonce")
        if iterations < self._min_iterations:
            raise self._fail(f"server asks for {iterations} iterations, fewer than {self._min_iterations}")

        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        without_proof = b"c=" + base64.b64encode(_GS2_HEADER) + b",r=" + server_nonce.encode("ascii")
        auth_message = self._client_first_bare + b"," + server_first + b"," + without_proof
        client_signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        # Keep only what the last step needs; the salted password is as good as the password itself.
        self._server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        self._state = _ScramState.CLIENT_FINAL_SENT
        return without_proof + b",p=" + base64.b64encode(proof)

    def _verify_server_final(self, server_final: bytes) -> None:
        attrs = _parse_attributes(server_final, "server-final message")
        if "e" in attrs:
            raise self._fail(f"server error: {attrs['e']}")
        try:
            signature = base64.b64decode(attrs["v"], validate=True)
        except (KeyError, ValueError) as exc:
            raise self._fail(f"malformed server-final message: {server_final!r}") from exc
        # Mutual authentication: a server that does not know the password cannot produce this value.
        if not hmac.compare_digest(signature, self._server_signature):
            raise self._fail("server signature does not match (the server does not know the password)")
        self._state = _ScramState.COMPLETE
        self.complete = True


MECHANISMS = ("PLAIN", *_SCRAM_HASHES)


def create_mechanism(name: str, username: str, password: str, **options: Any) -> SaslMechanism:
    """A fresh client mechanism. ``options`` go to the SCRAM mechanism (``nonce``, ``min_iterations``)."""
    upper = name.upper()
    if upper == "PLAIN":
        if options:
            raise TypeError(f"PLAIN takes no options, got {sorted(options)}")
        return PlainMechanism(username, password)
    if upper in _SCRAM_HASHES:
        return ScramMechanism(upper, username, password, **options)
    raise ValueError(f"unknown SASL mechanism {name!r}; supported: {', '.join(MECHANISMS)}")
