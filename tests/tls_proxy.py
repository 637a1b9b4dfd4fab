"""A TLS-terminating TCP proxy in front of the plaintext embedded broker (Tansu cannot do TLS itself).

    with TlsProxy(broker.host, broker.port) as tls:
        ctx = tls.client_ssl_context()         # trusts the throwaway CA
        confluent: {"security.protocol": "SSL", "ssl.ca.location": tls.ca_file}

The certificates are made fresh for each :class:`TestCertificates` (a throwaway CA and a server certificate
for ``localhost`` and ``127.0.0.1`` signed by it) and written to a temporary directory. A CA plus a leaf,
rather than one self-signed leaf, because strict verifiers (OpenSSL's X509_V_FLAG_X509_STRICT, which newer
Pythons turn on by default) refuse a leaf that claims to be its own CA.

Note: the broker's Metadata still advertises its own plaintext port, so the proxy must be given the port the
broker advertises, or the broker must advertise the proxy (``EmbeddedBroker(advertised_port=...)``). For the
session broker, :class:`TlsProxy` rewrites nothing; tests that reconnect to advertised brokers must put a
Metadata-rewriting proxy behind it (``KafkaProxy`` does that) or use a dedicated broker.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile

from proxy_thread import ThreadedProxy, close_writer, pump_both


class TestCertificates:
    """A throwaway CA and a server certificate for localhost/127.0.0.1, as PEM files in a temp directory."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, hostnames: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)):
        # Imported here so that modules importing tls_proxy for other helpers do not need `cryptography`.
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.directory = tempfile.mkdtemp(prefix="aiokprod-tls-")
        now = datetime.datetime.now(datetime.timezone.utc)
        # Backdate a little: a clock skew between "now" here and OpenSSL's check must not fail the test.
        not_before = now - datetime.timedelta(hours=1)
        not_after = now + datetime.timedelta(days=2)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiokprod test CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        pem = serialization.Encoding.PEM
        self.ca_file = os.path.join(self.directory, "ca.pem")
        self.cert_file = os.path.join(self.directory, "server.pem")
        self.key_file = os.path.join(self.directory, "server-key.pem")
        with open(self.ca_file, "wb") as f:
            f.write(ca_cert.public_bytes(pem))
        with open(self.cert_file, "wb") as f:
            # Send the chain's leaf only; the client trusts the CA directly.
            f.write(cert.public_bytes(pem))
        with open(self.key_file, "wb") as f:
            f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the throwaway CA, with hostname checking on."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        return ctx

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class TlsProxy(ThreadedProxy):
    """Accept TLS on ``listen_port`` (0 = any free port) and relay plaintext to ``upstream_host:port``."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_port: int = 0,
        certificates: TestCertificates | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host)
        self.upstream = (upstream_host, upstream_port)
        self._owns_certs = certificates is None
        self.certificates = certificates
        self._listen_port = listen_port
        self.port: int | None = None
        self.connections = 0  # accepted TLS connections that completed the handshake

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        return self.certificates.ca_file

    def client_ssl_context(self) -> ssl.SSLContext:
        return self.certificates.client_context()

    def start(self, timeout: float = 10.0):
        if self.certificates is None:
            self.certificates = TestCertificates()
        return super().start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._owns_certs and self.certificates is not None:
            self.certificates.cleanup()
            self.certificates = None

    async def _serve(self) -> None:
        self.port = await self._listen(self._listen_port, ssl=self.certificates.server_context())

    async def _handle(self, reader, writer, port) -> None:
        # start_server has finished the TLS handshake before calling us.
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.track_writer(up_writer)
        try:
            await pump_both(reader, writer, up_reader, up_writer)
        finally:
            close_writer(up_writer)
