"""approvals.approvers_issuer must name one of identity.issuers: any other value lets nobody approve."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.load import ConfigError, parse_config

ISSUER = {"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks.json"}


def _config(approvers_issuer: str, **identity: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "payments", "url": "http://127.0.0.1:9/mcp"}],
            "identity": {"mode": "jwt", "issuers": [ISSUER], **identity},
            "approvals": {"approvers_issuer": approvers_issuer}}


def test_an_approvers_issuer_that_is_no_configured_issuer_is_a_config_error() -> None:
    """It used to be accepted ('config OK'), and then every approver's token was refused with 403."""
    with pytest.raises(ConfigError) as info:
        parse_config(_config("https://idp.test/"))  # a trailing slash: another issuer to the token check
    assert any(p.startswith("approvals.approvers_issuer:") and "https://idp.test" in p for p in info.value.problems)
    anonymous = _config("https://idp.test")
    anonymous["identity"] = {"mode": "anonymous"}
    with pytest.raises(ConfigError):
        parse_config(anonymous)


def test_a_configured_approvers_issuer_is_accepted() -> None:
    assert parse_config(_config("https://idp.test")).approvals.approvers_issuer == "https://idp.test"
