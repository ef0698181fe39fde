"""What an approver reads in a webhook's Slack text is what runs: no silent cut, nothing drawn other than it is."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.stage import ApproveStage
from gateway.approvals.webhooks import WebhookNotifier
from gateway.config.model import ApprovalsConfig, WebhookConfig
from tests.approvals.conftest import call_context
from tests.approvals.test_webhooks import Receiver, receiver

__all__ = ["receiver"]  # the fixture


async def _delivered(receiver: Receiver, args: dict[str, Any], **fields: str) -> dict[str, Any]:
    notifier = WebhookNotifier([WebhookConfig(url=receiver.url)], page_url="http://gw/approvals")
    await notifier.start()
    receiver.statuses[:] = []
    try:
        store = MemoryApprovalStore()
        draft = replace(ApproveStage(store, ApprovalsConfig()).draft(call_context(args)), **fields)
        item, _ = await store.create_or_join(draft, link_s=60)
        notifier.notify(item)
        await asyncio.wait_for(notifier.drain(), 10)
    finally:
        await notifier.close()
    return dict(json.loads(receiver.hits[-1][1]))


def _texts(payload: dict[str, Any]) -> list[str]:
    return [payload["text"], *(b["text"]["text"] for b in payload["blocks"] if "text" in b),
            *(f["text"] for b in payload["blocks"] for f in b.get("fields", []))]


async def test_long_arguments_say_they_were_cut(receiver: Receiver) -> None:
    # Keys are sorted: a long harmless-looking one can push the one that matters past what Slack is sent.
    payload = await _delivered(receiver, {"amount": 5, "notes": "fine " * 600, "to_account": "attacker-1"})
    code = payload["blocks"][2]["text"]["text"]
    assert "attacker-1" not in code and "cut" in code and "approvals page" in code, code[-300:]
    assert payload["approval"]["args"]["to_account"] == "attacker-1"  # programs get them whole


async def test_invisible_and_reordering_characters_are_shown_as_escapes(receiver: Receiver) -> None:
    # "\u202e7654-A" is drawn "A-4567"; a zero-width space makes two names look alike.
    payload = await _delivered(receiver, {"account": "\u202e7654-A"}, tool="pay\u200b", tenant="acme\u2066")
    texts = _texts(payload)
    assert not [t for t in texts if any(c in t for c in "\u202e\u200b\u2066")], texts
    assert "\\u202e7654-A" in texts[2] and "pay\\u200b" in payload["text"]
    assert payload["approval"]["tool"] == "pay\u200b"  # programs get the raw Approval


async def test_escaping_cannot_push_a_block_past_slacks_limits(receiver: Receiver) -> None:
    """Slack refuses (400 invalid_blocks: not retried, so nobody is told) a message whose section text is over 3,000
    characters or a field over 2,000. The arguments were cut at 2,500 characters before escaping, and `<` becomes
    `&lt;`, a control character `\\u0001`: an agent could make its own call's notification undeliverable."""
    payload = await _delivered(receiver, {"note": "<&>" * 900, "raw": "\x01" * 900, "to_account": "A-1"},
                               principal="spiffe://acme.test/" + "<agent>" * 400)
    sections = [b["text"]["text"] for b in payload["blocks"] if "text" in b]
    fields = [f["text"] for b in payload["blocks"] for f in b.get("fields", [])]
    assert max(map(len, sections)) <= 3000 and max(map(len, fields)) <= 2000, (
        list(map(len, sections)), list(map(len, fields)))
    code = sections[1]
    assert code.startswith("```") and code.endswith("```") and "cut" in code
    assert not any(code[:-3].endswith(part) for part in ("&", "&l", "&lt", "&a", "&am", "&amp"))
