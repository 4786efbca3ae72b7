"""The layer contracts (pyproject.toml [tool.importlinter], run by `make lint`)
cover every module, and `lint-imports` does fail when a lower layer imports a
higher one or the daemon imports the simulator."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import candled

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
MODULES = sorted(m.name for m in pkgutil.iter_modules(candled.__path__))


def contract(kind: str, source: str | None = None) -> dict[str, object]:
    (found,) = [
        c for c in CONTRACTS
        if c["type"] == kind and (source is None or c.get("source_modules") == [source])
    ]  # fmt: skip
    return found


def test_every_module_has_a_layer() -> None:
    layers = contract("layers")["layers"]
    assert isinstance(layers, list)
    placed = [m.strip() for layer in layers for m in layer.replace("|", ":").split(":")]
    assert sorted(placed) == MODULES, "a module is missing from the layers, or listed twice"


def test_the_simulator_may_use_only_the_domain_and_the_clock() -> None:
    forbidden = contract("forbidden", "candled_sim")["forbidden_modules"]
    allowed = {"domain", "clock"}
    assert sorted(forbidden) == [f"candled.{m}" for m in MODULES if m not in allowed]  # type: ignore[arg-type]


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), str(REPO / "pyproject.toml"),
         "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def copy_of_the_packages(tmp_path: Path) -> Path:
    """The two packages copied (not linked) under tmp_path/src, for planting imports."""
    for name, folder in (("candled", "daemon"), ("candled_sim", "sim")):
        shutil.copytree(REPO / folder, tmp_path / "src" / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "migrations"))  # fmt: skip
    return tmp_path


def test_the_contracts_hold_on_the_tree_as_it_is(copy_of_the_packages: Path) -> None:
    done = lint_imports(copy_of_the_packages)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("gaps.py", "from candled import healer", "candled.gaps is not allowed to import candled.healer"),
        ("store/writer.py", "from candled import config", "candled.store is not allowed to import candled.config"),
        ("venues/base.py", "from candled import fetch", "candled.venues is not allowed to import candled.fetch"),
        ("backfill.py", "import candled_sim.truth", "candled is not allowed to import candled_sim"),
        ("../candled_sim/truth.py", "from candled import store", "candled_sim is not allowed to import candled.store"),
    ],
)  # fmt: skip
def test_an_upward_import_breaks_the_lint(
    copy_of_the_packages: Path, module: str, planted: str, broken: str
) -> None:
    path = copy_of_the_packages / "src" / "candled" / module
    path.write_text(path.read_text() + f"\n{planted}  # noqa\n")
    done = lint_imports(copy_of_the_packages)
    assert done.returncode != 0 and broken in done.stdout, done.stdout + done.stderr
