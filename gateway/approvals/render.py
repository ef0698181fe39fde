"""Server-rendered HTML for the approvers' page: templates from the package, every value escaped."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Sequence, Set
from functools import cache
from html import escape
from importlib import resources
from string import Template

from gateway.approvals.cli import shown
from gateway.approvals.model import Approval
from gateway.timefmt import iso_utc


@cache
def _template(name: str) -> Template:
    # cached per process: the files ship with the package and never change at run time
    return Template(resources.files("gateway.approvals").joinpath("templates").joinpath(name).read_text("utf-8"))


def _raw(name: str) -> str:
    return resources.files("gateway.approvals").joinpath("templates").joinpath(name).read_text("utf-8")


def _hashes(tag: str) -> str:
    """CSP sources for every inline `<tag>` block of the templates (they ship with the package: fixed)."""
    folder = resources.files("gateway.approvals").joinpath("templates")
    blocks = (b for f in sorted(folder.iterdir(), key=lambda f: f.name)
              for b in re.findall(f"<{tag}>(.*?)</{tag}>", f.read_text("utf-8"), re.S))
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


@cache
def security_headers() -> dict[str, str]:
    """Headers of every approvers' answer. The page runs only its own inline scripts and style (by hash, so an
    injected one would not run even if escaping failed), talks only to its origin, and is never framed: a
    same-site page (another port of the host, a sibling subdomain) gets the session cookie in a frame and could
    lay a decoy over the Approve button. Nothing is cached: held calls' arguments stay out of shared caches."""
    csp = (f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
           "connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store", "Referrer-Policy": "same-origin"}


def _text(value: object) -> str:
    """Text an agent, upstream or approver chose, for the page: HTML-escaped, and every character not drawn as
    itself (controls, zero-width, bidi overrides: `\\u202e7654-A` is drawn `A-4567`) shown as its escape, as the
    CLI prints it, so what the approver reads is what runs."""
    return escape(shown(value))


def _args(args: object) -> str:
    dumped = json.dumps(args, indent=2, sort_keys=True, ensure_ascii=False)  # other scripts stay readable
    return "\n".join(_text(line) for line in dumped.split("\n"))


def relative(seconds: float) -> str:
    """A length of time (its sign is the caller's to say: see `from_now`)."""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.1f} h"


def from_now(seconds: float) -> str:
    """`in 3 s` ahead, `3 s ago` past: an item just past its expiry (until the sweep) must not read as ahead."""
    return f"in {relative(seconds)}" if seconds >= 0 else f"{relative(seconds)} ago"


def when(ts: float | None) -> str:
    """A moment in UTC, said so: approvers and the server may sit in different time zones."""
    if not ts:
        return "—"
    return (f'<time datetime="{iso_utc(int(ts))}">'
            f'{time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))} UTC</time>')


def page(title: str, body: str, *, who: str = "", live: bool = False, base: str = "") -> str:
    """A whole page; `base` is the path prefix of `listen.public_url` (a reverse proxy's, e.g. `/customs`): every
    URL the page gives the browser starts with it, since the gateway's own routes are at its root."""
    return _template("base.html").substitute(title=escape(title), body=body, who=who, base=escape(base),
                                             script=_raw("live.js") if live else "")


def reopen() -> str:
    """The page that reloads itself (web.py: a link from another site came without the session cookie)."""
    return page("Approvals", _raw("reopen.html"))


def who_box(name: str, csrf: str, base: str = "") -> str:
    return (f'Signed in as <strong id="me">{escape(name)}</strong> '
            f'<form method="post" action="{escape(base)}/approvals/signout"><input type="hidden" name="csrf" '
            f'value="{escape(csrf)}"><button type="submit">Sign out</button></form>')


def notice(text: str | None, *, error: bool = False) -> str:
    if not text:
        return ""
    return f'<div class="notice{" error" if error else ""}" role="status">{escape(text)}</div>'


def signin(csrf: str, message: str | None = None, base: str = "") -> str:
    return _template("signin.html").substitute(csrf=escape(csrf), notice=notice(message, error=True),
                                               base=escape(base))


OWN_BEHALF = ('<p class="muted own-behalf">This call was made on your behalf (by you, an agent you own or one '
              'acting for you), so someone else must decide it.</p>')


VOTED = '<p class="muted voted">You approved this call; it waits for {more} more approver(s).</p>'


def item_card(item: Approval, csrf: str, now: float, *, decidable: bool = True, viewer: str = "",
              base: str = "") -> str:
    approvals = [v.by for v in item.votes if v.outcome == "approved"]
    votes = f"{len(approvals)} of {item.quorum}" + (f" ({', '.join(map(shown, approvals))})" if approvals else "")
    if viewer in approvals:  # one vote per person (quorum): a second click could only be refused
        actions = VOTED.format(more=max(item.quorum - len(approvals), 1))
    elif decidable:
        actions = _template("decide.html").substitute(id=escape(item.id), csrf=escape(csrf), base=escape(base))
    else:
        actions = OWN_BEHALF
    return _template("item.html").substitute(
        id=escape(item.id), upstream=_text(item.upstream), tool=_text(item.tool), what=escape(item.what),
        principal=_text(item.principal), chain=" → ".join(map(_text, item.chain)) or "— (direct)",
        tenant=_text(item.tenant or "—"), policies=", ".join(map(_text, item.policies)) or "—",
        age=relative(now - item.created_at) + " ago", expires=from_now(item.expires_at - now),
        votes=escape(votes), args=_args(item.args),
        actions=actions)


def _execution(item: Approval) -> str:
    """What became of an approved call: forwarded, or claimed but never run (and why)."""
    if item.not_executed:
        return f" · not executed ({escape(item.not_executed)})"
    return " · executed" if item.ran else ""


def history_table(items: Sequence[Approval]) -> str:
    """Decided calls; each row's id is the approval id, as a pending card's is, so `/approvals#apr_…` (the
    webhook's Review link, `approval_url`) lands on the call whether it is still pending or decided."""
    if not items:
        return '<p class="muted">No decided calls yet.</p>'
    rows = "".join(
        f'<tr id="{escape(i.id)}"><td>{when(i.decided_at or i.created_at)}</td>'
        f"<td>{_text(i.upstream)} / {_text(i.tool)}{escape(i.what)}</td><td>{_text(i.principal)}</td>"
        f'<td class="state-{escape(i.state)}">{escape(i.state)}{_execution(i)}</td>'
        f"<td>{', '.join(map(_text, i.decided_by)) or '—'}</td><td>{_text(i.comment or '')}</td></tr>"
        for i in items)
    return ("<table><thead><tr><th>When</th><th>Tool</th><th>Agent</th><th>Outcome</th><th>By</th>"
            f"<th>Comment</th></tr></thead><tbody>{rows}</tbody></table>")


def items_fragment(pending: Sequence[Approval], history: Sequence[Approval], csrf: str, *,
                   own: Set[str] = frozenset(), viewer: str = "", base: str = "") -> str:
    """The live part of the page; items in `own` were made on the viewer's behalf and get no buttons, nor do
    those the viewer already approved (quorum)."""
    now = time.time()
    cards = "".join(item_card(i, csrf, now, decidable=i.id not in own, viewer=viewer, base=base)
                     for i in pending) or \
        '<p class="muted" id="none-pending">Nothing is waiting for approval.</p>'
    return (f'<h2>Waiting for a decision ({len(pending)})</h2>{cards}'
            f"<h2>History</h2>{history_table(history)}")
