"""The credential stage: no passthrough, one header per mode, static secrets from env/file never logged."""

from __future__ import annotations

import logging

import pytest

from gateway.credentials import CredentialService, Redactor, install_log_redaction
from gateway.errors import GatewayError
from tests.credentials.helpers import agent, call, make_config

SECRET = "s3cr3t-static-value-0xC0FFEE"


def upstreams(tmp_path):
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    return [
        {"name": "open", "url": "http://127.0.0.1:9001/mcp"},
        {"name": "envkey", "url": "http://127.0.0.1:9002/mcp",
         "credentials": {"mode": "static", "value_env": "TOOL_KEY", "header": "X-Api-Key"}},
        {"name": "filekey", "url": "http://127.0.0.1:9003/mcp",
         "credentials": {"mode": "static", "value_file": str(tmp_path / "secret.txt"), "value_prefix": "Bearer "}},
        {"name": "missing", "url": "http://127.0.0.1:9004/mcp",
         "credentials": {"mode": "static", "value_env": "NOT_SET_ANYWHERE"}},
        {"name": "minted", "url": "http://127.0.0.1:9005/mcp",
         "credentials": {"mode": "minted", "header": "X-Customs-Token"}},
    ]


@pytest.fixture
async def service(tmp_path, clock):
    svc = CredentialService(make_config(tmp_path, upstreams(tmp_path)), environ={"TOOL_KEY": SECRET},
                            clock=clock)
    await svc.start()
    yield svc
    await svc.close()


def inbound(ctx):
    """What a careless forwarder might have copied from the agent's request."""
    ctx.upstream_headers = {"Authorization": "Bearer agent-token", "Cookie": "sid=1", "X-Api-Key": "agent-key"}
    return ctx


async def test_mode_none_forwards_nothing(service) -> None:
    ctx = inbound(call("open", "t"))
    await service.stage(ctx)
    assert ctx.upstream_headers == {}
    assert ctx.credential_mode == "none" and ctx.credential_audience is None
    assert ctx.task_id and "sess-1" not in ctx.task_id  # a hash: the session id never reaches upstreams


async def test_static_from_env_and_file_only_that_header(service) -> None:
    ctx = inbound(call("envkey", "t"))
    await service.stage(ctx)
    assert ctx.upstream_headers == {"X-Api-Key": SECRET} and ctx.credential_mode == "static"
    ctx = inbound(call("filekey", "t"))
    await service.stage(ctx)
    assert ctx.upstream_headers == {"Authorization": "Bearer " + SECRET}


async def test_static_file_rotation_and_removal(service, tmp_path) -> None:
    import os

    path = tmp_path / "secret.txt"
    path.write_text("rotated-value-123456")
    os.utime(path, ns=(1, 1))  # a different mtime, as a rotated mounted secret has
    ctx = call("filekey", "t")
    await service.stage(ctx)
    assert ctx.upstream_headers == {"Authorization": "Bearer rotated-value-123456"}
    path.unlink()
    with pytest.raises(GatewayError) as err:
        await service.stage(call("filekey", "t"))
    assert err.value.reason == "credential_unavailable"


async def test_missing_static_value_fails_closed(service) -> None:
    ctx = inbound(call("missing", "t"))
    with pytest.raises(GatewayError) as err:
        await service.stage(ctx)
    assert err.value.reason == "credential_unavailable"
    assert ctx.upstream_headers == {}  # even on failure, nothing inbound is left to forward


async def test_static_value_never_in_logs(tmp_path, clock, caplog) -> None:
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    svc = CredentialService(make_config(tmp_path, upstreams(tmp_path)), environ={"TOOL_KEY": SECRET}, clock=clock)
    install_log_redaction(svc.redactor, root)
    try:
        with caplog.at_level(logging.DEBUG):
            await svc.start()
            ctx = call("envkey", "t")
            await svc.stage(ctx)
            logging.getLogger("customs.test").warning("forwarding with headers %s", ctx.upstream_headers)
            with pytest.raises(GatewayError) as err:
                await svc.stage(call("missing", "t"))
            await svc.close()
    finally:
        root.removeHandler(handler)
    assert any("NOT_SET_ANYWHERE" in r for r in records)  # the log says what to fix
    assert any("forwarding with headers" in r for r in records)
    assert not any(SECRET in r for r in records)
    assert SECRET not in str(err.value) and SECRET not in repr(svc.static)


async def test_minted_custom_header_carries_the_raw_token(service) -> None:
    ctx = inbound(call("minted", "t"))
    await service.stage(ctx)
    assert list(ctx.upstream_headers) == ["X-Customs-Token"]
    assert ctx.upstream_headers["X-Customs-Token"].startswith("eyJ")
    assert ctx.credential_mode == "minted" and ctx.credential_audience == "http://127.0.0.1:9005/mcp"
    assert ctx.extra["credential"]["aud"] == "http://127.0.0.1:9005/mcp"


async def test_principal_token_expiry_caps_credential(service, clock) -> None:
    ctx = call("minted", "t", principal=agent(expires_at=clock() + 10))
    await service.stage(ctx)
    assert ctx.extra["credential"]["exp"] == int(clock() + 10)


async def test_task_from_meta_is_scoped_and_stripped(service) -> None:
    ctx = call("open", "t", meta={"customs/task": "order-7", "progressToken": 3})
    await service.stage(ctx)
    assert ctx.task_id is not None and ctx.task_id.startswith("order-7@")
    assert ctx.params["_meta"] == {"progressToken": 3}
    other = call("open", "t", meta={"customs/task": "order-7"}, principal=agent(sub="spiffe://acme/agent-2"))
    await service.stage(other)
    assert other.task_id != ctx.task_id


async def test_unknown_upstream_is_credential_unavailable(service) -> None:
    with pytest.raises(GatewayError) as err:
        await service.stage(call("nope", "t"))
    assert err.value.reason == "credential_unavailable"


async def test_redactor_used_for_logs_knows_static_values(service) -> None:
    assert isinstance(service.redactor, Redactor)
    assert service.redactor.redact({"note": f"key={SECRET}"}) == {"note": "key=[REDACTED]"}


async def test_connect_headers_for_session_setup(service) -> None:
    headers = await service.connect_headers(agent(), "minted", "task-x")
    token = headers["X-Customs-Token"]
    claims = (await service.introspector.introspect(token))
    assert claims["active"] and claims["scope"] == "" and claims["task"] == "task-x"
    assert await service.connect_headers(agent(), "envkey", "task-x") == {"X-Api-Key": SECRET}
    assert await service.connect_headers(agent(), "open", "task-x") == {}


@pytest.mark.parametrize("header", ["", "X Api Key", "X-Tok:en", "Content-Type", "mcp-session-id", "Host"])
def test_credential_header_must_be_one_the_transport_sends(header) -> None:
    """`config check` said OK to a credential header that is no HTTP field name (every request then failed with
    the upstream's 400) or one the transport owns (Content-Type, Mcp-Session-Id, ...: the credential was dropped
    silently, so a minted upstream got no token at all)."""
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "p", "url": "http://127.0.0.1:9001/mcp",
                                     "credentials": {"mode": "minted", "header": header}}]})
    assert [p for p in info.value.problems if p.startswith("upstreams[0].credentials.header: ")], info.value.problems


def test_credential_header_names_that_reach_the_upstream_are_accepted() -> None:
    from gateway.config import parse_config

    for header in ("Authorization", "X-Api-Key", "x_token.v2"):
        parse_config({"upstreams": [{"name": "p", "url": "http://127.0.0.1:9001/mcp",
                                     "credentials": {"mode": "static", "value_env": "K", "header": header}}]})


@pytest.mark.parametrize("mode", ["minted", "token_exchange"])
def test_an_empty_audience_is_a_config_error(mode) -> None:
    """`audience: ""` (a `${VAR}` set to nothing) was taken for "not set": tokens silently named the upstream's url
    (or, in an exchange, asked for it) instead of the audience the operator meant; `config check` said OK."""
    from gateway.config import ConfigError, parse_config

    exchange = {"token_endpoint": "http://127.0.0.1:9/token", "client_id": "c"} if mode == "token_exchange" else {}
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": [{"name": "p", "url": "http://127.0.0.1:9001/mcp",
                                     "credentials": {"mode": mode, "audience": "", **exchange}}]})
    assert "upstreams[0].credentials.audience: must not be empty (leave it out for the upstream's url)" \
        in info.value.problems, info.value.problems
