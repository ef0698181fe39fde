"""Who is approving: bearer token or sign-in session cookie, the double-submit CSRF check, and who may decide.

The session cookie holds the approver's own bearer token (HttpOnly, SameSite=Strict), so any replica
can verify it and it lapses with the token; a sign-out records the token (signouts.py), which is refused from
then on, as a cookie or a bearer token. Requests authenticated by cookie must echo the CSRF
cookie in a form field or `X-CSRF-Token` header; bearer-token API calls need no CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.approvals.model import Approval
from gateway.approvals.signouts import MAX_SKEW_S, MemorySignOuts, SignOuts, token_key
from gateway.context import Decision, Principal
from gateway.errors import GatewayError
from gateway.identity.identifier import DPOP_SCHEME, is_dpop_scheme
from gateway.pipeline import Identifier

SESSION_COOKIE = "customs_approver"
CSRF_COOKIE = "customs_csrf"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSION_S = 8 * 3600
MAX_COOKIE_BYTES = 4096  # a cookie's name and value together: browsers drop a larger one without a word

ApproverCheck = Callable[[Principal, Approval], Decision]


NO_CREDENTIALS = "sign in with a bearer token"
WRONG_SCHEME = "use Authorization: Bearer <token>"
SIGNED_OUT = "this token was signed out of the approvers' page; sign in with a new token from your identity provider"
QUERY_TOKEN = "tokens in the query string are not accepted; use Authorization: Bearer <token>"
TWO_HEADERS = "More than one Authorization header; send one"


class Refused(Exception):
    """An approver request refused with an HTTP status and a stable reason."""

    def __init__(self, status: int, reason: str, message: str, *, no_credential: bool = False) -> None:
        self.no_credential = no_credential  # none was sent: RFC 6750 §3.1, the challenge names no error
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")

    @property
    def headers(self) -> dict[str, str]:
        """A 401 says how to authenticate (RFC 7235 §3.1, RFC 6750 §3): `Bearer`, with `error="invalid_token"`
        for a token or session that did not verify."""
        if self.status != 401:
            return {}
        if self.message in (QUERY_TOKEN, TWO_HEADERS):  # a malformed request, as /mcp answers it (identity/)
            return {"WWW-Authenticate": 'Bearer error="invalid_request"'}
        invalid = not self.no_credential and self.message not in (NO_CREDENTIALS, WRONG_SCHEME, DPOP_SCHEME)
        return {"WWW-Authenticate": 'Bearer error="invalid_token"' if invalid else "Bearer"}


def refuse_query_token(request: web.Request) -> None:
    """A token in the URL ends up in access logs and browser history (OAuth 2.1 §5.1.1 forbids it), so the APIs
    refuse it, as /mcp does, even beside a valid Authorization header: the caller must stop sending it."""
    if "access_token" in request.query:
        raise Refused(401, "unauthenticated", QUERY_TOKEN)


@dataclass(frozen=True)
class Approver:
    principal: Principal
    via: str  # "bearer" | "cookie"
    key: str = ""  # token_key of the credential: what its sign-out records, and its live streams are kept under

    @property
    def name(self) -> str:
        return self.principal.id


def cedar_approver_check(decide_approve: Callable[[str, list[str], dict[str, Any], tuple[str, ...]], Decision]
                         ) -> ApproverCheck:
    """Adapt the authz engine's `decide_approve(user_id, groups, approval_attrs, chain)` to an ApproverCheck."""

    def check(approver: Principal, approval: Approval) -> Decision:
        groups = approver.attributes.get("groups") or []
        groups = [groups] if isinstance(groups, str) else [str(g) for g in groups]
        return decide_approve(approver.subject or approver.id, groups, approval.cedar_attrs(),
                              tuple(approver.chain_ids))

    return check


# Anonymous identity gives every caller, token or not, the same principal: nobody can be an approver or an
# administrator, and a person told only "use a valid token" would look for one that cannot exist.
ANONYMOUS_MODE = ("this gateway runs identity.mode: anonymous, where no token identifies anyone, so no one can "
                  "{who} here: configure identity.mode: jwt with your issuer (customs demo does)")


class ApproverAuth:
    """Authenticates approvers and decides whether one may decide a given item."""

    def __init__(self, identifier: Identifier, approver_check: ApproverCheck, *,
                 approvers_issuer: str | None = None, public_https: bool = False,
                 signouts: SignOuts | None = None) -> None:
        self._identifier = identifier
        self._signouts = signouts if signouts is not None else MemorySignOuts()
        self._check = approver_check
        self._issuer = approvers_issuer
        self._public_https = public_https

    def secure(self, request: web.Request) -> bool:
        """Whether cookies get `Secure`: the page is served over HTTPS, by the gateway itself or, when
        `public_url` is https, by a proxy ending TLS in front of it (the request reaching us is plain HTTP)."""
        return request.secure or self._public_https

    async def identify_token(self, token: str) -> Principal:
        """The approver `token` names, unless it does not verify or was signed out (Refused 401)."""
        principal = await self._verify(token)
        if await self._signouts.signed_out(token_key(token)):
            raise Refused(401, "unauthenticated", SIGNED_OUT)
        return principal

    async def sign_out(self, token: str | None) -> str | None:
        """Refuse the session's token from now on, until it could no longer verify anyway; its key, or None when
        it is no approver's token (nothing to refuse: a garbage cookie is not kept)."""
        if not token:
            return None
        try:
            principal = await self._verify(token)
        except Refused:
            return None
        key = token_key(token)
        expires_at = principal.expires_at if principal.expires_at is not None else time.time() + MAX_SESSION_S
        await self._signouts.sign_out(key, expires_at + MAX_SKEW_S)
        return key

    async def _verify(self, token: str) -> Principal:
        headers: CIMultiDict[str] = CIMultiDict({"Authorization": f"Bearer {token}"})
        try:
            principal = await self._identifier.identify(headers, None)
        except GatewayError as exc:
            raise Refused(401, "unauthenticated", exc.message) from exc
        if principal.anonymous:  # a token was sent, so this is anonymous mode: no token names anyone
            raise Refused(401, "unauthenticated", ANONYMOUS_MODE.format(who="approve"))
        if self._issuer is not None and principal.issuer != self._issuer:
            raise Refused(403, "forbidden", "tokens from this issuer may not approve")
        return principal

    async def authenticate(self, request: web.Request) -> Approver:
        # Exactly one, as /mcp takes it: with two, which credential decided hung on the order they came in.
        headers = request.headers.getall("Authorization", [])
        if len(headers) > 1:
            raise Refused(401, "unauthenticated", TWO_HEADERS)
        header = headers[0] if headers else ""
        if header:
            scheme, _, token = header.partition(" ")
            if is_dpop_scheme(header):
                raise Refused(401, "unauthenticated", DPOP_SCHEME)
            if scheme.lower() != "bearer" or not token.strip():
                raise Refused(401, "unauthenticated", WRONG_SCHEME)
            return Approver(await self.identify_token(token.strip()), "bearer", token_key(token.strip()))
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return Approver(await self.identify_token(cookie), "cookie", token_key(cookie))
        raise Refused(401, "unauthenticated", await self._no_credentials(), no_credential=True)

    async def _no_credentials(self) -> str:
        """What a request with no credential is told: in anonymous mode no token could work, so say that (as a
        token sent there hears), not "sign in", which sends a person looking for one."""
        try:
            nobody = await self._identifier.identify(CIMultiDict(), None)
        except GatewayError:
            return NO_CREDENTIALS  # a token is required: the usual case
        return ANONYMOUS_MODE.format(who="approve") if nobody.anonymous else NO_CREDENTIALS

    @staticmethod
    def pasted_token(pasted: str) -> str:
        """The token pasted into the sign-in box: a `Bearer ` before it and whitespace anywhere in it (a wrapped
        paste's line breaks; a bearer token has none) are left out. A pasted `DPoP <token>` is Refused 401, as that
        scheme is."""
        token = pasted.strip()
        if is_dpop_scheme(token):
            raise Refused(401, "unauthenticated", DPOP_SCHEME)
        if token[:6].lower() == "bearer" and token[6:7].isspace():
            token = token[7:]
        return "".join(token.split())

    @staticmethod
    def form_csrf_ok(request: web.Request, submitted: object) -> bool:
        """The sign-in/out forms' double-submit check (constant time, as check_csrf)."""
        expected = request.cookies.get(CSRF_COOKIE, "")
        return (bool(expected) and isinstance(submitted, str) and hmac.compare_digest(expected, submitted)
                and _from_own_page(request))

    @staticmethod
    def check_csrf(request: web.Request, approver: Approver, submitted: str | None) -> None:
        """Double-submit: a cookie-authenticated change must carry the CSRF cookie's value, from our own page."""
        if approver.via != "cookie":
            return
        expected = request.cookies.get(CSRF_COOKIE, "")
        offered = submitted or request.headers.get(CSRF_HEADER, "")
        if not expected or not offered or not hmac.compare_digest(expected, offered) or not _from_own_page(request):
            raise Refused(403, "csrf_failed", "missing or wrong CSRF token; reload the page and try again")

    def may_view(self, approver: Approver, item: Approval) -> bool:
        try:
            return self._check(approver.principal, item).outcome == "allow"
        except GatewayError:
            return False

    @staticmethod
    def on_own_behalf(approver: Approver, item: Approval) -> bool:
        """The approver is the requester, an actor of its chain, or an owner of one of them; so is an approver's
        token held by such an agent (an actor in the token's own `act` chain): a person's delegated token in the
        hands of the call's agent is that agent deciding its own call."""
        deciders = {approver.principal.id, approver.principal.subject, *approver.principal.chain_ids}
        return bool(deciders & item.requester_ids())

    def authorize_decision(self, approver: Approver, item: Approval) -> None:
        """Nobody decides a call made on their own behalf; then Cedar (`Action::"approve"`) decides."""
        if self.on_own_behalf(approver, item):
            raise Refused(403, "self_approval", "you cannot decide a call made on your own behalf")
        try:
            decision = self._check(approver.principal, item)
        except GatewayError as exc:
            raise Refused(503, exc.reason, exc.message) from exc
        if decision.outcome != "allow":
            raise Refused(403, "forbidden", "policy does not allow you to decide this call")


def _from_own_page(request: web.Request) -> bool:
    """The browser's Fetch Metadata does not name another origin. Double-submit alone is not enough: a page on
    the same site (another port of the host, a sibling subdomain) gets the SameSite=Strict cookies sent along
    and can overwrite `customs_csrf` with a value of its choosing. The gateway's Origin guard refuses most such
    pages, but not under `listen.allowed_origins: ["*"]` or when one is listed for agents. `none`: the person
    acted (typed, bookmarked); no header: not a browser, or one from before Fetch Metadata."""
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def cookies_withheld(request: web.Request) -> bool:
    """A top-level navigation from another site (the webhook's Review link clicked in Slack or a mail): the
    browser does not send SameSite=Strict cookies with it, so a person signed in would look signed out. The page
    then reopens itself, a same-origin navigation that carries them (no change is ever made by a GET)."""
    return request.headers.get("Sec-Fetch-Site") == "cross-site" and request.headers.get("Sec-Fetch-Mode") == "navigate"


def csrf_token(request: web.Request) -> str:
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


# `path`: where the page lives, `/` or the path of listen.public_url behind a proxy's prefix (`/customs/`), so
# that other applications the proxy publishes on the same host are never sent the approver's token.
def set_csrf_cookie(response: web.StreamResponse, secure: bool, token: str, path: str = "/") -> None:
    response.set_cookie(CSRF_COOKIE, token, path=path, samesite="Strict", secure=secure, httponly=False)


def set_session(response: web.StreamResponse, secure: bool, token: str, principal: Principal,
                path: str = "/") -> None:
    max_age = MAX_SESSION_S
    if principal.expires_at is not None:
        max_age = max(1, min(max_age, int(principal.expires_at - time.time())))
    response.set_cookie(SESSION_COOKIE, token, path=path, samesite="Strict", secure=secure,
                        httponly=True, max_age=max_age)
    set_csrf_cookie(response, secure, secrets.token_urlsafe(32), path)  # a fresh CSRF token per session


def session_too_large(token: str) -> str | None:
    """Why `token` cannot be the session cookie, if it cannot: a browser drops a cookie over MAX_COOKIE_BYTES
    without a word, so the sign-in would "succeed" and land on the sign-in form again (many group claims)."""
    size = len(SESSION_COOKIE) + len(token.encode())
    if size <= MAX_COOKIE_BYTES:
        return None
    return (f"Your token is too large for a browser cookie ({size} bytes with the cookie's name; browsers keep at "
            f"most {MAX_COOKIE_BYTES}), so this page cannot keep you signed in. Use the API or `customs approvals` "
            "with Authorization: Bearer <token>, or ask your identity provider for a token with fewer claims.")


def clear_session(response: web.StreamResponse, path: str = "/") -> None:
    response.del_cookie(SESSION_COOKIE, path=path)  # deleted only with the Path it was set with
    response.del_cookie(CSRF_COOKIE, path=path)
