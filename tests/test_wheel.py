"""The built wheel, installed into a fresh virtual environment outside the checkout.

What a user gets from `uv build --wheel` (or pip) must run on its own: the
console script, the migrations shipped inside the package, the simulator
command, and no top-level module named `daemon` (which `python-daemon` owns).
The environment's dependencies come from the lock file, so the test installs
what CI installs, from uv's cache where it can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import asyncpg
import pytest

import candled

REPO = Path(__file__).resolve().parents[1]


def uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv not found: `make .venv/.synced` installs it into .tools", pytrace=False)
    return found


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv outside the checkout holding only the wheel and its locked dependencies."""
    base = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    run(uv(), "build", "--wheel", "--out-dir", base / "dist", REPO, cwd=base, env=env)
    (wheel,) = (base / "dist").glob("candled-*.whl")
    requirements = base / "requirements.txt"
    run(uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--all-extras",
        "--no-hashes", "-o", requirements, cwd=REPO, env=env)  # fmt: skip
    venv = base / "venv"
    run(uv(), "venv", "--python", sys.executable, venv, cwd=base, env=env)
    python = venv / "bin" / "python"
    run(uv(), "pip", "install", "--python", python, "-r", requirements, wheel, cwd=base, env=env)
    yield venv


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_installed_unit_verifies_at_its_install_prefix(installed: Path) -> None:
    # README installs the wheel into /opt/candled; here the prefix is the
    # test's environment, so ExecStart must name the console script it holds.
    shipped = installed / "share" / "candled" / "candled.service"
    assert shipped.read_text() == (REPO / "systemd" / "candled.service").read_text()
    assert (installed / "share" / "doc" / "candled" / "README.md").is_file()
    assert (installed / "share" / "candled" / "config.toml").is_file()
    text = shipped.read_text()
    assert "ExecStart=/opt/candled/bin/candled run " in text
    unit = installed / "candled.service"
    unit.write_text(text.replace("/opt/candled", str(installed)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_wheel_carries_the_package_the_simulator_and_the_migrations(
    installed: Path,
) -> None:
    site = Path(
        run(installed / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=installed).strip()
    )  # fmt: skip
    assert (site / "candled" / "py.typed").is_file()
    assert (site / "candled_sim" / "py.typed").is_file()
    shipped = sorted(p.name for p in (site / "candled" / "migrations").glob("*.sql"))
    assert shipped == sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert not (site / "daemon").exists(), "a top-level `daemon` would collide with python-daemon"
    version = run(installed / "bin" / "python", "-c",
                  "import candled; print(candled.__version__)", cwd=installed)  # fmt: skip
    assert version.strip() == candled.__version__ == metadata.version("candled")


async def test_the_installed_command_migrates_checks_and_helps(
    installed: Path, tsdb_dsn: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.toml").read_text())
    env = {**os.environ, "CANDLED_DATABASE_URL": tsdb_dsn}
    env.pop("VIRTUAL_ENV", None)
    candled_cmd = installed / "bin" / "candled"
    # From a directory with no checkout in sight: only the installed files can answer.
    out = run(candled_cmd, "migrate", "--config", config, cwd=tmp_path, env=env)
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert await conn.fetchval("SELECT to_regclass('candles') IS NOT NULL")
    finally:
        await conn.close()
    assert applied == len(list((REPO / "migrations").glob("*.sql"))), out
    run(candled_cmd, "check-config", "--config", config, cwd=tmp_path, env=env)
    assert "--incremental" in run(candled_cmd, "audit", "--help", cwd=tmp_path, env=env)
    assert "--protocol" in run(candled_cmd, "sim", "--help", cwd=tmp_path, env=env)
    shown = run(installed / "bin" / "python", "-m", "candled", "--version", cwd=tmp_path, env=env)
    assert shown.strip() == f"candled {candled.__version__}"
