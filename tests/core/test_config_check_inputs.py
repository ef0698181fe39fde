"""`customs config check` on the files a person actually hands it: empty, not a mapping, unreadable, every
kind of wrong value at every nesting level, and a config that is valid but lists no upstream. Each problem is
listed with its path and the exit code is 2, never a traceback; a mistake serve still starts with is a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.support.cli import customs_main

SHIPPED = REPO / "policies"
NO_UPSTREAMS = ("upstreams: empty: the gateway has no tool, prompt or resource to offer (every list through /mcp "
                "is empty and /mcp/{upstream} knows no name); list the MCP servers it fronts here")


def _check(tmp_path: Path, text: str | bytes, name: str = "customs.yaml") -> tuple[Path, int, str, str]:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    done = customs_main("config", "check", str(path))
    assert "Traceback" not in done.stderr + done.stdout, done
    return path, done.returncode, done.stdout, done.stderr


# ---- a valid config with no upstream: serve starts, and it is almost certainly a mistake ----

def test_config_check_warns_about_an_empty_upstreams_list_and_passes(tmp_path: Path) -> None:
    """`upstreams: []` passed silently: a gateway that offers agents nothing, with no word said. It is a warning
    (serve starts with it), printed as every other warning, naming the path `upstreams`; the OK line counts none
    (it ended in a dangling `: `)."""
    path, code, out, err = _check(tmp_path, f"upstreams: []\npolicies: {{dir: {SHIPPED}}}\n")
    assert code == 0
    assert out == f"{path}: OK (0 upstream(s))\n"
    assert err == f"{path}: warning: {NO_UPSTREAMS}\n"


def test_config_check_does_not_warn_about_upstreams_when_one_is_listed(tmp_path: Path) -> None:
    path, code, out, err = _check(tmp_path, "upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}, "
                                            f"{{name: b, command: [{REPO / '.venv/bin/python'}]}}]\n"
                                            f"policies: {{dir: {SHIPPED}}}\n")
    assert (code, out, err) == (0, f"{path}: OK (2 upstream(s): a, b)\n", "")


async def test_serve_starts_with_no_upstreams_and_logs_the_same_warning(spawn_gateway: Any) -> None:
    gateway = await spawn_gateway({"upstreams": [], "policies": {"dir": str(SHIPPED)}})
    assert NO_UPSTREAMS in gateway.log(), gateway.log()
