"""`${VAR:-default}` in customs.yaml reads as it does in a shell and in docker compose: the default stands in for
a variable that is unset or empty (an empty REDIS_URL left an empty URL), and a missing `${VAR}` is an error
with its path; `$${` is a literal `${`."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.conftest import free_port
from tests.support.cli import customs_main
from tests.support.contract import serve_file
from tests.support.tokens import TestIssuer

DOC = {"upstreams": [{"name": "a", "url": "http://127.0.0.1:1/mcp"}],
       "store": {"redis": {"url": "${REDIS_URL:-redis://127.0.0.1:6379/0}"}},
       "listen": {"port": "${PORT:-8711}"}}


def test_an_empty_variable_takes_the_colon_dash_default() -> None:
    config = parse_config(DOC, env={"REDIS_URL": ""})
    assert config.store.redis.url == "redis://127.0.0.1:6379/0"  # type: ignore[union-attr]


def test_an_unset_variable_takes_it_too() -> None:
    assert parse_config(DOC, env={}).listen.port == 8711


def test_a_set_variable_wins_and_a_missing_one_is_an_error_with_its_path() -> None:
    config = parse_config(DOC, env={"REDIS_URL": "redis://cache:6379/1", "PORT": "9000"})
    assert config.store.redis.url == "redis://cache:6379/1" and config.listen.port == 9000  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        parse_config({**DOC, "approvals": {"webhooks": [{"url": "https://h.example", "secret": "${SECRET}"}]}},
                     env={})
    assert info.value.problems == ["approvals.webhooks[0].secret: environment variable SECRET is not set"]


# `$${` is a literal `${` (as in docker compose); it used to be a `$` and then a reference, an error when unset.
LITERAL = """
upstreams: [{name: a, url: http://127.0.0.1:1/mcp}]
listen: {host: 127.0.0.1, port: PORT, public_url: http://127.0.0.1:PORT}
identity:
  mode: jwt
  issuers: [{issuer: "https://idp.example/$${REALM}/x$${", jwks_file: JWKS}]
approvals: {webhooks: [{url: http://127.0.0.1:1/hook, secret: pa$${WORD:-x}}]}
"""


def test_a_doubled_dollar_brace_is_a_literal_one(tmp_path: Path) -> None:
    config = load_config(_literal_file(tmp_path, 1), env={"REALM": "set", "WORD": "set"})
    assert config.identity.issuers[0].issuer == "https://idp.example/${REALM}/x${"
    assert config.approvals.webhooks[0].secret == "pa${WORD:-x}"  # unshielded from YAML's flow mapping whole
    # a reference beside it is still substituted; `$` elsewhere stays as written
    data = {**DOC, "listen": {"port": "${PORT}"}, "telemetry": {"service_name": "$$a$${PORT}${PORT}"}}
    assert parse_config(data, env={"PORT": "8711"}).telemetry.service_name == "$$a${PORT}8711"


@pytest.mark.parametrize("value", ["${WEBHOOK_SECRET", "pa${ SECRET }", "${1SECRET}", "${SECRET-x}", "${}"])
def test_a_dollar_brace_that_starts_no_reference_is_an_error_at_its_path(value: str) -> None:
    """A mistyped reference was taken as the literal text: `secret: ${WEBHOOK_SECRET` (the brace forgotten) signed
    every webhook with the text `${WEBHOOK_SECRET`, and `config check` said OK. docker compose refuses it too."""
    data = {**DOC, "approvals": {"webhooks": [{"url": "https://h.example", "secret": value}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"SECRET": "s", "WEBHOOK_SECRET": "s"})
    assert info.value.problems == ["approvals.webhooks[0].secret: `${` starts no reference (${NAME} or "
                                   "${NAME:-default}, NAME of letters, digits and _); write $${ for a literal ${"]
    with pytest.raises(ConfigError) as info:  # the only problem at its path, as for an unset variable
        parse_config({**DOC, "upstreams": [{"name": "a", "url": value}]}, env={"SECRET": "s", "WEBHOOK_SECRET": "s"})
    assert [p.partition(": ")[0] for p in info.value.problems] == ["upstreams[0].url"]


def test_config_check_takes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REALM", raising=False)
    monkeypatch.delenv("WORD", raising=False)
    done = customs_main("config", "check", _literal_file(tmp_path, 1))
    assert done.returncode == 0, (done.stdout, done.stderr)


async def test_serve_takes_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REALM", "WORD")}
    async with serve_file(_literal_file(tmp_path, port), env):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp") as resp:
                metadata = await resp.json()
    assert metadata["authorization_servers"] == ["https://idp.example/${REALM}/x${"]


def _literal_file(tmp_path: Path, port: int) -> Path:
    issuer = TestIssuer(tmp_path)
    path = tmp_path / "customs.yaml"
    path.write_text(LITERAL.replace("PORT", str(port)).replace("JWKS", str(issuer.jwks_path)))
    return path
