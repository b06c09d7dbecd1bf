"""pip requirements, read as data.

What a requirements file names is shown back to people (progress events, the
provenance page, the generated manifest's comments), so only what passed a strict
grammar is ever repeated: a project name, its extras and version specifiers.  A line
that did not pass is reported by file and line number, never quoted: it could be
anything, a host secret spliced in included.  `-r`/`-c` includes are followed only to
files inside the checkout (see repofiles), with bounded depth and count.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from binder_lite.launch.repofiles import OUTSIDE, RepoFile, RepositoryFileError, RepoTree

MAX_DEPTH = 5  # includes within includes
MAX_FILES = 20  # files read for one requirements.txt, includes counted
# Entries (packages and skipped lines) in one environment: each becomes an event.
MAX_ENTRIES = 1000
# Longer lines are not parsed: the grammar's regular expressions must stay cheap.
MAX_LINE = 1000

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPEC = r"(?:~=|===|==|!=|<=|>=|<|>)\s*[A-Za-z0-9_.*+!-]+"
_REQUIREMENT = re.compile(
    rf"(?P<name>{_NAME})\s*"
    rf"(?:\[\s*(?P<extras>{_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?\s*"
    rf"(?:(?P<spec>{_SPEC}(?:\s*,\s*{_SPEC})*)|\(\s*(?P<pspec>{_SPEC}(?:\s*,\s*{_SPEC})*)\s*\)"
    rf"|@\s*(?P<url>\S+))?\s*"
    r"(?:;.*)?"  # an environment marker: not evaluated, not repeated
)
_OPTION = re.compile(r"(--[A-Za-z][A-Za-z-]*|-[A-Za-z])(?:=|\s*)(.*)")

# pip options that include another file: -r adds requirements, -c only constrains them.
INCLUDES = {"-r": "-r", "--requirement": "-r", "-c": "-c", "--constraint": "-c"}
# pip options that say how to install, not what: meaningless for Guix packages.
IGNORED_OPTIONS = frozenset(
    {
        "-e",
        "--editable",
        "-i",
        "--index-url",
        "--extra-index-url",
        "--no-index",
        "-f",
        "--find-links",
        "--pre",
        "--prefer-binary",
        "--only-binary",
        "--no-binary",
        "--require-hashes",
        "--trusted-host",
        "--use-feature",
        "--hash",
        "-Z",
        "--always-unzip",
        "--use-pep517",
        "--no-use-pep517",
        "--config-settings",
        "--global-option",
    }
)
# Options pip allows after a requirement on its line.
PER_REQUIREMENT = frozenset({"--hash", "--config-settings", "--global-option", "--install-option"})


@dataclass(frozen=True)
class Skipped:
    """A line (or entry) that gave no package, and why, in binder-lite's words."""

    where: str  # e.g. "requirements.txt:3"
    reason: str


@dataclass(frozen=True)
class PyPI:
    """A requirement that passed the grammar; `text` is rebuilt from checked parts."""

    name: str
    extras: tuple[str, ...] = ()
    pin: str = ""  # version specifiers, e.g. "==1.26,<2"
    url: bool = False  # `name @ URL`: the URL is not used (nor repeated)

    @property
    def text(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.name}{extras}{self.pin}"


@dataclass
class Parsed:
    packages: list[PyPI] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files: int = 0


def parse_requirement(text: str, where: str) -> PyPI | Skipped:
    """One PEP 508 requirement (a common subset), or why it gave no package."""
    if len(text) > MAX_LINE:
        return Skipped(where, f"not understood (longer than {MAX_LINE} characters)")
    # One space for each run of white space: the grammar then cannot backtrack much.
    text = " ".join(text.split())
    if "://" in text.split("@", 1)[0] or text.startswith((".", "/", "~")):
        return Skipped(where, "a URL or path, not a package name: skipped")
    m = _REQUIREMENT.fullmatch(text)
    if m is None:
        return Skipped(where, "not understood")
    extras = tuple(re.split(r"\s*,\s*", m["extras"])) if m["extras"] else ()
    spec = m["spec"] or m["pspec"] or ""
    return PyPI(m["name"], extras, re.sub(r"\s+", "", spec), url=bool(m["url"]))


def read_requirements(tree: RepoTree, name: str) -> Parsed | None:
    """The requirements in `name` (relative to the checkout) and its includes; None
    when there is no such file.  Raises RepositoryFileError for what is refused."""
    top = tree.read(name)
    if top is None:
        return None
    parsed = Parsed(files=1)
    _read_file(_Reading(tree, top, parsed, stack=(top.real,), constraints=False), name)
    return parsed


@dataclass(frozen=True)
class _Reading:
    """One requirements file being read: where its lines go, and how it was reached."""

    tree: RepoTree
    file: RepoFile
    parsed: Parsed  # shared by the file and its includes
    stack: tuple[PurePosixPath, ...]  # the files including this one, and it
    constraints: bool  # reached through -c: its requirements only constrain


def _read_file(reading: _Reading, shown: str) -> None:
    for number, line in _logical_lines(reading.file.text):
        _line(reading, f"{shown}:{number}", line)


def read_pip_lines(tree: RepoTree, file: RepoFile, lines: list[tuple[str, str]]) -> Parsed:
    """Requirement lines found inside another file (environment.yml's `pip:` list),
    each with where it is; `-r` includes are relative to `file`."""
    parsed = Parsed(files=1)
    reading = _Reading(tree, file, parsed, (file.real,), False)
    for where, line in lines:
        _line(reading, where, _without_comment(line).strip())
    return parsed


def _line(reading: _Reading, where: str, line: str) -> None:
    parsed = reading.parsed
    if len(parsed.packages) + len(parsed.skipped) >= MAX_ENTRIES:
        raise RepositoryFileError(
            where, f"more than {MAX_ENTRIES} entries; binder-lite reads at most that many"
        )
    if len(line) > MAX_LINE:
        parsed.skipped.append(Skipped(where, f"not understood (longer than {MAX_LINE} characters)"))
        return
    line = " ".join(line.split())
    if not line:
        return
    if line.startswith("-"):
        _option(reading, where, line)
        return
    requirement, options = _split_options(line)
    entry = parse_requirement(requirement, where)
    if isinstance(entry, PyPI) and not _per_requirement_options_ok(options):
        entry = Skipped(where, "not understood")
    if isinstance(entry, Skipped):
        parsed.skipped.append(entry)
    elif not reading.constraints:
        parsed.packages.append(entry)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each non-empty line, comments removed and lines
    ending in a backslash joined, as pip reads them.  Numbered by "\\n", as editors do."""
    lines: list[tuple[int, str]] = []
    start = 1
    parts: list[str] = []  # the logical line being joined
    for number, raw in enumerate(text.split("\n"), start=1):
        if not parts:
            start = number
        raw = raw.removesuffix("\r")
        if raw.endswith("\\"):
            parts.append(raw[:-1])
            continue
        parts.append(raw)
        line = _without_comment("".join(parts)).strip()
        parts = []
        if line:
            lines.append((start, line))
    if parts and (line := _without_comment("".join(parts)).strip()):
        lines.append((start, line))  # the last line ended in a backslash
    return lines


def _without_comment(line: str) -> str:
    """`line` before a `#` that starts it or follows white space (pip's rule), found
    without a regular expression: one with `\\s+#` is quadratic on long blank runs."""
    at = line.find("#")
    while at > 0 and not line[at - 1].isspace():
        at = line.find("#", at + 1)
    return line if at < 0 else line[:at]


def _split_options(line: str) -> tuple[str, str]:
    """A requirement and the options after it (`numpy==1 --hash=sha256:...`)."""
    m = re.search(r"\s+--", line)
    return (line[: m.start()], line[m.start() :]) if m else (line, "")


def _per_requirement_options_ok(options: str) -> bool:
    return all(
        token.split("=", 1)[0] in PER_REQUIREMENT
        for token in options.split()
        if token.startswith("-")
    )


def _option(reading: _Reading, where: str, line: str) -> None:
    parsed = reading.parsed
    m = _OPTION.fullmatch(line)
    option = m[1] if m else ""
    if option in INCLUDES:
        include = INCLUDES[option]
        constraints = reading.constraints or include == "-c"
        target = m[2].strip() if m else ""
        _include(dataclasses.replace(reading, constraints=constraints), where, include, target)
    elif option in IGNORED_OPTIONS:
        parsed.skipped.append(Skipped(where, f"option {option} ignored (Guix packages are used)"))
    else:
        parsed.skipped.append(Skipped(where, "not understood"))


def _include(reading: _Reading, where: str, option: str, target: str) -> None:
    """Follow `option target` from the file being read: only to a file inside the checkout."""
    parsed, stack = reading.parsed, reading.stack
    if not target or re.search(r"\s", target):
        parsed.skipped.append(Skipped(where, "not understood"))
        return
    if "://" in target:
        raise RepositoryFileError(
            where, f"{option}: a URL is not fetched; only files inside the repository are read"
        )
    if target.startswith("/"):
        raise RepositoryFileError(where, f"{option}: {OUTSIDE}")
    if len(stack) > MAX_DEPTH:
        raise RepositoryFileError(where, f"{option}: includes nested more than {MAX_DEPTH} deep")
    if parsed.files >= MAX_FILES:
        raise RepositoryFileError(where, f"{option}: more than {MAX_FILES} requirements files")
    try:
        nested = reading.tree.read(reading.file.real.parent / target)
    except RepositoryFileError as e:
        # Named by line number: the path written there is not repeated.
        raise RepositoryFileError(where, f"{option}: {e.reason}") from None
    if nested is None:
        raise RepositoryFileError(where, f"{option}: no such file in the repository")
    if nested.real in stack:
        raise RepositoryFileError(where, f"{option}: {nested.real} includes itself (a cycle)")
    parsed.files += 1
    if reading.constraints and option == "-c":
        note = f"constraints in {nested.real} not applied (Guix has one version per channel)"
        parsed.skipped.append(Skipped(where, note))
    _read_file(
        dataclasses.replace(reading, file=nested, stack=(*stack, nested.real)), str(nested.real)
    )
