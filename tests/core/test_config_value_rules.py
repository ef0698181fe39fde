"""Config values that parse but mean something else: booleans as numbers, settings a mode ignores, shadowed headers."""

from __future__ import annotations

import itertools
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.cli import main
from gateway.config import ConfigError, parse_config
from gateway.config.model import Config
from tests.conftest import REPO

UPSTREAM = {"name": "a", "url": "http://127.0.0.1:1/mcp"}
Path_ = tuple[int | str, ...]


def _models(annotation: Any) -> Iterator[tuple[Path_, type[BaseModel]]]:
    """The models an annotation holds, each with the path step(s) that reach one inside a document."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield (), annotation
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _models(args[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _models(arg)
    elif origin is tuple:
        for step, model in _models(args[0]):
            yield (0, *step), model
    elif origin is dict:
        for step, model in _models(args[1]):
            yield ("x", *step), model


def _is_number(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _is_number(args[0])
    return origin in (typing.Union, types.UnionType) and any(_is_number(a) for a in args)


def _number_fields(model: type[BaseModel], at: Path_ = ()) -> Iterator[Path_]:
    """Every int or float field of the config, as the path of one place it can be written."""
    for name, field in model.model_fields.items():
        if _is_number(field.annotation):
            yield (*at, name)
        for step, inner in _models(field.annotation):
            # The redis store is written {redis: {...}}: its wrapper model is the `store` value itself.
            yield from _number_fields(inner, (*at, name, *step))


def _set(document: dict[str, Any], path: Path_, value: Any) -> None:
    node: Any = document
    for step, following in itertools.pairwise(path):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            while len(node) <= step:
                node.append(empty)
            node = node[step]
        else:
            node = node.setdefault(step, empty)
    node[path[-1]] = value


def _loc(path: Path_) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


NUMBER_FIELDS = sorted(set(_number_fields(Config)), key=_loc)


def test_the_number_fields_walk_finds_the_known_ones() -> None:
    found = {_loc(p) for p in NUMBER_FIELDS}
    assert {"listen.port", "identity.clock_skew_s", "upstreams[0].credentials.ttl_s", "store.redis.max_connections",
            "upstreams[0].tools.x.timeout_s", "limits.per_tool.rate_per_s", "signing.rotate_every_s"} <= found


@pytest.mark.parametrize("path", NUMBER_FIELDS, ids=_loc)
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number(path: Path_, value: bool) -> None:
    # Pydantic's lax mode reads true as 1 and false as 0: `clock_skew_s: true` would be a one-second skew.
    document: dict[str, Any] = {"upstreams": [dict(UPSTREAM)]}
    _set(document, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert f"{_loc(path)}: must be a number, not {str(value).lower()}" in info.value.problems


def test_numbers_and_numeric_strings_still_load() -> None:
    # An env reference is substituted as a string: `port: ${PORT}` must keep working.
    config = parse_config({"upstreams": [UPSTREAM], "listen": {"port": "${PORT}"}, "identity": {"clock_skew_s": 0},
                           "approvals": {"ttl_s": 1}}, env={"PORT": "8080"})
    assert (config.listen.port, config.identity.clock_skew_s, config.approvals.ttl_s) == (8080, 0, 1.0)


@pytest.mark.parametrize("path", NUMBER_FIELDS, ids=_loc)
@pytest.mark.parametrize(("value", "written"), [(math.inf, ".inf"), (-math.inf, "-.inf"), (math.nan, ".nan")],
                         ids=[".inf", "-.inf", ".nan"])
def test_a_number_that_is_not_finite_is_refused_at_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            path: Path_, value: float, written: str) -> None:
    """`.inf` passed most durations: `listen.drain_timeout_s: .inf` let shutdown wait for ever ("up to inf s"),
    an upstream `timeout_s: .inf` never timed out, `approvals.wait_s: .inf` held a request open for good. No field
    says "no limit" by an infinity (`signing.rotate_every_s` says "never" by null), and `.nan` compares false with
    every bound, so each number of the config is finite or refused, as `approvals.ttl_s` already was."""
    document: dict[str, Any] = {"upstreams": [dict(UPSTREAM)], "policies": {"dir": str(REPO / "policies")}}
    _set(document, path, value)
    file = tmp_path / "customs.yaml"
    file.write_text(yaml.safe_dump(document))
    assert f"{path[-1]}: {written}\n" in file.read_text()  # as a person writes it in YAML
    code = main(["config", "check", str(file)])
    problems = [line.strip() for line in capsys.readouterr().err.splitlines()[1:]]
    assert code == 2
    assert f"{_loc(path)}: must be a finite number, not {value}" in problems, problems


@pytest.mark.parametrize("given", ["inf", "-Infinity", "NaN"])
def test_a_variable_that_reads_as_no_finite_number_is_refused_by_its_reference(given: str) -> None:
    # `drain_timeout_s: ${DRAIN}` gives a string, which pydantic reads as a float, infinities and NaN included.
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [UPSTREAM], "listen": {"drain_timeout_s": "${DRAIN}"}}, env={"DRAIN": given})
    assert info.value.problems == ["listen.drain_timeout_s: must be a finite number, not what '${DRAIN}' gives"]


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], upstream: dict[str, Any]) -> tuple[int, list[str]]:
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [upstream], "policies": {"dir": str(REPO / "policies")}}))
    code = main(["config", "check", str(path)])
    return code, capsys.readouterr().err.splitlines()[1:]


@pytest.mark.parametrize("credentials", [
    {},
    {"mode": "none"},
    {"mode": "static", "value_env": "KEY"},
    {"mode": "token_exchange", "token_endpoint": "https://idp.test/token", "client_id": "customs"},
])
def test_narrow_to_args_outside_minted_mode_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       credentials: dict[str, Any]) -> None:
    # Only a minted token carries the narrowed arguments: elsewhere the list would be silently ignored.
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "credentials": {**credentials, "narrow_to_args": ["account"]}})
    mode = credentials.get("mode", "none")
    assert (code, err) == (2, [f"  upstreams[0].credentials.narrow_to_args: only used by mode minted (mode is {mode})"])
    assert parse_config({"upstreams": [{**UPSTREAM, "credentials": {"mode": "minted", "narrow_to_args": ["account"]}}]})


@pytest.mark.parametrize("mode", ["mint", "Minted", 5])
def test_a_mode_misspelt_is_the_one_problem_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  mode: Any) -> None:
    # The mode's own error says what is wrong; the other rules read the mode as given and added a second, misleading
    # line ("narrow_to_args: only used by mode minted (mode is mint)") under a minted upstream's settings.
    credentials = {"mode": mode, "narrow_to_args": ["account"], "audience": "http://127.0.0.1:1/mcp"}
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "credentials": credentials})
    assert code == 2 and len(err) == 1 and err[0].startswith("  upstreams[0].credentials.mode: "), err
    from gateway.config.rules import CREDENTIAL_MODES
    from gateway.config.upstreams import CredentialsConfig
    assert set(typing.get_args(CredentialsConfig.model_fields["mode"].annotation)) == CREDENTIAL_MODES


@pytest.mark.parametrize(("credentials", "key"), [
    ({"header": "X-Api-Key", "value_env": "KEY"}, "value_env"),  # `mode: static` forgotten: mode is none
    ({"mode": "none", "value_file": "key.txt"}, "value_file"),
    ({"mode": "minted", "value_env": "KEY"}, "value_env"),
    ({"mode": "token_exchange", "token_endpoint": "https://idp.test/token", "client_id": "customs",
      "value_file": "key.txt"}, "value_file"),
])
def test_a_static_value_outside_static_mode_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       credentials: dict[str, Any], key: str) -> None:
    # The key would never be sent: the upstream refuses every call and nothing says why.
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "credentials": credentials})
    mode = credentials.get("mode", "none")
    assert (code, err) == (2, [f"  upstreams[0].credentials.{key}: only used by mode static (mode is {mode})"])


@pytest.mark.parametrize("credentials", [
    {"audience": "http://127.0.0.1:9/mcp", "ttl_s": 30},  # `mode: minted` left out
    {"token_endpoint": "https://idp.test/token", "client_id": "customs", "mode": "none"},
])
def test_a_credential_setting_in_mode_none_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      credentials: dict[str, Any]) -> None:
    # Mode none sends nothing: the upstream would refuse every call, with nothing to say the mode was forgotten.
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "credentials": credentials})
    keys = [k for k in ("audience", "token_endpoint", "client_id") if k in credentials]
    assert (code, err) == (2, [f"  upstreams[0].credentials.{k}: mode none sends no credential (set credentials.mode "
                               "to the one this is for)" for k in keys])


def test_a_static_value_from_both_a_variable_and_a_file_is_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Only one would be read (the variable), so a file meant to replace it would be silently ignored.
    credentials = {"mode": "static", "value_env": "KEY", "value_file": "key.txt"}
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "credentials": credentials})
    problem = "  upstreams[0].credentials: mode static takes one of value_env or value_file, not both"
    assert (code, err) == (2, [problem])
    for one in ("value_env", "value_file"):
        assert parse_config({"upstreams": [{**UPSTREAM, "credentials": {"mode": "static", one: credentials[one]}}]})


@pytest.mark.parametrize(("credentials", "header"), [
    ({"mode": "minted"}, "authorization"),
    ({"mode": "static", "value_env": "KEY", "header": "X-Api-Key"}, "x-API-key"),
    ({"mode": "token_exchange", "token_endpoint": "https://idp.test/token", "client_id": "customs"}, "Authorization"),
])
def test_a_static_header_the_credential_replaces_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            credentials: dict[str, Any], header: str) -> None:
    upstream = {**UPSTREAM, "headers": {"X-Static": "v", header: "mine"}, "credentials": credentials}
    code, err = _check(tmp_path, capsys, upstream)
    name, mode = credentials.get("header", "Authorization"), credentials["mode"]
    assert (code, err) == (2, [f"  upstreams[0].headers.{header}: names the credential's header ({name}, mode {mode}); "
                               "the credential would replace this value"])


def test_static_headers_beside_a_credential_or_without_one_load() -> None:
    config = parse_config({"upstreams": [
        {**UPSTREAM, "headers": {"Authorization": "Bearer fixed"}},
        {"name": "b", "url": "http://127.0.0.1:2/mcp", "headers": {"X-Static": "v"}, "credentials": {"mode": "minted"}},
    ]})
    assert config.upstreams[0].headers == {"Authorization": "Bearer fixed"}


def test_a_tool_prefix_outside_the_mcp_tool_name_characters_is_refused_at_its_path() -> None:
    """A prefix with a space or a slash made every aggregated tool name one MCP clients may refuse (2025-11-25:
    tool names use letters, digits, `_`, `-` and `.`); it was accepted silently."""
    upstreams = [{"name": "a", "url": "http://127.0.0.1:1/mcp", "prefix": "x y/"},
                 {"name": "b", "url": "http://127.0.0.1:2/mcp", "prefix": "inv."},
                 {"name": "c", "url": "http://127.0.0.1:3/mcp", "prefix": ""}]
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": upstreams})
    assert info.value.problems == ["upstreams[0].prefix: must use only letters, digits, '_', '-' and '.' "
                                   "(the characters of MCP tool names)"]
    assert parse_config({"upstreams": upstreams[1:]}).upstreams[0].tool_prefix == "inv."


def test_labels_keyed_by_an_aggregated_name_are_warned_about(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # `inventory__get_stock` is what agents see on /mcp, not the upstream's name: the label (here one that a
    # clearance forbid reads) would apply to nothing, and the tool would be served as unlabelled.
    upstream = {"name": "inventory", "url": "http://127.0.0.1:1/mcp",
                "tools": {"inventory__get_stock": {"sensitivity": "restricted"}, "set_stock": {"read_only": False},
                          "customs://inventory/inventory://skus": {"sensitivity": "restricted"}}}
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [upstream], "policies": {"dir": str(REPO / "policies")}}))
    assert main(["config", "check", str(path)]) == 0
    warnings = [line.split(": warning: ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert sorted(warnings) == [
        "upstreams[0].tools.customs://inventory/inventory://skus: the aggregated /mcp name of 'inventory://skus'; "
        "these labels are keyed by the upstream's own names, so this one applies to nothing (write inventory://skus)",
        "upstreams[0].tools.inventory__get_stock: the aggregated /mcp name of 'get_stock'; these labels are keyed "
        "by the upstream's own names, so this one applies to nothing (write get_stock)"]


@pytest.mark.parametrize(("headers", "problem"), [
    ({"X Static": "v"}, "not an HTTP header name"),
    ({"X-Static:": "v"}, "not an HTTP header name"),
    ({"X-Static": "v\r\nX-Injected: 1"}, "holds a control character (\\r); an HTTP header value cannot carry one"),
    ({"X-Static": "v\x00"}, "holds a control character (\\x00); an HTTP header value cannot carry one"),
    ({"Host": "evil.example"}, "is set by the transport itself; this value would break or redirect its requests"),
    ({"mcp-session-id": "fixed"}, "is set by the transport itself; this value would break or redirect its requests"),
    ({"Content-Length": "5"}, "is set by the transport itself; this value would break or redirect its requests"),
])
def test_a_static_header_no_request_can_carry_is_refused_at_its_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], headers: dict[str, str], problem: str) -> None:
    """`upstreams[].headers` went unchecked: a value with a control character passed `config check`, and `serve`
    answered every initialize with a text/plain 500 and an ERROR traceback (aiohttp refuses to send it); a name
    with a space went out as it was (the upstream answered 400); Host and the MCP session headers replaced the
    transport's own (a 421, a session the upstream never made)."""
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "headers": {"X-Ok": "fine", **headers}})
    name = next(iter(headers))
    assert (code, err) == (2, [f"  upstreams[0].headers.{name}: {problem}"])


def test_a_static_header_from_the_environment_is_checked_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATIC_KEY", "abc\ndef")
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "headers": {"X-Key": "${STATIC_KEY}"}})
    assert (code, err) == (2, ["  upstreams[0].headers.X-Key: holds a control character (\\n); an HTTP header value "
                               "cannot carry one"])
    monkeypatch.setenv("STATIC_KEY", "abc\tdef ghi")  # a tab and spaces are header text (RFC 9110 §5.5)
    assert _check(tmp_path, capsys, {**UPSTREAM, "headers": {"X-Key": "${STATIC_KEY}"}})[0] == 0


def test_a_credential_prefix_no_header_can_carry_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The static credential's value is checked when read (a warning, credential_unavailable), but its
    `value_prefix` was not: a line break there made every initialize a text/plain 500 with an ERROR traceback."""
    credentials = {"mode": "static", "value_env": "KEY", "header": "X-Key", "value_prefix": "Key\nX-Other: "}
    code, err = _check(tmp_path, capsys, {**UPSTREAM, "credentials": credentials})
    assert (code, err) == (2, ["  upstreams[0].credentials.value_prefix: holds a control character (\\n); an HTTP "
                               "header value cannot carry one"])
    assert parse_config({"upstreams": [{**UPSTREAM, "credentials": {**credentials, "value_prefix": "Key\t"}}]})


@pytest.mark.parametrize(("child", "problem"), [
    ({"command": [""]}, "upstreams[0].command[0]: must not be empty (the program to run)"),
    ({"command": ["python", "-c", "print()\x00"]}, "upstreams[0].command[2]: holds a NUL character, which no "
                                                   "process argument can"),
    ({"command": ["python"], "env": {"TZ": "UTC\x00x"}}, "upstreams[0].env.TZ: holds a NUL character, which no "
                                                          "environment variable can"),
    ({"command": ["python"], "env": {"A=B": "x"}}, "upstreams[0].env.A=B: not an environment variable name "
                                                   "(no '=' or NUL)"),
    ({"command": ["python"], "cwd": "/tmp\x00x"}, "upstreams[0].cwd: holds a NUL character, which no path can"),
])
def test_a_child_no_process_can_be_started_with_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           child: dict[str, Any], problem: str) -> None:
    """These passed `config check`, then `serve` tried to start the child forever (an ERROR `could not start:
    ValueError: embedded null byte` every back-off) and its upstream stayed unavailable."""
    code, err = _check(tmp_path, capsys, {"name": "a", **child})
    assert (code, err) == (2, [f"  {problem}"])


@pytest.mark.parametrize(("upstream", "problem"), [
    ({"command": ["python"], "headers": {"X-Api-Key": "k"}},
     "upstreams[0].headers: a stdio child process receives no request headers (give it values with env:)"),
    ({"url": "http://127.0.0.1:1/mcp", "env": {"TZ": "UTC"}},
     "upstreams[0].env: only a stdio child (command) is started with an environment; an HTTP upstream is no "
     "process the gateway starts"),
    ({"url": "http://127.0.0.1:1/mcp", "cwd": "/tmp"},
     "upstreams[0].cwd: only a stdio child (command) is started in a directory; an HTTP upstream is no process "
     "the gateway starts"),
])
def test_a_setting_the_upstream_transport_never_uses_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                upstream: dict[str, Any], problem: str) -> None:
    """These passed `config check` and were dropped unseen: a key in `headers:` never reached a stdio child (as a
    credential would not, which was already refused), and `env:`/`cwd:` of an HTTP upstream changed nothing."""
    code, err = _check(tmp_path, capsys, {"name": "a", **upstream})
    assert (code, err) == (2, [f"  {problem}"])


def test_each_transport_keeps_its_own_settings() -> None:
    parse_config({"upstreams": [
        {"name": "a", "command": ["python"], "env": {"TZ": "UTC"}, "cwd": "/tmp", "headers": {}},
        {"name": "b", "url": "http://127.0.0.1:1/mcp", "headers": {"X-Api-Key": "k"}, "env": {}}]})


@pytest.mark.parametrize("path", NUMBER_FIELDS, ids=_loc)
def test_a_huge_float_is_refused_in_the_file_s_words(path: Path_) -> None:
    """`1.0e+308` is finite, but past 2**63 pydantic cannot read it as an integer and said so in its own words
    (`Unable to parse input string as an integer, exceeded maximum size`); a float field takes it or names its
    bound."""
    document: dict[str, Any] = {"upstreams": [dict(UPSTREAM)]}
    _set(document, path, 1e308)
    try:
        parse_config(document)
    except ConfigError as error:
        at = [problem for problem in error.problems if problem.startswith(f"{_loc(path)}: ")]
        assert not at or any(": must be " in problem for problem in at), at  # (a section's rule may add one)
        assert all("Unable to parse" not in problem for problem in error.problems), error.problems
