"""`customs serve|demo|approvals|tools` on options a person got wrong: a message and a usage exit, no traceback.

What needs the real command (a port, a start-up, the console script) runs as a child process, as a user runs
it; options refused before anything starts or is requested run the CLI's main() in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.support.cli import customs, customs_main

CONFIG = "upstreams:\n  - {name: a, url: 'http://127.0.0.1:9/mcp'}\npolicies: {dir: %s}\n" % (REPO / "policies")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "customs.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("port", ["99999", "-5", "65536", "http"])
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_outside_0_65535_is_a_usage_error(command: str, port: str, config: Path, tmp_path: Path) -> None:
    extra = ["--config", config] if command == "serve" else ["--dir", tmp_path / "demo", "--no-walkthrough"]
    result = customs_main(command, "--port", port, *extra)  # argparse refuses it: nothing starts
    assert result.returncode == 2, result.stderr
    assert "--port" in result.stderr and "0-65535" in result.stderr


def test_serve_any_free_port_on_a_host_that_does_not_resolve_says_so(config: Path) -> None:
    # `--port 0` settles the port on the host before anything starts: the host's failure is a listen failure.
    result = customs("serve", "--config", config, "--host", "nosuchhost.invalid", "--port", "0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "customs: cannot listen on nosuchhost.invalid" in result.stderr


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_demo_dir_that_cannot_be_a_directory_is_named(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    target = blocker if kind == "a file" else blocker / "demo"
    result = customs("demo", "--port", str(free_port()), "--dir", target, "--no-walkthrough")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"--dir {target}" in result.stderr


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "soon"])
@pytest.mark.parametrize("argv", [("approvals", "list"), ("approvals", "show", "apr_x"), ("tools", "list")])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(argv: tuple[str, ...], timeout: str) -> None:
    # Nothing listens on the port: only the option's check may answer (no request is made).
    result = customs_main(*argv, "--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "--timeout", timeout)
    assert result.returncode == 2, result.stderr
    assert "--timeout" in result.stderr and "positive number of seconds" in result.stderr


@pytest.mark.parametrize(("section", "where"), [
    ("decision_log: {path: %s/d.jsonl}", "decision_log.path"),
    ("signing: {key_dir: %s}", "signing.key_dir"),
])
def test_serve_refuses_a_path_it_cannot_create_naming_its_config_key(tmp_path: Path, section: str,
                                                                      where: str) -> None:
    # `config check` does not try these (they need a write): serve is the first to find out, and says where.
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams:\n  - {name: a, url: 'http://127.0.0.1:9/mcp', credentials: {mode: minted}}\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n" + section % blocker + "\n")
    result = customs("serve", "--config", config, "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "refusing to start" in result.stderr and f"{where}: {blocker}" in result.stderr


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_says_how_to_choose_another(command: str, config: Path, tmp_path: Path) -> None:
    from tests.conftest import bound_socket

    with bound_socket() as taken:
        taken.listen()
        port = str(taken.getsockname()[1])
        extra = ["--config", config] if command == "serve" else ["--dir", tmp_path / "demo", "--no-walkthrough"]
        result = customs(command, "--port", port, *extra)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port 0" in result.stderr


@pytest.mark.parametrize("url", ["http://", "http://[::1", "http://127.0.0.1:notaport", "http://127.0.0.1:99999",
                                 "http://a b", "http://127.0.0.1:8700/\x01"])
@pytest.mark.parametrize("argv", [("approvals", "list"), ("approvals", "approve", "apr_x"), ("tools", "list")])
def test_a_url_that_cannot_be_requested_is_a_usage_error(argv: tuple[str, ...], url: str) -> None:
    result = customs_main(*argv, "--url", url, "--token", "t")
    assert result.returncode == 2, result.stderr
    assert "error: --url" in result.stderr and "(e.g. http://127.0.0.1:8700)" in result.stderr


@pytest.mark.parametrize("argv", [("approvals", "show", ""), ("approvals", "deny", " "),
                                  ("tools", "approve", "", "deploy"), ("tools", "approve", "infra", "")])
def test_an_empty_id_or_name_is_a_usage_error_not_a_request(argv: tuple[str, ...]) -> None:
    # Nothing listens there: a request would answer "cannot reach", exit 3; the check answers first.
    # A child process: the approvals and tools commands as the console script runs them.
    result = customs(*argv, "--url", f"http://127.0.0.1:{free_port()}", "--token", "t")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "must not be empty" in result.stderr


def test_keys_given_twice_are_each_a_problem_at_their_path_listed_with_the_others(tmp_path: Path) -> None:
    # `config check` lists every problem with its path: a key given twice used to be the only line (a YAML error at
    # its line, no path), hiding the rest of the file's problems until it was fixed.
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams:\n  - name: a\n    url: not-a-url\n  - name: b\n    url: http://127.0.0.1:9/mcp\n"
                      "    timeout_s: 5\n    timeout_s: 6\n  - {name: c, command: [x], name: d}\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n")
    result = customs_main("config", "check", config)
    assert result.returncode == 2, result.stdout
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "upstreams[1].timeout_s: key given twice (line 7, column 5; first on line 6): YAML would keep the last one "
        "silently",
        "upstreams[2].name: key given twice (line 8, column 29; first on line 8): YAML would keep the last one "
        "silently",
        "upstreams[0].url: not a URL (expected http:// or https:// with a host)"], result.stderr


def test_a_key_given_twice_is_named_not_silently_replaced(tmp_path: Path) -> None:
    # YAML keeps the last of two equal keys: the first `upstreams:` list would vanish without a word.
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams:\n  - {name: a, url: 'http://127.0.0.1:9/mcp'}\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n"
                      "upstreams:\n  - {name: b, url: 'http://127.0.0.1:9/mcp'}\n")
    result = customs_main("config", "check", config)
    assert result.returncode == 2, result.stdout
    assert ("upstreams: key given twice (line 4, column 1; first on line 1): YAML would keep the last one silently"
            in result.stderr)
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"policies: {REPO / 'policies'}\ncases:\n  - name: c\n    principal: {{sub: a}}\n"
                     "    tool: a/b\n    expect: allow\n    expect: deny\n")
    result = customs_main("policy", "test", cases)
    assert result.returncode == 2, result.stdout
    assert "line 7, column 5: invalid YAML: duplicate key 'expect' (also on line 6)" in result.stderr


def test_yaml_merge_keys_may_still_override_what_they_merge(tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams:\n  - &a {name: a, url: 'http://127.0.0.1:9/mcp', timeout_s: 5}\n"
                      "  - {<<: *a, name: b}\n"
                      f"policies: {{dir: {REPO / 'policies'}}}\n")
    result = customs_main("config", "check", config)
    assert result.returncode == 0, result.stderr
    assert "2 upstream(s): a, b" in result.stdout
