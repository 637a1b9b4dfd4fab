"""Server side of SASL PLAIN and SCRAM-SHA-256/512, for tests only (the SASL gateway and test_sasl.py).

Written independently of ``aiokprod.sasl`` (no shared helpers) so that it is a second opinion on the
client, and both are checked against RFC 7677's published exchange. Users come from a dict
``{username: password}``; a SCRAM server derives the stored credentials (StoredKey, ServerKey) from the
password the way a real server does when the user is created, then never looks at the password again.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class SaslServerError(Exception):
    """The client failed to authenticate. ``str(exc)`` is safe to send back to the client."""


class ServerMechanism:
    name = ""

    def __init__(self) -> None:
        self.complete = False
        self.username: str | None = None

    def evaluate(self, response: bytes) -> bytes:
        """Process one client message and return the server's answer (raise SaslServerError to reject)."""
        raise NotImplementedError


class PlainServer(ServerMechanism):
    """RFC 4616: one message ``authzid NUL authcid NUL passwd``; the answer is empty."""

    name = "PLAIN"

    def __init__(self, users: dict[str, str]) -> None:
        super().__init__()
        self._users = users

    def evaluate(self, response: bytes) -> bytes:
        if self.complete:
            raise SaslServerError("PLAIN exchange already complete")
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SaslServerError("malformed PLAIN message")
        authzid, user, password = (p.decode("utf-8", "replace") for p in parts)
        # Kafka's PlainSaslServer only lets a user act as itself.
        if authzid and authzid != user:
            raise SaslServerError("authorization id differs from the user name")
        expected = self._users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise SaslServerError("Authentication failed: invalid username or password")
        self.username = user
        self.complete = True
        return b""


_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def _attrs(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise SaslServerError(f"malformed SCRAM attribute {part!r}")
        out.append((part[0], part[2:]))
    return out


def _unescape_saslname(name: str) -> str:
    # RFC 5802 5.1: only "=3D" and "=2C" may follow "="; anything else is an error.
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        if ch == "=":
            code = name[i + 1:i + 3]
            if code == "3D":
                out.append("=")
            elif code == "2C":
                out.append(",")
            else:
                raise SaslServerError("invalid escape in SCRAM user name")
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class ScramServer(ServerMechanism):
    """RFC 5802 server: answer client-first with salt and iterations, check the proof, sign the exchange.

    ``salt`` and ``nonce_suffix`` are fixed only by tests that replay RFC 7677's vector.
    """

    def __init__(
        self,
        name: str,
        users: dict[str, str],
        *,
        iterations: int = 4096,
        salt: bytes | None = None,
        nonce_suffix: str | None = None,
    ) -> None:
        super().__init__()
        if name not in _HASHES:
            raise ValueError(f"unknown SCRAM mechanism {name!r}")
        self.name = name
        self._hash = _HASHES[name]
        self._users = users
        self._iterations = iterations
        self._salt = salt
        self._nonce_suffix = nonce_suffix if nonce_suffix is not None else secrets.token_urlsafe(18)
        self._step = 0
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._stored_key = b""
        self._server_key = b""
        self._known_user = False
        self._claimed_user = ""

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self._hash).digest()

    def evaluate(self, response: bytes) -> bytes:
        try:
            text = response.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslServerError("SCRAM message is not UTF-8") from None
        if self._step == 0:
            return self._server_first_message(text)
        if self._step == 1:
            return self._server_final_message(text)
        raise SaslServerError("SCRAM exchange already complete")

    def _server_first_message(self, text: str) -> bytes:
        # gs2-header = cbind-flag "," [authzid] ","
        pieces = text.split(",", 2)
        if len(pieces) != 3:
            raise SaslServerError("malformed SCRAM client-first message")
        cbind, authzid, bare = pieces
        if cbind.startswith("p="):
            raise SaslServerError("channel binding is not supported")
        if cbind not in ("n", "y"):
            raise SaslServerError("malformed GS2 header")
        if authzid and not authzid.startswith("a="):
            raise SaslServerError("malformed authorization id")
        attrs = _attrs(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise SaslServerError("client-first must start with n= and r=")
        if any(key == "m" for key, _ in attrs[2:]):
            raise SaslServerError("unsupported mandatory extension")
        user = _unescape_saslname(attrs[0][1])
        client_nonce = attrs[1][1]
        if not client_nonce:
            raise SaslServerError("empty client nonce")
        if authzid and _unescape_saslname(authzid[2:]) != user:
            raise SaslServerError("authorization id differs from the user name")
        self._claimed_user = user
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = bare

        password = self._users.get(user)
        salt = self._salt if self._salt is not None else secrets.token_bytes(16)
        # An unknown user still gets a salt and fails only at the proof, so the first answer does not tell
        # a prober which user names exist (RFC 5802 section 5.1, "mock" response).
        self._known_user = password is not None
        salted = hashlib.pbkdf2_hmac(
            self._hash, (password or secrets.token_hex(16)).encode("utf-8"), salt, self._iterations
        )
        self._stored_key = hashlib.new(self._hash, self._hmac(salted, b"Client Key")).digest()
        self._server_key = self._hmac(salted, b"Server Key")

        self._nonce = client_nonce + self._nonce_suffix
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={self._iterations}"
        self._step = 1
        return self._server_first.encode("utf-8")

    def _server_final_message(self, text: str) -> bytes:
        # The proof is always the last attribute; the auth message covers everything before ",p=".
        head, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise SaslServerError("client-final has no proof")
        attrs = _attrs(head)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise SaslServerError("client-final must start with c= and r=")
        if base64.b64decode(attrs[0][1]) != self._gs2_header.encode("utf-8"):
            raise SaslServerError("channel binding data does not match the GS2 header")
        if attrs[1][1] != self._nonce:
            raise SaslServerError("nonce mismatch")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise SaslServerError("malformed proof") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{head}".encode("utf-8")
        client_signature = self._hmac(self._stored_key, auth_message)
        if len(proof) != len(client_signature):
            raise SaslServerError("proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        self._step = 2
        if not self._known_user or not hmac.compare_digest(
            hashlib.new(self._hash, client_key).digest(), self._stored_key
        ):
            # Same message for unknown user and wrong password: no user enumeration.
            raise SaslServerError(f"Authentication failed during authentication due to invalid credentials with SASL mechanism {self.name}")
        self.username = self._claimed_user
        self.complete = True
        return b"v=" + base64.b64encode(self._hmac(self._server_key, auth_message))


SERVER_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def create_server_mechanism(name: str, users: dict[str, str], **options) -> ServerMechanism:
    if name == "PLAIN":
        return PlainServer(users)
    if name in _HASHES:
        return ScramServer(name, users, **options)
    raise ValueError(f"unsupported SASL mechanism {name!r}")
