"""An inline principal or actor of a policy test is one a token (or the registry) could give: a case about an agent
the gateway never decides for passes or fails for nothing. An empty id, an id claiming to be a SPIFFE ID that is no
valid one (identify refuses both), and an empty attribute (a claim's "" counts as missing, the registry refuses it)
were decided as given: `tenant: ""` even equals the empty context.tenant, so a case could expect a read allowed
that the gateway denies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import REPO, customs_main

CASE = ("cases: [{{principal: {principal}, tool: inventory/get_stock, labels: {{read_only: true}}, "
        "expect: allow}}]\n")


@pytest.mark.parametrize(("principal", "problem"), [
    ('{id: ""}', "principal '': subject must be a non-empty string"),
    ('{id: "spiffe://Acme/x", attributes: {tenant: acme}}', "principal 'spiffe://Acme/x': SPIFFE trust domain"),
    ('{id: "r", attributes: {tenant: ""}}', "principal 'r': attributes.tenant is empty"),
    ('{id: "r", attributes: {tenant: acme, groups: [ops, ""]}}', "principal 'r': attributes.groups is empty"),
    ('{id: "r", attributes: {tenant: acme}, chain: [{id: "spiffe://x.example/a/"}]}',
     "principal 'spiffe://x.example/a/': SPIFFE ID path must not end with '/'"),
])
def test_an_inline_agent_no_token_can_be_is_unusable_input(tmp_path: Path, principal: str, problem: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASE.format(principal=principal))
    done = customs_main("policy", "test", "--policies", REPO / "policies", cases)
    assert done.returncode == 2, done.stdout + done.stderr
    assert problem in done.stderr, done.stderr


def test_a_plain_inline_agent_is_decided(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASE.format(principal='{id: "r", attributes: {tenant: acme, groups: [ops]}}'))
    done = customs_main("policy", "test", "--policies", REPO / "policies", cases)
    assert done.returncode == 0, done.stdout + done.stderr
