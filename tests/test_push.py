"""push_changes against a real `git http-backend`: what each kind of refusal says.
The forge's repository names hold "401" and "403" on purpose: a message must come
from git's verdict, never from digits that happen to be in a URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from launchkit import git, make_repo
from webkit import git_http_server

from binder_lite.web.push import Credential, PushError, PushSource, discard, push_changes

AUTHOR = ("Alice", "alice@example.org")


def clone_with_change(tmp_path: Path, forge: str, name: str, sid: str) -> PushSource:
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", f"{forge}/{name}", str(work))
    (work / "new.txt").write_text("new\n")
    return PushSource(sid, work, f"{forge}/{name}", git(work, "rev-parse", "HEAD"))


@pytest.fixture
def forge_root(tmp_path: Path) -> Path:
    root = tmp_path / "forge"
    root.mkdir()
    source = make_repo(tmp_path / "source")
    for name in ("team-401.git", "team-403.git"):
        git(tmp_path, "clone", "-q", "--bare", str(source), str(root / name))
        git(root / name, "config", "http.receivepack", "true")
    return root


def test_a_taken_branch_is_refused_as_such(forge_root: Path, tmp_path: Path) -> None:
    with git_http_server(forge_root, "u", lambda p: p == "right") as forge:
        source = clone_with_change(tmp_path, forge, "team-403.git", "s401403")
        base = source.base_commit
        right = Credential("u", "right")
        pushed = push_changes(source, AUTHOR, right, tmp_path)
        assert git(forge_root / "team-403.git", "rev-parse", pushed.branch) == pushed.commit
        # Somebody else commits on the branch; ours must not overwrite it.
        bare = forge_root / "team-403.git"
        theirs = git(bare, "commit-tree", f"{base}^{{tree}}", "-p", pushed.commit, "-m", "theirs")
        git(bare, "update-ref", f"refs/heads/{pushed.branch}", theirs)
        (source.files / "more.txt").write_text("more\n")
        with pytest.raises(PushError) as refused:
            push_changes(source, AUTHOR, right, tmp_path)
        assert str(refused.value) == (
            "the branch already exists with other changes; nothing was overwritten"
        )
        assert git(bare, "rev-parse", pushed.branch) == theirs


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (Credential("u", "wrong"), "the repository refused your credentials for this push"),
        (None, "the repository refused the push: log in, or ask for a push credential"),
    ],
)
def test_a_refused_credential_is_named(
    forge_root: Path, tmp_path: Path, credential: Credential | None, expected: str
) -> None:
    with git_http_server(forge_root, "u", lambda p: p == "right") as forge:
        source = clone_with_change(tmp_path, forge, "team-401.git", "s1")
        with pytest.raises(PushError) as refused:
            push_changes(source, AUTHOR, credential, tmp_path)
        assert str(refused.value) == expected
        assert "binder-lite/s1" not in git(forge_root / "team-401.git", "branch", "--list")


def test_pushes_of_one_session_follow_each_other(forge_root: Path, tmp_path: Path) -> None:
    """Each push commits on top of the last: the branch moves forward, never forced;
    the service's repository is private and goes away with the session."""
    with git_http_server(forge_root, "u", lambda p: p == "right") as forge:
        source = clone_with_change(tmp_path, forge, "team-403.git", "s2")
        state = tmp_path / "state"
        first = push_changes(source, AUTHOR, Credential("u", "right"), state)
        (source.files / "new.txt").unlink()
        (source.files / "run.sh").write_text("#!/bin/sh\n")
        (source.files / "run.sh").chmod(0o755)
        second = push_changes(source, AUTHOR, Credential("u", "right"), state)
    bare = forge_root / "team-403.git"
    assert git(bare, "rev-parse", f"{second.branch}^") == first.commit
    assert git(bare, "ls-tree", "--name-only", second.branch).split() == [
        "README.md",
        "index.ipynb",
        "run.sh",
    ]
    assert git(bare, "ls-tree", second.branch, "run.sh").startswith("100755 ")
    assert (state / "push").stat().st_mode & 0o777 == 0o700
    discard(state, "s2")
    assert not (state / "push" / "s2").exists()
