"""An upstream URL with user info (`http://name:password@host/mcp`) beside an Authorization header of Customs' own.

aiohttp sends a URL's user info as an HTTP Basic Authorization header and refuses a request that also sets
Authorization ("Cannot combine AUTHORIZATION header with … credentials encoded in URL"). So with a credential in
that header (mode minted, token_exchange, a static key in Authorization) or a static `Authorization` header, every
call failed with internal_error and a traceback, while `config check` said OK. Now it is a problem at the URL's
path; user info with no Authorization header of the gateway's (mode none, or the credential in another header)
still loads and is sent as HTTP Basic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from gateway.cli import main
from gateway.config import parse_config
from tests.conftest import REPO
from tests.credentials.helpers import payments_server
from tests.credentials.test_cred_replicas_live import Agent
from tests.support.servers import SeenRequest, run_http_server

URL = "http://svc:pw@127.0.0.1:1/mcp"
EXCHANGE = {"mode": "token_exchange", "token_endpoint": "https://idp.test/token", "client_id": "customs"}


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], upstream: dict[str, Any]) -> tuple[int, list[str]]:
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [upstream], "policies": {"dir": str(REPO / "policies")}}))
    code = main(["config", "check", str(path)])
    return code, capsys.readouterr().err.splitlines()[1:]


@pytest.mark.parametrize(("upstream", "what"), [
    ({"credentials": {"mode": "minted"}}, "the credential (mode minted)"),
    ({"credentials": EXCHANGE}, "the credential (mode token_exchange)"),
    ({"credentials": {"mode": "static", "value_env": "KEY"}}, "the credential (mode static)"),
    ({"headers": {"authorization": "Bearer fixed"}}, "the static header authorization"),
])
def test_user_info_beside_an_authorization_header_of_the_gateways_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], upstream: dict[str, Any], what: str) -> None:
    code, err = _check(tmp_path, capsys, {"name": "a", "url": URL, **upstream})
    assert code == 2 and err == [
        f"  upstreams[0].url: holds user info (name:password@), which is sent as an HTTP Basic Authorization header "
        f"of its own, so no request with {what} in Authorization can be sent: leave the user info out"], err


@pytest.mark.parametrize("key", ["token_endpoint", "revocation_endpoint"])
def test_user_info_in_a_token_exchange_endpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           key: str) -> None:
    credentials = {**EXCHANGE, key: "https://customs:pw@idp.test/oauth"}
    code, err = _check(tmp_path, capsys, {"name": "a", "url": "http://127.0.0.1:1/mcp", "credentials": credentials})
    assert code == 2 and err == [
        f"  upstreams[0].credentials.{key}: holds user info (name:password@), which is sent as an HTTP Basic "
        "Authorization header of its own, beside the client_id/client_secret one: leave the user info out"], err


def test_a_url_that_is_no_url_is_its_own_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check(tmp_path, capsys, {"name": "a", "url": "http://a@[::1/mcp", "credentials": {"mode": "minted"}})
    assert code == 2 and len(err) == 1 and err[0].startswith("  upstreams[0].url: "), err


def test_user_info_without_an_authorization_header_of_the_gateways_loads() -> None:
    config = parse_config({"upstreams": [
        {"name": "a", "url": URL},
        {"name": "b", "url": URL, "credentials": {"mode": "minted", "header": "X-Upstream-Token"}},
    ]})
    assert [u.url for u in config.upstreams] == [URL, URL]


async def test_user_info_is_sent_as_http_basic_beside_a_credential_in_another_header(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(payments_server(), requests=seen) as upstream_url:
        gateway = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url.replace("http://", "http://svc:pw@"),
                           "credentials": {"mode": "minted", "header": "X-Upstream-Token"}}],
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gateway.mcp)
            await agent.open()
            answer = await agent.request("tools/call", {"name": "payments__pay",
                                                        "arguments": {"account": "acme-1", "amount": 3}})
    assert "result" in answer, answer
    posts = [s for s in seen if s.method == "POST"]
    assert posts and all(s.headers["authorization"] == "Basic c3ZjOnB3" and s.headers["x-upstream-token"]
                         for s in posts)
    # The default audience is the upstream's URL without the user info: its password went into every token.
    audiences = {jwt.decode(s.headers["x-upstream-token"], options={"verify_signature": False})["aud"] for s in posts}
    assert audiences == {upstream_url}
