"""A file or directory path holding a NUL character is a config error at its path: no path can hold one.

`config check` said OK to such a `signing.key_dir` or `decision_log.path`, and `serve` stopped with a traceback
(`ValueError: embedded null byte`); a static credential's `value_file` stopped both with one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import ConfigError, parse_config

UPSTREAM = {"name": "a", "url": "http://127.0.0.1:9/mcp"}
NUL = "/tmp/a\0b"
ISSUER = {"issuer": "https://idp.test"}


@pytest.mark.parametrize(("document", "where"), [
    ({"upstreams": [{**UPSTREAM, "credentials": {"mode": "static", "value_file": NUL}}]},
     "upstreams[0].credentials.value_file"),
    ({"upstreams": [UPSTREAM], "signing": {"key_dir": NUL}}, "signing.key_dir"),
    ({"upstreams": [UPSTREAM], "decision_log": {"path": NUL}}, "decision_log.path"),
    ({"upstreams": [UPSTREAM], "policies": {"dir": NUL}}, "policies.dir"),
    ({"upstreams": [UPSTREAM], "policies": {"shadow_dir": NUL}}, "policies.shadow_dir"),
    ({"upstreams": [UPSTREAM], "listen": {"tls": {"cert_file": NUL, "key_file": "k.pem"}}}, "listen.tls.cert_file"),
    ({"upstreams": [UPSTREAM], "identity": {"mode": "jwt", "issuers": [{**ISSUER, "jwks_file": NUL}]}},
     "identity.issuers[0].jwks_file"),
    ({"upstreams": [{"name": "a", "command": ["srv"], "cwd": NUL}]}, "upstreams[0].cwd"),
])
def test_a_path_with_a_nul_character_is_a_problem_at_its_path(document: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert info.value.problems == [f"{where}: holds a NUL character, which no path can"]


def test_config_check_reports_it_instead_of_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text('upstreams: [{name: a, url: "http://127.0.0.1:9/mcp", '
                    'credentials: {mode: static, value_file: "/tmp/a\\0b"}}]\n')
    assert main(["config", "check", str(path)]) == 2
    assert "upstreams[0].credentials.value_file: holds a NUL character, which no path can" in capsys.readouterr().err
