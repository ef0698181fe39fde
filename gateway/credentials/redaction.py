"""Secret hygiene: redact secrets from values and log records, and tell whether a value holds one.

Two detectors: key names (`secrets.redact_keys`, matched word-wise so `access_token` and `apiKey`
match but `max_tokens` does not) and value patterns (JWTs, AWS / GitHub / Slack / Stripe / OpenAI /
Google keys, bearer and basic credentials, private-key PEM blocks, passwords in URLs), plus exact
known secret values the gateway holds (static upstream keys, client secrets).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config.model import BUILTIN_REDACT_KEYS, SecretsConfig

MARK = "[REDACTED]"
# What the agent's own bearer token becomes in a message it sends (credentials/agent_token.py). A mark of its own, a
# secret pattern below: the token is gone, but to policy (context.args_contain_secret) the arguments still held one.
AGENT_TOKEN_MARK = "[REDACTED:agent-token]"

# Where a token may start and end: not inside a run of letters and digits. Not `\b`: `_` is a word character, so
# `docs__ghp_…` (a tool name's `<upstream>__` prefix, snake_case) or `ghp_…_old` had no boundary and kept the token.
_START, _END = r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])"
# (name, pattern, replacement). Replacements keep a harmless prefix so the log stays readable.
PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("pem_private_key", re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY( BLOCK)?-----[\s\S]*?"
                                   r"-----END \1PRIVATE KEY( BLOCK)?-----"), MARK),
    ("jwt", re.compile(_START + r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"), MARK),
    ("bearer", re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2" + MARK),
    ("basic_auth", re.compile(r"\b(Basic)(\s+)[A-Za-z0-9+/]{12,}={0,2}"), r"\1\2" + MARK),
    ("aws_access_key", re.compile(_START + r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}" + _END), MARK),
    ("aws_secret_key", re.compile(r"(?i)(aws_secret_access_key\s*[=:]\s*)[\"']?[A-Za-z0-9/+=]{40}"), r"\1" + MARK),
    ("github_token", re.compile(_START + r"gh[pousr]_[A-Za-z0-9]{30,}" + _END), MARK),
    ("github_pat", re.compile(_START + r"github_pat_[A-Za-z0-9_]{22,}"), MARK),
    ("slack_token", re.compile(_START + r"xox[abposre]-[A-Za-z0-9-]{10,}"), MARK),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"), MARK),
    ("stripe_key", re.compile(_START + r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}" + _END), MARK),
    ("stripe_webhook_secret", re.compile(_START + r"whsec_[A-Za-z0-9]{20,}" + _END), MARK),
    ("openai_key", re.compile(_START + r"sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"), MARK),
    ("google_api_key", re.compile(_START + r"AIza[0-9A-Za-z_-]{35}"), MARK),
    ("url_password", re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?!\[REDACTED\]@)[^/\s@]+(@)"),
     r"\1" + MARK + r"\2"),
    ("agent_token_mark", re.compile(re.escape(AGENT_TOKEN_MARK)), MARK),
)

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def _detector(patterns: Iterable[re.Pattern[str]]) -> re.Pattern[str]:
    """One alternation of every pattern, for a single pass when only *whether* matters (hot path).
    Global inline flags become scoped groups; the PEM pattern's back-reference is not needed to detect."""
    parts = []
    for pattern in patterns:
        text = pattern.pattern.replace(r"[\s\S]*?-----END \1PRIVATE KEY( BLOCK)?-----", "")
        if text.startswith("(?i)"):
            text = f"(?i:{text[4:]})"
        parts.append(f"(?:{text})")
    return re.compile("|".join(parts))


DETECT = _detector(p for _, p, _ in PATTERNS)
# A first pass that finds a literal every pattern's match holds (sre then scans for those literals' first characters,
# rather than trying every pattern at every position: 5-15 times faster on text without secrets, the usual case).
# Text it finds nothing in holds no secret; tests/credentials/test_redaction_prefilter.py keeps it a superset.
PREFILTER = re.compile(r"(?i:bearer|aws_secret_access_key)|-----BEGIN|eyJ|Basic|A(?:KIA|SIA|BIA|CCA)|gh[pousr]_"
                       r"|github_pat_|xox|[spr]k_(?:live|test)_|whsec_|sk-|AIza|hooks\.slack\.com|://[^/\s@]*@"
                       r"|\[REDACTED:agent-token\]")


def _words(key: str) -> tuple[str, ...]:
    """`accessToken`, `access_token`, `X-Access-Token` → ("access", "token")."""
    return tuple(w.lower() for w in _WORD.findall(key))


# Names ending in `key` that hold one (AWS_SECRET_ACCESS_KEY, SIGNING_PRIVATE_KEY, DJANGO_SECRET_KEY, --private-key):
# config entries only (`names_a_secret`). Not key names to redact in arguments: `key` alone would be every
# `sort_key` and `cache_key`, and these are left to `secrets.redact_keys`.
_SECRET_KEY_NAMES = frozenset({"accesskey", "privatekey", "secretkey"})


class Redactor:
    """Deep redaction and secret detection for tool arguments, log records, spans and approval pages."""

    def __init__(self, config: SecretsConfig | None = None, *, known_secrets: Iterable[str] = ()) -> None:
        config = config or SecretsConfig()
        names = tuple(dict.fromkeys((*BUILTIN_REDACT_KEYS, *config.redact_keys, *config.sensitive_headers)))
        self._key_words = tuple(w for w in (_words(n) for n in names) if w)
        self._key_flat = frozenset("".join(w) for w in self._key_words)
        self._known: set[str] = set()
        self._ordered: list[str] = []  # the same, longest first: the order they are replaced in
        # The same as JSON writes them inside a string (a quote or a backslash escaped), built once here: scrub_known
        # looks for them in every answer, and encoding each secret per call cost ~4 µs a secret on tools/call.
        self._encoded: tuple[str, ...] = ()
        self._key_cache: dict[str, bool] = {}
        for secret in known_secrets:
            self.add_known(secret)

    def add_known(self, secret: str) -> None:
        """Also redact this exact value wherever it appears (secrets the gateway itself holds)."""
        if len(secret) >= 6:  # shorter values would redact ordinary words
            self._known.add(secret)
            # Longest first: a value holding another (`Token abc…`, `abc…`) is replaced whole, whatever the set order.
            self._ordered = sorted(self._known, key=len, reverse=True)
            self._encoded = tuple(json.dumps(known, ensure_ascii=False)[1:-1] for known in self._ordered)

    def scrub_known(self, value: Any) -> Any:
        """`value` (an upstream's JSON answer) with the exact secrets the gateway holds replaced by [REDACTED], in
        every string and key; the same object when none appears. Only those secrets, not the patterns: a tool may
        rightly answer with a token its user asked for, never with the key the gateway gave it. One JSON encoding to
        look (C speed), nothing at all while the gateway holds no secret (no static credential, no client secret)."""
        if not self._known:
            return value
        return _scrub(value, self._ordered, self._encoded)

    def is_secret_key(self, key: str) -> bool:
        known = self._key_cache.get(key)
        if known is not None:
            return known
        words = _words(key)
        found = "".join(words) in self._key_flat or any(
            words[i:i + len(kw)] == kw for kw in self._key_words for i in range(len(words) - len(kw) + 1))
        if len(self._key_cache) < 4096:  # argument names repeat; a bounded memo keeps this off the hot path
            self._key_cache[key] = found
        return found

    def names_a_secret(self, name: str) -> bool:
        """Whether a config entry named `name` holds a secret value itself: its name ends in a secret key's words
        (GITHUB_TOKEN, X-Api-Key, --api-key, API_TOKEN_2) or in a key's that holds one (AWS_SECRET_ACCESS_KEY,
        PRIVATE_KEY, SECRET_KEY: `_SECRET_KEY_NAMES`), not in another word (TOKEN_URL, HF_TOKEN_PATH,
        --token-limit hold a place or a number about one, which held as a secret would be blanked out of every
        answer and mark every argument quoting it as holding one)."""
        words = _words(name)
        while words and words[-1].isdigit():
            words = words[:-1]
        return any("".join(words[start:]) in self._key_flat or "".join(words[start:]) in _SECRET_KEY_NAMES
                   for start in range(len(words)))

    def redact_text(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MARK)
        if PREFILTER.search(text) is None:
            return text
        for _, pattern, replacement in PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def text_has_secret(self, text: str) -> bool:
        # (`_known` is empty unless upstreams have static secrets: skip building the generator then.)
        return (bool(self._known) and any(s in text for s in self._known)) or (
            PREFILTER.search(text) is not None and DETECT.search(text) is not None)

    def redact(self, value: Any) -> Any:
        """A deep copy of `value` with secret-named fields and secret-looking strings replaced by [REDACTED]."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return self._redact_mapping(value)
        if isinstance(value, list | tuple | set | frozenset):
            items = [self.redact(v) for v in value]
            return items if isinstance(value, list | set | frozenset) else tuple(items)
        if isinstance(value, bytes):
            return self.redact_text(value.decode("utf-8", "replace")).encode()
        return value

    def _redact_mapping(self, value: Mapping[Any, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                out[k] = self.redact(v)
                continue
            v = MARK if self.is_secret_key(k) and _present(v) else self.redact(v)
            # A key can be a secret too (contains_secret looks at it): an agent may pass a token as a name.
            if self.text_has_secret(k):
                base, n = self.redact_text(k), 1
                k = base
                while k in out or k in value:  # two keys redacting alike stay two entries, neither hidden
                    n += 1
                    k = f"{base} ({n})"
            out[k] = v
        return out

    def contains_secret(self, value: Any) -> bool:
        """True when any key name or string anywhere in `value` looks like a secret."""
        if isinstance(value, str):
            return self.text_has_secret(value)
        if type(value) is dict or isinstance(value, Mapping):  # a plain dict skips the ABC check (per call)
            return any((isinstance(k, str) and ((self.is_secret_key(k) and _present(v)) or self.text_has_secret(k)))
                       or self.contains_secret(v) for k, v in value.items())
        if isinstance(value, list | tuple | set | frozenset):
            return any(self.contains_secret(v) for v in value)
        if isinstance(value, bytes):
            return self.text_has_secret(value.decode("utf-8", "replace"))
        return False

    def redact_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers with credential-bearing ones (Authorization, Cookie, configured names) masked."""
        always = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
        return {k: MARK if k.lower() in always or self.is_secret_key(k) else self.redact_text(v)
                for k, v in headers.items()}


def scrub_exact(value: Any, secrets: Iterable[str]) -> Any:
    """`value` (an upstream's JSON answer) with each of `secrets` (exact values, such as the credential a call carried
    upstream) replaced by [REDACTED] in every string and key; the same object when none appears (one JSON encoding to
    look, as `Redactor.scrub_known`). Values shorter than 6 characters are left alone: they would redact words."""
    ordered = sorted((s for s in set(secrets) if len(s) >= 6), key=len, reverse=True)  # `Bearer x` before `x`
    if not ordered:
        return value
    return _scrub(value, ordered, [json.dumps(secret, ensure_ascii=False)[1:-1] for secret in ordered])


def _scrub(value: Any, ordered: list[str], encoded: Iterable[str]) -> Any:
    """`value` with `ordered` replaced (`_replace`), or the same object when none of them appears: one JSON encoding to
    look for them as JSON writes them (`encoded`: a quote or a backslash in a secret is escaped in the text)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return _replace(value, ordered)  # not JSON (never from the wire): walk it
    if not any(secret in text for secret in encoded):
        return value
    return _replace(value, ordered)


def _replace(value: Any, ordered: list[str]) -> Any:
    """`value` with each of `ordered` (longest first) replaced by [REDACTED] in every string, key and item."""
    if isinstance(value, str):
        for secret in ordered:
            if secret in value:
                value = value.replace(secret, MARK)
        return value
    if isinstance(value, dict):
        return {_replace(k, ordered): _replace(v, ordered) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(item, ordered) for item in value]
    return value


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


_STANDARD_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message, arguments, exception text and extras.

    Attach it to handlers (filters on a logger do not see records propagated from child loggers):
    `install_log_redaction(redactor)` does that for the root logger's handlers.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw text, still redacted
            message = str(record.msg)
        record.msg = self.redactor.redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact_text(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_RECORD_KEYS:
                record.__dict__[key] = MARK if self.redactor.is_secret_key(key) else self.redactor.redact(value)
        return True


def install_log_redaction(redactor: Redactor, logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one RedactingFilter to every handler of `logger` (default: root). Returns the filter."""
    target = logger or logging.getLogger()
    log_filter = RedactingFilter(redactor)
    for handler in target.handlers:
        handler.addFilter(log_filter)
    return log_filter
