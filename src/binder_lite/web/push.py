"""Push a session's changes back to its origin, on a new branch, never forcing."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from binder_lite.errors import BinderLiteError


class PushError(BinderLiteError):
    """The push did not happen; the message says why, plainly."""


@dataclass(frozen=True)
class Credential:
    username: str
    password: str  # a token

    @staticmethod
    def for_provider(provider: str, token: str) -> Credential:
        # GitHub takes any user name with a token; GitLab wants "oauth2".
        return Credential("oauth2" if provider == "gitlab" else "x-access-token", token)

    @staticmethod
    def from_file(path: Path) -> Credential:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise PushError(f"cannot read the push credential file {path}: {e.strerror}") from None
        user, sep, password = text.partition(":")
        if not sep or not user or not password:
            raise PushError(f"{path} must hold one line: user:token")
        return Credential(user, password)


@dataclass(frozen=True)
class Pushed:
    branch: str
    remote: str
    commit: str
    web_url: str | None  # where to see the branch, when the forge is known


# A helper git asks for the user name and password: they reach git through its
# environment, never its command line or a file.
ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$BINDER_LITE_GIT_USERNAME" ;;
  *) printf '%s\\n' "$BINDER_LITE_GIT_PASSWORD" ;;
esac
"""


def push_changes(
    work_dir: Path, session_id: str, base_commit: str, author: tuple[str, str],
    credential: Credential | None, state_dir: Path,
) -> Pushed:  # fmt: skip
    """Commit everything in `work_dir` and push it to origin as binder-lite/<id>."""
    branch = f"binder-lite/{session_id}"
    name, email = author
    email = email or "binder-lite@localhost"
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C.UTF-8",
           "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}  # fmt: skip
    if credential is not None:
        env.update(GIT_ASKPASS=str(_askpass(state_dir)),
                   BINDER_LITE_GIT_USERNAME=credential.username,
                   BINDER_LITE_GIT_PASSWORD=credential.password)  # fmt: skip
    _git(work_dir, env, "add", "--all")
    if _git(work_dir, env, "status", "--porcelain").strip():
        message = f"Changes from binder-lite session {session_id}"
        _git(work_dir, env, "commit", "--quiet", "-m", message)
    commit = _git(work_dir, env, "rev-parse", "HEAD").strip()
    if commit == base_commit:
        raise PushError("there are no changes in this session to push")
    remote = _git(work_dir, env, "remote", "get-url", "origin").strip()
    result = subprocess.run(
        ["git", "push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}"],
        cwd=work_dir, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise PushError(_explain(result.stdout + result.stderr, credential))
    return Pushed(branch, remote, commit, _web_url(remote, branch))


def _git(work_dir: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=work_dir, env=env, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    if result.returncode != 0:
        raise PushError(f"git {args[0]} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def _askpass(state_dir: Path) -> Path:
    path = state_dir / "git-askpass"
    if not path.exists():
        path.write_text(ASKPASS)
        path.chmod(stat.S_IRWXU)
    return path


def _explain(output: str, credential: Credential | None) -> str:
    lowered = output.lower()
    # Rejections first: their lines name the remote, whose port or path may hold "403".
    if "[rejected]" in lowered or "non-fast-forward" in lowered or "fetch first" in lowered:
        return "the branch already exists with other changes; nothing was overwritten"
    if "[remote rejected]" in lowered:
        reason = output.split("[remote rejected]", 1)[1].strip().splitlines()[0]
        return f"the repository rejected the push: {reason}"
    if (
        "authentication failed" in lowered
        or "could not read username" in lowered
        or _HTTP_DENIED.search(lowered)
    ):
        if credential is None:
            return "the repository refused the push: log in, or ask for a push credential"
        return "the repository refused your credentials for this push"
    if "could not resolve" in lowered or "unable to access" in lowered:
        return "cannot reach the repository to push"
    tail = [line for line in output.strip().splitlines() if line.strip()][-3:]
    return "the push failed: " + " / ".join(tail)


# How git reports an HTTP refusal ("The requested URL returned error: 403").
_HTTP_DENIED = re.compile(r"returned error: 40[13]\b")


def _web_url(remote: str, branch: str) -> str | None:
    parsed = urlparse(remote)
    if parsed.hostname in ("github.com", "gitlab.com") or (parsed.hostname or "").startswith(
        "gitlab."
    ):
        path = parsed.path.removesuffix(".git").rstrip("/")
        separator = "/-/tree/" if "gitlab" in (parsed.hostname or "") else "/tree/"
        return f"https://{parsed.hostname}{path}{separator}{branch}"
    return None
