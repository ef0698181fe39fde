"""store.redis.url's query options are checked as redis-py will read them.

`?db=x` passed `config check` and `serve` then stopped with redis-py's traceback while starting; `?foo=1` (or
`ssl_cert_reqs` on a plain redis:// URL) passed too, and the gateway then served with every Redis operation failing
(`not reachable`, every call refused, a traceback in the log every two seconds). Both are problems at the URL's path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, parse_config

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9001/mcp"}]


@pytest.mark.parametrize(("query", "problem"), [
    ("db=x", "Invalid value for 'db' in connection URL."),
    ("socket_timeout=soon", "Invalid value for 'socket_timeout' in connection URL."),
    ("foo=1", "redis-py takes no option 'foo' here"),
    ("ssl_cert_reqs=none", "redis-py takes no option 'ssl_cert_reqs' here"),  # a rediss:// option
])
def test_an_option_redis_cannot_take_is_a_problem_at_the_url(query: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS,
                      "store": {"redis": {"url": f"redis://:s3cret@127.0.0.1:6379/0?password=s3cret&{query}"}}})
    assert info.value.problems == [f"store.redis.url: not a redis:// URL: {problem}"]
    assert "s3cret" not in str(info.value.problems)


def test_a_tls_option_redis_cannot_take_is_a_problem_too() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "store": {"redis": {"url": "rediss://h:6380/0?ssl_cert_reqs=bogus"}}})
    assert info.value.problems == ["store.redis.url: not a redis:// URL: Invalid SSL Certificate Requirements Flag: "
                                   "bogus"]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0?db=2&protocol=3&socket_timeout=2.5",
                                 "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none", "unix:///run/redis.sock?db=1"])
def test_urls_redis_takes_still_load(url: str) -> None:
    store = parse_config({"upstreams": UPSTREAMS, "store": {"redis": {"url": url}}}).store
    assert not isinstance(store, str) and store.redis.url == url


def test_config_check_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "customs.yaml"
    path.write_text('upstreams: [{name: a, url: "http://127.0.0.1:9/mcp"}]\n'
                    'store: {redis: {url: "redis://127.0.0.1:6379/0?db=x"}}\n')
    assert main(["config", "check", str(path)]) == 2
    assert "store.redis.url: not a redis:// URL: Invalid value for 'db' in connection URL." in capsys.readouterr().err
