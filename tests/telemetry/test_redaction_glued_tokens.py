"""A token glued to a name by `_` (the aggregated endpoint's `<upstream>__<tool>` prefix, snake_case) is still a
token (issue 5/6 secret hygiene: spans and the decision log redact names an agent makes up).

The token patterns of gateway/credentials/redaction.py started with `\\b`, and `_` is a word character, so
`docs__ghp_…` had no word boundary before `ghp_`: a token sent as the tool name `docs__<token>` on `/mcp/docs`
reached the SERVER span's `gen_ai.tool.name` and the decision record's `tool` as sent.
"""

from __future__ import annotations

import pytest

from gateway.credentials.redaction import Redactor

GITHUB = "ghp_" + "g7H8" * 9
SLACK = "xoxb-" + "1234567890-abcdefghij"
STRIPE = "sk_live_" + "Z9y8X7w6V5u4"


@pytest.mark.parametrize("token", [GITHUB, SLACK, STRIPE])
def test_a_token_after_an_underscore_is_redacted(token: str) -> None:
    redactor = Redactor()
    assert redactor.redact_text(f"docs__{token}") == "docs__[REDACTED]"
    assert redactor.text_has_secret(f"my_{token}")


@pytest.mark.parametrize("token", [GITHUB, STRIPE, "AKIA" + "ABCDEFGHIJKLMNOP"])
def test_a_token_before_an_underscore_is_redacted(token: str) -> None:
    assert Redactor().redact_text(f"{token}_old") == "[REDACTED]_old"


def test_letters_or_digits_around_a_prefix_are_no_token() -> None:
    # Inside a run of letters and digits a prefix is part of a word, as `\b` had it: nothing redacted.
    text = "xghp_" + "g7H8" * 9 + " and ASIA" + "ABCDEFGHIJKLMNOP1"
    assert Redactor().redact_text(text) == text
