"""README's layout table names what the tree holds: every module of the package, every
script and benchmark, every top-level folder of the design."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("\n## ", 1)[0]


def _named(path: Path) -> list[str]:
    return [p.name for p in sorted(path.iterdir())]


def _modules() -> list[str]:
    package = ROOT / "src" / "binder_lite"
    return [
        str(p.relative_to(package))
        for p in sorted(package.rglob("*.py"))
        if p.name not in {"__init__.py", "__main__.py"}
    ]


def _rows(first_cell_names: str) -> list[str]:
    return [
        line
        for line in _layout().splitlines()
        if line.startswith("| ") and first_cell_names in line.split("|")[1]
    ]


@pytest.mark.parametrize("module", _modules())
def test_every_module_is_in_the_layout_table(module: str) -> None:
    folder, _, name = module.rpartition("/")
    rows = _rows(f"{folder}/" if folder else "`src/binder_lite/")
    assert any(f"`{name}`" in row or f"/{name}`" in row for row in rows), (
        f"{module} is not in README's layout table"
    )


@pytest.mark.parametrize(
    "entry",
    [f"scripts/{n}" for n in _named(ROOT / "scripts")]
    + [f"benchmarks/{n}" for n in _named(ROOT / "benchmarks") if n.endswith(".py")],
)
def test_every_script_and_benchmark_is_in_the_layout_table(entry: str) -> None:
    folder, name = entry.split("/")
    row = next(line for line in _layout().splitlines() if line.startswith(f"| `{folder}/`"))
    assert re.search(rf"`{re.escape(name)}`", row), f"{entry} is not in README's layout table"


def test_every_row_names_something_that_exists() -> None:
    for line in _layout().splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for path in re.findall(r"`([^`]+/[^`]*)`", first):
            assert (ROOT / path.replace("*.scm.j2", "")).exists(), f"{path} is not in the tree"
