"""The exporter child's POSTs (OtlpPoster): TLS trust, proxies and netrc taken from the environment as the SDK's
exporter takes them, against real HTTP(S) servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import certifi
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gateway.telemetry.span_child import OtlpPoster
from tests.conftest import free_port
from tests.identity.certs import make_ca, make_leaf

pytestmark = pytest.mark.usefixtures("clean_proxy_env")


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The poster reads the process environment (the exporter child's): none of what these tests set leaks in."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy", "NETRC", "CURL_CA_BUNDLE", "OTEL_EXPORTER_OTLP_CERTIFICATE",
                 "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def collector(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A collector stand-in answering every POST with 200; yields its base URL and the requests it took."""
    seen: list[web.Request] = []

    async def take(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.add_routes([web.post("/{tail:.*}", take)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def tls_collector_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a leaf of a private CA (for 127.0.0.1), and that CA's file."""
    ca = make_ca("otlp-ca")
    cert, key = make_leaf(ca, uris=[], dns=["localhost"], ip=True, server=True).write(directory, "collector")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    ca_path = directory / "otlp-ca.crt"
    ca_path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return context, ca_path


async def post(poster: OtlpPoster) -> bool:
    try:
        return await asyncio.to_thread(poster.post, b"", 1)
    finally:
        poster.close()


async def test_the_exporter_certificate_wins_over_requests_ca_bundle(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE override a session's `verify`: a collector behind a private CA was
    # refused wherever that variable was set (corporate images set it), whatever OTEL_..._CERTIFICATE said.
    context, ca_path = tls_collector_context(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    async with collector(context) as (url, seen):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(ca_path))
        assert await post(OtlpPoster(f"{url}/v1/traces", {}, os.environ)) is True
    assert [request.path for request in seen] == ["/v1/traces"]


async def test_requests_ca_bundle_is_trusted_without_an_exporter_certificate(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    context, ca_path = tls_collector_context(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_path))
    async with collector(context) as (url, seen):
        assert await post(OtlpPoster(f"{url}/v1/traces", {}, os.environ)) is True
    assert len(seen) == 1


async def test_an_untrusted_collector_certificate_loses_the_batch(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    context, _ = tls_collector_context(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    async with collector(context) as (url, seen):
        assert await post(OtlpPoster(f"{url}/v1/traces", {}, os.environ)) is False
    assert seen == [] and "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_a_proxy_from_the_environment_carries_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens: only the proxy can deliver
    async with collector() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        assert await post(OtlpPoster(nowhere, {}, os.environ)) is True
    assert [str(request.url) for request in seen] == [nowhere]  # absolute-form target: it was proxied


async def test_no_proxy_sends_the_export_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with collector() as (proxy, proxied), collector() as (direct, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert await post(OtlpPoster(f"{direct}/v1/traces", {}, os.environ)) is True
    assert proxied == [] and len(seen) == 1


async def test_netrc_credentials_for_the_collector_are_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login otlp password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with collector() as (url, seen):
        assert await post(OtlpPoster(f"{url}/v1/traces", {}, os.environ)) is True
    assert seen[0].headers["Authorization"] == "Basic b3RscDpzM2NyZXQ="
