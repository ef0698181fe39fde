"""The fenced code blocks of one language in the docs, as pytest params named `page:line` (what a reader copies)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC_PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def fenced_blocks(pages: Iterable[Path], language: str) -> list[Any]:
    """One param per ```<language> block (```yaml also matches ```yml), with its page and first line as id."""
    pattern = "ya?ml" if language == "yaml" else re.escape(language)
    fence = re.compile(rf"^```{pattern}\n(.*?)^```", re.S | re.M)
    found = []
    for page in pages:
        text = page.read_text()
        for match in fence.finditer(text):
            line = text[:match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(REPO)}:{line}"))
    return found
