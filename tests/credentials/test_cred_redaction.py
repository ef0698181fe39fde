"""Redaction: key names, value patterns, deep copies, contains_secret, the logging filter."""

from __future__ import annotations

import logging

import pytest

from gateway.config.model import SecretsConfig
from gateway.credentials import Redactor, install_log_redaction
from gateway.credentials.redaction import RedactingFilter

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZw"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB4mZ3Zk\n-----END PRIVATE KEY-----"

SECRETS = {
    "jwt": f"token is {JWT} ok",
    "aws": "key AKIAIOSFODNN7EXAMPLE here",
    "aws_secret": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "github": "ghp_" + "a1B2c3D4" * 5,
    "github_pat": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "slack": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp",
    "stripe_live": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "stripe_test": "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "openai": "sk-proj-" + "Ab12Cd34Ef56Gh78Ij90Kl12Mn34",
    "google": "AIza" + "SyD-1234567890abcdefghijklmnopqrstu",
    "bearer": "Authorization: Bearer abc.def-ghi_jkl",
    "basic": "Authorization: Basic dXNlcjpwYXNzd29yZA==",
    "pem": f"key:\n{PEM}\nend",
    "rsa_pem": PEM.replace("PRIVATE KEY", "RSA PRIVATE KEY"),
    "url_password": "redis://user:hunter2pass@cache:6379/0",
}

HARMLESS = ["hello world", "max_tokens is 512", "sk-short", "the bearer of bad news", "Basic idea",
            "AKIA lowercase akiaiosfodnn7example", "eyJ alone", "https://example.com/path?q=1",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(SecretsConfig())


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_patterns_detected_and_redacted(redactor: Redactor, name: str) -> None:
    text = SECRETS[name]
    assert redactor.contains_secret(text)
    out = redactor.redact(text)
    assert "[REDACTED]" in out and not redactor.contains_secret(out), out


@pytest.mark.parametrize("text", HARMLESS)
def test_harmless_text_untouched(redactor: Redactor, text: str) -> None:
    assert not redactor.contains_secret(text)
    assert redactor.redact(text) == text


def test_context_kept_around_redactions(redactor: Redactor) -> None:
    assert redactor.redact("Authorization: Bearer abc.def-ghi_jkl") == "Authorization: Bearer [REDACTED]"
    assert redactor.redact("redis://user:hunter2pass@cache:6379/0") == "redis://user:[REDACTED]@cache:6379/0"
    assert redactor.redact(SECRETS["pem"]) == "key:\n[REDACTED]\nend"


def test_key_names_deep_and_copying(redactor: Redactor) -> None:
    value = {"user": "bob", "password": "pw", "nested": [{"accessToken": "x1", "apiKey": "k", "max_tokens": 5}],
             "X-Api-Key": "abc", "client_secret": "s", "note": f"use {JWT}", "token": None,
             "tuple": ("a", SECRETS["aws"])}
    out = redactor.redact(value)
    assert out == {"user": "bob", "password": "[REDACTED]",
                   "nested": [{"accessToken": "[REDACTED]", "apiKey": "[REDACTED]", "max_tokens": 5}],
                   "X-Api-Key": "[REDACTED]", "client_secret": "[REDACTED]", "note": "use [REDACTED]",
                   "token": None, "tuple": ("a", "key [REDACTED] here")}
    assert value["password"] == "pw" and value["nested"][0]["accessToken"] == "x1"  # the input is unchanged


def test_contains_secret_for_args(redactor: Redactor) -> None:
    assert redactor.contains_secret({"query": "x", "auth": {"password": "pw"}})
    assert redactor.contains_secret(["a", {"b": SECRETS["github"]}])
    assert not redactor.contains_secret({"password": "", "sku": "widget", "max_tokens": 3, "n": 4})
    assert not redactor.contains_secret({"amount": 5, "flags": [True, None]})


def test_configured_keys_and_headers() -> None:
    redactor = Redactor(SecretsConfig(redact_keys=("pin",), sensitive_headers=("X-Tenant-Secret",)))
    # Added to the built-in names, never in their place (on the old code `password` was then left in clear).
    assert redactor.redact({"pin": "1234", "password": "pw", "x_tenant_secret": "v", "sku": "A-1"}) == {
        "pin": "[REDACTED]", "password": "[REDACTED]", "x_tenant_secret": "[REDACTED]", "sku": "A-1"}
    assert redactor.redact_headers({"Cookie": "a=b", "Accept": "text/plain", "X-Tenant-Secret": "v"}) == {
        "Cookie": "[REDACTED]", "Accept": "text/plain", "X-Tenant-Secret": "[REDACTED]"}


def test_logging_filter_redacts_message_args_extras_and_tracebacks(redactor: Redactor) -> None:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record) + f" extra={getattr(record, 'payload', None)}")

    logger = logging.getLogger("customs.test.redaction")
    handler = Capture()
    logger.addHandler(handler)
    logger.propagate = False
    log_filter = install_log_redaction(redactor, logger)
    assert isinstance(log_filter, RedactingFilter)
    try:
        logger.warning("calling with %s and %r", JWT, {"password": "pw"}, extra={"payload": {"api_key": "k1"}})
        try:
            raise ValueError(f"bad key {SECRETS['stripe_live']}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = "\n".join(lines)
    assert JWT not in text and "sk_live_" not in text and "k1" not in text
    assert "calling with [REDACTED]" in text and "ValueError: bad key [REDACTED]" in text


def test_known_secret_values(redactor: Redactor) -> None:
    redactor.add_known("plain-looking-value")
    redactor.add_known("abc")  # too short to redact safely: ignored
    assert redactor.redact("x plain-looking-value y abc") == "x [REDACTED] y abc"
    assert redactor.contains_secret({"v": "plain-looking-value"})


def test_a_secret_used_as_a_key_is_redacted_too(redactor: Redactor) -> None:
    """contains_secret looks at key text (an agent can pass a token as an argument's name), but redact kept every
    key as it was: the approvals page, the API, the webhooks and the logged arguments showed such a token."""
    redactor.add_known("plain-looking-value")
    github, aws = SECRETS["github"], "AKIAIOSFODNN7EXAMPLE"
    value = {"account": "A-7", github: "x", "nested": {f"id {aws}": 1, "plain-looking-value": [2]}}
    assert redactor.contains_secret({github: "x"})
    out = redactor.redact(value)
    assert out == {"account": "A-7", "[REDACTED]": "x",
                   "nested": {"id [REDACTED]": 1, "[REDACTED]": [2]}}, out
    # Two keys that redact alike stay two entries (one silently replacing the other would hide an argument).
    both = redactor.redact({github: 1, "ghp_" + "Z9y8X7w6" * 5: 2, "[REDACTED]": 3})
    assert sorted(both.values()) == [1, 2, 3] and all(k.startswith("[REDACTED]") for k in both), both
