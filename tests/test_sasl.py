"""SASL mechanisms: our client and our test server, each against RFC 7677's exchange and against each other."""
from __future__ import annotations

import base64

import pytest

from aiokprod.errors import KafkaError
from aiokprod.sasl import (
    PlainMechanism,
    SaslAuthenticationError,
    ScramMechanism,
    create_mechanism,
)
from sasl_server import SaslServerError, create_server_mechanism

# RFC 7677 section 3: SCRAM-SHA-256, user "user", password "pencil".
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE_SUFFIX = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_server(users=None):
    return create_server_mechanism(
        "SCRAM-SHA-256",
        users if users is not None else {"user": "pencil"},
        salt=base64.b64decode(RFC_SALT_B64),
        iterations=4096,
        nonce_suffix=RFC_SERVER_NONCE_SUFFIX,
    )


def run_exchange(client, server):
    """Drive a client against a server in memory the way a connection would; return the messages."""
    transcript = []
    message = client.initial_response()
    while message is not None:
        transcript.append(message)
        answer = server.evaluate(message)
        transcript.append(answer)
        message = client.evaluate(answer)
    return transcript


# ---------------------------------------------------------------- RFC 7677 vector, each side on its own

def test_client_matches_rfc7677_vector():
    client = create_mechanism("SCRAM-SHA-256", "user", "pencil", nonce=RFC_CLIENT_NONCE)
    assert client.name == "SCRAM-SHA-256"
    assert client.initial_response() == RFC_CLIENT_FIRST
    assert client.evaluate(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert not client.complete
    assert client.evaluate(RFC_SERVER_FINAL) is None
    assert client.complete


def test_server_matches_rfc7677_vector():
    server = rfc_server()
    assert server.evaluate(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.evaluate(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.complete and server.username == "user"


def test_client_and_server_reproduce_the_vector_together():
    client = create_mechanism("SCRAM-SHA-256", "user", "pencil", nonce=RFC_CLIENT_NONCE)
    assert run_exchange(client, rfc_server()) == [
        RFC_CLIENT_FIRST, RFC_SERVER_FIRST, RFC_CLIENT_FINAL, RFC_SERVER_FINAL,
    ]


# ---------------------------------------------------------------- client against server

@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_client_against_server(mechanism):
    users = {"alice": "s3cret wörd", "bob": "other"}
    client = create_mechanism(mechanism, "alice", "s3cret wörd")
    server = create_server_mechanism(mechanism, users)
    run_exchange(client, server)
    assert client.complete and server.complete
    assert server.username == "alice"


def test_scram_sha512_proof_length():
    client = create_mechanism("SCRAM-SHA-512", "alice", "pw")
    server = create_server_mechanism("SCRAM-SHA-512", {"alice": "pw"})
    _, _, client_final, _ = run_exchange(client, server)
    proof = base64.b64decode(client_final.rsplit(b",p=", 1)[1])
    assert len(proof) == 64


def test_user_name_with_comma_and_equals_is_escaped():
    name = "a=b,c"
    client = create_mechanism("SCRAM-SHA-256", name, "pw", nonce="abc")
    assert client.initial_response() == b"n,,n=a=3Db=2Cc,r=abc"
    # and the server unescapes it back to the stored user name
    client = create_mechanism("SCRAM-SHA-256", name, "pw")
    server = create_server_mechanism("SCRAM-SHA-256", {name: "pw"})
    run_exchange(client, server)
    assert server.username == name


def test_plain_initial_response():
    client = create_mechanism("PLAIN", "user", "pass")
    assert isinstance(client, PlainMechanism)
    assert client.initial_response() == b"\0user\0pass"
    assert not client.complete
    assert client.evaluate(b"") is None
    assert client.complete


def test_unknown_mechanism_is_named():
    with pytest.raises(ValueError, match="GSSAPI"):
        create_mechanism("GSSAPI", "u", "p")


def test_fresh_nonces_differ():
    first = create_mechanism("SCRAM-SHA-256", "u", "p").initial_response()
    second = create_mechanism("SCRAM-SHA-256", "u", "p").initial_response()
    assert first != second


# ---------------------------------------------------------------- failures, both sides

@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_wrong_password_rejected_by_server(mechanism):
    client = create_mechanism(mechanism, "alice", "wrong")
    server = create_server_mechanism(mechanism, {"alice": "right"})
    with pytest.raises(SaslServerError, match="(?i)authentication failed"):
        run_exchange(client, server)
    assert not server.complete and not client.complete


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_unknown_user_rejected_by_server(mechanism):
    client = create_mechanism(mechanism, "mallory", "x")
    server = create_server_mechanism(mechanism, {"alice": "x"})
    with pytest.raises(SaslServerError):
        run_exchange(client, server)


def test_client_with_wrong_password_rejects_rfc_server_signature():
    # The RFC's server knows "pencil"; a client holding another password computes another server
    # signature, so the server's real v= must not verify: mutual authentication catches the mismatch.
    client = create_mechanism("SCRAM-SHA-256", "user", "pencil2", nonce=RFC_CLIENT_NONCE)
    client.initial_response()
    client_final = client.evaluate(RFC_SERVER_FIRST)
    assert client_final != RFC_CLIENT_FINAL
    with pytest.raises(SaslAuthenticationError, match="signature"):
        client.evaluate(RFC_SERVER_FINAL)
    assert not client.complete


def test_client_rejects_server_that_does_not_know_the_password():
    # An impostor holds "guess" for alice. It cannot check alice's proof, but it can still answer with the
    # signature its own credentials give: exactly what an honest server holding "guess" would send to a
    # client holding "guess" with the same nonces and salt (the signed auth message excludes the proof).
    salt = b"0123456789abcdef"
    client = create_mechanism("SCRAM-SHA-256", "alice", "right", nonce="clientnonce")
    twin = create_mechanism("SCRAM-SHA-256", "alice", "guess", nonce="clientnonce")
    impostor = create_server_mechanism("SCRAM-SHA-256", {"alice": "guess"}, nonce_suffix="srv", salt=salt)
    client_first, server_first, _, forged_final = run_exchange(twin, impostor)
    assert client.initial_response() == client_first
    client.evaluate(server_first)
    with pytest.raises(SaslAuthenticationError, match="signature"):
        client.evaluate(forged_final)
    assert not client.complete


def test_client_reports_server_error():
    client = create_mechanism("SCRAM-SHA-256", "user", "pencil", nonce=RFC_CLIENT_NONCE)
    client.initial_response()
    client.evaluate(RFC_SERVER_FIRST)
    with pytest.raises(SaslAuthenticationError, match="invalid-proof") as info:
        client.evaluate(b"e=invalid-proof")
    assert isinstance(info.value, KafkaError)


@pytest.mark.parametrize(
    "server_first, reason",
    [
        (b"r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1", "iterations"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096", "malformed"),
        (b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "extension"),
        (b"garbage", "malformed"),
    ],
)
def test_client_rejects_bad_server_first(server_first, reason):
    client = create_mechanism("SCRAM-SHA-256", "user", "pencil", nonce=RFC_CLIENT_NONCE)
    client.initial_response()
    with pytest.raises(SaslAuthenticationError, match=reason):
        client.evaluate(server_first)


def test_client_state_machine_refuses_out_of_order_calls():
    client = ScramMechanism("SCRAM-SHA-256", "user", "pencil")
    with pytest.raises(SaslAuthenticationError):
        client.evaluate(b"r=x,s=eA==,i=4096")
    plain = PlainMechanism("u", "p")
    with pytest.raises(SaslAuthenticationError):
        plain.evaluate(b"")


def test_server_rejects_tampered_nonce_and_channel_binding():
    client = create_mechanism("SCRAM-SHA-256", "user", "pencil", nonce=RFC_CLIENT_NONCE)
    server = rfc_server()
    server.evaluate(client.initial_response())
    with pytest.raises(SaslServerError, match="nonce"):
        server.evaluate(RFC_CLIENT_FINAL.replace(b"r=rOpr", b"r=XOpr"))
    server = rfc_server()
    server.evaluate(RFC_CLIENT_FIRST)
    with pytest.raises(SaslServerError, match="channel binding"):
        server.evaluate(RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"))
