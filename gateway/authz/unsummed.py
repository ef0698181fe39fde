"""Forbids guarded by a task total nothing sums: checked at start-up (`config check`, `serve`) and on every reload.

A total appears in `context.task.totals` only for the arguments some `upstreams[].tools.<tool>.sum_args` sums.
A forbid guarded by another total validates (the schema names it) and is always false: it silently never fires.
A permit reading one only holds or denies calls, which is the safe side, so it is not named.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import cedarpy

from gateway.authz.argnames import total_readers
from gateway.authz.policyset import LoadedPolicies, policy_text


def unsummed_forbids(loaded: LoadedPolicies, summed: Collection[str], where: str) -> list[str]:
    """One warning per forbid of `loaded` and task total it reads that no tool's `sum_args` (`summed`) sums;
    `where` names the set (`policies.dir` or `policies.shadow_dir`). Unreadable files give none (they are the
    set's own problem)."""
    try:
        text = "\n".join(policy_text(name) for name in loaded.files)
    except (OSError, UnicodeDecodeError):
        return []
    readers = total_readers(json.loads(cedarpy.policies_to_json_str(text)))
    return [f"{where}: forbid {loaded.name(internal)!r} reads context.task.totals.{name}, but no "
            f"upstreams[].tools.<tool>.sum_args sums {name!r}: the total is never set, so it never fires"
            for internal, (effect, names) in sorted(readers.items()) if effect == "forbid"
            for name in sorted(set(names) - set(summed))]
