"""The Guix tier of the launcher: the real Guix accepts what the guix runtime runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from launchkit import make_repo

from binder_lite import guix as guix_module
from binder_lite.errors import EnvironmentSpecError, GuixError
from binder_lite.launch import detect, launch, runtime, sandbox
from binder_lite.launch import session as session_module
from binder_lite.site.model import Runtime, SessionNetwork

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

SESSION_ID = "0123456789abcdef"
# How the guix runtime serves a session: on a socket inside the sandbox, not a port.
SPEC = runtime.ServerSpec(
    port=None,
    base_url=f"/s/{SESSION_ID}/",
    kernel="guix",
    root_dir=runtime.CONTAINER_WORK_DIR,
    socket=f"{sandbox.RUN_DIR}/{sandbox.SOCKET_NAME}",
)


def sandboxed_command(
    repo: Path, manifest: Path, network: SessionNetwork, channels: Path | None = None
) -> list[str]:
    """The exact command the guix runtime runs for a session: bubblewrap around
    `guix shell --container …`."""
    session_dir = repo.parent / "session"
    session_dir.mkdir(exist_ok=True)
    box = sandbox.Sandbox(SESSION_ID, session_dir, repo, network)
    return session_module._guix_command(SPEC, box, manifest, channels, boxed=True)


def check_command(argv: list[str], repo: Path, manifest: Path) -> list[str]:
    """What the launch dry-runs for `argv`: the same command, offline."""
    box = sandbox.Sandbox(SESSION_ID, repo.parent / "session", repo, SessionNetwork.OUTBOUND)
    return session_module._guix_check_command(SPEC, box, manifest, None, True, argv)


def unsandboxed_command(repo: Path, manifest: Path) -> list[str]:
    """`guix shell --container` run straight from the host, as before the sandbox."""
    spec = runtime.ServerSpec(
        port=8899, base_url="/", kernel="guix", root_dir=runtime.CONTAINER_WORK_DIR
    )
    return runtime.guix_argv(spec, runtime.GuixPaths(repo, manifest, None, None, network=True))


@pytest.mark.parametrize("kind", list(REPOS))
def test_runtime_command_is_accepted_by_guix(guix: str, tmp_path: Path, kind: str) -> None:
    """The exact sandboxed `guix shell --container …` argv of the guix runtime, with
    --dry-run, run as the service runs it: inside its bubblewrap sandbox."""
    repo = make_repo(tmp_path / "repo", REPOS[kind])
    env = detect.with_checked_names(detect.detect(repo), guix_module.available_packages)
    assert not [r for r in env.unavailable if r.guix is not None]
    manifest = tmp_path / "manifest.scm"
    manifest.write_text(env.manifest)
    network = SessionNetwork.NONE if kind != "default" else SessionNetwork.OUTBOUND
    argv = sandboxed_command(repo, manifest, network)
    assert argv[0].endswith("bwrap") and "--unshare-net" in argv
    shell = argv[argv.index("shell") - 1 :]  # guix, then its arguments
    assert shell[1:3] == ["shell", "--container"]
    assert ("--network" in shell) == (network is SessionNetwork.OUTBOUND)
    assert f"--share={sandbox.GUIX_STAGE}/run={sandbox.RUN_DIR}" in shell
    if network is SessionNetwork.OUTBOUND:
        assert "unreachable" in " ".join(argv)  # private ranges closed before Guix runs
        argv = check_command(argv, repo, manifest)
        assert "--network" not in argv
    # raises GuixError if Guix refuses any of it
    guix_module.dry_run_shell(argv, sandbox.guix_environment({}))


def test_unsandboxed_command_is_accepted_by_guix(guix: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", REPOS["requirements"])
    manifest = tmp_path / "manifest.scm"
    manifest.write_text(detect.detect(repo).manifest)
    argv = unsandboxed_command(repo, manifest)
    assert argv[1:5] == ["shell", "--container", "--network", "--no-cwd"]
    guix_module.dry_run_shell(argv)


def test_a_manifest_is_evaluated_where_it_reaches_nothing_of_the_host(
    guix: str, tmp_path: Path
) -> None:
    """manifest.scm is Guile code from a stranger: Guix evaluates it inside the session's
    sandbox, where the service's files are not, and what it writes stays there."""
    secret = tmp_path / "state" / "cookie-secret"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    marker = tmp_path / "state" / "written-by-a-manifest"
    repo = make_repo(
        tmp_path / "repo",
        {
            "manifest.scm": f"""\
(use-modules (ice-9 textual-ports))
(define secret
  (false-if-exception (call-with-input-file {str(secret)!r} get-string-all)))
(false-if-exception
  (call-with-output-file {str(marker)!r} (lambda (port) (display "here" port))))
(specifications->manifest
  (list (if secret "python-the-secret-was-readable" "python") "jupyter"))
""".replace("'", '"')
        },
    )
    argv = sandboxed_command(repo, repo / "manifest.scm", SessionNetwork.NONE)
    guix_module.dry_run_shell(argv, sandbox.guix_environment({}))
    assert not marker.exists()
    # The same manifest evaluated on the host (as before the sandbox) reads the secret.
    host = unsandboxed_command(repo, repo / "manifest.scm")
    with pytest.raises(GuixError, match="python-the-secret-was-readable"):
        guix_module.dry_run_shell(host)
    marker.unlink()


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
    repo = make_repo(
        tmp_path / "repo",
        {"manifest.scm": '(specifications->manifest (list "python-numpyy-typo"))\n'},
    )
    events = []
    with pytest.raises(EnvironmentSpecError) as info:
        launch(
            str(repo),
            runtime_kind=Runtime.GUIX,
            cache_dir=tmp_path / "cache",
            on_event=events.append,
        )
    message = str(info.value)
    assert message.startswith("Guix rejected the repository's environment:")
    assert "python-numpyy-typo" in message and "unknown package" in message
    assert events[-1].phase == "failed"
