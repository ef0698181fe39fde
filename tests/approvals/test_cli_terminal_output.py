"""What the CLIs print for a person comes partly from agents and upstreams (tool names, reasons, comments): control
characters in it (ANSI escapes, carriage returns) are shown escaped, so they cannot rewrite what an approver reads
in their terminal. Child processes against a real approvals API (`customs tools list`: tests/hardening/
test_hard_terminal_output.py)."""

from __future__ import annotations

import pytest

from tests.approvals.conftest import Clock, WebKit, draft
from tests.support.cli import customs_async

pytestmark = pytest.mark.asyncio
# Erase the line, return to its start and print something harmless in its place.
HOSTILE = "pay\x1b[2K\rread_docs"


@pytest.mark.parametrize("kit", ["memory"], indirect=True)
async def test_approvals_list_and_show_escape_control_characters(web_kit: WebKit) -> None:
    item, _ = await web_kit.store.create_or_join(draft(Clock(), tool=HOSTILE), link_s=1800)
    token = web_kit.token("alice")
    for argv in (("list",), ("show", item.id)):
        _, out, _ = await customs_async("approvals", *argv, "--url", web_kit.url, token=token, check=True)
        assert "\x1b" not in out and "\r" not in out, (argv, out)
        assert "payments/pay\\x1b[2K\\rread_docs" in out, (argv, out)


@pytest.mark.parametrize("kit", ["memory"], indirect=True)
async def test_approve_escapes_the_approvers_it_names(web_kit: WebKit) -> None:
    """`approvals approve` prints who decided: with a quorum that names the other approvers too, whose ids come
    from their tokens, so they are escaped like what `list` and `show` print."""
    item, _ = await web_kit.store.create_or_join(draft(Clock(), quorum=2), link_s=1800)
    await web_kit.store.decide(item.id, "mallory\x1b[2K\rnobody", "approved", None)
    _, out, _ = await customs_async("approvals", "approve", item.id, "--url", web_kit.url,
                                    token=web_kit.token("alice"), check=True)
    assert "\x1b" not in out and "\r" not in out, out
    assert "mallory\\x1b[2K\\rnobody, alice" in out, out
