"""`customs config check` on the files a person actually hands it: empty, not a mapping, unreadable, every
kind of wrong value at every nesting level, and a config that is valid but lists no upstream. Each problem is
listed with its path and the exit code is 2, never a traceback; a mistake serve still starts with is a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.support.cli import customs, customs_main
from tests.support.doc_blocks import fenced_blocks

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


# ---- the configs a user copies: issue 2's contract and the README's, as the console script checks them ----

ISSUE_2_CONTRACT = """\
listen: {host: 127.0.0.1, port: 8700, allowed_origins: [], max_body_bytes: 1048576}
upstreams:
  - name: inventory                  # [a-z0-9_-]+, unique
    url: http://127.0.0.1:9001/mcp   # streamable HTTP (or legacy SSE with transport: sse)
  - name: time
    command: [python, -m, mcp_server_time]   # stdio child process
    env: {TZ: UTC}
identity: {mode: anonymous}          # the identity issue adds jwt; anonymous exists only for local use
"""


def test_the_issue_and_readme_examples_pass_config_check_as_written(tmp_path: Path) -> None:
    (readme_block,) = [param.values[0] for param in fenced_blocks([REPO / "README.md"], "yaml")]
    assert readme_block.startswith("# customs.yaml\n"), readme_block
    (tmp_path / "policies").symlink_to(SHIPPED)  # the README's `policies: {dir: policies/}`, beside the file
    for name, text in [("issue2.yaml", ISSUE_2_CONTRACT), ("customs.yaml", readme_block)]:
        (tmp_path / name).write_text(text)
        done = customs("config", "check", tmp_path / name, cwd=tmp_path)  # the console entry, in a child
        assert done.returncode == 0, done
        assert done.stdout == f"{tmp_path / name}: OK (2 upstream(s): inventory, time)\n", done
        assert "Traceback" not in done.stderr and ": warning: upstreams: empty" not in done.stderr, done


REQUIRED = "upstreams: required: the MCP servers the gateway fronts, a list of {name, url or command}"


# ---- files that are no config: every one exits 2 naming what is wrong, never a traceback ----

@pytest.mark.parametrize(("text", "problem"), [
    ("", REQUIRED),  # an empty file is an empty mapping: it lacks the one required section
    ("# nothing but a comment\n", REQUIRED),
    ("- name: a\n  url: http://127.0.0.1:9/mcp\n",
     "(root): must be a mapping of sections (upstreams:, listen:, identity:, …), not a list"),
    ("customs\n", "(root): must be a mapping of sections (upstreams:, listen:, identity:, …), not a string"),
    ("upstreams: [\n", "line 2, column 1: invalid YAML: expected the node content, but found '<stream end>'"),
    (b"\xff\xfeupstreams: []\n", "(file): cannot read {path}: not UTF-8 text (byte 0: invalid start byte)"),
], ids=["empty", "comment only", "a list", "a string", "broken YAML", "not UTF-8"])
def test_a_file_that_is_no_config_mapping_is_refused_with_its_reason(tmp_path: Path, text: str | bytes,
                                                                     problem: str) -> None:
    """Each says what a config must hold (it said pydantic's `Field required`, and `expected a mapping of sections`
    without what was found)."""
    path, code, out, err = _check(tmp_path, text)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"{path}: invalid configuration", f"  {problem.replace('{path}', str(path))}"]


def test_a_file_that_cannot_be_read_is_refused_with_the_reason(tmp_path: Path) -> None:
    for path, reason in [(tmp_path / "absent.yaml", "No such file or directory"), (tmp_path, "Is a directory")]:
        done = customs_main("config", "check", str(path))
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr.splitlines() == [f"{path}: invalid configuration",
                                            f"  (file): cannot read {path}: {reason}"]


# ---- every problem of a file, at every nesting level, each once with its path ----

UNKNOWN_EVERYWHERE = """\
zzz: 1
listen: {prot: 8700, tls: {cert_file: c.pem, key_file: k.pem, extra: 1}}
upstreams:
  - name: a
    url: http://127.0.0.1:9/mcp
    timeout: 3
    tools: {get: {sensitivity: public, bogus: 1}}
    credentials: {mode: minted, ttl: 60}
    breaker: {threshold: 5, cool: 1}
identity:
  mode: jwt
  issuers: [{issuer: "https://idp.example", jwks_file: jwks.json, jwks: x}]
  skew: 3
policies: {directory: policies/}
approvals: {ttl: 9, webhooks: [{url: "http://127.0.0.1:9/hook", sig: x}]}
store: {redis: {url: "redis://127.0.0.1:6379/0", prefix: x}}
decision_log: {file: d.jsonl}
telemetry: {name: x, traces: {url: x}, metrics: {prom: true}}
limits: {per_principal: {rate: 1}, per_tool: {burst_size: 1}, sessions: 1}
tasks: {idle: 1}
secrets: {keys: []}
signing: {dir: x}
pinning: {strict: true}
"""


def test_an_unknown_key_is_named_at_every_nesting_level(tmp_path: Path) -> None:
    _path, code, out, err = _check(tmp_path, UNKNOWN_EVERYWHERE)
    assert code == 2 and out == ""
    problems = {line.strip() for line in err.splitlines()[1:]}
    assert problems == {f"{key}: unknown key" for key in [
        "zzz", "listen.prot", "listen.tls.extra", "upstreams[0].timeout", "upstreams[0].tools.get.bogus",
        "upstreams[0].credentials.ttl", "upstreams[0].breaker.cool", "identity.issuers[0].jwks", "identity.skew",
        "policies.directory", "approvals.ttl", "approvals.webhooks[0].sig", "store.redis.prefix", "decision_log.file",
        "telemetry.name", "telemetry.traces.url", "telemetry.metrics.prom", "limits.per_principal.rate",
        "limits.per_tool.burst_size", "limits.sessions", "tasks.idle", "secrets.keys", "signing.dir", "pinning.strict"]}


@pytest.mark.parametrize(("text", "problems"), [
    ("upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}, 3, [x], null]\n",
     ["upstreams[1]: must be a mapping (key: value), not a number",
      "upstreams[2]: must be a mapping (key: value), not a list",
      "upstreams[3]: must be a mapping (key: value), not empty"]),
    ("upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}]\nidentity: {mode: jwt, issuers: [x]}\n",
     ["identity.issuers[0]: must be a mapping (key: value), not a string"]),
    ("upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}]\n"
     "identity: {mode: jwt, issuers: [{issuer: 'https://idp.example', jwks_url: 'https://idp.example/k', "
     "algorithms: RS256}]}\n",
     ["identity.issuers[0].algorithms: must be a list, not a string"]),
    ("upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}]\nidentity: {mode: jwt, issuers: {a: 1}}\n",
     ["identity.issuers: must be a list, not a mapping"]),
], ids=["upstream entries", "issuer entry", "algorithms a string", "issuers a mapping"])
def test_an_entry_that_is_no_mapping_is_named_once(tmp_path: Path, text: str, problems: list[str]) -> None:
    """What the entry must be, not also what rules over its fields (url or command, a key source) say of it: a
    number has no url, but `exactly one of url or command is required` was listed under it besides (and
    `algorithms: RS256` was told `must name at least one algorithm`, `issuers: {…}` `mode jwt needs at least one
    issuer`)."""
    _path, code, _out, err = _check(tmp_path, text)
    assert code == 2
    assert [line.strip() for line in err.splitlines()[1:]] == problems


def test_wrong_types_unset_variables_and_bad_names_are_all_listed_with_their_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUSTOMS_TEST_UNSET_SECRET", raising=False)
    monkeypatch.delenv("CUSTOMS_TEST_UNSET_URL", raising=False)
    _path, code, out, err = _check(tmp_path, """\
listen: {port: eighty, allowed_origins: http://a.example}
upstreams:
  - {name: Payments, url: "http://127.0.0.1:9/mcp", timeout_s: soon}
  - {name: "", url: "${CUSTOMS_TEST_UNSET_URL}"}
  - {name: pay-2, command: python server.py}
  - {name: pay-2, url: "http://127.0.0.1:9/mcp", tools: [get]}
identity: {clock_skew_s: true}
approvals: {webhooks: [{url: "http://127.0.0.1:9/hook", secret: ${CUSTOMS_TEST_UNSET_SECRET}}]}
""")
    assert code == 2 and out == ""
    problems = [line.strip() for line in err.splitlines()[1:]]
    for expected in [
        "listen.port: must be a whole number, not 'eighty'",
        "listen.allowed_origins: must be a list, not a string",
        "upstreams[0].name: must match [a-z0-9_-]+",
        "upstreams[0].timeout_s: must be a number, not 'soon'",
        "upstreams[1].name: must match [a-z0-9_-]+",
        "upstreams[1].url: environment variable CUSTOMS_TEST_UNSET_URL is not set",
        "upstreams[2].command: must be a list, not a string",
        "upstreams[3].tools: must be a mapping (key: value), not a list",
        "upstreams[3].name: duplicate upstream name 'pay-2' (also upstreams[2])",
        "identity.clock_skew_s: must be a number, not true",
        "approvals.webhooks[0].secret: environment variable CUSTOMS_TEST_UNSET_SECRET is not set",
    ]:
        assert expected in problems, (expected, problems)
    assert len(problems) == len(set(problems)) == 11, problems


def test_a_key_that_is_no_text_is_named_as_a_key_not_a_list_index(tmp_path: Path) -> None:
    """YAML reads `1:` as a number: the path said `listen[4]` (a list's entry) and pydantic's `Keys should be
    strings` / `Input should be a valid string`; it names the key as written and says to quote it."""
    _path, code, _out, err = _check(tmp_path, """\
1: x
listen: {4: x}
upstreams:
  - {name: a, url: "http://127.0.0.1:9/mcp", tools: {1.5: {}}, headers: {2: x}}
  - {name: b, command: [x], env: {3: y, ~: z}}
agents: {5: {tenant: t}}
secrets: {true: 1}
""")
    assert code == 2
    assert sorted(line.strip() for line in err.splitlines()[1:]) == sorted([
        "1: a key must be text, not a number (quote it: '1')",
        "listen.4: a key must be text, not a number (quote it: '4')",
        "upstreams[0].tools.1.5: a key must be text, not a number (quote it: '1.5')",
        "upstreams[0].headers.2: a key must be text, not a number (quote it: '2')",
        "upstreams[1].env.3: a key must be text, not a number (quote it: '3')",
        "agents.5: a key must be text, not a number (quote it: '5')",
        "upstreams[1].env.null: a key must be text, not empty (quote it: 'null')",
        "secrets.true: a key must be text, not true/false (quote it: 'true')",
    ])


@pytest.mark.parametrize(("text", "problem"), [
    ("upstreams: &u [{name: a, url: 'http://127.0.0.1:9/mcp', tools: {t: *u}}]\n",
     "line 1, column 68: invalid YAML: the alias *u holds the value it is part of (a config is a tree, not a loop)"),
    ("x: &x {a: *x}\nupstreams: []\n",
     "line 1, column 11: invalid YAML: the alias *x holds the value it is part of (a config is a tree, not a loop)"),
    ("upstreams: []\nagents: " + "[" * 3000 + "]" * 3000 + "\n",
     "line 2, column 108: invalid YAML: nested deeper than the 100 levels a config may have"),
    ("upstreams: []\nlisten: " + "{a: " * 600 + "1" + "}" * 600 + "\n",
     "line 2, column 402: invalid YAML: nested deeper than the 100 levels a config may have"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n"
                                                   for a, b in zip("abcdefgh", "bcdefghi", strict=True))
     + "upstreams: []\n",  # (aliases of aliases: 10**9 values)
     "line 6, column 4: invalid YAML: more than 1,000,000 values once its aliases are expanded"),
    ("".join(f"a{n}: &a{n} " + "[" * 90 + (f"*a{n - 1}" if n else "x") + "]" * 90 + "\n" for n in range(40))
     + "upstreams: []\n",  # 90 levels each, nested through aliases: 3600 expanded
     "line 2, column 98: invalid YAML: nested deeper than the 100 levels a config may have once its aliases are "
     "expanded"),
], ids=["alias loop in a list", "alias loop in a mapping", "3000 lists deep", "600 mappings deep", "alias bomb",
        "deep through aliases"])
def test_a_document_no_config_can_be_read_from_is_refused_not_a_traceback(tmp_path: Path, text: str,
                                                                         problem: str) -> None:
    """A YAML alias inside the value it names (`&u [... *u]`) is a loop, and thousands of nested brackets run out
    of Python's stack: both ended config check (and serve) with a RecursionError traceback, exit 1, and so did
    fewer levels each nested in the next through aliases. Aliases of aliases expanding to a billion values (each
    pass over the document walks them expanded) never ended."""
    path, code, out, err = _check(tmp_path, text)
    assert (code, out) == (2, ""), err
    assert err.splitlines() == [f"{path}: invalid configuration", f"  {problem}"]


def test_a_value_of_the_wrong_type_is_told_in_yaml_s_words(tmp_path: Path) -> None:
    """`policies.dir: Input is not a valid path for <class 'pathlib.Path'>` named a Python class; `Input should be a
    valid string` / `… valid integer, unable to parse string as an integer` did not say what was written instead."""
    _path, code, _out, err = _check(tmp_path, """\
listen: {port: eighty, host: [a]}
upstreams: [{name: [a], command: [x], cwd: [x], prefix: 5, timeout_s: [1]}]
policies: {dir: [a], watch: maybe, max_chain_depth: 2.5}
decision_log: {include_args: 3}
telemetry: {traces: {sample_ratio: half}}
""")
    assert code == 2
    assert [line.strip() for line in err.splitlines()[1:]] == [
        "listen.host: must be text, not a list",
        "listen.port: must be a whole number, not 'eighty'",
        "upstreams[0].name: must be text, not a list",
        "upstreams[0].cwd: must be a path, not a list",
        "upstreams[0].prefix: must be text, not a number",
        "upstreams[0].timeout_s: must be a number, not a list",
        "policies.dir: must be a path, not a list",
        "policies.watch: must be true or false, not 'maybe'",
        "policies.max_chain_depth: must be a whole number, not 2.5",
        "decision_log.include_args: must be true or false, not 3",
        "telemetry.traces.sample_ratio: must be a number, not 'half'",
    ]


def test_a_tool_prefix_that_begins_another_is_warned_about(tmp_path: Path) -> None:
    """Calls go to the longest matching prefix, so a tool of `a` named `b__pay` (listed `a__b__pay`) would be
    upstream `a__b`'s `pay`: the gateway hides it at run time, but config check said OK without a word. A prefix
    the file does not write (the default, `<name>__`) is named at its upstream's entry: `upstreams[1].prefix`
    pointed at a key that is not there."""
    path, code, out, err = _check(tmp_path, f"""\
upstreams:
  - {{name: a, url: "http://127.0.0.1:9/mcp"}}
  - {{name: a__b, url: "http://127.0.0.1:9/mcp"}}
  - {{name: c, url: "http://127.0.0.1:9/mcp", prefix: ""}}
  - {{name: d, url: "http://127.0.0.1:9/mcp", prefix: "d."}}
policies: {{dir: {SHIPPED}}}
""")
    assert code == 0 and out.startswith(f"{path}: OK (4 upstream(s)")
    warning = ("upstreams[{j}]{at} {long!r} begins with {short!r}, upstreams[{i}]'s (upstream {name}): a tool "
               "or prompt of {name} named {rest!r}… would be listed as {long!r}… and called as {other}'s, so it is "
               "hidden; give them prefixes neither of which begins the other")
    default = ": its default prefix"  # (then the entry's path: the file writes no `prefix` key there)
    assert err.splitlines() == [f"{path}: warning: {line}" for line in [
        warning.format(j=1, at=default, long="a__b__", short="a__", i=0, name="a", rest="b__", other="a__b"),
        warning.format(j=0, at=default, long="a__", short="", i=2, name="c", rest="a__", other="a"),
        warning.format(j=1, at=default, long="a__b__", short="", i=2, name="c", rest="a__b__", other="a__b"),
        warning.format(j=3, at=".prefix:", long="d.", short="", i=2, name="c", rest="d.", other="d"),
    ]]


def test_a_value_out_of_bounds_or_not_a_choice_says_what_was_written(tmp_path: Path) -> None:
    """`Input should be less than or equal to 65535` did not say what the file held (a `${PORT}` may hold
    anything): each bound or choice now ends with the value written."""
    _path, code, _out, err = _check(tmp_path, """\
listen: {port: 70000}
upstreams: [{name: a, url: "http://127.0.0.1:9/mcp", timeout_s: -1, tools: {t: {sensitivity: top}}, transport: grpc}]
identity: {mode: oidc, clock_skew_s: .inf}
signing: {rotate_every_s: 0.5}
""")
    assert code == 2
    assert [line.strip() for line in err.splitlines()[1:]] == [
        "listen.port: must be less than or equal to 65535, not 70000",
        "upstreams[0].transport: must be 'streamable_http', 'sse' or 'stdio', not 'grpc'",
        "upstreams[0].timeout_s: must be greater than 0, not -1",
        "upstreams[0].tools.t.sensitivity: must be 'public', 'internal', 'confidential' or 'restricted', not 'top'",
        "identity.mode: must be 'jwt' or 'anonymous', not 'oidc'",
        "identity.clock_skew_s: must be a finite number, not inf",
        "signing.rotate_every_s: must be greater than or equal to 1, not 0.5",
    ]


def test_a_value_from_the_environment_is_named_by_its_reference_never_shown(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A value written out beside its problem must not be a variable's: a secret referenced in the wrong field
    (`mode: ${API_KEY}`) would be printed, and a SIGHUP reload's problems go to the log and /readyz."""
    monkeypatch.setenv("CUSTOMS_TEST_API_KEY", "sk-live-0123456789")
    monkeypatch.setenv("CUSTOMS_TEST_PORT", "87OO")
    _path, code, _out, err = _check(tmp_path, """\
listen: {port: "${CUSTOMS_TEST_PORT}"}
upstreams: [{name: a, url: "http://127.0.0.1:9/mcp", credentials: {mode: "${CUSTOMS_TEST_API_KEY}"}}]
""")
    assert code == 2 and "sk-live" not in err and "87OO" not in err, err
    assert [line.strip() for line in err.splitlines()[1:]] == [
        "listen.port: must be a whole number, not what '${CUSTOMS_TEST_PORT}' gives",
        "upstreams[0].credentials.mode: must be 'none', 'static', 'minted' or 'token_exchange', "
        "not what '${CUSTOMS_TEST_API_KEY}' gives",
    ]


def test_serve_refuses_what_config_check_refuses_with_the_same_lines(tmp_path: Path) -> None:
    """serve reads the file with the same loader: exit 2 and the same problem lines, never a traceback."""
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams: &u [{name: a, url: 'http://127.0.0.1:9/mcp', tools: {t: *u}}]\nlisten: {port: 0}\n")
    checked = customs_main("config", "check", str(path))
    served = customs("serve", "--config", path, cwd=tmp_path)
    assert served.returncode == 2 and "Traceback" not in served.stderr, served
    problems = [line for line in checked.stderr.splitlines() if line.startswith("  ")]
    assert problems and [line for line in served.stderr.splitlines() if line.startswith("  ")] == problems


def test_a_value_from_the_environment_is_never_shown_by_a_validators_or_rules_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The field validators and document rules quote the value they refuse (`not an origin: '…'`, `not a pin: '…'`,
    `(got '…')`, `must not start or end with whitespace ('…')`): when an `${VAR}` gave it, that quoted the variable's
    value, a secret in the wrong field, in config check, the log and /readyz. It is named by its reference."""
    monkeypatch.setenv("CUSTOMS_TEST_API_KEY", "sk-live-0123456789")
    monkeypatch.setenv("CUSTOMS_TEST_FILE_KEY", "sk-file-9876543210\n")  # a ConfigMap --from-file: a last newline
    _path, code, _out, err = _check(tmp_path, """\
listen: {allowed_origins: ["${CUSTOMS_TEST_API_KEY}"]}
environment: "${CUSTOMS_TEST_FILE_KEY}"
identity: {mode: jwt, issuers: [{issuer: "${CUSTOMS_TEST_FILE_KEY}", audience: "http://x/mcp", jwks_file: j.json}]}
upstreams: [{name: a, url: "http://127.0.0.1:9/mcp", tools: {t: {pin: "x-${CUSTOMS_TEST_API_KEY}"}}}]
""")
    assert code == 2 and "sk-live" not in err and "sk-file" not in err, err
    problems = [line.strip() for line in err.splitlines()[1:]]
    assert "listen.allowed_origins[0]: not an origin: what '${CUSTOMS_TEST_API_KEY}' gives (an Origin header is " \
           "scheme://host[:port], e.g. https://app.example, with no path or wildcard; '*' = any)" in problems, err
    assert "upstreams[0].tools.t.pin: not a pin: what 'x-${CUSTOMS_TEST_API_KEY}' gives (write sha256: and 64 hex " \
           "digits, as `customs tools list` shows it)" in problems, err
    assert "identity.issuers[0].issuer: must not start or end with whitespace (what '${CUSTOMS_TEST_FILE_KEY}' " \
           "gives)" in problems, err
    assert "environment: must be a name without surrounding whitespace (got what '${CUSTOMS_TEST_FILE_KEY}' gives)" \
           in problems, err


def test_a_wrong_value_under_a_key_of_digits_that_are_not_ascii_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    """Saying what was written looks the value up by its path, trying a key of digits as the number YAML may have
    read it as: `int('²')` ('²' is a digit to str.isdigit) raised, and config check ended with a ValueError
    traceback."""
    _path, code, _out, err = _check(tmp_path, """\
upstreams: [{name: a, url: "http://127.0.0.1:9/mcp", tools: {"²": {timeout_s: abc}}}]
""")
    assert code == 2, err
    assert [line.strip() for line in err.splitlines()[1:]] == [
        "upstreams[0].tools.².timeout_s: must be a number, not 'abc'"]


def test_a_date_or_binary_value_or_key_is_told_as_what_it_is(tmp_path: Path) -> None:
    """YAML reads `2020-01-01` as a date and `!!binary` as bytes: config check called both "a list", and named a
    date key by Python's repr (`tools.datetime.date(2020, 1, 1).timeout_s`), not as the file writes it."""
    _path, code, _out, err = _check(tmp_path, """\
listen: {port: 2020-01-01}
upstreams: [{name: a, url: "http://127.0.0.1:9/mcp", tools: {2020-01-01: {timeout_s: abc}}}]
policies: !!binary aGk=
""")
    assert code == 2, err
    assert [line.strip() for line in err.splitlines()[1:]] == [
        "upstreams[0].tools.2020-01-01: a key must be text, not a date (quote it: '2020-01-01')",
        "listen.port: must be a whole number, not a date",
        "upstreams[0].tools.2020-01-01.timeout_s: must be a number, not 'abc'",
        "policies: must be a mapping (key: value), not binary data",
    ]


def test_a_float_too_large_for_a_whole_number_is_told_in_yaml_s_words(tmp_path: Path) -> None:
    """A float past 2**63 for a whole-number field (`port: 1.0e+308`, `max_chain_depth: -1.0e+19`) printed
    pydantic's own `Unable to parse input string as an integer, exceeded maximum size` (no string was written)."""
    _path, code, _out, err = _check(tmp_path, """\
listen: {port: 1.0e+308}
upstreams: [{name: a, url: "http://127.0.0.1:9/mcp"}]
policies: {max_chain_depth: -1.0e+19}
""")
    assert code == 2, err
    assert [line.strip() for line in err.splitlines()[1:]] == [
        "listen.port: must be a whole number, not 1e+308",
        "policies.max_chain_depth: must be a whole number, not -1e+19",
    ]
