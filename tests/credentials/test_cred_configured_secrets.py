"""Secrets given to upstreams outside `credentials:` are the gateway's secrets too: a secret-named static header
(`headers: {X-Api-Key: ...}`, the usual way to pass an HTTP upstream its API key) and a secret-named `env` entry of a
stdio child (`env: {GITHUB_TOKEN: ...}`, the only way to give a stdio server its key, since credentials need HTTP).
An upstream quoting one was handing it to the agent (answers and messages were scrubbed of `credentials:` values
only) and logs kept it; names that say nothing secret (`X-Region`, `TZ`) are left alone, so a tool's ordinary
output is never blanked. Real gateway, real SDK upstreams, real SDK agent.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from gateway.config.load import parse_config
from gateway.credentials.service import CredentialService
from tests.credentials.leaky_server import LEAKY_SERVER_PATH, leaky_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
KEY = "k3y-Zx8vQp2Lm5Nw7"


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_secret_named_header_or_env_value_is_taken_out_of_what_the_agent_gets(
        transport: str, start_gateway: Any, permissive_policies: Path) -> None:
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async with run_http_server(leaky_server(KEY)) as url:
        upstream: dict[str, Any] = (
            {"name": "leaky", "url": url, "headers": {"X-Api-Key": KEY, "X-Region": "region-north-7"}}
            if transport == "http" else
            {"name": "leaky", "command": [sys.executable, LEAKY_SERVER_PATH],
             "env": {"LEAKY_KEY": KEY, "SERVICE_API_KEY": KEY, "TZ": "region-north-7"}})
        gw = await start_gateway({"upstreams": [upstream], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            result = await client.call_tool("leaky__chatter", {})
    assert not result.is_error
    # (on the old code: "log with k3y-Zx8vQp2Lm5Nw7")
    assert logs == ["log with [REDACTED]"], logs


def test_only_secret_named_values_are_known() -> None:
    config = parse_config({"upstreams": [
        {"name": "h", "url": "http://127.0.0.1:9/mcp",
         "headers": {"X-Api-Key": "header-key-123", "Cookie": "sid=cookie-456", "X-Region": "region-north-7",
                     "Authorization": "Token auth-value-789"}},
        {"name": "s", "command": ["true"], "env": {"GITHUB_TOKEN": "ghtoken-value-1", "TZ": "Europe/Berlin"}}]})
    redactor = CredentialService(config, environ={}).redactor
    text = ("header-key-123 sid=cookie-456 auth-value-789 Token auth-value-789 ghtoken-value-1 region-north-7 "
            "Europe/Berlin")
    assert redactor.scrub_known(text) == ("[REDACTED] [REDACTED] [REDACTED] [REDACTED] [REDACTED] region-north-7 "
                                          "Europe/Berlin")


async def test_the_password_of_an_upstream_urls_user_info_is_taken_out(start_gateway: Any,
                                                                        permissive_policies: Path) -> None:
    # The URL's user info is sent as HTTP Basic (test_cred_url_user_info.py): the password, and the header's value
    # an upstream quoting its request would show, are the gateway's.
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    basic = base64.b64encode(f"customs:{KEY}".encode()).decode()
    async with run_http_server(leaky_server(f"{KEY} / Basic {basic}")) as url:
        with_user_info = url.replace("http://", f"http://customs:{KEY}@")
        gw = await start_gateway({"upstreams": [{"name": "leaky", "url": with_user_info}],
                                  "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(gw.mcp, logging_callback=on_log) as client:
            assert not (await client.call_tool("leaky__chatter", {})).is_error
    # (on the old code: the password and the base64 of customs:<password>)
    assert logs == ["log with [REDACTED] / Basic [REDACTED]"], logs


def test_a_secret_named_option_of_a_stdio_command_is_known() -> None:
    # `command: [server, --api-key, KEY]` or `--token=KEY`: how many stdio servers take their key, when not by env.
    config = parse_config({"upstreams": [
        {"name": "s", "command": ["server", "--api-key", "argv-key-123", "--token=argv-token-456", "--region",
                                  "region-north-7", "--api-key"]}]})
    redactor = CredentialService(config, environ={}).redactor
    assert redactor.scrub_known("argv-key-123 argv-token-456 region-north-7 server") == (
        "[REDACTED] [REDACTED] region-north-7 server")


def test_a_secret_named_assignment_in_a_stdio_command_is_known() -> None:
    # `docker run -e GITHUB_TOKEN=KEY image`, `--env=API_KEY=KEY`, `env OPENAI_API_KEY=KEY server`: how a container
    # or wrapper hands the child its key on the command line (on the old code none of these was known).
    config = parse_config({"upstreams": [
        {"name": "d", "command": ["docker", "run", "-i", "--rm", "-e", "GITHUB_TOKEN=ghp-argv-1234",
                                  "--env=API_KEY=envopt-key-5678", "-e", "LOG_LEVEL=debug-level", "-e", "GITHUB_TOKEN",
                                  "-e", "TOKEN_URL=https://idp.example/t", "image"]},
        {"name": "w", "command": ["env", "OPENAI_API_KEY=wrapped-key-9012", "server"]}]})
    redactor = CredentialService(config, environ={}).redactor
    assert redactor.scrub_known("ghp-argv-1234 envopt-key-5678 wrapped-key-9012") == "[REDACTED] [REDACTED] [REDACTED]"
    ordinary = "debug-level https://idp.example/t GITHUB_TOKEN image"
    assert redactor.scrub_known(ordinary) == ordinary


def test_key_names_of_cloud_and_signing_secrets_are_secret_names() -> None:
    # AWS_SECRET_ACCESS_KEY, a PRIVATE_KEY, a SECRET_KEY end in `key`, no secret word alone (it would redact every
    # `key` argument): as config entry names they hold a secret (on the old code these values were ordinary text).
    config = parse_config({"upstreams": [
        {"name": "s", "command": ["server", "--private-key", "argv-private-3456"],
         "env": {"AWS_SECRET_ACCESS_KEY": "aws-secret-7890", "SIGNING_PRIVATE_KEY": "pem-private-1234",
                 "DJANGO_SECRET_KEY": "django-secret-5678", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE0001",
                 "CACHE_KEY_PREFIX": "prefix-value-1"}}]})
    redactor = CredentialService(config, environ={}).redactor
    assert redactor.scrub_known("aws-secret-7890 pem-private-1234 django-secret-5678 argv-private-3456") == (
        "[REDACTED] [REDACTED] [REDACTED] [REDACTED]")
    assert redactor.scrub_known("AKIDEXAMPLE0001 prefix-value-1") == "AKIDEXAMPLE0001 prefix-value-1"
    assert not redactor.is_secret_key("key") and not redactor.is_secret_key("sort_key")


def test_a_name_about_a_secret_does_not_make_its_value_one() -> None:
    # A value is a secret when its name ends in a secret word (GITHUB_TOKEN, X-Api-Key, --api-key); TOKEN_URL,
    # HF_TOKEN_PATH, --token-limit name a place or a number, which known would be blanked out of every answer and
    # would mark every argument quoting them as holding a secret (context.args_contain_secret). So would the second
    # cookie of a Cookie header, taken for the token of a `<scheme> <token>` value.
    config = parse_config({"upstreams": [
        {"name": "h", "url": "http://127.0.0.1:9/mcp",
         "headers": {"API_KEY_HEADER": "X-Custom-Key", "Cookie": "sid=cookie-456; lang=en-US"}},
        {"name": "s", "command": ["server", "--token-limit", "100000", "--password-file", "/run/pw/file",
                                  "--auth-token", "argv-token-789"],
         "env": {"TOKEN_URL": "https://idp.example/oauth/token", "HF_TOKEN_PATH": "/root/.cache/hf/token",
                 "API_TOKEN_2": "env-token-222", "GITHUB_PERSONAL_ACCESS_TOKEN": "ghtoken-value-1"}}]})
    redactor = CredentialService(config, environ={}).redactor
    ordinary = "X-Custom-Key lang=en-US 100000 /run/pw/file https://idp.example/oauth/token /root/.cache/hf/token"
    assert redactor.scrub_known(ordinary) == ordinary
    assert not redactor.text_has_secret("limit 100000")
    assert redactor.scrub_known("sid=cookie-456; lang=en-US argv-token-789 env-token-222 ghtoken-value-1") == (
        "[REDACTED] [REDACTED] [REDACTED] [REDACTED]")


def test_a_configured_redact_keys_list_adds_to_the_built_in_secret_names() -> None:
    # `secrets.redact_keys: [ssn]` adds a name (58cfb11): GITHUB_TOKEN and X-Api-Key still name secrets here (when a
    # configured list replaced the built-in names, their values were left to the agent), and so does SSN now.
    config = parse_config({"secrets": {"redact_keys": ["ssn"]}, "upstreams": [
        {"name": "h", "url": "http://127.0.0.1:9/mcp", "headers": {"X-Api-Key": "header-key-123"}},
        {"name": "s", "command": ["true"], "env": {"GITHUB_TOKEN": "ghtoken-value-1", "SSN": "123-45-6789"}}]})
    redactor = CredentialService(config, environ={}).redactor
    assert redactor.scrub_known("header-key-123 ghtoken-value-1 123-45-6789") == "[REDACTED] [REDACTED] [REDACTED]"


def test_a_negated_secret_named_flag_takes_no_value() -> None:
    # `--no-token`, `--no-api-key` (argparse's BooleanOptionalAction, click's flag pairs) switch a secret off and take
    # no value: the argument after one (a script, a subcommand) was held as a secret and blanked out of every answer.
    config = parse_config({"upstreams": [
        {"name": "s", "command": ["python", "--no-token", "server-main.py", "--no-api-key", "serve-stdio",
                                  "--token", "argv-token-789"]}]})
    redactor = CredentialService(config, environ={}).redactor
    assert redactor.scrub_known("server-main.py serve-stdio argv-token-789") == "server-main.py serve-stdio [REDACTED]"
