"""`customs policy test`: run policy test cases (YAML files, or directories of them) against a policy directory.

Apart from gateway/authz/cli.py, which holds the other policy commands, to keep each module small.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.authz.cases import CaseError, load_cases, run_cases_file
from gateway.authz.policyset import PolicyLoadError


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _case_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        found = [*path.glob("*.yaml"), *path.glob("*.yml")] if path.is_dir() else [path]
        out.extend(sorted(p for p in found if p == path or not p.name.startswith(".")))  # hidden: no cases
    return out


def _policies_hint(path: Path) -> str:
    """Where the policies of a cases file run without --policies were looked for, and how to name others."""
    try:
        named = load_cases(path).get("policies")
    except CaseError:
        named = None
    if isinstance(named, str):  # the file named them: not a guess, but a path relative to the file
        return (f"\n  (from the file's `policies: {named}`, which is relative to the file's directory "
                f"{path.parent}; fix it or pass --policies DIR)")
    # Without either the directory is a guess (beside the file, above tests/): say how to name it.
    return ("\n  (no --policies given: the policies are looked for beside the cases file, or above its tests/"
            " directory; name them with `policies:` in the file or --policies DIR)")


def test_cmd(args: argparse.Namespace) -> int:
    from gateway.authz.configured import for_command
    found = for_command(args.config, args.policies)
    if found is None:
        return 2
    deployment, policies_dir = found
    failed = total = unusable = 0
    for path in _case_files(args.cases):
        try:
            results = run_cases_file(path, policies_dir, identify=deployment.principal if deployment else None,
                                     environment=deployment.environment if deployment else None)
        except (CaseError, PolicyLoadError) as exc:  # the other files still run: every unusable one named at once
            if isinstance(exc, CaseError):
                _err(str(exc))
            else:
                hint = "" if policies_dir is not None else _policies_hint(path)
                _err(f"cannot load policies for {path}:\n" + "\n".join(f"  {p}" for p in exc.problems) + hint)
                if policies_dir is not None:  # the same for every file: once is enough
                    return 2
            unusable += 1
            continue
        if deployment is not None and load_cases(path).get("claims"):
            print(f"note: {path}: claims: is not used with --config (the issuers' identity.issuers[].claims map "
                  "a token's claims)", file=sys.stderr)
        for result in results:
            total += 1
            if result.ok:  # the file as given, as a FAIL line names it; a note (a refused token) in brackets
                print(f"PASS {path}: {result.name}" + (f" ({result.message})" if result.message else ""))
            else:
                failed += 1
                # file:line as a case problem names it, so an editor can jump to the case
                at = str(path) if result.line is None else f"{path}:{result.line}"
                print(f"FAIL {at}: {result.name}: {result.message}")
    if total == 0:
        if not unusable:
            _err(f"no cases found in {', '.join(map(str, args.cases))} (a directory holds *.yaml case files, "
                 "each with a `cases:` list)")
        return 2
    print(f"{total - failed} passed, {failed} failed" + (f", {unusable} unusable case file(s)" if unusable else ""))
    return 2 if unusable else 1 if failed else 0
