"""Packages a session added, as its notebooks record them.

A notebook that was run keeps an `execution_count` in each code cell it ran; those
cells are read for the installs people type in Jupyter: `%pip install`, `!pip
install`, `%conda install`, R's `install.packages(...)`, `remotes::install_*` and
`BiocManager::install(...)`, and guix-jupyter's `;;guix environment NAME <- PKG...`.
Comment lines install nothing and are not read.

Notebooks are written by whatever ran in the session, so they are read as hostile
data: from the service's own copy of the session's files (never through a link),
bounded in number, size and cells, and every name kept has passed its ecosystem's
grammar; anything else is reported by notebook and cell, never repeated.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

from binder_lite.launch import conda, rpkg
from binder_lite.launch.repofiles import RepoFile
from binder_lite.launch.requirements import MAX_LINE, PyPI, Skipped, parse_requirement

MAX_NOTEBOOKS = 200  # notebooks read for one push
MAX_NOTEBOOK_BYTES = 16 << 20  # a larger notebook (images in its outputs) is not read
MAX_TOTAL_BYTES = 64 << 20  # notebooks read for one push, in all
MAX_REPORTED = 50  # lines, cells and notebooks reported as not read (then counted)
MAX_CELLS = 10_000  # cells read in one notebook
MAX_CELL_CHARS = 100_000  # a larger cell is not read
MAX_ADDED = 200  # packages kept for one push
MAX_ENTRIES = 100_000  # files and folders looked at while looking for notebooks
SKIPPED_FOLDERS = frozenset({".git", ".ipynb_checkpoints"})  # bookkeeping, not the work


BIOCONDUCTOR = "from Bioconductor"


class Ecosystem(StrEnum):
    PYPI = "PyPI"
    CONDA = "conda"
    R = "R"
    GUIX = "Guix"


@dataclass(frozen=True)
class Added:
    """One package a notebook installed; `text` is rebuilt from checked parts."""

    ecosystem: Ecosystem
    name: str  # e.g. "numpy", "ggplot2", "python-numpy"
    text: str  # as a requirement: "numpy==1.26", "numpy=1.26", "ggplot2", "glib:bin"
    where: str  # "analysis.ipynb, cell 3"
    how: str = ""  # "from GitHub", BIOCONDUCTOR, ... (R)


@dataclass(frozen=True)
class Reading:
    added: tuple[Added, ...] = ()
    skipped: tuple[Skipped, ...] = ()


# A line that installs: the command, then its arguments (up to a shell separator).
_PIP = re.compile(r"(?:%pip3?|!\s*(?:pip3?|python3?\s+-m\s+pip))\s+install\b(.*)")
_CONDA = re.compile(r"(?:[%!]\s*(?:conda|mamba|micromamba))\s+install\b(.*)")
_GUIX = re.compile(r";;guix\s+environment\s+\S+\s+<-(.*)")
_SEPARATOR = re.compile(r"[;&|#]")
# guix's package specification: name[@version][:output].
_GUIX_SPEC = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9+._-]*)(?:@[A-Za-z0-9][A-Za-z0-9.+_-]*)?(?::(?P<out>[a-z][a-z0-9-]*))?"
)
# Options whose value is the next word: it is no package name.
_PIP_VALUED = frozenset(
    [
        "-r",
        "--requirement",
        "-c",
        "--constraint",
        "-e",
        "--editable",
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "-t",
        "--target",
        "--prefix",
        "--root",
        "--platform",
        "--python-version",
        "--implementation",
        "--abi",
        "--no-binary",
        "--only-binary",
        "--progress-bar",
        "--src",
        "--upgrade-strategy",
        "--trusted-host",
        "--proxy",
        "--cert",
        "--client-cert",
        "--log",
        "--timeout",
        "--retries",
        "--exists-action",
        "--cache-dir",
    ]
)
_CONDA_VALUED = frozenset(["-c", "--channel", "-n", "--name", "-p", "--prefix", "--file"])


@dataclass
class _Found:
    added: list[Added] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    full: bool = False
    bytes_left: int = field(default_factory=lambda: MAX_TOTAL_BYTES)
    not_reported: int = 0

    def skip(self, skipped: Skipped) -> None:
        if len(self.skipped) < MAX_REPORTED:
            self.skipped.append(skipped)
        else:
            self.not_reported += 1

    def add(self, added: Added) -> None:
        if len(self.added) < MAX_ADDED:
            self.added.append(added)
        elif not self.full:
            self.full = True
            self.skip(Skipped(added.where, f"more than {MAX_ADDED} packages: not read"))


def read_notebooks(root: Path) -> Reading:
    """What the notebooks under `root` installed in cells that were run."""
    found = _Found()
    for notebook in _notebooks(root, found):
        _read_notebook(root, notebook, found)
    if found.not_reported:
        found.skipped.append(Skipped("...", f"{found.not_reported} more lines or cells not read"))
    return Reading(tuple(found.added), tuple(found.skipped))


def _notebooks(root: Path, found: _Found) -> list[PurePosixPath]:
    """Notebooks under `root`, sorted; links are neither followed nor read."""
    notebooks: list[PurePosixPath] = []
    seen = 0
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS)
        seen += len(folders) + len(files)
        if seen > MAX_ENTRIES:
            found.skip(Skipped(".", f"more than {MAX_ENTRIES} files: not all looked at"))
            break
        here = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in sorted(files):
            if name.endswith(".ipynb") and stat.S_ISREG(os.lstat(Path(folder, name)).st_mode):
                notebooks.append(here / name)
    if len(notebooks) > MAX_NOTEBOOKS:
        found.skip(Skipped(".", f"more than {MAX_NOTEBOOKS} notebooks: the rest not read"))
    return sorted(notebooks)[:MAX_NOTEBOOKS]


def _read_notebook(root: Path, notebook: PurePosixPath, found: _Found) -> None:
    shown = str(notebook)
    try:
        fd = os.open(root / notebook, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # gone, or a link since it was listed
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return
        data = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(data) > MAX_NOTEBOOK_BYTES:
        found.skip(Skipped(shown, f"larger than {MAX_NOTEBOOK_BYTES >> 20} MiB: not read"))
        return
    found.bytes_left -= len(data)
    if found.bytes_left < 0:
        found.skip(Skipped(shown, f"past {MAX_TOTAL_BYTES >> 20} MiB of notebooks: not read"))
        return
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        found.skip(Skipped(shown, "not a notebook (not JSON): not read"))
        return
    cells = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(cells, list):
        found.skip(Skipped(shown, "not a notebook in nbformat 4: not read"))
        return
    if len(cells) > MAX_CELLS:
        found.skip(Skipped(shown, f"more than {MAX_CELLS} cells: the rest not read"))
    for number, cell in enumerate(cells[:MAX_CELLS], start=1):
        source = _ran_code(cell)
        where = f"{shown}, cell {number}"
        if source is None:
            continue
        if len(source) > MAX_CELL_CHARS:
            found.skip(Skipped(where, f"longer than {MAX_CELL_CHARS} characters: not read"))
            continue
        _read_cell(source, where, notebook, root, found)


def _ran_code(cell: object) -> str | None:
    """The source of a code cell that was run, or None."""
    if not isinstance(cell, dict) or cell.get("cell_type") != "code":
        return None
    count = cell.get("execution_count")
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    source = cell.get("source")
    if isinstance(source, list) and all(isinstance(part, str) for part in source):
        # Bounded before joining: a list of many parts is as long as its text.
        return (
            "".join(source)
            if sum(map(len, source)) <= MAX_CELL_CHARS
            else "x" * (MAX_CELL_CHARS + 1)
        )
    return source if isinstance(source, str) else None


def _read_cell(source: str, where: str, notebook: PurePosixPath, root: Path, found: _Found) -> None:
    for line in source.split("\n"):
        line = line.strip()
        if (m := _GUIX.fullmatch(line)) is not None:
            _guix(m[1], where, found)
        elif line.startswith("#"):
            continue  # a comment installs nothing
        elif (m := _PIP.fullmatch(line)) is not None:
            for word in _words(m[1], _PIP_VALUED, where, found):
                _pip(word, where, found)
        elif (m := _CONDA.fullmatch(line)) is not None:
            for word in _words(m[1], _CONDA_VALUED, where, found):
                _conda(word, where, found)
    if "install" in source:
        cell = RepoFile(where, notebook, root / notebook, source)
        packages, skipped = rpkg.install_r_packages(cell)
        lines = source.split("\n")
        for p in packages:
            line = lines[int(p.where.rsplit(":", 1)[1]) - 1]
            bioconductor = "BiocManager" in line or "install_bioc" in line
            how = p.how or (BIOCONDUCTOR if bioconductor else "")
            found.add(Added(Ecosystem.R, p.name, p.name, where, how))
        for s in skipped:
            found.skip(Skipped(where, s.reason))


def _words(arguments: str, valued: frozenset[str], where: str, found: _Found) -> list[str]:
    """The package words of an install command's arguments: options, and the values
    of those that take one, left out."""
    arguments = _SEPARATOR.split(arguments, maxsplit=1)[0][:MAX_LINE]
    words: list[str] = []
    skip_next = False
    for word in arguments.split():
        if skip_next:
            skip_next = False
        elif word.startswith("-"):
            skip_next = word in valued
            if word in ("-r", "--requirement", "-e", "--editable", "--file"):
                found.skip(Skipped(where, f"{word}: a file or folder, not a package name"))
        else:
            words.append(
                word[1:-1] if len(word) > 1 and word[0] == word[-1] and word[0] in "'\"" else word
            )
    return words


def _pip(word: str, where: str, found: _Found) -> None:
    parsed = parse_requirement(word, where)
    if isinstance(parsed, PyPI):
        pin = parsed.pin if not parsed.url else ""
        text = PyPI(parsed.name, parsed.extras, pin).text
        found.add(Added(Ecosystem.PYPI, parsed.name, text, where))
    else:
        found.skip(Skipped(where, parsed.reason))


def _conda(word: str, where: str, found: _Found) -> None:
    parsed = conda.parse_dependency(word, where)
    if isinstance(parsed, conda.CondaDep):
        found.add(Added(Ecosystem.CONDA, parsed.name, parsed.text, where))
    else:
        found.skip(Skipped(where, parsed.reason))


def _guix(arguments: str, where: str, found: _Found) -> None:
    for word in arguments.split():
        m = _GUIX_SPEC.fullmatch(word)
        if m is None or word.startswith("-"):
            found.skip(Skipped(where, "not a Guix package name: skipped"))
            continue
        text = m["name"] + (f":{m['out']}" if m["out"] else "")
        found.add(Added(Ecosystem.GUIX, m["name"], text, where))
