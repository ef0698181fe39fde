"""Issuer settings no token can ever match are config errors, not a gateway that refuses every token.

`issuer: ${IDP_ISSUER}` with the variable read from a file (a Kubernetes ConfigMap made with --from-file keeps the
file's last newline) became `https://idp.example\\n`: `config check` said OK and every token was refused with
`Token issuer not accepted`. An empty claim name (`claims: {tenant: ""}`) names a claim no token has: every agent
lost its tenant, so every tenant-scoped permit failed, again with the config checked OK.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.cli import REPO
from tests.support.tokens import TestIssuer


def _parse(tmp_path: Path, **entry: Any) -> None:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    parse_config({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
                  "identity": {"mode": "jwt", "issuers": [{**issuer.config(), **entry}]}})


@pytest.mark.parametrize(("field", "value"), [
    ("issuer", "https://idp.test\n"),
    ("issuer", " https://idp.test"),
    ("audience", "http://127.0.0.1:8700/mcp "),
    ("audience", "  "),
    ("require_typ", "at+jwt\n"),
])
def test_an_issuer_value_with_surrounding_whitespace_is_a_config_error(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(tmp_path, **{field: value})
    assert f"identity.issuers[0].{field}: must not start or end with whitespace" in str(caught.value)


def test_an_empty_claim_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(tmp_path, claims={"tenant": ""})
    assert "identity.issuers[0].claims.tenant: must name a claim" in str(caught.value)


def test_config_check_names_the_issuer_read_from_a_file_with_its_newline(tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    config = tmp_path / "customs.yaml"
    config.write_text('upstreams: [{name: a, url: "http://127.0.0.1:9/mcp"}]\n'
                      f'identity: {{mode: jwt, issuers: [{{issuer: "${{IDP_ISSUER}}", jwks_file: "{issuer.jwks_path}", '
                      "algorithms: [ES256]}]}\n")
    done = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(config)], cwd=REPO,
                          env={**os.environ, "IDP_ISSUER": "https://idp.test\n"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "identity.issuers[0].issuer: must not start or end with whitespace" in done.stdout + done.stderr
