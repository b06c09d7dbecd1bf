"""Pipfile and Pipfile.lock, read as data.

repo2docker runs `pipenv install --dev`: from Pipfile.lock when there is one (its
default and develop sections), else from Pipfile ([packages] and [dev-packages]).  A
`{path = "."}` entry installs the repository's own package: its declared
dependencies are read instead (pypackage).  [requires] python_version is reported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from binder_lite.errors import EnvironmentSpecError
from binder_lite.launch.pypackage import load_toml
from binder_lite.launch.repofiles import RepoFile
from binder_lite.launch.requirements import MAX_ENTRIES, PyPI, Skipped, parse_requirement

_PATH = re.compile(r"\.{1,2}(?:/[A-Za-z0-9_.-]+)*/?|[A-Za-z0-9_-][A-Za-z0-9_./-]*")
_PYTHON = re.compile(r"\d+(?:\.\d+)*")


@dataclass(frozen=True)
class LocalPackage:
    """A `{path = ...}` entry: the package in that folder (relative to the file)."""

    path: str
    where: str


@dataclass(frozen=True)
class Pipenv:
    entries: tuple[PyPI | Skipped | LocalPackage, ...]
    python: str = ""  # [requires] python_version, when it passed the grammar


def read_pipfile(file: RepoFile) -> Pipenv:
    data = load_toml(file)
    entries = _sections(data, ("packages", "dev-packages"), lambda s: f"{file.name} [{s}]")
    requires = data.get("requires")
    return Pipenv(tuple(entries), _python(requires, "python_version", "python_full_version"))


def read_lock(file: RepoFile) -> Pipenv:
    try:
        data = json.loads(file.text)
    except ValueError as e:
        at = getattr(e, "lineno", None)
        where = f"{file.name}:{at}" if at else file.name
        raise EnvironmentSpecError(f"{where}: cannot parse Pipfile.lock (not valid JSON)") from None
    if not isinstance(data, dict):
        raise EnvironmentSpecError(f"{file.name}: cannot parse Pipfile.lock (not an object)")
    entries = _sections(data, ("default", "develop"), lambda s: f"{file.name} {s}")
    meta = data.get("_meta")
    requires = meta.get("requires") if isinstance(meta, dict) else None
    return Pipenv(tuple(entries), _python(requires, "python_full_version", "python_version"))


def _sections(
    data: dict[str, object], sections: tuple[str, ...], shown: Callable[[str], str]
) -> list[PyPI | Skipped | LocalPackage]:
    """The entries of each of `sections` that is a table, in order; `shown` names one."""
    entries: list[PyPI | Skipped | LocalPackage] = []
    for section in sections:
        table = data.get(section)
        if isinstance(table, dict):
            entries += _entries(table, shown(section), pin_key="version")
    return entries


def _entries(
    table: dict[str, object], shown: str, pin_key: str
) -> list[PyPI | Skipped | LocalPackage]:
    if len(table) > MAX_ENTRIES:
        raise EnvironmentSpecError(f"{shown}: more than {MAX_ENTRIES} entries")
    entries: list[PyPI | Skipped | LocalPackage] = []
    for i, (name, value) in enumerate(table.items(), start=1):
        where = f"{shown} entry {i}"
        if isinstance(value, dict) and "path" in value:
            path = value["path"]
            ok = isinstance(path, str) and _PATH.fullmatch(path)
            entries.append(LocalPackage(path, where) if ok else Skipped(where, "not understood"))
            continue
        if isinstance(value, dict) and any(k in value for k in ("git", "file", "hg", "svn")):
            entries.append(Skipped(where, "a git or URL source: not fetched"))
            continue
        pin = value.get(pin_key) if isinstance(value, dict) else value
        pin = "" if pin in (None, "*") else pin
        entry = parse_requirement(f"{name}{pin}" if isinstance(pin, str) else "!", where)
        entries.append(entry)
    return entries


def _python(requires: object, *keys: str) -> str:
    if isinstance(requires, dict):
        for key in keys:
            value = requires.get(key)
            if isinstance(value, str) and _PYTHON.fullmatch(value):
                return value
    return ""
