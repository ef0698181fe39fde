"""The actions the gateway decides for an agent on a Tool (docs/policies.md, "The contract").

Its own module, importing nothing, so `customs policy explain --help` can name them without loading Cedar.
"""

from __future__ import annotations

# Any other name would be decided by no policy, i.e. deny: a mistyped action must not make a `deny` case pass
# vacuously.
AGENT_ACTIONS = ("call_tool", "list_tools", "read_resource", "get_prompt")
