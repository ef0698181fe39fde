"""A plain (non-editable) install: the wheel carries the shipped policies, so `customs serve` with no
config and `customs demo` run from anywhere, without the source checkout."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.support.mcp_client import sdk_client

SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _build_wheel(tmp_path: Path) -> Path:
    # Built from a copy so the build leaves no build/ or egg-info in the shared working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(REPO / name, src / name)
    for name in ("gateway", "policies"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist)], check=True, capture_output=True, timeout=120)
    (wheel,) = dist.glob("customs-*.whl")
    return wheel


def _install(wheel: Path, tmp_path: Path) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from the project venv (added to the end
    of sys.path, so this venv's gateway, not the checkout's, is the one imported)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=120)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    return _install(_build_wheel(tmp_path), tmp_path)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_wheel_carries_the_shipped_policies(tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    shipped = {f"gateway/policies/{p.relative_to(REPO / 'policies')}"
               for p in (REPO / "policies").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert shipped and shipped <= names


async def test_installed_serve_without_config_and_demo_run_outside_the_checkout(installed: Path,
                                                                              tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import gateway.serve as s; print(s.__file__); print(s.default_config().policies.dir)"
    module, policies = subprocess.run([str(installed / "bin" / "python"), "-c", probe], check=True,
                                      capture_output=True, text=True, cwd=elsewhere, env=_env()).stdout.split()
    assert Path(module).is_relative_to(installed)  # the wheel's gateway, not the checkout's
    assert Path(policies).is_relative_to(installed) and (Path(policies) / "schema.cedarschema").is_file()

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(installed / "bin" / "customs"), "serve", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=elsewhere, env=_env())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while "listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)  # polling the child's log for readiness, bounded by the deadline
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as client:  # the shipped policies decide
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"})
        assert result.content[0].text == "widget: 42 in stock"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, log.read_text()

    demo = subprocess.run([str(installed / "bin" / "customs"), "demo", "--exit-after-walkthrough",
                           "--port", str(free_port()), "--dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=120, check=False, cwd=elsewhere, env=_env())
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "DENIED: Unknown tool: inventory__get_stock" in demo.stdout
    assert "OK: paid 12500.0 to acme-supplies" in demo.stdout
