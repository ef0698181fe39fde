"""An empty webhook secret (`secret: ${WEBHOOK_SECRET}` with the variable set to "") is a config error at its path.

It used to be taken as "no secret": every webhook went out unsigned, with no warning, though the operator had
asked for signed ones. Leaving `secret` out is how to send unsigned webhooks (docs/approvals.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.load import ConfigError, parse_config
from tests.support.cli import REPO

CONFIG = """
upstreams: [{name: payments, url: http://127.0.0.1:9/mcp}]
approvals:
  webhooks: [{url: http://127.0.0.1:9/hook}, {url: http://127.0.0.1:9/hook2, secret: ${WEBHOOK_SECRET}}]
"""
WHERE = "approvals.webhooks[1].secret"


def _data(secret: str | None) -> dict[str, object]:
    hook: dict[str, object] = {"url": "http://127.0.0.1:9/hook"}
    if secret is not None:
        hook["secret"] = secret
    return {"upstreams": [{"name": "payments", "url": "http://127.0.0.1:9/mcp"}], "approvals": {"webhooks": [hook]}}


@pytest.mark.parametrize("secret", ["", "   "])
def test_an_empty_secret_is_refused_at_its_path(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_data(secret))
    assert any(p.startswith("approvals.webhooks[0].secret:") and "empty" in p for p in info.value.problems), \
        info.value.problems


def test_an_empty_variable_is_refused_and_no_secret_means_unsigned() -> None:
    data = {**_data("${WEBHOOK_SECRET}")}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"WEBHOOK_SECRET": ""})
    assert [p for p in info.value.problems if p.startswith("approvals.webhooks[0].secret:")], info.value.problems
    assert parse_config(data, env={"WEBHOOK_SECRET": "s3cret"}).approvals.webhooks[0].secret == "s3cret"
    assert parse_config(_data(None)).approvals.webhooks[0].secret is None  # unsigned, as documented


@pytest.mark.parametrize("command", [("config", "check"), ("serve", "--port", "0", "--config")])
def test_config_check_and_serve_report_it(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text(CONFIG)
    env = {**os.environ, "WEBHOOK_SECRET": ""}
    done = subprocess.run([sys.executable, "-m", "gateway", *command, str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert WHERE in done.stdout + done.stderr
