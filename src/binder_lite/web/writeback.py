"""What "Push changes" offers to write back: the packages a session's notebooks
installed, added to the environment file the repository already uses.

The file is the one `detect` reads: a manifest.scm gets Guix names (through
`launch.names`), a requirements.txt PyPI names, an environment.yml conda names in
`dependencies:` and PyPI names in its `pip:` list, an install.R `install.packages()`
(or `BiocManager::install()`) lines.  Pipfile, setup.py, pyproject.toml, DESCRIPTION
and Julia's files are not updated, and the person is told so.  A repository with no
environment file gets a manifest.scm holding the default environment plus what was
installed.  Names already there are not added again, and what the file says otherwise
is kept as written.

Everything is computed from the service's private copy of the session's files
(push.py), so that the diff shown and the commit made come from the same bytes:
`WriteBack.digest` ties the person's answer to the change they saw.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from binder_lite.errors import EnvironmentSpecError
from binder_lite.launch import conda, names, rpkg
from binder_lite.launch.detect import R_KERNEL, detect
from binder_lite.launch.guixpackages import has
from binder_lite.launch.repofiles import CONFIG_LIMIT, RepoFile, RepoTree
from binder_lite.launch.requirements import PyPI, parse_requirement, read_requirements
from binder_lite.web import manifestedit
from binder_lite.web.additions import BIOCONDUCTOR, Added, Ecosystem, read_notebooks

UPDATED = ("manifest.scm", "requirements.txt", "environment.yml", "install.R")
# Package files a repository may use that are not written to: the person is told.
NOT_UPDATED = frozenset(
    {
        "Pipfile",
        "Pipfile.lock",
        "requirements3.txt",
        "setup.py",
        "setup.cfg",
        "pyproject.toml",
        "DESCRIPTION",
        "Project.toml",
        "JuliaProject.toml",
        "Manifest.toml",
    }
)
NEW_MANIFEST = (
    ";; The environment of this repository, written by binder-lite when a session's\n"
    ";; changes were pushed: what binder-lite gives a repository without an\n"
    ";; environment file, and the packages the session's notebooks installed."
)


@dataclass(frozen=True)
class FileChange:
    path: str  # relative to the checkout, e.g. "binder/requirements.txt"
    old: str | None  # None: a new file
    new: str
    added: tuple[str, ...]  # the names added, as written

    @property
    def diff(self) -> str:
        before = [] if self.old is None else self.old.splitlines(keepends=True)
        after = self.new.splitlines(keepends=True)
        old_name = "/dev/null" if self.old is None else f"a/{self.path}"
        lines = difflib.unified_diff(before, after, old_name, f"b/{self.path}")
        return "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            for line in lines
        )


@dataclass(frozen=True)
class NotWritten:
    text: str  # the package, as checked
    where: str  # "analysis.ipynb, cell 3"
    reason: str


@dataclass(frozen=True)
class WriteBack:
    changes: tuple[FileChange, ...] = ()
    not_written: tuple[NotWritten, ...] = ()
    notes: tuple[str, ...] = ()  # files not updated, notebooks or cells not read

    @property
    def diff(self) -> str:
        return "".join(c.diff for c in self.changes)

    @property
    def digest(self) -> str:
        """Names this exact change: the answer to an offer carries it back."""
        data = [[c.path, c.old, c.new] for c in self.changes]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()


@dataclass
class _Target:
    """One file names go to, while the change is being made."""

    path: PurePosixPath
    kind: str  # one of UPDATED
    old: str | None
    present: set[str]
    specs: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)  # environment.yml's pip: list
    base: list[str] = field(default_factory=list)  # a new manifest's packages besides


def propose(checkout: Path) -> WriteBack:
    """What to write back for the notebooks under `checkout` (a private copy)."""
    reading = read_notebooks(checkout)
    notes = [f"{s.where}: {s.reason}" for s in reading.skipped]
    added = _unique(reading.added)
    if not added:
        return WriteBack(notes=tuple(notes))
    try:
        targets, kind_note = _targets(checkout)
    except EnvironmentSpecError as e:
        targets, kind_note = {}, f"the environment file is not updated: {e}"
    if kind_note:
        notes.append(kind_note)
    not_written = [n for a in added if (n := _route(a, targets)) is not None]
    changes: list[FileChange] = []
    for target in targets.values():
        try:
            change = _change(target)
        except (manifestedit.ManifestSyntaxError, _LayoutError) as e:
            notes.append(f"{target.path}: not updated: {e}")
            continue
        if change is not None:
            changes.append(change)
    return WriteBack(tuple(changes), tuple(not_written), tuple(notes))


def apply(checkout: Path, write_back: WriteBack) -> None:
    """Write the changes into `checkout`, through no link."""
    for change in write_back.changes:
        mode = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        mode |= os.O_CREAT | os.O_EXCL if change.old is None else 0
        with open(_open_in(checkout, change.path, mode), "w", encoding="utf-8") as f:
            f.write(change.new)


def current(checkout: Path, path: str) -> str | None:
    """The text of `path` in `checkout`, read through no link; None when it is not
    there, or not a readable regular text file."""
    try:
        fd = _open_in(checkout, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(CONFIG_LIMIT + 1)
    try:
        return data.decode() if len(data) <= CONFIG_LIMIT else None
    except UnicodeDecodeError:
        return None


def _open_in(checkout: Path, path: str, mode: int) -> int:
    """A file descriptor for `path` below `checkout`, each folder opened relative to
    its parent without following links."""
    *folders, name = PurePosixPath(path).parts
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(checkout, flags)
    try:
        for folder in folders:
            inner = os.open(folder, flags, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(name, mode, 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def _unique(added: tuple[Added, ...]) -> list[Added]:
    seen: set[tuple[Ecosystem, str]] = set()
    out = []
    for a in added:
        key = (a.ecosystem, names.normalise_pypi(a.name))
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


# -- which file ---------------------------------------------------------------------


def _targets(checkout: Path) -> tuple[dict[str, _Target], str]:
    """The files names go to, by kind, and a note on what is not updated."""
    env = detect(checkout)
    tree = RepoTree(checkout)
    read = [PurePosixPath(f.name) for f in env.files if f.read]
    where = PurePosixPath(env.config_dir.relative_to(checkout).as_posix())
    if env.kind == "manifest":
        return {"manifest.scm": _target(tree, where / "manifest.scm", "manifest.scm")}, ""
    if env.kind == "default":
        path = where / "manifest.scm"
        base = list(env.packages)  # the default environment the repository had
        return {"manifest.scm": _Target(path, "manifest.scm", None, set(base), base=base)}, ""
    targets: dict[str, _Target] = {}
    for path in read:
        kind = "environment.yml" if path.name == "environment.yaml" else path.name
        if kind in UPDATED and kind not in targets:
            targets[kind] = _target(tree, path, kind)
    others = sorted(str(p) for p in read if p.name in NOT_UPDATED)
    note = ""
    if others:
        note = (
            f"{', '.join(others)}: not updated; binder-lite writes packages into "
            f"{', '.join(UPDATED)} only"
        )
    return targets, note


class _LayoutError(ValueError):
    """A file written in a way binder-lite does not edit."""


def _target(tree: RepoTree, path: PurePosixPath, kind: str) -> _Target:
    real = tree.resolve(path)
    if real != path:
        raise EnvironmentSpecError(f"{path} is a symlink; it is not written through")
    file = tree.read(path)
    if file is None:
        raise EnvironmentSpecError(f"{path} cannot be read")
    return _Target(path, kind, file.text, _present(tree, file, kind))


def _present(tree: RepoTree, file: RepoFile, kind: str) -> set[str]:
    """The names already in the file, normalised the way they are compared."""
    if kind == "manifest.scm":
        try:
            return manifestedit.present(file.text)
        except manifestedit.ManifestSyntaxError:
            return set()  # reported when the file is edited
    if kind == "requirements.txt":
        parsed = read_requirements(tree, str(file.name))
        return {names.normalise_pypi(p.name) for p in parsed.packages} if parsed else set()
    if kind == "install.R":
        return {p.name for p in rpkg.install_r_packages(file)[0]}
    environment = conda.read_environment(file)
    pip = [parse_requirement(line, where) for where, line in environment.pip]
    return {d.name.lower() for d in environment.deps} | {
        "pip:" + names.normalise_pypi(p.name) for p in pip if isinstance(p, PyPI)
    }


# -- which name ---------------------------------------------------------------------


def _route(added: Added, targets: dict[str, _Target]) -> NotWritten | None:
    """Put `added` in the target that takes it, under the name that target uses; or
    say why it is not written."""
    if not targets:
        return NotWritten(added.text, added.where, "no environment file is updated")
    if "manifest.scm" in targets:
        return _to_manifest(added, targets["manifest.scm"])
    eco = added.ecosystem
    if eco is Ecosystem.R and "install.R" in targets:
        return _to_install_r(added, targets["install.R"])
    if eco is Ecosystem.R and "environment.yml" in targets:
        name = "r-" + added.name.lower()
        return _put(targets["environment.yml"], name, name)
    if eco is Ecosystem.PYPI and "environment.yml" in targets:
        key = "pip:" + names.normalise_pypi(added.name)
        return _put(targets["environment.yml"], key, added.text, pip=True)
    if eco is Ecosystem.CONDA and "environment.yml" in targets:
        return _put(targets["environment.yml"], added.name.lower(), added.text)
    if eco is Ecosystem.PYPI and "requirements.txt" in targets:
        return _put(targets["requirements.txt"], names.normalise_pypi(added.name), added.text)
    files = [str(t.path) for t in targets.values()]
    verb = "does" if len(files) == 1 else "do"
    how = f" ({added.how})" if added.how else ""
    reason = f"{' and '.join(files)} {verb} not list {added.ecosystem} packages{how}"
    return NotWritten(added.text, added.where, reason)


def _to_install_r(added: Added, target: _Target) -> NotWritten | None:
    # The name passed R's package-name grammar: it needs no escaping in an R string.
    if added.how == BIOCONDUCTOR:
        return _put(target, added.name, f'BiocManager::install("{added.name}")')
    if added.how:
        reason = f"installed {added.how}: binder-lite does not write that call to install.R"
        return NotWritten(added.text, added.where, reason)
    return _put(target, added.name, f'install.packages("{added.name}")')


def _to_manifest(added: Added, target: _Target) -> NotWritten | None:
    if added.ecosystem is Ecosystem.GUIX:
        found = names.Found(added.name) if has(added.name) else names.Found(None, (added.name,))
        spec = added.text
    else:
        lookup = {Ecosystem.PYPI: names.pypi, Ecosystem.CONDA: names.conda, Ecosystem.R: names.r}
        found = lookup[added.ecosystem](added.name)
        spec = found.guix or ""
    if found.guix is None:
        reason = found.reason or f"no Guix package ({', '.join(found.tried)} looked for)"
        return NotWritten(added.text, added.where, reason)
    return _put(target, found.guix, spec)


def _put(target: _Target, key: str, text: str, pip: bool = False) -> NotWritten | None:
    """Add `text` under `key` unless the file has it; None: nothing to report."""
    if key not in target.present:
        target.present.add(key)
        (target.pip if pip else target.specs).append(text)
    return None


# -- the change ---------------------------------------------------------------------


def _change(target: _Target) -> FileChange | None:
    if not target.specs and not target.pip:
        return None
    old, specs = target.old, target.specs
    if target.kind == "manifest.scm":
        new = (
            manifestedit.add(old, specs) if old is not None else _new_manifest(target.base + specs)
        )
    elif target.kind in ("requirements.txt", "install.R"):  # install.R's specs are calls
        new = _append(old or "", [f"{s}\n" for s in specs])
    else:
        new = _environment(old or "", target.path, specs, target.pip)
    return FileChange(str(target.path), old, new, (*specs, *target.pip))


def _new_manifest(specs: list[str]) -> str:
    # R packages are of no use without R's kernel, which the default environment lacks.
    kernel = (
        [k for k in R_KERNEL if k not in specs] if any(s.startswith("r-") for s in specs) else []
    )
    return manifestedit.new_manifest(specs + kernel, NEW_MANIFEST)


def _append(text: str, lines: list[str]) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(lines)


_KEY = re.compile(r"(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*):\s*(?:#.*)?$")
_ITEM = re.compile(r"(?P<indent> *)- +(?P<value>.*)$")


def _environment(
    text: str, path: PurePosixPath, conda_specs: list[str], pip_specs: list[str]
) -> str:
    """environment.yml with the conda names added under `dependencies:` and the PyPI
    names under its `- pip:` list, in block style, each indented as its neighbours;
    checked by reading the result back."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if _top_key(line) == "dependencies"), None)
    if start is None:
        lines.append("dependencies:\n")
        start = len(lines) - 1
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " -#"):
        end += 1
    block = lines[start + 1 : end]
    items = [(i, m) for i, line in enumerate(block) if (m := _ITEM.match(line.rstrip("\n")))]
    if (
        block
        and not items
        and any(line.strip() and not line.lstrip().startswith("#") for line in block)
    ):
        raise _LayoutError("its dependencies are not a block list")
    indent = items[0][1]["indent"] if items else "  "
    top_items = [(i, m) for i, m in items if m["indent"] == indent]
    pip_at = next((i for i, m in top_items if m["value"].rstrip() == "pip:"), None)
    last = (top_items[-1][0] + 1) if top_items else 0
    while last < len(block) and block[last].startswith(indent + " "):
        last += 1  # the nested lines of the last item (its pip: list)
    new_block = list(block)
    if pip_specs and pip_at is not None:
        nested = pip_at + 1
        pip_indent = indent + "  "
        while (
            nested < len(block)
            and (m := _ITEM.match(block[nested].rstrip("\n")))
            and len(m["indent"]) > len(indent)
        ):
            pip_indent = m["indent"]
            nested += 1
        new_block[nested:nested] = [f"{pip_indent}- {s}\n" for s in pip_specs]
        if nested <= last:
            last += len(pip_specs)
    new_block[last:last] = [f"{indent}- {s}\n" for s in conda_specs]
    if pip_specs and pip_at is None:
        new_block[last + len(conda_specs) : last + len(conda_specs)] = [
            f"{indent}- pip:\n",
            *[f"{indent}  - {s}\n" for s in pip_specs],
        ]
    new = "".join(lines[: start + 1] + new_block + lines[end:])
    _check_environment(text, new, path, conda_specs, pip_specs)
    return new


def _top_key(line: str) -> str | None:
    m = _KEY.match(line.rstrip("\n"))
    return m["key"] if m and not m["indent"] else None


def _check_environment(
    old: str, new: str, path: PurePosixPath, conda_specs: list[str], pip_specs: list[str]
) -> None:
    def read(text: str) -> conda.CondaEnvironment:
        return conda.read_environment(RepoFile(str(path), path, Path(), text))

    try:
        before, after = read(old), read(new)
    except EnvironmentSpecError:
        raise _LayoutError("its layout is not one binder-lite edits") from None
    if [d.text for d in after.deps] != [d.text for d in before.deps] + conda_specs or [
        line for _, line in after.pip
    ] != [line for _, line in before.pip] + pip_specs:
        raise _LayoutError("its layout is not one binder-lite edits")
