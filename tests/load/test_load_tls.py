"""TLS and HTTP/2 with the httpx engine, against local servers with a throwaway certificate."""

from __future__ import annotations

import importlib.util
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dpt_load_server import H2Server, HttpServer

from pytest_dataplane.load import run

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command makes the test certificate"
)
needs_h2 = pytest.mark.skipif(
    importlib.util.find_spec("h2") is None, reason="HTTP/2 needs the h2 package (extra http2)"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out",
         str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _server_context(certificate: tuple[Path, Path], alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.set_alpn_protocols(alpn)
    return context


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[HttpServer]:
    server = HttpServer(tls=_server_context(certificate, ["http/1.1"]))
    try:
        yield server
    finally:
        server.close()


@needs_openssl
@pytest.mark.parametrize("connection", ["per-request", "pooled"])
def test_https_is_verified_against_the_given_ca(
    tls_server: HttpServer, certificate: tuple[Path, Path], connection: str
) -> None:
    result = run(
        tls_server.url, rate=50, duration=0.4, verify=str(certificate[0]), connection=connection
    )
    assert result.completed == result.scheduled == tls_server.state.requests == 20
    if connection == "per-request":
        assert tls_server.state.connections == 20
    else:
        assert tls_server.state.connections < 10  # kept alive and reused (20 requests)


@needs_openssl
def test_an_untrusted_certificate_is_an_error_unless_verification_is_off(
    tls_server: HttpServer,
) -> None:
    # The system's CAs do not know this self-signed certificate: every handshake fails.
    refused = run(tls_server.url, rate=20, duration=0.25)
    assert refused.completed == 0
    assert refused.error_kinds == {"other": 5}
    assert tls_server.state.requests == 0
    trusting = run(tls_server.url, rate=20, duration=0.25, verify=False)
    assert trusting.completed == 5


@needs_h2
@pytest.mark.parametrize("connection", ["per-request", "pooled"])
def test_http2_with_prior_knowledge(connection: str) -> None:
    server = H2Server()
    try:
        # A generous timeout: what is tested is the protocol, not how fast a busy machine
        # completes a TCP handshake (2 s was once not enough under a load average of 14).
        result = run(
            server.url, rate=50, duration=0.4, http2=True, connection=connection, timeout="10s"
        )
    finally:
        server.close()
    assert result.completed == result.scheduled == server.requests == 20
    if connection == "per-request":
        assert server.connections == 20
    else:
        assert server.connections < 10  # streams multiplexed on few connections
    assert result.extra["http2"] is True


@needs_h2
@needs_openssl
def test_http2_over_tls_by_alpn(certificate: tuple[Path, Path]) -> None:
    server = H2Server(tls=_server_context(certificate, ["h2"]))
    try:
        result = run(
            server.url, rate=50, duration=0.4, http2=True, verify=str(certificate[0]),
            connection="pooled",
        )  # fmt: skip
    finally:
        server.close()
    # The server speaks only h2: these responses prove the protocol was negotiated.
    assert result.completed == server.requests == 20
