"""The redactor's first pass (PREFILTER) finds something in every text a secret pattern matches: skipping the
patterns when it finds nothing must never keep a secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.credentials.redaction import DETECT, PATTERNS, PREFILTER, Redactor

# One secret per pattern, by the pattern's name: a pattern added without a sample fails the first test.
SAMPLES = {
    "pem_private_key": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----",
    "jwt": "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudCJ9.c2ln",
    "bearer": "authorization: BEARER abcdefgh12345",
    "basic_auth": "Basic dXNlcjpwYXNzd29yZA==",
    "aws_access_key": "ASIA" + "IOSFODNN7EXAMPLE",
    "aws_secret_key": "AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "github_token": "ghs_" + "a1B2c3D4" * 5,
    "github_pat": "github_pat_11ABCDEFG0123456789_abcdef",
    "slack_token": "xoxp-1234567890-abcdef",
    "slack_webhook": "https://hooks.slack.com/services/T000/B000/XXXX",
    "stripe_key": "rk_test_" + "4eC39HqLyjWDarjt",
    "stripe_webhook_secret": "whsec_" + "a1B2c3D4" * 4,
    "openai_key": "sk-ant-" + "Ab12Cd34Ef56Gh78Ij90Kl",
    "google_api_key": "AIza" + "SyD-1234567890abcdefghijklmnopqrstu",
    "url_password": "postgres://admin:s3cr3t@db.internal:5432/app",
    "agent_token_mark": "Bearer-less [REDACTED:agent-token] in place of the agent's own token",
}


def test_every_pattern_has_a_sample_the_prefilter_finds() -> None:
    assert set(SAMPLES) == {name for name, _, _ in PATTERNS}
    for name, pattern, _ in PATTERNS:
        text = f"prefix {SAMPLES[name]} suffix"
        assert pattern.search(text), name
        assert PREFILTER.search(text), name
        assert Redactor().redact_text(text) != text, name


RUN = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"  # long enough for any pattern's run of letters and digits
# Every branch of every pattern's alternations: a variant a pattern takes and the first pass misses fails here.
VARIANTS = [
    *(f"gh{kind}_{RUN}" for kind in "pousr"),
    *(f"xox{kind}-{RUN}" for kind in "abposre"),
    *(f"{kind}_{mode}_{RUN}" for kind in ("sk", "rk", "pk") for mode in ("live", "test")),
    *(f"{prefix}{RUN[:16].upper()}" for prefix in ("AKIA", "ASIA", "ABIA", "ACCA")),
    *(f"sk-{kind}{RUN}" for kind in ("", "proj-", "svcacct-", "admin-", "ant-")),
    *(f"{word} {RUN}" for word in ("bearer", "Bearer", "BEARER", "bEaReR")),
    *(f"{key}={RUN}" for key in ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")),
    *(f"-----BEGIN {kind}PRIVATE KEY-----\nMC4\n-----END {kind}PRIVATE KEY-----" for kind in ("", "RSA ", "EC ")),
    f"eyJ{RUN[:8]}.{RUN[:8]}.", f"github_pat_{RUN}", f"whsec_{RUN}", f"AIza{RUN[:35]}", f"Basic {RUN}=",
    f"https://hooks.slack.com/services/{RUN}", f"amqp://guest:{RUN}@broker", f"s3+https://key:{RUN}@bucket/x",
]


@pytest.mark.parametrize("secret", VARIANTS)
def test_the_prefilter_finds_every_variant_of_every_pattern(secret: str) -> None:
    assert DETECT.search(f"x {secret} y") is not None, secret
    for text in (secret, f"x {secret} y", f"docs__{secret}", f"{secret}_old"):
        if DETECT.search(text) is not None:
            assert PREFILTER.search(text) is not None, text


@given(st.text(max_size=80))
def test_text_without_a_prefilter_hit_is_returned_as_is(text: str) -> None:
    if PREFILTER.search(text) is None:
        assert all(pattern.sub("", text) == text for _, pattern, _ in PATTERNS), text
