"""The Guix tier of the launcher: the real Guix accepts what the guix runtime runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from launchkit import make_repo

from binder_lite import guix as guix_module
from binder_lite.errors import EnvironmentSpecError
from binder_lite.launch import detect, launch, runtime
from binder_lite.site.model import Runtime

pytestmark = pytest.mark.guix

REPOS = {
    "requirements": {"requirements.txt": "numpy==1.26\npandas>=2\nscikit-learn\njupyterlab\n"},
    "setup.py": {"setup.py": "from setuptools import setup\nsetup(install_requires=['scipy'])\n"},
    "pyproject": {"pyproject.toml": "[project]\nname='x'\ndependencies=['matplotlib', 'PyYAML']\n"},
    "R": {"DESCRIPTION": "Package: x\nImports: dplyr, ggplot2\n"},
    "Julia": {"Project.toml": '[deps]\nJSON = "682c06a0-de6a-54ab-a142-c8b1cf79cde6"\n'},
    "default": {},
    "manifest": {"manifest.scm": '(specifications->manifest (list "python" "python-numpy"))\n'},
    "manifest-with-jupyter": {
        "binder/manifest.scm": '(specifications->manifest (list "jupyter" "python-ipykernel"))\n'
    },
}


@pytest.mark.parametrize("kind", list(REPOS))
def test_runtime_command_is_accepted_by_guix(guix: str, tmp_path: Path, kind: str) -> None:
    """The exact `guix shell --container …` argv of the guix runtime, with --dry-run."""
    repo = make_repo(tmp_path / "repo", REPOS[kind])
    env = detect.with_checked_names(detect.detect(repo), guix_module.available_packages)
    assert not [r for r in env.unavailable if r.guix is not None]
    manifest = tmp_path / "manifest.scm"
    manifest.write_text(env.manifest)
    spec = runtime.ServerSpec(port=8899, base_url="/", kernel="guix",
                              root_dir=runtime.CONTAINER_WORK_DIR)  # fmt: skip
    argv = runtime.guix_argv(spec, repo, manifest, None)
    assert argv[1:5] == ["shell", "--container", "--network", "--no-cwd"]
    guix_module.dry_run_shell(argv)  # raises GuixError if Guix refuses any of it


def test_generated_names_are_checked_against_guix(guix: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "numpy\nsurely-not-packaged-xyz\n"})
    env = detect.with_checked_names(detect.detect(repo), guix_module.available_packages)
    assert env.packages == ("python-numpy",)
    assert env.unavailable[0].note == "python-surely-not-packaged-xyz is not a Guix package"


def test_every_name_in_the_exception_table_exists(guix: str) -> None:
    from binder_lite.launch.names import PYPI_EXCEPTIONS

    wanted = [n for n in PYPI_EXCEPTIONS.values() if n] + list(detect.JUPYTER)
    wanted += [*detect.DEFAULT_PACKAGES, *detect.R_KERNEL, *detect.JULIA]
    assert set(wanted) <= guix_module.available_packages(wanted)


def test_a_manifest_guix_rejects_is_a_clear_error(guix: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {
        "manifest.scm": '(specifications->manifest (list "python-numpyy-typo"))\n'
    })  # fmt: skip
    events = []
    with pytest.raises(EnvironmentSpecError) as info:
        launch(str(repo), runtime_kind=Runtime.GUIX, cache_dir=tmp_path / "cache",
               on_event=events.append)  # fmt: skip
    message = str(info.value)
    assert message.startswith("Guix rejected the repository's environment:")
    assert "python-numpyy-typo" in message and "unknown package" in message
    assert events[-1].phase == "failed"
