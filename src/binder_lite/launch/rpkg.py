"""R's install.R and DESCRIPTION, read as data.

install.R is a script repo2docker runs; here only the packages it installs are read:
quoted names in install.packages(), remotes:: / devtools:: install_cran(),
install_version(), install_github() (and gitlab, bitbucket), and BiocManager::install().
Comments are removed first, so a commented-out call installs nothing.  Names are
checked against R's package-name grammar before they are repeated.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from binder_lite.launch.repofiles import RepoFile
from binder_lite.launch.requirements import Skipped

R_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.]*")
_DESCRIPTION_FIELD = re.compile(r"^(?:Depends|Imports|LinkingTo):(.*(?:\n[ \t].*)*)", re.MULTILINE)
_CALL = re.compile(
    r"\b(install\.packages|install_cran|install_version|install_github|install_gitlab"
    r"|install_bitbucket|install_bioc|BiocManager\s*::\s*install)\s*\("
)
_ARGUMENT = re.compile(r"(?:([A-Za-z_.][A-Za-z0-9_.]*)\s*=\s*)?([\"'])([^\"'\n]{0,200})\2")
_POSITIONAL = {None, "pkgs", "package", "repo"}  # named arguments that name packages
_GIT_REPO = re.compile(
    r"[A-Za-z0-9_.-]+/(?P<repo>[A-Za-z][A-Za-z0-9.]*)(?:/[A-Za-z0-9_./-]+)?(?:@\S+)?"
)
MAX_CALL = 10_000  # characters of a call's arguments looked at


@dataclass(frozen=True)
class RPackage:
    name: str
    where: str
    how: str = ""  # "from GitHub", ... when not from CRAN or Bioconductor


def install_r_packages(file: RepoFile) -> tuple[list[RPackage], list[Skipped]]:
    text = _without_comments(file.text)
    lines = [i for i, c in enumerate(text) if c == "\n"]
    packages: list[RPackage] = []
    skipped: list[Skipped] = []
    calls = list(_CALL.finditer(text))
    for call, following in zip(calls, [*calls[1:], None][: len(calls)], strict=True):
        where = f"{file.name}:{bisect.bisect_left(lines, call.start()) + 1}"
        function = call[1].replace(" ", "")
        # Its arguments: up to the first ")" (names come before any nested call closes),
        # never past the next call, so that unclosed calls are not read again and again.
        stop = min(following.start() if following else len(text), call.end() + MAX_CALL)
        close = text.find(")", call.end(), stop)
        args = text[call.end() : close if close >= 0 else stop]
        git = function in ("install_github", "install_gitlab", "install_bitbucket")
        found = False
        for arg in _ARGUMENT.finditer(args):
            if arg[1] not in _POSITIONAL:
                continue
            if function == "install_version" and found:
                break  # its second string is the version
            found = True
            value = arg[3]
            if git:
                m = _GIT_REPO.fullmatch(value)
                name = m["repo"] if m else ""
                how = f"from {function.removeprefix('install_').capitalize()}"
            else:
                name, how = value, ""
            if R_NAME.fullmatch(name):
                packages.append(RPackage(name, where, how))
            else:
                skipped.append(Skipped(where, "not understood"))
    return packages, skipped


def _without_comments(text: str) -> str:
    """`text` with each line's comment blanked: from a `#` outside quotes to its end."""
    out: list[str] = []
    for line in text.split("\n"):
        quote = ""
        for i, c in enumerate(line):
            if quote:
                quote = "" if c == quote else quote
            elif c in "\"'":
                quote = c
            elif c == "#":
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def description_packages(file: RepoFile) -> tuple[list[RPackage], list[Skipped]]:
    """Package names of the Depends, Imports and LinkingTo fields."""
    names: list[RPackage] = []
    skipped: list[Skipped] = []
    for m in _DESCRIPTION_FIELD.finditer(file.text):
        first = file.text.count("\n", 0, m.start(1)) + 1
        # Version constraints may span lines: blank them, keeping the line breaks.
        value = re.sub(r"\([^()]*\)", lambda c: "\n" * c[0].count("\n"), m[1])
        line = first  # where the next item starts, counted as the items go by
        for item in value.split(","):
            name = item.strip()
            start = line + item[: len(item) - len(item.lstrip())].count("\n")
            line += item.count("\n")
            if R_NAME.fullmatch(name):
                names.append(RPackage(name, f"{file.name}:{start}"))
            elif name:
                skipped.append(Skipped(f"{file.name}:{start}", "not understood"))
    return names, skipped
