"""A policy comparing context.time.hour or weekday with a value it never takes is a validation problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import forbid_when, shipped_schema_dir

from gateway.authz.policyset import PolicyLoadError, load_policies
from tests.support.cli import customs_main


def _dir(tmp_path: Path, body: str) -> Path:
    return shipped_schema_dir(tmp_path, "window", forbid_when("window", body))


@pytest.mark.parametrize(("body", "problem"), [
    ("[0, 6].contains(context.time.weekday)", "context.time.weekday compared with 0"),
    ("context.time.weekday == 0", "context.time.weekday compared with 0"),
    ("context.time.hour == 24", "context.time.hour compared with 24"),
    ("context.time.weekday != 8 && context.time.hour < 9", "context.time.weekday compared with 8"),
])
def test_a_value_the_time_never_takes_is_refused(tmp_path: Path, body: str, problem: str) -> None:
    """`context.time.weekday` is ISO (1 = Monday … 7 = Sunday), so a weekend forbid written with the 0 = Sunday
    convention, `[0, 6].contains(context.time.weekday)`, validated and never fired on Sundays: the comparison
    with 0 is merely false. Such a literal (hour outside 0-23, weekday outside 1-7) now fails validation."""
    directory = _dir(tmp_path, body)
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(directory)
    assert any(problem in p and "policy 'window'" in p and "window.cedar" in p for p in caught.value.problems), \
        caught.value.problems
    result = customs_main("policy", "validate", directory)
    assert result.returncode == 1 and problem in result.stderr and "7 = Sunday" in result.stderr


@pytest.mark.parametrize("body", ["[6, 7].contains(context.time.weekday)", "context.time.hour == 0",
                                  "context.time.hour < 24 && context.time.weekday >= 1"])
def test_values_in_range_load(tmp_path: Path, body: str) -> None:
    load_policies(_dir(tmp_path, body))
