"""A token exchange's settings in another mode, and an audience beside a static key, are config errors.

`credentials: {mode: minted, scope: crm.read}` passed config check, and the minted token's `scope` then named the
tool as always: the setting was ignored without a word, as were `token_endpoint`, `client_id` and `client_secret`
(mode minted or static) and `audience` (mode static, whose fixed key names no audience). Mode none already
refused them; narrow_to_args, value_env and value_file outside their modes too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import parse_config
from tests.conftest import REPO

UPSTREAM = {"name": "a", "url": "http://127.0.0.1:1/mcp"}
STATIC = {"mode": "static", "value_env": "KEY"}
EXCHANGE_ONLY = {"token_endpoint": "https://idp.test/token", "client_id": "customs", "client_secret": "s",
                 "scope": "crm.read"}


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], credentials: dict[str, Any]) -> tuple[int, list[str]]:
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [{**UPSTREAM, "credentials": credentials}],
                                    "policies": {"dir": str(REPO / "policies")}}))
    code = main(["config", "check", str(path)])
    return code, capsys.readouterr().err.splitlines()[1:]


@pytest.mark.parametrize("base", [{"mode": "minted"}, STATIC])
@pytest.mark.parametrize("key", sorted(EXCHANGE_ONLY))
def test_a_token_exchange_setting_in_another_mode_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             base: dict[str, str], key: str) -> None:
    code, err = _check(tmp_path, capsys, {**base, key: EXCHANGE_ONLY[key]})
    assert (code, err) == (2, [f"  upstreams[0].credentials.{key}: only used by mode token_exchange "
                               f"(mode is {base['mode']})"])


def test_an_audience_beside_a_static_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check(tmp_path, capsys, {**STATIC, "audience": "https://api.test"})
    assert (code, err) == (2, ["  upstreams[0].credentials.audience: only used by modes minted and token_exchange "
                               "(mode is static)"])


def test_each_mode_keeps_its_own_settings() -> None:
    config = parse_config({"upstreams": [
        {**UPSTREAM, "credentials": {"mode": "minted", "audience": "https://api.test", "ttl_s": 30}},
        {"name": "b", "url": "http://127.0.0.1:2/mcp", "credentials": {"mode": "token_exchange", "audience": "x",
                                                                       **EXCHANGE_ONLY}},
        {"name": "c", "url": "http://127.0.0.1:3/mcp", "credentials": STATIC},
    ]})
    assert [u.credentials.mode for u in config.upstreams] == ["minted", "token_exchange", "static"]
