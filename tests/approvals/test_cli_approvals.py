"""`customs approvals …` as a child process against a real approvals API: output, exit codes, hints."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from aiohttp import web

from tests.approvals.conftest import Clock, WebKit, draft
from tests.support.cli import customs_async, customs_main
from tests.support.servers import run_aiohttp

# the CLI only talks HTTP: one store kind is enough here
pytestmark = pytest.mark.parametrize("kit", ["memory"], indirect=True)


async def _cli(*argv: str, token: str | None = None) -> tuple[int, str, str]:
    return await customs_async("approvals", *argv, token=token)


async def test_list_show_approve_and_conflict(web_kit: WebKit) -> None:
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    token = web_kit.token("alice")
    code, out, _ = await _cli("list", "--url", web_kit.url, token=token)
    assert code == 0 and item.id in out and "payments/pay" in out
    code, out, _ = await _cli("show", item.id, "--url", web_kit.url, "--token", token)
    assert code == 0 and "A-1" in out and "orchestrator" in out
    code, out, _ = await _cli("approve", item.id, "--comment", "ok by cli", "--url", web_kit.url, token=token)
    assert code == 0 and "approved by alice" in out
    assert (await web_kit.store.get(item.id)).comment == "ok by cli"
    code, _, err = await _cli("deny", item.id, "--url", web_kit.url, token=token)
    assert code == 1 and "409" in err and "already decided" in err


async def test_refusals_have_hints(web_kit: WebKit) -> None:
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    code, _, err = await _cli("deny", item.id, "--url", web_kit.url, token=web_kit.token("agent-1"))
    assert code == 1 and "403" in err and "hint" in err
    code, _, err = await _cli("list", "--url", web_kit.url, token="garbage")
    assert code == 1 and "401" in err and "CUSTOMS_TOKEN" in err
    code, _, err = await _cli("list", "--url", web_kit.url)
    assert code == 2 and "no token" in err
    code, _, err = await _cli("show", "apr_missing", "--url", web_kit.url, token=web_kit.token("alice"))
    assert code == 1 and "404" in err
    code, out, _ = await _cli("list", "--state", "denied", "--url", web_kit.url, token=web_kit.token("alice"))
    assert code == 0 and "no denied approvals" in out


def another_service(answer: Callable[[], web.Response]) -> AbstractAsyncContextManager[str]:
    """Some other HTTP service, answering every request with `answer()`; yields its base URL."""
    async def handle(_: web.Request) -> web.Response:
        return answer()  # a new one each time: an aiohttp response is sent once

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return run_aiohttp(app)


async def test_bad_url_and_non_gateway_answers_are_errors_not_tracebacks(web_kit: WebKit) -> None:
    async with another_service(lambda: web.Response(text="<html>some other service</html>",
                                                    content_type="text/html")) as url:
        token = web_kit.token("alice")
        code, _, err = await _cli("list", "--url", "127.0.0.1:8700", token=token)
        assert code == 2 and "not an http(s) URL" in err and "Traceback" not in err
        code, _, err = await _cli("show", "apr_x", "--url", url, token=token)
        assert code == 3 and "not JSON" in err and "Traceback" not in err


def _usage(*argv: str, token: str) -> tuple[int, str, str]:
    """An `approvals` command refused by its arguments, run in this process. It must send no request: one would
    block this loop and its gateway, time out after 2 s and exit 3, failing the test."""
    result = customs_main("approvals", *argv, "--token", token, "--timeout", "2")
    return result.returncode, result.stdout, result.stderr


async def test_limit_out_of_range_is_a_usage_error(web_kit: WebKit) -> None:
    for bad in ("-1", "0", "1001", "ten"):
        code, _, err = _usage("list", "--limit", bad, "--url", web_kit.url, token=web_kit.token("alice"))
        assert code == 2 and "--limit" in err, (bad, err)


async def test_a_state_that_is_not_one_is_a_usage_error(web_kit: WebKit) -> None:
    # As --limit: a typo is the caller's mistake (exit 2, naming the option), not a refusal by the gateway (1).
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    for bad in ("pendin", "pending,bogus", "", "all,pending"):
        code, _, err = _usage("list", "--state", bad, "--url", web_kit.url, token=web_kit.token("alice"))
        assert code == 2 and "--state" in err, (bad, err)
    code, out, err = await _cli("list", "--state", "denied,pending", "--url", web_kit.url, token=web_kit.token("alice"))
    assert code == 0 and item.id in out, err



async def test_a_url_that_is_not_the_gateway_base_says_so_not_no_such_approval(web_kit: WebKit) -> None:
    # The URL agents use (…/mcp) is the likeliest mistake: every API path under it is a plain 404, which
    # is not the API's "no such approval" (a JSON error with a reason) and must not be reported as one.
    item, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    token = web_kit.token("alice")
    for argv in (("show", item.id), ("list",), ("approve", item.id)):
        code, _, err = await _cli(*argv, "--url", f"{web_kit.url}/mcp", token=token)
        assert code == 1 and "404" in err, err
        assert "no such approval id" not in err and "the gateway's base URL" in err, err
        assert "HTTP 404: Not Found" in err and "404 :" not in err, err  # no empty reason before the message
    assert (await web_kit.store.get(item.id)).state == "pending"
    code, _, err = await _cli("show", "apr_missing", "--url", web_kit.url, token=token)
    assert code == 1 and "no such approval id" in err  # the API's own 404 keeps its hint


async def test_another_services_json_error_is_reported_not_a_traceback(web_kit: WebKit) -> None:
    # A common shape elsewhere: "error" is a string.
    async with another_service(lambda: web.json_response({"error": "not found"}, status=404)) as url:
        code, _, err = await _cli("show", "apr_x", "--url", url, token=web_kit.token("alice"))
        assert code == 1 and "Traceback" not in err, err
        assert "404" in err and "the gateway's base URL" in err


async def test_show_names_the_decision_not_an_expiry_once_decided(web_kit: WebKit) -> None:
    """A decided item no longer expires: `show` used to print `expires in: 838s` for it all the same."""
    pending, _ = await web_kit.store.create_or_join(draft(Clock()), link_s=1800)
    decided, _ = await web_kit.store.create_or_join(draft(Clock(), args={"amount": 2}), link_s=1800)
    await web_kit.store.decide(decided.id, "bob", "denied", "no")
    token = web_kit.token("alice")
    _, out, _ = await customs_async("approvals", "show", pending.id, "--url", web_kit.url, token=token, check=True)
    assert "expires in:" in out and "decided:" not in out, out
    _, out, _ = await customs_async("approvals", "show", decided.id, "--url", web_kit.url, token=token, check=True)
    assert "expires" not in out, out
    assert re.search(r"^decided:     denied \d+[sm] ago$", out, re.M), out


async def test_show_names_the_votes_of_a_call_that_needs_several_approvers(web_kit: WebKit) -> None:
    """A call that needs two approvers: `show` says how many approved so far and who, as the page does (it showed
    `decided by: —` until the last vote, so a second approver could not tell the call already had one)."""
    item, _ = await web_kit.store.create_or_join(draft(Clock(), quorum=2), link_s=1800)
    await web_kit.store.decide(item.id, "bob", "approved", "fine by me")
    _, out, _ = await customs_async("approvals", "show", item.id, "--url", web_kit.url, token=web_kit.token("alice"),
                                    check=True)
    assert re.search(r"^approvals:   1 of 2 \(bob\)$", out, re.M), out
    single, _ = await web_kit.store.create_or_join(draft(Clock(), args={"amount": 3}), link_s=1800)
    _, out, _ = await customs_async("approvals", "show", single.id, "--url", web_kit.url, token=web_kit.token("alice"),
                                    check=True)
    assert "approvals:" not in out, out  # one approver decides: nothing to count


async def test_a_second_vote_of_the_same_approver_is_told_so(web_kit: WebKit) -> None:
    """409 already_voted: the call is still pending, waiting for another approver; the hint used to say it was
    already decided, and `list --state pending,approved` with none printed 'no pending,approved approvals'."""
    item, _ = await web_kit.store.create_or_join(draft(Clock(), quorum=2), link_s=1800)
    token = web_kit.token("alice")
    code, out, _ = await _cli("approve", item.id, "--url", web_kit.url, token=token)
    assert code == 0 and "vote recorded" in out
    code, _, err = await _cli("approve", item.id, "--url", web_kit.url, token=token)
    assert code == 1 and "already_voted" in err and "already decided" not in err
    assert "another approver" in err and "already pending" not in err, err
    code, out, _ = await _cli("list", "--state", "denied,expired", "--url", web_kit.url, token=token)
    assert code == 0 and out.strip() == "no denied or expired approvals", out


async def test_a_decision_not_answered_in_time_says_it_may_have_been_recorded(web_kit: WebKit) -> None:
    """A gateway that took the request but answered after --timeout was reported as unreachable ("cannot reach the
    gateway … is `customs serve` running?"), while the decision may well have been made: the approver, told
    nothing happened, would decide again or walk away from a call that ran."""
    answered = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await answered.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    async with run_aiohttp(app, shutdown_timeout=0.1) as url:
        try:
            code, _, err = await _cli("approve", "apr_x", "--url", url, "--timeout", "1", token=web_kit.token("alice"))
            assert code == 3 and "Traceback" not in err
            assert "no answer within 1" in err and "customs approvals show apr_x" in err
            assert "cannot reach" not in err
            code, _, err = await _cli("list", "--url", url, "--timeout", "1", token=web_kit.token("alice"))
            assert code == 3 and "no answer within 1" in err and "cannot reach" not in err
        finally:
            answered.set()
