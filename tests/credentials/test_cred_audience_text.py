"""credentials.audience with a control character or surrounding white space is a config error at its path.

Such an audience (a value read into a variable with its line break, `AUD=$(cat aud.txt)` in a template) passed
config check and went into every minted token's `aud` and every exchange's `audience` as written, so an upstream
comparing `aud` with its own URL refused every call, with nothing on the gateway's side to say why."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.credentials.minter import audience_of


@pytest.mark.parametrize("audience", ["http://127.0.0.1:9/mcp\n", " http://127.0.0.1:9/mcp", "api\x00", "a\tb"])
def test_an_audience_no_upstream_has_is_refused(audience: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp",
                                     "credentials": {"mode": "minted", "audience": "${AUD}"}}]}, env={"AUD": audience})
    assert info.value.problems == ["upstreams[0].credentials.audience: must not hold control characters or begin or "
                                   "end with white space (an upstream's identifier has none)"]


@pytest.mark.parametrize("audience", ["https://api.example/v1 mcp", "urn:example:crm", "api://payments"])
def test_other_audiences_are_kept_as_written(audience: str) -> None:
    config = parse_config({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp",
                                          "credentials": {"mode": "minted", "audience": audience}}]})
    assert audience_of(config.upstreams[0]) == audience
