"""docs/approvals.openapi.yaml names every status each approvals endpoint answers (docs/approvals.md, Errors)."""

from __future__ import annotations

from pathlib import Path

import yaml

SPEC = Path(__file__).resolve().parents[2] / "docs" / "approvals.openapi.yaml"

# What the handlers in gateway/approvals/web.py answer: 401 without a usable token, 403 for a token of another
# issuer than approvals.approvers_issuer (any endpoint) or a refused person, 503 while the store or the policy
# engine cannot answer, 408 when a decision's body does not arrive within listen.body_timeout_s.
ANSWERS = {
    ("/api/approvals", "get"): {"200", "400", "401", "403", "503"},
    ("/api/approvals/{id}", "get"): {"200", "401", "403", "404", "503"},
    ("/api/approvals/{id}/approve", "post"): {"200", "400", "401", "403", "404", "408", "409", "503"},
    ("/api/approvals/{id}/deny", "post"): {"200", "400", "401", "403", "404", "408", "409", "503"},
    ("/api/approvals/events", "get"): {"200", "401", "403"},
}


def test_every_answered_status_is_in_the_openapi_file() -> None:
    paths = yaml.safe_load(SPEC.read_text())["paths"]
    for (path, method), statuses in ANSWERS.items():
        assert set(paths[path][method]["responses"]) == statuses, f"{method.upper()} {path}"
