"""Cedar's own validation errors are listed in the policies' order and, within a policy, by text: Cedar reports them
in hash order, so the same broken directory gave another list on every load (start-up, each reload's log line and
/readyz last_error, config check), and a second policy's problem could come before the first's."""

from __future__ import annotations

from pathlib import Path

from gateway.authz.policyset import PolicyLoadError, load_policies

BROKEN = ('@id("first")\npermit (principal, action, resource) when { context.nope };\n'
          '@id("second")\npermit (principal, action, resource) when { context.nada };\n')


def _problems(directory: Path) -> tuple[str, ...]:
    try:
        load_policies(directory)
    except PolicyLoadError as exc:
        return tuple(exc.problems)
    raise AssertionError("the broken set loaded")


def test_validation_errors_come_in_one_order(policy_dir: Path) -> None:
    (policy_dir / "zz.cedar").write_text(BROKEN)
    seen = {_problems(policy_dir) for _ in range(12)}
    assert len(seen) == 1, seen
    (problems,) = seen
    mine = [p for p in problems if "zz.cedar" in p]
    assert len(mine) == 10  # five agent and approve actions each
    assert all("'first'" in p for p in mine[:5]) and all("'second'" in p for p in mine[5:])
    assert mine[:5] == sorted(mine[:5])
