"""`customs config check` warns about a static credential serve could not read, as serve's log does.

An unset `value_env` or an unreadable, empty, non-UTF-8 or header-breaking `value_file` makes every call to the
upstream fail `credential_unavailable`: serve starts and logs it, but config check said OK without a word. It
now prints the same reason as a warning at the key's path (exit 0: a check may run where secrets are not).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from tests.conftest import REPO

SECRET = "sk_live_h5CheckSecret0001"


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], credentials: dict[str, str]) -> tuple[int, str]:
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [
        {"name": "plain", "url": "http://127.0.0.1:1/mcp"},
        {"name": "search", "url": "http://127.0.0.1:2/mcp", "credentials": {"mode": "static", **credentials}},
    ], "policies": {"dir": str(REPO / "policies")}}))
    code = main(["config", "check", str(path)])
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    return code, out.err


def test_an_unset_variable_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("H5_SEARCH_KEY", raising=False)
    code, err = _check(tmp_path, capsys, {"value_env": "H5_SEARCH_KEY"})
    assert code == 0 and err.splitlines() == [
        f"{tmp_path / 'customs.yaml'}: warning: upstreams[1].credentials.value_env: environment variable H5_SEARCH_KEY "
        "is not set: every call to upstream search is refused (credential_unavailable) until it is"]


def test_a_set_variable_or_a_readable_file_is_not(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H5_SEARCH_KEY", SECRET)
    assert _check(tmp_path, capsys, {"value_env": "H5_SEARCH_KEY"}) == (0, "")
    key = tmp_path / "key"
    key.write_text(SECRET + "\n")
    assert _check(tmp_path, capsys, {"value_file": str(key)}) == (0, "")


@pytest.mark.parametrize(("content", "why"), [
    (None, "cannot read credential file {key}: FileNotFoundError"),
    (b"", "credential file {key} is empty"),
    (b"\xff\xfe" + SECRET.encode(), "credential file {key} is not UTF-8 text"),
    (f"{SECRET}\nX-Other: 1".encode(), "credential file {key} holds a line break or another control character, "
                                       "which no HTTP header value may"),
])
def test_a_file_serve_could_not_use_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: bytes | None, why: str) -> None:
    key = tmp_path / "key"
    if content is not None:
        key.write_bytes(content)
    code, err = _check(tmp_path, capsys, {"value_file": str(key)})
    assert code == 0 and err.splitlines() == [
        f"{tmp_path / 'customs.yaml'}: warning: upstreams[1].credentials.value_file: {why.format(key=key)}: every call "
        "to upstream search is refused (credential_unavailable) until it is"]
