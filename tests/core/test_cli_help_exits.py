"""Each command's `--help` states the exit statuses the docs give it, as `customs policy …` already did.

A new user reads `--help` before the docs: `serve`, `demo`, `config check`, `approvals …` and `tools …` said
nothing of how they end, and `demo --dir` claimed a config was written there (keys and the decision log are).
"""

from __future__ import annotations

import pytest

from gateway.cli import main


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare the words


# (command, the exit lines docs/configuration.md, docs/approvals.md and docs/tools-and-limits.md give it)
DOCUMENTED = [
    (("serve",), ["0 stopped by SIGTERM or Ctrl-C", "1 cannot listen", "2 usage, or an invalid or refused config"]),
    (("demo",), ["0 stopped by SIGTERM or Ctrl-C", "1 cannot listen", "2 usage"]),
    (("config", "check"), ["0 valid (warnings, if any, printed)", "2 invalid (each problem listed with its path)"]),
    *[(("approvals", name), ["0 done", "1 refused", "2 usage", "3 gateway unreachable"])
      for name in ("list", "show", "approve", "deny")],
    *[(("tools", name), ["0 done", "1 refused", "2 usage", "3 gateway unreachable"]) for name in ("list", "approve")],
]


@pytest.mark.parametrize(("argv", "lines"), DOCUMENTED, ids=[" ".join(argv) for argv, _ in DOCUMENTED])
def test_help_states_the_documented_exit_statuses(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                                  lines: list[str]) -> None:
    text = _help(capsys, *argv)
    assert "exit status:" in text
    for line in lines:
        assert line in text, (argv, line, text)


def test_demo_dir_help_names_what_is_written_there_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "demo")
    assert "keys and decision log" in text and "default .customs/demo" in text
    assert "keys/config" not in text


# The synopses docs/configuration.md gives (issue 2: `customs config check FILE`), as each usage line reads.
SYNOPSES = [
    (("serve",), "customs serve [-h] [--config FILE] [--host HOST] [--port PORT] [--log-level LEVEL]"),
    (("demo",), "customs demo [-h] [--port PORT] [--dir DIR] [--no-walkthrough] [--exit-after-walkthrough]"),
    (("config", "check"), "customs config check [-h] FILE"),
    # docs/approvals.md, docs/tools-and-limits.md, docs/policies.md and the README
    (("approvals", "list"), "customs approvals list [-h] [--state STATE] [--limit N]"),
    (("approvals", "show"), "customs approvals show [-h] [--url URL] [--token TOKEN] [--timeout TIMEOUT] [--json] ID"),
    (("approvals", "approve"), "customs approvals approve [-h] [--comment TEXT] [--url URL]"),
    (("approvals", "deny"), "customs approvals deny [-h] [--comment TEXT] [--url URL]"),
    (("tools", "approve"), "customs tools approve [-h] [--hash HASH] [--url URL] [--token TOKEN] [--timeout TIMEOUT] "
                           "UPSTREAM TOOL"),
    (("policy", "validate"), "customs policy validate [-h] [--schema FILE] DIR"),
    (("policy", "schema"), "customs policy schema [-h] [--config FILE]"),
]


@pytest.mark.parametrize(("argv", "usage"), SYNOPSES, ids=[" ".join(argv) for argv, _ in SYNOPSES])
def test_usage_reads_as_the_documented_synopsis(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                                usage: str) -> None:
    """`--help` said `[--config CONFIG]`, `file`, `{debug,info,warning,error}`, `id`, `--comment COMMENT`,
    `upstream tool`, `dir` where the docs say FILE, LEVEL, ID, TEXT, UPSTREAM TOOL and DIR; the levels are still
    listed, in the option's help."""
    text = _help(capsys, *argv)
    assert text.startswith(f"usage: {usage} "), text
    if argv == ("serve",):
        assert "--log-level LEVEL debug, info, warning or error (default info)" in text
        assert "--config FILE, -c FILE the YAML config (default: embedded defaults" in text
    if argv == ("config", "check"):
        assert "FILE the YAML config to check" in text
