"""The approvers' HTTP surface: the `/approvals` page (sign-in, live list, decide) and the `/api/approvals` API.

Routes are built by `approval_routes(...)`; the lead adds them to the application. JSON errors are
`{"error": {"reason": ..., "message": ...}}`; 401 unauthenticated, 403 not allowed (self-approval,
policy, CSRF), 404 unknown, 408 body not in full within `listen.body_timeout_s`, 409 already decided,
503 store or policy unavailable. Query parameters and bodies are read and checked in web_input.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.approvals import render, web_input
from gateway.approvals.auth import (
    SESSION_COOKIE,
    Approver,
    ApproverAuth,
    ApproverCheck,
    Refused,
    clear_session,
    cookies_withheld,
    csrf_token,
    refuse_query_token,
    session_too_large,
    set_csrf_cookie,
    set_session,
)
from gateway.approvals.cursor import Cursor, encode, order_for, position
from gateway.approvals.live import LiveUpdates
from gateway.approvals.model import AlreadyDecided, Approval, ApprovalNotFound
from gateway.approvals.signouts import SignOuts
from gateway.approvals.store import ApprovalStore
from gateway.errors import GatewayError
from gateway.pipeline import Identifier

OUTCOMES = {"approve": "approved", "deny": "denied"}
PAGE_PENDING = web_input.MAX_LIMIT  # pending calls the page shows (the API's largest page)
PAGE_HISTORY = 50  # decided calls the page shows
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> web.Response:
    return web.json_response({"error": {"reason": reason, "message": message, **extra}}, status=status,
                             headers=headers)


def _guarded(handler: Handler) -> Handler:
    """Map refusals and store failures to the documented JSON errors."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            refuse_query_token(request)
            return await handler(request)
        except Refused as exc:
            return _error(exc.status, exc.reason, exc.message, exc.headers)
        except ApprovalNotFound:
            return _error(404, "not_found", "no such approval")
        except AlreadyDecided as exc:
            message = (f"you already approved this call; it needs {exc.approval.quorum} approvers"
                       if exc.reason == "already_voted" else f"this call is already {exc.approval.state}")
            return _error(409, exc.reason, message, approval=exc.approval.to_json())
        except GatewayError as exc:
            return _error(503, exc.reason, exc.message)

    return wrapped


def _secured(handler: Handler) -> Handler:
    """Every answer of the page and the API carries `render.security_headers()` (the event stream sets them
    itself: it is sent before its handler returns)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.update(render.security_headers())
        return response

    return wrapped


class ApprovalsWeb:
    """Handlers for the page and the API, sharing one store and one authorization."""

    def __init__(self, store: ApprovalStore, auth: ApproverAuth, *,
                 redactor: Callable[[Any], Any] | None = None, keepalive_s: float = 15.0,
                 closing: asyncio.Event | None = None, base_path: str = "") -> None:
        self._store = store
        # The path prefix of listen.public_url: a reverse proxy publishes the gateway under it and strips it, so
        # the routes are at the root but every URL given to the browser (redirects, forms, fetches) carries it.
        self._base = base_path.rstrip("/")
        self._cookies = self._base or "/"  # the cookies' Path: the page's, never other applications on the host
        self._auth = auth
        self._redact = redactor
        self._live = LiveUpdates(store, keepalive_s, closing or asyncio.Event(), auth.may_view)

    def _json(self, item: Approval) -> dict[str, Any]:
        data = item.to_json()
        if self._redact is not None:
            data["args"] = self._redact(data["args"])
        return data

    async def _decide(self, approver: Approver, approval_id: str, outcome: str, comment: str | None) -> Approval:
        item = await self._store.get(approval_id)
        # Authorization first: a 409 carries the item, which someone refused must not see (403 as for a pending one).
        self._auth.authorize_decision(approver, item)
        if not item.pending:
            raise AlreadyDecided(item)
        # Kept redacted: it goes to the agent, page, API, CLI and decision log, and may hold a pasted token or key.
        if comment is not None and self._redact is not None:
            comment = str(self._redact(comment))
        return await self._store.decide(approval_id, approver.name, outcome, comment)

    # -- API ---------------------------------------------------------------------------------

    async def api_list(self, request: web.Request) -> web.StreamResponse:
        approver = await self._auth.authenticate(request)
        states = web_input.state_filter(request)
        limit = web_input.limit(request.query.get("limit", "100"))
        key = await self._store.cursor_key()
        items, more = await self._visible_page(approver, states, limit,
                                               web_input.cursor(request.query.get("cursor"), states, key))
        body: dict[str, Any] = {"items": [self._json(i) for i in items]}
        if more is not None:  # absent on the last page: the pinned shape, {"items": [...]}, when all fit in one
            body["next_cursor"] = encode(more, key)  # sealed: `more` may be an item this approver may not see
        return web.json_response(body)

    async def _visible_page(self, approver: Approver, states: list[str] | None, limit: int,
                            after: Cursor | None) -> tuple[list[Approval], Cursor | None]:
        """Up to `limit` items after `after` that the approver may see, and where the next page starts (None: no
        item left). Hidden ones do not use up the page: a full store page with some hidden is followed by one of
        up to PAGE_PENDING more; past those the page ends short, even empty, with a next cursor."""
        order = order_for(states)
        visible: list[Approval] = []
        fetch = limit
        while True:
            page = await self._store.page(states, fetch, after)
            hidden = False
            for n, item in enumerate(page.items):
                if not self._auth.may_view(approver, item):
                    hidden = True
                    continue
                visible.append(item)
                if len(visible) == limit:  # the next page continues right after this item
                    more = n + 1 < len(page.items) or page.next is not None
                    return visible, position(item, order) if more else None
            # As before cursors: only a full store page with hidden items is followed by one more, of PAGE_PENDING.
            if page.next is None or not hidden or len(page.items) < fetch or fetch >= PAGE_PENDING:
                return visible, page.next
            after, fetch = page.next, PAGE_PENDING

    async def api_get(self, request: web.Request) -> web.StreamResponse:
        approver = await self._auth.authenticate(request)
        item = await self._store.get(request.match_info["id"])
        if not self._auth.may_view(approver, item):
            raise Refused(403, "forbidden", "policy does not allow you to see this call")
        return web.json_response(self._json(item))

    async def api_decide(self, request: web.Request) -> web.StreamResponse:
        approver = await self._auth.authenticate(request)
        self._auth.check_csrf(request, approver, None)
        comment = await web_input.comment_from_json(request)
        outcome = OUTCOMES[request.match_info["action"]]
        return web.json_response(self._json(await self._decide(approver, request.match_info["id"], outcome, comment)))

    async def api_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent change notifications (ids only): the page refetches what it may see (live.py)."""
        return await self._live.stream(request, await self._auth.authenticate(request))

    # -- page --------------------------------------------------------------------------------

    async def _page_approver(self, request: web.Request) -> Approver | None:
        try:
            return await self._auth.authenticate(request)
        except Refused:
            return None

    def _unavailable(self, handler: Handler) -> Handler:
        """A page handler whose session could not be checked (the store holding sign-outs is unreachable):
        503 with a notice, failing closed as the API does (it used to be a bare 500)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except GatewayError as exc:
                note = render.notice(f"The approval store is unavailable ({exc.message}). Try again shortly.",
                                     error=True)
                return web.Response(text=render.page("Approvals", note, base=self._base), content_type="text/html",
                                    status=503)

        return wrapped

    def _signin_page(self, request: web.Request, message: str | None = None, status: int = 200) -> web.Response:
        token = csrf_token(request)
        response = web.Response(text=render.page("Sign in", render.signin(token, message, self._base),
                                                 base=self._base), content_type="text/html", status=status)
        set_csrf_cookie(response, self._auth.secure(request), token, self._cookies)
        return response

    async def _fragment_html(self, approver: Approver, csrf: str) -> str:
        # Pending and decided items are listed apart: one list of the newest items would hide a call still
        # waiting behind enough newer decided ones.
        pending = [i for i in await self._store.list(["pending"], PAGE_PENDING) if self._auth.may_view(approver, i)]
        decided = await self._store.decided(4 * PAGE_HISTORY)  # a log of decisions: the latest first
        history = [i for i in decided if self._auth.may_view(approver, i)]
        if len(history) < PAGE_HISTORY and len(decided) == 4 * PAGE_HISTORY:  # hidden ones took the room: look further
            history = [i for i in await self._store.decided(PAGE_PENDING) if self._auth.may_view(approver, i)]
        history = history[:PAGE_HISTORY]
        own = {i.id for i in pending if self._auth.on_own_behalf(approver, i)}  # shown, but not decidable
        return render.items_fragment(pending, history, csrf, own=own, viewer=approver.name, base=self._base)

    async def page(self, request: web.Request, message: str | None = None, *, error: bool = False,
                   status: int = 200) -> web.StreamResponse:
        approver = await self._page_approver(request)
        if approver is None and cookies_withheld(request):  # reloaded from this origin, it comes with them
            return web.Response(text=render.reopen(), content_type="text/html")
        if approver is None:
            return self._signin_page(request)
        csrf = csrf_token(request)
        note = render.notice(message or web_input.recorded(request.query.get("done")), error=error)
        try:
            body = note + f'<div id="items">{await self._fragment_html(approver, csrf)}</div>'
        except GatewayError as exc:
            body = note + render.notice(f"The approval store is unavailable ({exc.message}). Try again shortly.",
                                        error=True)
            status = 503
        who = render.who_box(approver.name, csrf, self._base)
        response = web.Response(text=render.page("Approvals", body, who=who, live=True, base=self._base),
                                content_type="text/html", status=status)
        set_csrf_cookie(response, self._auth.secure(request), csrf, self._cookies)
        return response

    async def fragment(self, request: web.Request) -> web.StreamResponse:
        approver = await self._auth.authenticate(request)
        return web.Response(text=await self._fragment_html(approver, csrf_token(request)), content_type="text/html")

    async def signin(self, request: web.Request) -> web.StreamResponse:
        try:
            form = await web_input.form(request)
        except Refused as exc:
            return self._signin_page(request, exc.message, exc.status)
        if not self._auth.form_csrf_ok(request, form.get("csrf")):
            return self._signin_page(request, "The sign-in form expired; please try again.", 403)
        try:
            token = self._auth.pasted_token(str(form.get("token") or ""))
            principal = await self._auth.identify_token(token)
        except Refused as exc:
            return self._signin_page(request, f"Sign-in failed: {exc.message}", exc.status)
        if (too_large := session_too_large(token)) is not None:
            return self._signin_page(request, too_large, 400)
        response = web.HTTPSeeOther(self._base + "/approvals")
        set_session(response, self._auth.secure(request), token, principal, self._cookies)
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        try:
            form = await web_input.form(request)
        except Refused as exc:
            return self._signin_page(request, exc.message, exc.status)
        if not self._auth.form_csrf_ok(request, form.get("csrf")):
            return self._signin_page(request, "Sign-out needs a fresh page; please try again.", 403)
        # The token is refused from now on (a copy of the cookie included), and its live-update streams end.
        key = await self._auth.sign_out(request.cookies.get(SESSION_COOKIE))
        if key is not None:
            self._live.sign_out(key)
        response = web.HTTPSeeOther(self._base + "/approvals")
        clear_session(response, self._cookies)
        return response

    async def page_decide(self, request: web.Request) -> web.StreamResponse:
        approver = await self._page_approver(request)
        if approver is None:
            return self._signin_page(request, "Please sign in again.", 401)
        try:
            form = await web_input.form(request)
            outcome = OUTCOMES.get(str(form.get("outcome")))
            comment = str(form.get("comment") or "").replace("\r\n", "\n").strip() or None  # form CRLF: as typed
            self._auth.check_csrf(request, approver, str(form.get("csrf") or ""))
            web_input.within_limit(comment)
            if outcome is None:
                raise Refused(400, "invalid_outcome", "choose Approve or Deny")
            item = await self._decide(approver, request.match_info["id"], outcome, comment)
        except Refused as exc:
            return await self.page(request, exc.message, error=True, status=exc.status)
        except ApprovalNotFound:
            return await self.page(request, "That call no longer exists.", error=True, status=404)
        except AlreadyDecided as exc:
            voted = exc.reason == "already_voted"
            text = (f"You already approved this call; it needs {exc.approval.quorum} approvals." if voted
                    else f"Already {exc.approval.state}: nothing changed.")
            return await self.page(request, text, error=True, status=409)
        except GatewayError as exc:
            return await self.page(request, exc.message, error=True, status=503)
        return web.HTTPSeeOther(f"{self._base}/approvals?done={item.id}+{item.state}")

    def routes(self) -> list[web.RouteDef]:
        def api(handler: Handler) -> Handler:
            return _secured(_guarded(handler))

        def page(handler: Handler) -> Handler:
            return _secured(self._unavailable(handler))

        return [
            web.get("/approvals", page(self.page)), web.get("/approvals/fragment", api(self.fragment)),
            web.post("/approvals/signin", page(self.signin)), web.post("/approvals/signout", page(self.signout)),
            web.post("/approvals/{id}/decide", page(self.page_decide)),
            web.get("/api/approvals", api(self.api_list)), web.get("/api/approvals/events", api(self.api_events)),
            web.get("/api/approvals/{id}", api(self.api_get)),
            web.post("/api/approvals/{id}/{action:approve|deny}", api(self.api_decide)),
        ]


def approval_routes(store: ApprovalStore, identifier: Identifier, approver_check: ApproverCheck, *,
                    redactor: Callable[[Any], Any] | None = None, approvers_issuer: str | None = None,
                    keepalive_s: float = 15.0, closing: asyncio.Event | None = None,
                    public_https: bool = False, base_path: str = "",
                    signouts: SignOuts | None = None) -> list[web.RouteDef]:
    """All routes of the approvers' page and API, ready for `app.add_routes(...)`; `closing` is set when the
    gateway begins to shut down (it ends the live-update streams); `public_https`: `listen.public_url` is https
    (cookies are Secure even when TLS ends at a proxy); `base_path`: the path of `listen.public_url` (a proxy's
    prefix), which every URL the page gives the browser starts with; `signouts`: where sign-outs are kept (Redis
    when the approvals are, so every replica refuses a signed-out token; default: this replica's memory)."""
    auth = ApproverAuth(identifier, approver_check, approvers_issuer=approvers_issuer, public_https=public_https,
                        signouts=signouts)
    return ApprovalsWeb(store, auth, redactor=redactor, keepalive_s=keepalive_s, closing=closing,
                        base_path=base_path).routes()
