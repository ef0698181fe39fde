"""`customs policy validate`: load a policy directory and report each problem; the loader every policy command uses.

Apart from gateway/authz/cli.py so that validating needs only the policy set (cedarpy), not the test-case,
identity and config code the other policy commands import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.authz.policyset import LoadedPolicies, PolicyLoadError, load_policies


def load_or_report(directory: Path, schema: Path | None = None) -> LoadedPolicies | None:
    """The policies in `directory`; None, with each problem printed to stderr, when they do not load."""
    try:
        return load_policies(directory, schema)
    except PolicyLoadError as exc:
        print(f"{exc.source}: invalid policies", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def validate_cmd(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.dir, args.schema)
    if loaded is None:
        return 1
    print(f"{args.dir}: OK ({len(loaded)} policies in {len(loaded.files)} file(s), version {loaded.version})")
    return 0
