"""A `jwks_url` over plain http to another machine is where the gateway's trust in every token comes from: anyone on
the network path can hand it keys of their own and sign any agent's token. `config check` and `serve` say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import customs, customs_main


def _check(tmp_path: Path, jwks_url: str, *, process: bool = False) -> str:
    """config check's stderr: its main() run in this process (in tmp_path), or as a real child process."""
    config = tmp_path / "customs.yaml"
    config.write_text('upstreams: [{name: a, url: "http://127.0.0.1:9/mcp"}]\n'
                      f'identity: {{mode: jwt, issuers: [{{issuer: https://idp.example, jwks_url: "{jwks_url}", '
                      "algorithms: [ES256]}]}\n")
    if process:
        done = customs("config", "check", config, cwd=tmp_path)
    else:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            done = customs_main("config", "check", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def test_a_plain_http_jwks_url_to_another_host_is_warned_about(tmp_path: Path) -> None:
    warned = _check(tmp_path, "http://idp.example/jwks.json", process=True)
    assert ("warning: identity.issuers[0].jwks_url: plain http to idp.example: anyone on the way can hand the "
            "gateway keys of their own") in warned


@pytest.mark.parametrize("url", ["https://idp.example/jwks.json", "http://127.0.0.1:9/jwks.json",
                                 "http://localhost:9/jwks.json", "http://[::1]:9/jwks.json"])
def test_https_and_loopback_jwks_urls_are_not(tmp_path: Path, url: str) -> None:
    assert "jwks_url" not in _check(tmp_path, url)
