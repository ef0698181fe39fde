"""Config loading: every problem reported with its path; env substitution; unknown keys rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config
from tests.conftest import REPO
from tests.support.cli import customs_main
from tests.support.tokens import TestIssuer

SHIPPED = REPO / "policies"


def test_minimal_config_has_documented_defaults() -> None:
    config = parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}]})
    assert config.listen.port == 8700
    assert config.listen.max_body_bytes == 1_048_576
    assert config.identity.mode == "anonymous"
    assert config.store == "memory"
    assert config.approvals.ttl_s == 900
    assert config.upstreams[0].kind == "streamable_http"
    assert config.upstreams[0].tool_prefix == "inventory__"


def test_every_problem_is_listed_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({
            "upstreams": [{"name": "ok", "url": "http://127.0.0.1:1/mcp"}, {"name": "Bad Name", "url": "nope"}],
            "listen": {"port": "eighty"},
            "surprise": True,
        })
    problems = info.value.problems
    assert "upstreams[1].url: not a URL (expected http:// or https:// with a host)" in problems
    assert "upstreams[1].name: must match [a-z0-9_-]+" in problems
    assert any(p.startswith("listen.port:") for p in problems)
    assert "surprise: unknown key" in problems


def test_unknown_nested_key_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp", "timeout": 3}]})
    assert info.value.problems == ["upstreams[0].timeout: unknown key"]


def test_upstream_needs_exactly_one_target() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a"}, {"name": "b", "url": "http://h/mcp", "command": ["x"]}]})
    assert info.value.problems == ["upstreams[0]: exactly one of url or command is required",
                                   "upstreams[1]: exactly one of url or command is required"]


def test_duplicate_upstream_names_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp"}, {"name": "a", "command": ["x"]}]})
    assert info.value.problems == ["upstreams[1].name: duplicate upstream name 'a' (also upstreams[0])"]


def test_cross_field_rules_are_listed_with_field_errors_at_their_paths() -> None:
    # Each rule below lives in a model validator that pydantic skips once a field inside has failed:
    # every one must still be listed, next to the field errors, at the field it is about.
    with pytest.raises(ConfigError) as info:
        parse_config({
            "upstreams": [
                {"name": "a", "url": "http://h/mcp"},
                {"name": "b", "url": "nope", "credentials": {"mode": "token_exchange", "ttl_s": 0}},
                {"name": "a", "command": [], "transport": "sse", "timeout_s": -1},
                {"name": "c", "credentials": {"mode": "static", "ttl_s": 0}},
            ],
            "identity": {"mode": "jwt", "clock_skew_s": -1,
                         "issuers": [{"issuer": "https://idp.test", "algorithms": ["HS256"], "jwks_refresh_s": 0}]},
            "listen": {"port": "eighty"},
        })
    problems = info.value.problems
    for expected in [
        "upstreams[1].url: not a URL (expected http:// or https:// with a host)",
        "listen.port: must be a whole number, not 'eighty'",
        "upstreams[2].name: duplicate upstream name 'a' (also upstreams[0])",
        "upstreams[1].credentials.token_endpoint: required by mode token_exchange",
        "upstreams[1].credentials.client_id: required by mode token_exchange",
        "upstreams[2].command: must not be empty",
        "upstreams[2].transport: command upstreams use the stdio transport",
        "upstreams[3]: exactly one of url or command is required",
        "upstreams[3].credentials: mode static needs value_env or value_file",
        "identity.issuers[0]: exactly one of jwks_file, jwks_url or pem_file is required",
        "identity.issuers[0].algorithms: not allowed for access tokens: HS256",
    ]:
        assert expected in problems, problems
    assert not [p for p in problems if p.startswith("upstreams:")]
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "x", "url": "nope"}], "identity": {"mode": "jwt"}})
    assert "identity.issuers: mode jwt needs at least one issuer" in info.value.problems


def test_a_rule_broken_alone_is_reported_once_at_its_path() -> None:
    # Here pydantic runs the validator itself; the document rules give the same line, listed once.
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp",
                                     "credentials": {"mode": "token_exchange", "client_id": "customs"}}]})
    assert info.value.problems == ["upstreams[0].credentials.token_endpoint: required by mode token_exchange"]


@pytest.mark.parametrize("credentials", [
    {"mode": "minted"},
    {"mode": "static", "value_env": "KEY"},
    {"mode": "token_exchange", "token_endpoint": "https://idp.test/token", "client_id": "customs"},
])
def test_credentials_on_a_stdio_upstream_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     credentials: dict[str, Any]) -> None:
    # A credential is a request header and a stdio child gets none: it would be minted and dropped.
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [UPSTREAM, {"name": "local", "command": ["x"],
                                                             "credentials": credentials}],
                                    "policies": {"dir": str(SHIPPED)}}))
    line = (f"upstreams[1].credentials: mode {credentials['mode']} needs an HTTP upstream (url); a stdio child "
            "process receives no request headers, so the credential would never reach it")
    code, _out, err = _check(path, capsys)
    assert code == 2 and err.splitlines()[1:] == [f"  {line}"]
    serve = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                           capture_output=True, text=True, check=False, timeout=60)
    assert serve.returncode == 2 and f"  {line}" in serve.stderr.splitlines()
    assert parse_config({"upstreams": [{"name": "local", "command": ["x"], "credentials": {"mode": "none"}}]})


def test_config_check_lists_a_duplicate_name_with_other_problems(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams:\n  - {name: ok, url: 'http://127.0.0.1:1/mcp'}\n  - {name: x, url: nope}\n"
                    "  - {name: ok, command: [x]}\n")
    code, _out, err = _check(path, capsys)
    assert code == 2
    assert err.splitlines()[1:] == ["  upstreams[1].url: not a URL (expected http:// or https:// with a host)",
                                    "  upstreams[2].name: duplicate upstream name 'ok' (also upstreams[0])"]


def test_env_references_substituted_and_missing_ones_reported() -> None:
    data = {"upstreams": [{"name": "a", "url": "${BASE}/mcp", "headers": {"X-Key": "${KEY}"}}]}
    config = parse_config(data, env={"BASE": "http://127.0.0.1:9", "KEY": "k"})
    assert config.upstreams[0].url == "http://127.0.0.1:9/mcp"
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"BASE": "http://127.0.0.1:9"})
    assert info.value.problems[0] == "upstreams[0].headers.X-Key: environment variable KEY is not set"


def test_redis_store_and_bad_url() -> None:
    config = parse_config({"upstreams": [{"name": "a", "command": ["x"]}],
                           "store": {"redis": {"url": "redis://127.0.0.1:6379/0"}}})
    assert config.store != "memory"
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "command": ["x"]}], "store": {"redis": {"url": "http://x"}}})
    assert "store.redis.url: not a redis:// URL" in info.value.problems


def test_missing_upstreams_section() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({})
    assert info.value.problems == [
        "upstreams: required: the MCP servers the gateway fronts, a list of {name, url or command}"]


def test_yaml_errors_and_relative_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].startswith("line ")
    good = tmp_path / "good.yaml"
    good.write_text("upstreams: [{name: a, command: [x]}]\npolicies: {dir: pol}\n")
    assert load_config(good).policies.dir == tmp_path / "pol"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read" in info.value.problems[0]


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("upstreams:\n  - {name: ok, url: 'http://127.0.0.1:1/mcp'}\n  - {name: x, url: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "upstreams[1].url: not a URL" in proc.stderr
    bad.write_text(f"upstreams:\n  - {{name: ok, url: 'http://127.0.0.1:1/mcp'}}\npolicies: {{dir: {SHIPPED}}}\n")
    done = customs_main("config", "check", str(bad))  # in this process: the child above ran the console entry
    assert done.returncode == 0, done.stderr


# ---- `config check` runs serve's start-up checks too: every file the config names, every problem listed ----

UPSTREAM = {"name": "ok", "url": "http://127.0.0.1:1/mcp"}


def _policies(target: Path) -> Path:
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("tests"))
    return target


def _write(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [UPSTREAM], **sections}))
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_config_check_valid_config_with_relative_files_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _policies(tmp_path / "pol")
    (tmp_path / "keys").mkdir()
    issuer = TestIssuer(tmp_path / "keys")
    entry = {**issuer.config(), "jwks_file": "keys/idp-jwks.json"}  # relative to the config file, as serve reads it
    path = _write(tmp_path, policies={"dir": "pol"}, identity={"mode": "jwt", "issuers": [entry]})
    monkeypatch.chdir(REPO / "docs")  # not the config's directory: relative paths must not follow the cwd
    code, out, err = _check(path, capsys)
    assert (code, out, err) == (0, f"{path}: OK (1 upstream(s): ok)\n", "")


def test_config_check_reports_a_missing_policies_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _check(_write(tmp_path, policies={"dir": "/nonexistent"}), capsys)
    assert code == 2
    assert err.splitlines() == [f"{tmp_path / 'customs.yaml'}: invalid configuration",
                                "  policies.dir: /nonexistent: not a directory"]


def test_config_check_reports_a_broken_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = _policies(tmp_path / "pol")
    (policies / "broken.cedar").write_text('@id("broken")\npermit(principal, action, resource) oops;\n')
    code, _out, err = _check(_write(tmp_path, policies={"dir": "pol"}), capsys)
    assert code == 2
    assert f"  policies.dir: {policies / 'broken.cedar'}:2: syntax error" in err


def test_config_check_reports_a_missing_jwks_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    identity = {"mode": "jwt", "issuers": [{"issuer": "https://idp.test", "jwks_file": "absent.json"}]}
    code, _out, err = _check(_write(tmp_path, policies={"dir": str(SHIPPED)}, identity=identity), capsys)
    assert code == 2
    assert f"  identity.issuers[0].jwks_file: {tmp_path / 'absent.json'}: cannot read" in err


@pytest.mark.parametrize(("content", "message"), [
    ('{"keys": [', "not valid JSON"),
    ('{"issuer": "https://idp.test"}', "not a JWKS document"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable signature keys"),
])
def test_config_check_reports_a_malformed_jwks_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: str, message: str) -> None:
    (tmp_path / "jwks.json").write_text(content)
    identity = {"mode": "jwt", "issuers": [{"issuer": "https://idp.test", "jwks_file": "jwks.json"}]}
    code, _out, err = _check(_write(tmp_path, policies={"dir": str(SHIPPED)}, identity=identity), capsys)
    assert code == 2
    assert f"  identity.issuers[0].jwks_file: {tmp_path / 'jwks.json'}: {message}" in err


def _every_problem_config(tmp_path: Path) -> Path:
    """The audit's example (policies.dir and a jwks_file missing) plus more files wrong in other sections."""
    good = TestIssuer(tmp_path)
    (tmp_path / "bad-jwks.json").write_text(json.dumps({"keys": []}))
    issuers = [{"issuer": "https://a.test", "jwks_file": "missing-jwks.json"}, good.config(),
               {"issuer": "https://b.test", "jwks_file": "bad-jwks.json"},
               {"issuer": "https://c.test", "pem_file": "missing.pem"}]
    return _write(tmp_path, policies={"dir": "/nonexistent"}, identity={"mode": "jwt", "issuers": issuers},
                  listen={"tls": {"cert_file": "cert.pem", "key_file": "key.pem"}})


def test_config_check_lists_every_problem_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(_every_problem_config(tmp_path), capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[1:] == [
        "  policies.dir: /nonexistent: not a directory",
        f"  identity.issuers[0].jwks_file: {tmp_path / 'missing-jwks.json'}: cannot read (No such file or directory)",
        f"  identity.issuers[2].jwks_file: {tmp_path / 'bad-jwks.json'}: no usable signature keys",
        f"  identity.issuers[3].pem_file: {tmp_path / 'missing.pem'}: cannot read (No such file or directory)",
        f"  listen.tls.cert_file: {tmp_path / 'cert.pem'}: cannot read (No such file or directory)",
        f"  listen.tls.key_file: {tmp_path / 'key.pem'}: cannot read (No such file or directory)",
    ]


def test_serve_refuses_exactly_what_config_check_reports(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _every_problem_config(tmp_path)
    _code, _out, check_err = _check(path, capsys)
    serve = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                           capture_output=True, text=True, check=False, timeout=60)
    assert serve.returncode == 2
    assert f"customs: {path}: refusing to start" in serve.stderr
    problems = [line for line in check_err.splitlines() if line.startswith("  ")]
    assert problems and [line for line in serve.stderr.splitlines() if line.startswith("  ")] == problems


def test_config_check_warns_about_a_broken_shadow_set_but_passes(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # serve starts with a broken shadow set (it is reported, never enforced), so the check passes too.
    path = _write(tmp_path, policies={"dir": str(SHIPPED), "shadow_dir": "next"})
    code, out, err = _check(path, capsys)
    assert code == 0 and out.startswith(f"{path}: OK")
    assert err == f"{path}: warning: policies.shadow_dir: {tmp_path / 'next'}: not a directory\n"


def test_config_check_reports_unusable_tls_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not PEM\n")
    tls = {"cert_file": "cert.pem", "key_file": "key.pem", "client_ca_file": "ca.pem"}
    code, _out, err = _check(_write(tmp_path, policies={"dir": str(SHIPPED)}, listen={"tls": tls}), capsys)
    assert code == 2
    assert f"  listen.tls.cert_file: {tmp_path / 'cert.pem'} with key_file {tmp_path / 'key.pem'}: " \
           "not a usable PEM certificate and private key" in err
    assert f"  listen.tls.client_ca_file: {tmp_path / 'ca.pem'}: no usable PEM CA certificate" in err


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                               ("0.0.0.0", True), ("10.1.2.3", True), ("gateway.internal", True)])
def test_config_check_warns_when_anonymous_identity_listens_beyond_loopback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, warned: bool) -> None:
    path = _write(tmp_path, policies={"dir": str(SHIPPED)}, listen={"host": host})
    code, out, err = _check(path, capsys)
    assert code == 0 and out.startswith(f"{path}: OK")
    assert ("identity.mode: anonymous (the default) is for local use only" in err) is warned
    assert (f"listen.host {host} is reachable from other machines" in err) is warned


def test_jwt_identity_on_any_address_is_not_warned_about(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    issuer = TestIssuer(tmp_path)
    path = _write(tmp_path, policies={"dir": str(SHIPPED)},
                  listen={"host": "0.0.0.0", "public_url": "https://customs.example"},  # (no wildcard-URL warning)
                  identity={"mode": "jwt", "issuers": [issuer.config()]})
    code, _out, err = _check(path, capsys)
    assert code == 0 and err == ""


def test_approval_ttl_may_be_fractional() -> None:
    """`approvals.ttl_s` is seconds like every other `_s` setting: 0.5 is a valid (short) expiry, 0 is not."""
    base = {"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}]}
    assert parse_config({**base, "approvals": {"ttl_s": 0.5}}).approvals.ttl_s == 0.5
    with pytest.raises(ConfigError):
        parse_config({**base, "approvals": {"ttl_s": 0}})


async def test_each_upstream_s_circuit_breaker_is_configured_by_its_breaker_section() -> None:
    """`upstreams[].breaker` reaches the transport's breaker on every kind; unset, the documented 5 and 10 s."""
    import aiohttp

    from gateway.transport.registry import build_upstream
    config = parse_config({"upstreams": [
        {"name": "h", "url": "http://127.0.0.1:9/mcp", "breaker": {"threshold": 2, "cooldown_s": 0.5}},
        {"name": "s", "url": "http://127.0.0.1:9/sse", "transport": "sse", "breaker": {"cooldown_s": 3}},
        {"name": "c", "command": ["true"], "breaker": {"threshold": 7}},
        {"name": "d", "url": "http://127.0.0.1:9/mcp"}]})
    async with aiohttp.ClientSession() as http:
        breakers = [build_upstream(up, http).breaker for up in config.upstreams]
    assert [(b.threshold, b.cooldown_s) for b in breakers] == [(2, 0.5), (5, 3.0), (7, 10.0), (5, 10.0)]
    for bad in ({"threshold": 0}, {"cooldown_s": 0}, {"cooldown_s": float("inf")}):
        with pytest.raises(ConfigError):
            parse_config({"upstreams": [{"name": "h", "url": "http://127.0.0.1:9/mcp", "breaker": bad}]})


@pytest.mark.parametrize(("algorithms", "line"), [
    (["ES257"], "unknown algorithm 'ES257' (supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, "
                "ES512, ES256K, EdDSA)"),
    (["RS256", "eddsa"], "unknown algorithm 'eddsa'; did you mean EdDSA?"),
    ([], "must name at least one algorithm"),
    (["hs512"], "not allowed for access tokens: hs512"),
])
def test_an_algorithm_no_token_could_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    algorithms: list[str], line: str) -> None:
    """JWS `alg` is case-sensitive: `eddsa`, a typo or an empty list used to pass `config check` and then
    refuse every token of the issuer with 401. Now config check and serve name the field and exit 2."""
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [UPSTREAM], "policies": {"dir": str(SHIPPED)},
                                    "identity": {"mode": "jwt", "issuers": [
                                        {"issuer": "https://idp.test", "jwks_file": "jwks.json",
                                         "algorithms": algorithms}]}}))
    code, _out, err = _check(path, capsys)
    assert code == 2 and any(e.startswith(f"  identity.issuers[0].algorithms: {line}") for e in err.splitlines()), err
    serve = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                           capture_output=True, text=True, check=False, timeout=60)
    assert serve.returncode == 2 and f"identity.issuers[0].algorithms: {line}" in serve.stderr


def test_every_allowed_token_algorithm_has_a_key_type_the_verifier_checks() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.config.rules import TOKEN_ALGORITHMS
    from gateway.identity.jwks import VerifyKey
    from tests.support.tokens import generate_key

    keys = [generate_key(alg, alg).private.public_key() for alg in ("RS256", "ES256", "ES384", "EdDSA")]
    keys += [ec.generate_private_key(curve).public_key() for curve in (ec.SECP521R1(), ec.SECP256K1())]
    for alg in TOKEN_ALGORITHMS:
        assert any(VerifyKey("k", key).allows(alg) for key in keys), alg


def test_a_key_file_with_no_key_for_the_allowed_algorithms_is_refused(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An RSA-only JWKS with `algorithms: [EdDSA]` started fine and then refused every token (401). Now
    config check and serve name the file, the algorithms and the keys it holds."""
    from tests.support.tokens import TestIssuer

    issuer = TestIssuer(tmp_path, algorithms=("RS256", "ES256"))
    path = tmp_path / "customs.yaml"
    # The RSA key is published with alg RS256, so it verifies RS256 only (not PS256).
    for algorithms, ok in ((["EdDSA"], False), (["PS256"], False), (["RS256"], True), (["ES384", "ES256"], True),
                           (["ES384"], False)):
        path.write_text(yaml.safe_dump({"upstreams": [UPSTREAM], "policies": {"dir": str(SHIPPED)},
                                        "identity": {"mode": "jwt",
                                                     "issuers": [issuer.config(algorithms=algorithms)]}}))
        code, _out, err = _check(path, capsys)
        if ok:
            assert code == 0, err
            continue
        line = (f"  identity.issuers[0].jwks_file: {issuer.jwks_path}: no key fits the issuer's algorithms "
                f"{', '.join(algorithms)} (keys: idp-rs256-1: RSA alg RS256, idp-es256-1: EC secp256r1 alg ES256)")
        assert code == 2 and line in err.splitlines(), err
    serve = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                           capture_output=True, text=True, check=False, timeout=60)
    assert serve.returncode == 2 and "no key fits the issuer's algorithms ES384" in serve.stderr


def test_env_references_inside_flow_mappings_load_as_the_contract_writes_them(tmp_path: Path) -> None:
    """interfaces.md writes `webhooks: [{url: ..., secret: ${WEBHOOK_SECRET}}]`: the braces of an unquoted
    reference inside a flow mapping would end it for YAML. It loads, and the value (with YAML's own special
    characters) is substituted as text, never parsed as YAML."""
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams: [{name: inventory, url: http://127.0.0.1:9001/mcp}]\n"
                    "approvals: {ttl_s: 900, webhooks: [{url: http://127.0.0.1:9/hook, secret: ${WEBHOOK_SECRET}}]}\n"
                    "listen: {port: ${PORT:-8711}, public_url: http://127.0.0.1:${PORT:-8711}}\n"
                    "${NOT_A_KEY:-x}: 1\n")
    with pytest.raises(ConfigError) as unknown:  # a reference as a key is refused (test_config_env_keys.py)
        load_config(path, env={"WEBHOOK_SECRET": "s3:c}r #et, [x]"})
    assert unknown.value.problems[-1] == "${NOT_A_KEY:-x}: unknown key", unknown.value.problems
    path.write_text(path.read_text().rsplit("${NOT_A_KEY", 1)[0])
    config = load_config(path, env={"WEBHOOK_SECRET": "s3:c}r #et, [x]"})
    assert config.approvals.webhooks[0].secret == "s3:c}r #et, [x]"
    assert config.listen.port == 8711 and config.listen.resource_url == "http://127.0.0.1:8711"


def test_yaml_errors_on_a_line_with_a_reference_keep_their_column(tmp_path: Path) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text("upstreams: []\nlisten: {public_url: ${URL}, port: [}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={"URL": "http://x"})
    assert error.value.problems[0].startswith("line 2, column 37: invalid YAML"), error.value.problems


def test_limit_rules_that_would_limit_nothing_are_reported_at_their_paths() -> None:
    """`burst` without `rate_per_s` was accepted and limited nothing, and an infinite rate passed `gt=0`."""
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp"}],
                      "limits": {"per_principal": {"burst": 5}, "per_tool": {"rate_per_s": float("inf")}}})
    assert sorted(info.value.problems) == [
        "limits.per_principal.burst: needs rate_per_s (a burst alone limits nothing)",
        "limits.per_tool.rate_per_s: must be a finite number, not inf",
    ]
    parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp"}],
                  "limits": {"per_principal": {"rate_per_s": 0.5, "burst": 5}, "per_tool": {"concurrency": 3}}})


async def test_config_check_and_serve_warn_about_a_forbid_on_a_task_total_nothing_sums(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], spawn_gateway: Any) -> None:
    """A total appears in context.task only for arguments some upstreams[].tools.<tool>.sum_args sums: a forbid
    guarded by another total validates, and never fires. A permit that reads it only holds calls (fail closed)."""
    policies = _policies(tmp_path / "pol")
    schema = policies / "schema.cedarschema"
    schema.write_text(schema.read_text().replace('totals?: { "amount"?: Long }',
                                                 'totals?: { "amount"?: Long, "quantity"?: Long }'))
    (policies / "caps.cedar").write_text(
        '@id("restock-cap")\nforbid (principal, action == Action::"call_tool", resource)\n'
        "when { context has task && context.task has totals && context.task.totals has quantity && "
        "context.task.totals.quantity > 500 };\n")
    unsummed = _write(tmp_path, policies={"dir": "pol"})
    code, out, err = _check(unsummed, capsys)
    assert code == 0 and out.startswith(f"{unsummed}: OK")
    assert err == (f"{unsummed}: warning: policies.dir: forbid 'restock-cap' reads context.task.totals.quantity, "
                   "but no upstreams[].tools.<tool>.sum_args sums 'quantity': the total is never set, so it never "
                   "fires\n")
    # serve starts, logging the same warning (stderr, where all logging goes).
    gateway = await spawn_gateway({"upstreams": [UPSTREAM], "policies": {"dir": str(policies)}})
    assert "forbid 'restock-cap' reads context.task.totals.quantity" in gateway.log_path.read_text()
    summed = tmp_path / "summed.yaml"
    summed.write_text(yaml.safe_dump({"upstreams": [{**UPSTREAM, "tools": {"restock": {"sum_args": ["quantity"]}}}],
                                      "policies": {"dir": "pol"}}))
    code, _out, err = _check(summed, capsys)
    assert code == 0 and err == ""
