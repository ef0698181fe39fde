"""signing.rotate_every_s is at least a second: `0.001` passed `config check`, and the gateway then generated a
key per loop turn (1,321 key files in 3 s, each kept in the JWKS for the longest ttl_s plus retire_grace_s),
busy the whole time and filling key_dir."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9/mcp", "credentials": {"mode": "minted"}}]


@pytest.mark.parametrize("every", [0.001, 0.999, 1e-300])
def test_a_rotation_more_often_than_a_second_is_a_config_error(every: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "signing": {"rotate_every_s": every}})
    assert info.value.problems == [f"signing.rotate_every_s: must be greater than or equal to 1, not {every}"]


@pytest.mark.parametrize("every", [1, 4, 86400, None])
def test_a_second_or_more_or_none_loads(every: float | None) -> None:
    assert parse_config({"upstreams": UPSTREAMS, "signing": {"rotate_every_s": every}}).signing.rotate_every_s == every
