"""`environment` is compared by policies exactly (`context.environment == "production"`): a value no policy can
have been written for is a config error, not a gateway where every production-only forbid silently never fires."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9/mcp"}]


@pytest.mark.parametrize("value", [
    "production\n",  # `environment: ${CUSTOMS_ENV}` read from a file that ends in a newline (ConfigMap --from-file)
    " production",
    "",  # a variable set to nothing
])
def test_an_environment_with_surrounding_whitespace_or_none_at_all_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": UPSTREAMS, "environment": value})
    assert f"environment: must be a name without surrounding whitespace (got {value!r})" in str(caught.value)


def test_a_plain_environment_is_kept_as_written() -> None:
    assert parse_config({"upstreams": UPSTREAMS, "environment": "production"}).environment == "production"
    assert parse_config({"upstreams": UPSTREAMS}).environment == "dev"
