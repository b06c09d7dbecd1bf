"""repo2docker's own test repositories as a corpus: what binder-lite makes of each
(tests/fixtures/repo2docker, with what repo2docker would install in expected.yaml),
and, in the Guix tier, the real Guix evaluating every manifest and the package
snapshot matching the Guix at hand."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import pytest
import yaml

from binder_lite import guix as guix_module
from binder_lite import run
from binder_lite.launch import guixpackages, names
from binder_lite.launch.detect import Environment, detect

CORPUS = Path(__file__).parent / "fixtures" / "repo2docker"
EXPECTED: dict[str, dict[str, object]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
NOT_NEEDED = ("missing", "none")


def checkout(name: str, tmp_path: Path) -> Path:
    """A copy of fixture `name` (an empty folder for a fixture with no files)."""
    repo = tmp_path / "repo"
    if (CORPUS / name).is_dir():
        shutil.copytree(CORPUS / name, repo)
    else:
        repo.mkdir()
    return repo


@cache
def detected(name: str) -> Environment:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return detect(checkout(name, Path(tmp)))


def deps(name: str) -> dict[str, str]:
    return dict(EXPECTED[name].get("deps") or {})  # type: ignore[call-overload]


def outcome(env: Environment, source: str, expected: str) -> bool:
    """Whether `source` came out as `expected` (a Guix name, or reported missing)."""
    found = [r for r in env.requirements if r.source == source]
    if not found:
        return False
    if expected in NOT_NEEDED:
        return all(r.guix is None and r.note for r in found)
    return any(r.guix == expected for r in found) and expected in env.packages


def test_the_corpus_is_repo2dockers_fifty_repositories() -> None:
    assert len(EXPECTED) == 50
    assert "BSD 3-Clause" in (CORPUS / "README.md").read_text()


def test_at_least_95_percent_of_dependencies_come_out_right() -> None:
    results = {
        (name, source): outcome(detected(name), source, guix)
        for name in EXPECTED
        for source, guix in deps(name).items()
    }
    wrong = sorted(k for k, ok in results.items() if not ok)
    assert len(results) >= 90
    assert sum(results.values()) / len(results) >= 0.95, wrong


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture(name: str) -> None:
    """The environment repo2docker's buildpack order picks, nothing repo2docker would
    not install, and every file of the fixture reported, read or not."""
    env = detected(name)
    assert env.kind == EXPECTED[name]["kind"]
    wanted = set(deps(name)) | {
        r.source for r in env.requirements if r.note == "default environment"
    }
    assert {r.source for r in env.requirements} <= wanted
    reported = {f.name: f for f in env.files}
    fixture = CORPUS / name
    files = [p for p in fixture.rglob("*") if p.is_file()] if fixture.is_dir() else []
    for path in files:
        shown = str(path.relative_to(fixture))
        assert shown in reported, f"{shown} is not reported"
        if not reported[shown].read:
            assert reported[shown].reason.startswith(("not read", "not supported", "a script"))
            assert any(s.where == shown for s in env.skipped)  # on the command line and the web
    for shown in EXPECTED[name].get("not_read") or ():  # type: ignore[attr-defined]
        assert not reported[shown].read and reported[shown].reason.startswith("not read")


def test_what_repo2docker_would_not_install_is_not_installed() -> None:
    """repo2docker's tests that check a package is *not* installed."""
    assert "python-numpy" not in detected("pipfile/pipfile-lock").packages  # only in Pipfile
    assert "python-numpy" not in detected("pipfile/requirements-txt").packages
    assert "python-requests" not in detected("pipfile/environment-yml").packages
    conda = detected("conda/py310-requirements-file").requirements
    assert "there" not in {r.source for r in conda}
    implicit = detected("pipfile/setup-py-implicit")
    assert "pypi-pkg-test==0.0.4" not in {r.source for r in implicit.requirements}


def test_missing_names_come_with_the_closest_guix_names() -> None:
    env = detected("venv/apt-packages")
    unp = next(r for r in env.requirements if r.source == "unp")
    assert unp.guix is None and unp.closest and all(guixpackages.has(c) for c in unp.closest)
    assert "(closest: " in env.manifest


def test_every_table_name_is_in_the_snapshot() -> None:
    tables = (names.PYPI_EXCEPTIONS, names.CONDA_ALIASES, names.DEBIAN_ALIASES)
    wanted = {v for table in tables for v in table.values() if v}
    assert {n for n in wanted if not guixpackages.has(n)} == set()


@pytest.mark.guix
def test_the_snapshot_matches_the_guix_at_hand(guix: str) -> None:
    """scripts/guix-package-list made the snapshot from this Guix (1.5)."""
    version = run.run([guix, "--version"]).splitlines()[0].split()[-1]
    assert version == guixpackages.GUIX_VERSION
    fresh = guixpackages.snapshot_text(run.run([guix, "package", "-A"]), version)
    shipped = (Path(guixpackages.__file__).parent / guixpackages.SNAPSHOT).read_text()
    assert fresh == shipped, "the snapshot is stale: run scripts/guix-package-list"


@pytest.mark.guix
def test_guix_accepts_every_generated_manifest(guix: str, tmp_path: Path) -> None:
    """`guix shell -n -m A.scm -m B.scm …`: Guix evaluates each fixture's manifest (one
    a package set) and checks every name in them, in one run instead of fifty; an
    unknown package in any of them fails the run, naming it."""
    by_packages: dict[tuple[str, ...], str] = {}
    for name in sorted(EXPECTED):
        by_packages.setdefault(detected(name).packages, name)
    argv = [guix, "shell"]
    for name in by_packages.values():
        manifest = tmp_path / f"{name.replace('/', '-')}.scm"
        manifest.write_text(detected(name).manifest)
        argv += ["-m", str(manifest)]
    assert len(by_packages) > 10
    guix_module.dry_run_shell(argv)
