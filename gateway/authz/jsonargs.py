"""The JSON options of `customs policy explain|schema`: inline JSON text or @file, checked before Cedar sees it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.authz.casefields import CaseError
from gateway.config.load import unreadable


def json_arg(value: str | None, what: str) -> Any:
    """JSON text, or @file holding JSON; None stays None."""
    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        return json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"{what}: cannot read {value[1:]}: {unreadable(exc)}") from exc
    except json.JSONDecodeError as exc:  # its line and column are the file's, so the file is named
        source = f"{value[1:]}: " if value.startswith("@") else ""
        raise CaseError(f"{what}: {source}invalid JSON: {exc}") from exc


def explain_json(value: str | None, what: str) -> Any:
    """An explain option's JSON: refused when a string in it is a lone surrogate (a JSON escape `\udcff`),
    which no Cedar (or UTF-8) text holds; Cedar's JSON would end in a traceback."""
    data = json_arg(value, what)
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end].encode("unicode_escape").decode()
        raise CaseError(f"{what}: a string holds a lone surrogate ({bad}), which is not Unicode text") from exc
    return data


def json_object(value: str | None, what: str) -> dict[str, Any]:
    """A JSON object option of explain (text or @file); absent or null is {}."""
    data = explain_json(value, what)
    if data is not None and not isinstance(data, dict):
        raise CaseError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data or {}
