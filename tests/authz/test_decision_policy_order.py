"""A decision names its determining policies in the order the files hold them, every time: Cedar reports them in
hash order, so identical calls were logged (decision log `policy_ids`, `customs.policy_ids`, an approval's
`policies`, `policy explain`) with the same @ids in another order each time."""

from __future__ import annotations

from pathlib import Path

from authz_helpers import agent

from gateway.authz import entities as E
from gateway.authz.evaluate import decide
from gateway.authz.policyset import load_policies
from gateway.context import ToolInfo

PERMITS = "".join(f'@id("read-{i}")\npermit (principal, action == Action::"call_tool", resource) '
                  "when { resource.read_only };\n" for i in range(8))
FORBIDS = "".join(f'@id("secret-{i}")\nforbid (principal, action == Action::"call_tool", resource) '
                  'when { resource.sensitivity == "restricted" };\n' for i in range(8))


def test_determining_policies_come_in_file_order(policy_dir: Path) -> None:
    (policy_dir / "zz.cedar").write_text(PERMITS + FORBIDS)
    loaded = load_policies(policy_dir)
    reader = agent("spiffe://customs.demo/agent/reader")
    facts = E.CallFacts(args={}, environment="dev")
    for tool, expected in [
        (ToolInfo(upstream="inventory", name="get_stock", read_only=True),
         ("reads-allowed", *(f"read-{i}" for i in range(8)))),
        (ToolInfo(upstream="hr", name="salaries", read_only=True, sensitivity="restricted"),
         ("restricted-needs-clearance", *(f"secret-{i}" for i in range(8)))),
    ]:
        seen = {decide(loaded, reader, "call_tool", tool, facts).policy_ids for _ in range(10)}
        assert seen == {expected}
