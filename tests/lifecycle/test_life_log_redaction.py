"""The process log redacts the secrets the gateway itself holds (static upstream keys), not only
secret-looking patterns: a value with no recognisable shape is still masked once configured."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.credentials.redaction import RedactingFilter
from gateway.serve import run


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """A plain handler on the root logger (what `serve` installs its redaction filter on)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for other in root.handlers:  # the filter `serve` attached to pytest's own handlers
            for f in [f for f in other.filters if isinstance(f, RedactingFilter)]:
                other.removeFilter(f)


async def test_static_upstream_key_is_masked_in_the_process_log(
        root_stream: io.StringIO, permissive_policies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    static_key = "plain" + secrets.token_hex(16)  # no pattern would recognise it
    monkeypatch.setenv("LIFE_STATIC_KEY", static_key)
    config = parse_config({
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9/mcp",
                       "credentials": {"mode": "static", "value_env": "LIFE_STATIC_KEY"}}],
        "policies": {"dir": str(permissive_policies), "watch": False},
        "signing": {"key_dir": str(tmp_path / "keys")},
        "decision_log": {"path": str(tmp_path / "d.jsonl")}})
    stop = asyncio.Event()

    def ready(url: str) -> None:
        # Anything that ends up logging the key (an upstream error echoing a header, a debug dump).
        logging.getLogger("customs.test").warning("upstream answered: bad key %s", static_key)
        stop.set()

    assert await run(config, on_ready=ready, stop=stop) == 0
    text = root_stream.getvalue()
    assert "upstream answered: bad key [REDACTED]" in text
    assert static_key not in text
