"""The packages of the pinned Guix (1.5), as a snapshot shipped with binder-lite.

Generated manifests name Guix packages; a name is only used when the snapshot has it,
so a repository's file is mapped without a Guix at hand and without guessing.  The
snapshot is `guix package -A` reduced to names and versions, one name a line
("name<TAB>version version..."), written by scripts/guix-package-list; the Guix tier
checks that it matches the Guix in CI (tests/test_repo2docker.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cache
from importlib import resources

SNAPSHOT = "data/guix-packages.txt"
GUIX_VERSION = "1.5.0"  # the Guix the snapshot was taken from (its first line says so)


def snapshot_text(available: str, version: str) -> str:
    """The snapshot for `guix package -A` output `available` (name, version, outputs,
    location, tab-separated and padded), from Guix `version`."""
    versions: dict[str, set[str]] = {}
    for line in available.splitlines():
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) >= 2 and fields[0]:
            versions.setdefault(fields[0], set()).add(fields[1])
    lines = [f"# guix package -A of Guix {version}: name, versions"]
    lines += [f"{name}\t{' '.join(sorted(versions[name]))}" for name in sorted(versions)]
    return "\n".join(lines) + "\n"


def parse_snapshot(text: str) -> dict[str, tuple[str, ...]]:
    packages: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, versions = line.partition("\t")
            packages[name] = tuple(versions.split())
    return packages


@cache
def packages() -> Mapping[str, tuple[str, ...]]:
    """Every package of the pinned Guix, with its versions."""
    text = resources.files("binder_lite.launch").joinpath(SNAPSHOT).read_text("utf-8")
    return parse_snapshot(text)


def has(name: str) -> bool:
    return name in packages()


def version(name: str) -> str:
    """The newest version Guix has of `name` ("" if none), for notes on pins."""
    found = packages().get(name, ())
    return max(found, key=_version_key) if found else ""


def _version_key(v: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in v.replace("-", ".").split("."))


@cache
def _families() -> dict[str, list[str]]:
    """Names by their first dash-separated word (python, r, julia, ...): a missing
    python-x is compared with Python packages only, which keeps difflib quick."""
    families: dict[str, list[str]] = {}
    for name in packages():
        families.setdefault(name.split("-", 1)[0], []).append(name)
    return families


def closest(name: str, count: int = 3) -> tuple[str, ...]:
    """The Guix names most like `name` (for a name Guix lacks)."""
    family = name.split("-", 1)[0] if "-" in name else ""
    candidates = _families().get(family) or list(packages())
    return tuple(difflib.get_close_matches(name, candidates, n=count, cutoff=0.75))
