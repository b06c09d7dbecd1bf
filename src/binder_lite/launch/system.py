"""runtime.txt and apt.txt, read as data.

runtime.txt is one line as repo2docker reads it: `name-version`, `name-version-date`
or `name-date` (python-3.10, r-4.3.2-2024-01-10, r-2025-07-01).  apt.txt is Debian
package names, one a line, `#` starting a comment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from binder_lite.launch.repofiles import RepoFile
from binder_lite.launch.requirements import MAX_ENTRIES, Skipped

_RUNTIME = re.compile(
    r"(?P<name>[a-z][a-z0-9]*)(?:-(?P<version>\d+(?:\.\d+)*))?(?:-(?P<date>\d{4}-\d\d-\d\d))?"
)
_DEBIAN = re.compile(r"[a-z0-9][a-z0-9.+-]*")


@dataclass(frozen=True)
class RuntimeTxt:
    name: str  # python, r, julia...
    version: str = ""
    date: str = ""  # a CRAN snapshot date, for R

    @property
    def text(self) -> str:
        return "-".join(p for p in (self.name, self.version, self.date) if p)

    @property
    def major(self) -> str:
        return self.version.split(".")[0]


def read_runtime(file: RepoFile) -> RuntimeTxt | Skipped:
    m = _RUNTIME.fullmatch(file.text.strip())
    if m is None or not (m["version"] or m["date"]):
        return Skipped(file.name, "not understood (name-version, name-version-date or name-date)")
    return RuntimeTxt(m["name"], m["version"] or "", m["date"] or "")


@dataclass(frozen=True)
class AptPackage:
    name: str
    where: str


def read_apt(file: RepoFile) -> tuple[list[AptPackage], list[Skipped]]:
    packages: list[AptPackage] = []
    skipped: list[Skipped] = []
    for number, line in enumerate(file.text.split("\n"), start=1):
        name = line.partition("#")[0].strip()
        if len(packages) + len(skipped) >= MAX_ENTRIES:
            skipped.append(Skipped(f"{file.name}:{number}", f"more than {MAX_ENTRIES} entries"))
            break
        if not name:
            continue
        if _DEBIAN.fullmatch(name):
            packages.append(AptPackage(name, f"{file.name}:{number}"))
        else:
            skipped.append(Skipped(f"{file.name}:{number}", "not understood"))
    return packages, skipped
