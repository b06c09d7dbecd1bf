"""A Python package's declared dependencies: setup.py, setup.cfg, pyproject.toml.

repo2docker installs a repository that is a Python package with `pip install .`; a
Guix environment cannot run its build, so the dependencies it declares are read as
data instead: setup.py's literal install_requires (the file is parsed, never run),
setup.cfg's [options] install_requires, pyproject.toml's PEP 621 [project]
dependencies and Poetry's [tool.poetry.dependencies].
"""

from __future__ import annotations

import ast
import configparser
import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath

from binder_lite.errors import EnvironmentSpecError
from binder_lite.launch.repofiles import RepoFile, RepoTree
from binder_lite.launch.requirements import PyPI, Skipped, parse_requirement

Entry = PyPI | Skipped

# Poetry's caret and tilde constraints, as PEP 440 would say them (for the note only).
_POETRY_VERSION = re.compile(r"[\^~]?[0-9][A-Za-z0-9.*+!-]*")


@dataclass(frozen=True)
class Declared:
    file: RepoFile
    what: str  # e.g. "install_requires", "[project] dependencies"
    entries: tuple[Entry, ...]


def read_package(tree: RepoTree, where: PurePosixPath) -> list[Declared]:
    """What the package at `where` declares, file by file (setup.py, setup.cfg,
    pyproject.toml, as present)."""
    found: list[Declared] = []
    for name, reader in (("setup.py", _setup_py), ("setup.cfg", _setup_cfg)):
        file = tree.read(where / name)
        if file is not None:
            found.append(reader(file))
    file = tree.read(where / "pyproject.toml")
    if file is not None:
        declared = _pyproject(file)
        if declared is not None:
            found.append(declared)
    return found


def _setup_py(file: RepoFile) -> Declared:
    try:
        module = ast.parse(file.text, filename="setup.py")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        # Python's own message may quote the file: only the line number is given.
        line = getattr(e, "lineno", None)
        at = f"{file.name}:{line}" if line else file.name
        raise EnvironmentSpecError(f"{at}: cannot parse setup.py (not valid Python)") from None
    entries: list[Entry] = []
    for node in ast.walk(module):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            entries += _install_requires(node.value, file.name)
    return Declared(file, "install_requires", tuple(entries))


def _install_requires(value: ast.expr, name: str) -> list[Entry]:
    if not isinstance(value, ast.List | ast.Tuple):
        return [
            Skipped(
                f"{name}:{value.lineno}",
                "install_requires is computed when setup.py runs: not read",
            )
        ]
    return [
        parse_requirement(item.value, f"{name}:{item.lineno}")
        if isinstance(item, ast.Constant) and isinstance(item.value, str)
        else Skipped(f"{name}:{item.lineno}", "not understood")
        for item in value.elts
    ]


def _setup_cfg(file: RepoFile) -> Declared:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(file.text)
    except configparser.Error:  # its message quotes the file
        raise EnvironmentSpecError(f"{file.name}: cannot parse setup.cfg") from None
    value = parser.get("options", "install_requires", fallback="")
    lines = [line.strip() for line in value.splitlines()]
    entries = [
        parse_requirement(line, f"{file.name}: install_requires {i}")
        for i, line in enumerate((line for line in lines if line and not line.startswith("#")), 1)
    ]
    return Declared(file, "[options] install_requires", tuple(entries))


def load_toml(file: RepoFile) -> dict[str, object]:
    try:
        return tomllib.loads(file.text)
    except tomllib.TOMLDecodeError as e:  # its message gives a place, not the text
        raise EnvironmentSpecError(f"{file.name}: cannot parse {file.real.name}: {e}") from None


def _pyproject(file: RepoFile) -> Declared | None:
    data = load_toml(file)
    project = data.get("project")
    deps = project.get("dependencies") if isinstance(project, dict) else None
    if isinstance(deps, list):
        entries = tuple(
            parse_requirement(d, f"{file.name}: dependency {i}")
            if isinstance(d, str)
            else Skipped(f"{file.name}: dependency {i}", "not understood")
            for i, d in enumerate(deps, start=1)
        )
        return Declared(file, "[project] dependencies", entries)
    tool = data.get("tool")
    poetry = tool.get("poetry") if isinstance(tool, dict) else None
    deps = poetry.get("dependencies") if isinstance(poetry, dict) else None
    if isinstance(deps, dict):
        return Declared(file, "[tool.poetry.dependencies]", tuple(_poetry(file, deps)))
    return None


def _poetry(file: RepoFile, deps: dict[str, object]) -> list[Entry]:
    entries: list[Entry] = []
    for i, (name, value) in enumerate(deps.items(), start=1):
        where = f"{file.name}: [tool.poetry.dependencies] entry {i}"
        if name.lower() == "python":
            continue  # the interpreter, not a package
        version = value.get("version") if isinstance(value, dict) else value
        if isinstance(value, dict) and ("git" in value or "path" in value or "url" in value):
            entries.append(Skipped(where, "a git, path or URL source: not fetched"))
            continue
        entry = parse_requirement(name, where)
        if isinstance(entry, PyPI) and isinstance(version, str) and version != "*":
            pin = version if version[0] in "^~" else f"=={version}"
            if _POETRY_VERSION.fullmatch(version):
                entry = PyPI(entry.name, entry.extras, pin)
        entries.append(entry)
    return entries
