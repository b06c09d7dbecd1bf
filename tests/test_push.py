"""push_changes against a real `git http-backend`: what each kind of refusal says.
The forge's repository names hold "401" and "403" on purpose: a message must come
from git's verdict, never from digits that happen to be in a URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from launchkit import git, make_repo
from webkit import git_http_server

from binder_lite.web.push import Credential, PushError, push_changes

AUTHOR = ("Alice", "alice@example.org")


def clone_with_change(tmp_path: Path, forge: str, name: str) -> tuple[Path, str]:
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", f"{forge}/{name}", str(work))
    base = git(work, "rev-parse", "HEAD")
    (work / "new.txt").write_text("new\n")
    return work, base


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
        work, base = clone_with_change(tmp_path, forge, "team-403.git")
        right = Credential("u", "right")
        pushed = push_changes(work, "s401403", base, AUTHOR, right, tmp_path)
        assert git(forge_root / "team-403.git", "rev-parse", pushed.branch) == pushed.commit
        # Somebody else commits on the branch; ours must not overwrite it.
        bare = forge_root / "team-403.git"
        theirs = git(bare, "commit-tree", f"{base}^{{tree}}", "-p", pushed.commit, "-m", "theirs")
        git(bare, "update-ref", f"refs/heads/{pushed.branch}", theirs)
        (work / "more.txt").write_text("more\n")
        with pytest.raises(PushError) as refused:
            push_changes(work, "s401403", base, AUTHOR, right, tmp_path)
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
        work, base = clone_with_change(tmp_path, forge, "team-401.git")
        with pytest.raises(PushError) as refused:
            push_changes(work, "s1", base, AUTHOR, credential, tmp_path)
        assert str(refused.value) == expected
        assert "binder-lite/s1" not in git(forge_root / "team-401.git", "branch", "--list")
