"""The compose stack, checked statically (Docker does not run here): every reference in it must agree.

The mounted customs.yaml must load with the gateway's compose environment; every upstream must be a
compose service serving that port; the OTLP, Redis and listen ports must line up; every path the
config names must be inside a mounted volume; the demo key, JWKS and issuer must belong together.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import yaml

from gateway.authz.engine import PolicyEngine
from gateway.config import Config, ConfigError, load_config
from gateway.demo.delegate import DEMO_ISSUER, mint_token, write_demo_keys

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
CONFIG_TARGET = "/etc/customs/customs.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container target) of each short-syntax volume; source relative to compose/ for binds."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out.append((source, target))
    return out


def host_path(service: dict[str, Any], container_path: str, named: dict[str, Any]) -> Path | str:
    """The host path (bind mount) or volume name (named volume) holding `container_path`."""
    best: tuple[str, str] | None = None
    for source, target in mounts(service):
        if (container_path == target or container_path.startswith(target.rstrip("/") + "/")) and (
                best is None or len(target) > len(best[1])):
            best = (source, target)
    assert best is not None, f"{container_path} is not inside any volume of the service"
    source, target = best
    if source in named:
        return source
    return (COMPOSE_DIR / source / Path(container_path).relative_to(target)).resolve() if container_path != target \
        else (COMPOSE_DIR / source).resolve()


def command_option(service: dict[str, Any], option: str) -> str:
    command = service["command"]
    return str(command[command.index(option) + 1])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def config(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> Config:
    gateway = services["gateway"]
    assert command_option(gateway, "--config") == CONFIG_TARGET
    path = host_path(gateway, CONFIG_TARGET, compose.get("volumes", {}))
    assert isinstance(path, Path) and path == COMPOSE_DIR / "customs.yaml"
    return load_config(path, env=environment(gateway))


def test_every_service_has_an_image_or_build(services: dict[str, dict[str, Any]]) -> None:
    assert {"gateway", "redis", "jaeger", "inventory", "payments", "delegate", "agent", "keys"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), name
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    for source in line.split()[1:-1]:
                        assert (context / source).exists(), f"{dockerfile}: COPY {source}"
            # The wheel carries the shipped policies only if setup.py and policies/ are there when it is built.
            text = dockerfile.read_text()
            if "RUN pip install ." in text:
                before = text.split("RUN pip install .")[0]
                assert all(f"{part}" in before for part in ("setup.py", "MANIFEST.in", "COPY policies")), name


def test_depends_on_and_network_namespaces_name_real_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        mode = service.get("network_mode")
        if mode:
            assert mode.startswith("service:") and mode.removeprefix("service:") in services
            assert "ports" not in service, f"{name}: ports of a shared namespace are published by its owner"


def test_config_loads_with_the_compose_environment(config: Config, services: dict[str, dict[str, Any]]) -> None:
    assert config.identity.mode == "jwt"
    assert config.store != "memory"
    # Without the compose environment the ${REDIS_URL} reference is an error: the test is not vacuous.
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_config(COMPOSE_DIR / "customs.yaml", env={})


def served_port(service: dict[str, Any]) -> int | None:
    command = service.get("command", [])
    return int(command[command.index("--http") + 1]) if "--http" in command else None


def test_upstreams_are_compose_services_on_their_ports(config: Config, services: dict[str, dict[str, Any]]) -> None:
    gateway_ns = {n: s for n, s in services.items() if s.get("network_mode") == "service:gateway"}
    servers = {n: s for n, s in services.items() if served_port(s) is not None}
    assert set(servers) == {"inventory", "payments", "delegate"}
    used: set[str] = set()
    for upstream in config.upstreams:
        assert upstream.url is not None, f"{upstream.name}: compose upstreams are HTTP services"
        url = urlsplit(upstream.url)
        assert url.path == "/mcp"
        if url.hostname in ("127.0.0.1", "localhost"):
            candidates = [n for n in gateway_ns if served_port(services[n]) == url.port]
        else:
            candidates = [n for n in servers if n == url.hostname and served_port(services[n]) == url.port]
        assert candidates == [upstream.name], f"upstream {upstream.name} ({upstream.url}) is not one compose service"
        used.add(upstream.name)
    assert used == set(servers), "a demo server is not configured as an upstream"


def test_listen_and_published_ports_agree(config: Config, services: dict[str, dict[str, Any]]) -> None:
    published = [str(p).split(":") for p in services["gateway"]["ports"]]
    assert any(int(p[-1]) == config.listen.port for p in published)
    public = urlsplit(config.listen.public_url or "")
    host_ports = {int(p[-2]) for p in published if len(p) >= 2}
    assert public.port in host_ports and public.hostname in ("127.0.0.1", "localhost")
    assert config.listen.host == "0.0.0.0"  # reachable through the published port
    for name in ("delegate", "agent"):
        gateway_url = urlsplit(command_option(services[name], "--gateway"))
        assert (gateway_url.hostname, gateway_url.port, gateway_url.path) == ("127.0.0.1", config.listen.port, "/mcp")


def test_published_ports_are_on_the_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    """The Jaeger UI shows every principal, tool and decision, and its OTLP port takes spans from anyone:
    like the gateway's, they are published on the host's loopback, never on all its interfaces."""
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every host interface"


def test_traces_reach_jaeger_and_redis_is_the_redis_service(config: Config,
                                                             services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["gateway"])
    assert config.telemetry.traces.endpoint is None  # so the standard variable below is what applies
    otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname == "jaeger" and otlp.port == 4318
    jaeger = services["jaeger"]
    assert "all-in-one" in jaeger["image"] and environment(jaeger).get("COLLECTOR_OTLP_ENABLED") == "true"
    jaeger_ports = {str(p).split(":")[-1] for p in jaeger["ports"]}
    assert {"16686", "4318"} <= jaeger_ports
    assert env.get("OTEL_METRICS_EXPORTER") == "none"  # Jaeger does not take OTLP metrics
    assert config.store != "memory"
    redis_url = urlsplit(config.store.redis.url)
    assert redis_url.hostname == "redis" and (redis_url.port or 6379) == 6379
    assert services["redis"]["image"].startswith("redis:")
    assert {"jaeger", "redis", "keys"} <= set(services["gateway"]["depends_on"])


def test_config_paths_are_mounted(config: Config, services: dict[str, dict[str, Any]],
                                  compose: dict[str, Any]) -> None:
    gateway, named = services["gateway"], compose.get("volumes", {})
    policies = host_path(gateway, str(config.policies.dir), named)
    assert isinstance(policies, Path) and list(policies.glob("*.cedar"))
    PolicyEngine(config.policies.model_copy(update={"dir": policies}), config.environment).load_sync()
    (issuer,) = config.identity.issuers
    assert issuer.jwks_file is not None
    assert host_path(gateway, str(issuer.jwks_file), named) == "keys"
    assert host_path(gateway, str(config.signing.key_dir), named) in named
    keys_service = services["keys"]
    assert command_option(keys_service, "--out") == str(issuer.jwks_file.parent)
    assert host_path(keys_service, str(issuer.jwks_file.parent), named) == "keys"
    for name in ("delegate", "agent"):
        key = command_option(services[name], "--key")
        assert host_path(services[name], key, named) == "keys" and Path(key).parent == issuer.jwks_file.parent


def test_demo_tokens_pass_the_configured_issuer(config: Config, tmp_path: Path) -> None:
    (issuer,) = config.identity.issuers
    assert issuer.issuer == DEMO_ISSUER
    assert issuer.audience == f"{config.listen.public_url}/mcp"
    key = write_demo_keys(tmp_path)
    assert (tmp_path / issuer.jwks_file.name).is_file()  # type: ignore[union-attr]
    token = mint_token(key, subject="demo-agent", audience=issuer.audience, act={"sub": "restock-agent"})
    jwk = jwt.PyJWKSet.from_dict(json.loads((tmp_path / "jwks.json").read_text())).keys[0]
    assert jwk.algorithm_name in issuer.algorithms
    claims = jwt.decode(token, jwk.key, algorithms=list(issuer.algorithms), audience=issuer.audience,
                        issuer=issuer.issuer)
    assert claims["act"] == {"sub": "restock-agent"}


def test_agent_script_and_readme() -> None:
    ast.parse((COMPOSE_DIR / "agent.py").read_text())
    readme = (COMPOSE_DIR / "README.md").read_text()
    assert "docker compose" in readme and "16686" in readme and "customs.decision=deny" in readme
    for url in re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)", readme):
        assert url in {"8700", "16686", "4318"}, url


@pytest.mark.parametrize("command", [["token", "--subject", "alice"], ["demo", "--gateway", "http://127.0.0.1:9/mcp"]])
def test_agent_script_without_its_key_says_how_to_make_one(tmp_path: Path, command: list[str]) -> None:
    """README's `agent.py token …` run where no `keys` step wrote the key: an error naming it, not a traceback."""
    import subprocess
    import sys

    missing = tmp_path / "keys" / "signing-key.pem"
    result = subprocess.run([sys.executable, str(COMPOSE_DIR / "agent.py"), *command, "--key", str(missing)],
                            capture_output=True, text=True, timeout=60, cwd=COMPOSE_DIR.parent)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert str(missing) in result.stderr and "agent.py keys --out" in result.stderr, result.stderr
    assert result.stdout == ""


def test_the_image_serves_the_mounted_config_on_the_listen_port(config: Config) -> None:
    """The image every service runs: `customs` (the gateway service's command) is the package's console script,
    and the Dockerfile's default command, EXPOSE and HEALTHCHECK name the mounted config and the port it listens on
    (a health check on another port marks a working gateway unhealthy)."""
    import tomllib

    scripts = tomllib.loads((COMPOSE_DIR.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("customs") == "gateway.cli:main"
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    cmd = json.loads(next(line for line in dockerfile.splitlines() if line.startswith("CMD "))[4:])
    assert cmd == ["customs", "serve", "--config", CONFIG_TARGET]
    assert f"EXPOSE {config.listen.port}" in dockerfile.splitlines()
    (health,) = re.findall(r"^HEALTHCHECK .*?(http://[^'\"]+)", dockerfile, re.MULTILINE)
    url = urlsplit(health)
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", config.listen.port, "/healthz")


def test_the_readme_approver_token_is_one_the_gateway_accepts(config: Config, tmp_path: Path) -> None:
    """README: sign in to the approvals page with `agent.py token --subject alice --groups approvers,finance`. Run
    as written (its key where the `keys` service writes it, here a temporary one), the token must pass the configured
    issuer (audience by default) and name the groups the shipped approval policies ask for a payment."""
    import shlex
    import subprocess
    import sys

    readme = (COMPOSE_DIR / "README.md").read_text().replace("\\\n", " ")
    (line,) = [line for line in readme.splitlines() if "agent.py token" in line]
    argv = shlex.split(line[line.index("python "):])
    assert argv[:2] == ["python", "/app/compose/agent.py"] and "--audience" not in argv
    write_demo_keys(tmp_path)
    result = subprocess.run([sys.executable, str(COMPOSE_DIR / "agent.py"), *argv[2:], "--key",
                             str(tmp_path / "signing-key.pem")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (issuer,) = config.identity.issuers
    jwk = jwt.PyJWKSet.from_dict(json.loads((tmp_path / "jwks.json").read_text())).keys[0]
    claims = jwt.decode(result.stdout.strip(), jwk.key, algorithms=list(issuer.algorithms),
                        audience=issuer.audience, issuer=issuer.issuer)
    assert claims["sub"] == "alice" and {"approvers", "finance"} <= set(claims["groups"])
    approvals = (COMPOSE_DIR.parent / "policies" / "approvals.cedar").read_text()
    assert 'Group::"approvers"' in approvals and 'Group::"finance"' in approvals
