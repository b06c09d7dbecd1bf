"""repo2docker's postBuild and start, run in the session's real sandbox (local runtime).

postBuild runs once per commit and environment: a relaunch of the same commit gets
its files back without running it, a new commit runs it again.  start wraps Jupyter
and what it exports reaches the kernel; one that never execs Jupyter fails the launch
with a reason.  Scripts committed without their executable bit run as repo2docker
runs them; refused ones (not regular, a symlink out of the checkout) are named.
tests/test_attacks_postbuild.py tries what a hostile one would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import pytest
from launchkit import execute, git, make_repo, processes_mentioning
from webkit import Client, Server

from binder_lite import guix as guix_module
from binder_lite.errors import EnvironmentSpecError, JupyterError
from binder_lite.launch import detect, explain, launch, postbuild, runtime, sandbox, scripts
from binder_lite.launch import session as session_module
from binder_lite.launch.repofiles import RepoTree
from binder_lite.launch.session import Event, Isolation, Session
from binder_lite.site.model import Runtime, SessionNetwork

POSTBUILD = (
    "#!/bin/sh\n"
    "set -e\n"
    "echo building in $(pwd) as $(id -u)\n"
    "cat /proc/sys/kernel/random/uuid > built.txt\n"
    "rm README.md\n"
)
START = '#!/bin/sh\nexport FROM_START=started\nexec "$@"\n'
SESSION_ID = "0123456789abcdef"
SITE = "version: 1\nsite:\n  name: Scripts\n  slug: scripts\nbinder:\n  max_sessions: 4\n"
GUIX_SPEC = runtime.ServerSpec(
    port=None,
    base_url=f"/s/{SESSION_ID}/",
    kernel="guix",
    root_dir=runtime.CONTAINER_WORK_DIR,
    socket=f"{sandbox.RUN_DIR}/{sandbox.SOCKET_NAME}",
)


def repo_with(path: Path, files: dict[str, str], executable: tuple[str, ...]) -> Path:
    repo = make_repo(path, files)
    commit_modes(repo, executable)
    return repo


def commit_modes(repo: Path, executable: tuple[str, ...]) -> None:
    for name in executable:
        os.chmod(repo / name, 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", "scripts")


def launched(repo: Path, cache: Path, events: list[Event] | None = None, **kw: object) -> Session:
    return launch(
        f"file://{repo}",
        runtime_kind=Runtime.LOCAL,
        cache_dir=cache,
        isolation=Isolation(network=SessionNetwork.NONE),
        on_event=(events.append if events is not None else None),
        **kw,  # type: ignore[arg-type]
    )


def messages(events: list[Event]) -> list[str]:
    return [e.message for e in events]


def test_postbuild_runs_once_per_commit_and_start_wraps_jupyter(tmp_path: Path) -> None:
    files = {"binder/postBuild": POSTBUILD, "binder/start": START}
    repo = repo_with(tmp_path / "repo", files, ("binder/postBuild", "binder/start"))
    cache = tmp_path / "cache"
    first_events: list[Event] = []
    first = launched(repo, cache, first_events)
    try:
        shown = messages(first_events)
        assert "binder/postBuild: run in the sandbox (at most 15 minutes)" in shown
        assert "binder/postBuild: building in /notebooks as 1000" in shown
        assert "binder/start: run in the sandbox, before Jupyter" in shown
        built = (first.work_dir / "built.txt").read_text()
        assert not (first.work_dir / "README.md").exists()  # what it removed stays removed
        # start's environment reaches Jupyter and its kernels.
        seen = execute(first.base_url, first.token, "import os; os.environ['FROM_START']")
        assert seen == "'started'"
        assert "building in" in (first.session_dir / "postbuild.log").read_text()
    finally:
        first.stop()
    again_events: list[Event] = []
    again = launched(repo, cache, again_events)
    try:
        shown = messages(again_events)
        assert "binder/postBuild: already run for this commit; its files restored" in shown
        assert not any("building in" in m for m in shown)
        assert (again.work_dir / "built.txt").read_text() == built
        assert not (again.work_dir / "README.md").exists()
        # git still works on the restored checkout (its .git was left alone), and sees
        # what postBuild changed.
        status = execute(
            again.base_url,
            again.token,
            "import subprocess; subprocess.run(['git', 'status', '--porcelain'], "
            "capture_output=True, text=True, cwd='/notebooks').stdout",
        )
        assert "D README.md" in status and "?? built.txt" in status
    finally:
        again.stop()
    # A new commit changing postBuild runs it again.
    (repo / "binder" / "postBuild").write_text(POSTBUILD + "echo second version\n")
    commit_modes(repo, ("binder/postBuild",))
    changed_events: list[Event] = []
    changed = launched(repo, cache, changed_events)
    try:
        assert "binder/postBuild: second version" in messages(changed_events)
        assert (changed.work_dir / "built.txt").read_text() != built
    finally:
        changed.stop()


def test_a_failing_postbuild_fails_the_launch_with_its_last_lines(tmp_path: Path) -> None:
    script = "#!/bin/sh\nfor i in $(seq 1 60); do echo line $i; done\necho oops >&2\nexit 3\n"
    repo = repo_with(tmp_path / "repo", {"postBuild": script}, ("postBuild",))
    events: list[Event] = []
    with pytest.raises(postbuild.PostBuildError) as caught:
        launched(repo, tmp_path / "cache", events)
    message = str(caught.value)
    assert message.startswith("postBuild failed with status 3; the end of its output:\n")
    lines = message.splitlines()[1:]
    assert lines[-2:] == ["line 60", "oops"] and len(lines) == postbuild.TAIL_LINES
    assert events[-1].phase == "failed" and events[-1].message == message
    # Nothing was kept: the next launch runs it again.
    assert not list((tmp_path / "cache" / "postbuild").glob("*/files.tar"))


def test_a_start_that_never_execs_jupyter_fails_with_a_reason(tmp_path: Path) -> None:
    files = {"binder/start": "#!/bin/sh\necho not today\nexit 0\n"}
    repo = repo_with(tmp_path / "exits", files, ("binder/start",))
    with pytest.raises(JupyterError) as caught:
        launched(repo, tmp_path / "cache")
    assert "exited with status 0 before it was ready" in str(caught.value)
    assert 'binder/start runs in front of Jupyter: it must end with exec "$@"' in str(caught.value)
    # One that waits forever instead: the readiness wait ends it (bounded).
    files = {"binder/start": "#!/bin/sh\nexec sleep 600\n"}
    repo = repo_with(tmp_path / "sleeps", files, ("binder/start",))
    with pytest.raises(JupyterError) as caught:
        launched(repo, tmp_path / "cache", timeout=8)
    assert "did not answer" in str(caught.value)
    assert "binder/start runs in front of Jupyter" in str(caught.value)


def folder(path: Path) -> None:
    path.mkdir()
    (path / "x").write_text("x\n")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda repo: folder(repo / "postBuild"), "not a regular file"),
        (lambda repo: (repo / "start").symlink_to("/bin/true"), "a symlink that leaves"),
    ],
    ids=["directory", "symlink-out"],
)
def test_refused_scripts_are_named(
    tmp_path: Path, make: Callable[[Path], object], reason: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    make(repo)
    found = detect.script_reports(RepoTree(repo), PurePosixPath("."))
    assert len(found) == 1 and not found[0].read and reason in found[0].reason
    with pytest.raises(EnvironmentSpecError, match=reason):
        scripts.find(RepoTree(repo), PurePosixPath("."))
    # And so does a launch, before anything runs.
    (repo / "x").write_text("x")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    with pytest.raises(EnvironmentSpecError, match=reason):
        launched(repo, tmp_path / "cache")


def test_scripts_without_their_executable_bit_run_all_the_same(tmp_path: Path) -> None:
    """repo2docker makes both executable; many repositories made for mybinder.org
    never set the bit.  Their files' modes are left as committed."""
    files = {
        "binder/postBuild": "echo built > built.txt\n",  # no #!: /bin/sh
        "binder/start": '#!/bin/sh\nexport FROM_START=plain\nexec "$@"\n',
    }
    repo = repo_with(tmp_path / "repo", files, ())
    session = launched(repo, tmp_path / "cache")
    try:
        assert (session.work_dir / "built.txt").read_text() == "built\n"
        seen = execute(session.base_url, session.token, "import os; os.environ['FROM_START']")
        assert seen == "'plain'"
        assert not (session.work_dir / "binder" / "postBuild").stat().st_mode & 0o111
    finally:
        session.stop()


def test_explain_reports_both_scripts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".binder").mkdir(parents=True)
    for name in ("postBuild", "start"):
        (repo / ".binder" / name).write_text("#!/bin/sh\n")
        (repo / ".binder" / name).chmod(0o755)
    (repo / "postBuild").write_text("#!/bin/sh\n")
    text = explain.explain(detect.detect(repo)).splitlines()
    assert ".binder/postBuild: read, " + scripts.WHAT["postBuild"] in text
    assert ".binder/start: read, " + scripts.WHAT["start"] in text
    assert "postBuild: not read: the .binder/ folder is used instead, as in repo2docker" in text
    assert detect.detect(repo).origin == "no environment file found"


def test_in_a_guix_container_the_interpreter_is_found_on_the_path() -> None:
    def command(shebang: str) -> list[str]:
        script = scripts.Script("binder/postBuild", PurePosixPath("binder/postBuild"), "0", ())
        words = tuple(shebang.removeprefix("#!").split()) if shebang else ()
        return scripts.guix_command(
            scripts.Script(script.name, script.real, "0", words), "/notebooks"
        )[4:]

    assert command("#!/bin/bash") == ["/notebooks", "bash", "/notebooks/binder/postBuild"]
    assert command("#!/usr/bin/env python3") == [
        "/notebooks",
        "python3",
        "/notebooks/binder/postBuild",
    ]
    assert command("#!/bin/sh") == ["/notebooks", "/notebooks/binder/postBuild"]
    assert command("") == ["/notebooks", "/notebooks/binder/postBuild"]


@pytest.mark.guix
def test_the_guix_runtimes_commands_are_accepted_by_guix(guix: str, tmp_path: Path) -> None:
    """postBuild, and start in front of Jupyter, in the guix runtime: inside the Guix
    container with the session's manifest, in its bubblewrap sandbox.  Guix here has no
    substitutes and cannot build even coreutils in minutes, so the exact commands are
    checked with --dry-run (as tests/test_guix_launch.py does for Jupyter's)."""
    files = {
        "binder/postBuild": "#!/bin/bash\necho built > built.txt\n",
        "binder/start": '#!/usr/bin/env bash\nexec "$@"\n',
    }
    repo = repo_with(tmp_path / "repo", files, tuple(files))
    manifest = tmp_path / "manifest.scm"
    manifest.write_text('(specifications->manifest (list "coreutils" "bash"))\n')
    found = scripts.find(RepoTree(repo), PurePosixPath("binder"))
    assert found.postbuild is not None and found.start is not None
    (tmp_path / "session").mkdir()
    box = sandbox.Sandbox(SESSION_ID, tmp_path / "session", repo, SessionNetwork.NONE)
    work = runtime.CONTAINER_WORK_DIR
    post = session_module._guix_command(
        GUIX_SPEC, box, manifest, None, True, command=scripts.guix_command(found.postbuild, work)
    )
    shell = post[post.index("shell") - 1 :]
    assert shell[1:3] == ["shell", "--container"]
    assert shell[-3:] == [work, "bash", f"{work}/binder/postBuild"]
    assert not any(a.endswith(f"={sandbox.RUN_DIR}") for a in shell)  # no socket folder
    guix_module.dry_run_shell(post, sandbox.guix_environment({}))
    before = scripts.guix_command(found.start, work)
    start = session_module._guix_command(GUIX_SPEC, box, manifest, None, True, before)
    shell = start[start.index("shell") - 1 :]
    after = shell[shell.index("--") + 1 :]
    assert after[: len(before)] == before and after[len(before) : len(before) + 2] == [
        "jupyter",
        "notebook",
    ]
    guix_module.dry_run_shell(start, sandbox.guix_environment({}))


def test_the_services_progress_shows_both_scripts(tmp_path: Path) -> None:
    """Through `binder-lite serve` (BinderHub's event stream, which the launch page
    follows): what the scripts do, postBuild's output, and a failure's last lines."""
    (tmp_path / "site.yaml").write_text(SITE)
    files = {"binder/postBuild": POSTBUILD, "binder/start": START}
    repo = repo_with(tmp_path / "repo", files, ("binder/postBuild", "binder/start"))
    failing = repo_with(
        tmp_path / "failing", {"postBuild": "#!/bin/sh\necho no luck\nexit 2\n"}, ("postBuild",)
    )
    server = Server(tmp_path / "site.yaml", tmp_path / "state", ("--allow-local-repos",)).start()
    try:
        client = Client(server.url)
        events = client.events(f"/build/git/{quote(f'file://{repo}', safe='')}/HEAD")
        assert events[-1]["phase"] == "ready", events[-1]
        shown = [str(e.get("message", "")).strip() for e in events]
        assert "binder/postBuild: run in the sandbox (at most 15 minutes)" in shown
        assert "binder/postBuild: building in /notebooks as 1000" in shown
        assert "binder/start: run in the sandbox, before Jupyter" in shown
        events = client.events(f"/build/git/{quote(f'file://{failing}', safe='')}/HEAD")
        assert events[-1]["phase"] == "failed"
        assert "postBuild failed with status 2" in str(events[-1]["message"])
        assert "no luck" in str(events[-1]["message"])
    finally:
        server.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []
