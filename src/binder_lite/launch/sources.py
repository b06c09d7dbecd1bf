"""Where a session's files come from: a git repository, fetched into a cache.

Each repository URL gets one bare mirror in the cache; a ref is resolved against
the remote, and only fetched when the mirror lacks the commit, so relaunching a
commit costs a `git ls-remote` at most.  Sessions get their own clone of the
mirror: the user's own working tree is only ever read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from binder_lite import run
from binder_lite.errors import CommandError, SourceError

REMOTE_SCHEMES = ("https", "http", "git", "ssh")
_SHA = re.compile(r"[0-9a-f]{7,40}")

Log = Callable[[str], None]

# git must never stop to ask for a password: a private repository is an error here.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}


@dataclass(frozen=True)
class Checkout:
    url: str  # the repository, as a URL
    ref: str  # as asked for ("HEAD" when none was)
    commit: str  # the resolved commit
    path: Path  # the session's own clone, at `commit`


def normalise_source(source: str) -> str:
    """`source` as a URL: remote URLs as given, local paths as file:// URLs."""
    parsed = urlparse(source)
    if parsed.scheme in REMOTE_SCHEMES:
        if not parsed.netloc:
            raise SourceError(f"{source}: the URL has no host")
        return source
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or C:-like oddity)
        path = Path(source).expanduser().absolute()
    else:
        raise SourceError(
            f"{source}: unsupported URL scheme {parsed.scheme!r}",
        )
    if not path.exists():
        raise SourceError(f"{path}: no such directory")
    if not (path / ".git").exists() and not (path / "HEAD").is_file():
        raise SourceError(f"{path}: not a git repository (no .git here)")
    return f"file://{path.resolve()}"


def git(*args: str | os.PathLike[str], cwd: Path | None = None) -> str:
    return run.run(["git", *args], cwd=cwd, env=GIT_ENV)


def _mirror_dir(cache: Path, url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:20]
    return cache / "repos" / f"{key}.git"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise fetches into one mirror (two sessions of one repository at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_mirror(mirror: Path, url: str) -> None:
    if (mirror / "HEAD").is_file():
        return
    tmp = mirror.with_name(mirror.name + ".new")
    git("init", "--quiet", "--bare", tmp)
    git("remote", "add", "origin", url, cwd=tmp)
    tmp.rename(mirror)


def _remote_refs(url: str, mirror: Path) -> dict[str, str]:
    """refname → commit on the remote, annotated tags peeled."""
    try:
        output = git("ls-remote", "--symref", "origin", cwd=mirror)
    except CommandError as e:
        raise SourceError(_explain_git_failure(url, e.output)) from None
    refs: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if sha.startswith("ref:"):
            continue
        if name.endswith("^{}"):
            refs[name[:-3]] = sha  # the peeled commit wins over the tag object
        else:
            refs.setdefault(name, sha)
    return refs


def _explain_git_failure(url: str, output: str) -> str:
    text = output.strip().splitlines()
    detail = "\n  ".join(text[-3:]) if text else "(no output)"
    lowered = output.lower()
    if "does not appear to be a git repository" in lowered or "not found" in lowered:
        return f"{url}: not a git repository, or it does not exist\n  git: {detail}"
    if any(s in lowered for s in ("could not resolve", "connection refused", "timed out",
                                  "unable to access", "could not read")):  # fmt: skip
        return f"{url}: cannot reach the repository\n  git: {detail}"
    return f"{url}: git failed\n  git: {detail}"


def _match_ref(refs: dict[str, str], ref: str) -> str | None:
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
        if name in refs:
            return refs[name]
    return None


def _has_commit(mirror: Path, rev: str) -> str | None:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=mirror).strip()
    except CommandError:
        return None


def _fetch(mirror: Path, url: str, log: Log) -> None:
    log(f"fetching {url}")
    try:
        git("fetch", "--quiet", "--prune", "--tags", "origin",
            "+refs/heads/*:refs/heads/*", cwd=mirror)  # fmt: skip
    except CommandError as e:
        raise SourceError(_explain_git_failure(url, e.output)) from None


def resolve(url: str, ref: str | None, cache: Path, log: Log) -> tuple[Path, str]:
    """Make sure the mirror of `url` has `ref`; return the mirror and the commit."""
    mirror = _mirror_dir(cache, url)
    wanted = ref or "HEAD"
    with _locked(mirror):
        _ensure_mirror(mirror, url)
        if ref and _SHA.fullmatch(ref) and (commit := _has_commit(mirror, ref)):
            log(f"{ref} is already in the cache")
            return mirror, commit
        refs = _remote_refs(url, mirror)
        commit = _match_ref(refs, wanted)
        if commit and _has_commit(mirror, commit):
            log(f"{wanted} is {commit[:12]}, already in the cache")
            return mirror, commit
        _fetch(mirror, url, log)
        found = commit or (_has_commit(mirror, wanted) if _SHA.fullmatch(wanted) else None)
        if not found or not _has_commit(mirror, found):
            raise SourceError(f"{url}: unknown ref {wanted!r} (not a branch, tag or commit)")
        return mirror, _has_commit(mirror, found) or found


def check_out(url: str, ref: str | None, cache: Path, dest: Path, log: Log) -> Checkout:
    """Clone the resolved commit of `url` into `dest` (which must not exist)."""
    mirror, commit = resolve(url, ref, cache, log)
    log(f"checking out {commit[:12]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # --shared borrows the mirror's objects: a checkout costs its files, not its history.
    git("clone", "--quiet", "--shared", "--no-checkout", mirror, dest)
    git("checkout", "--quiet", "--detach", commit, cwd=dest)
    git("remote", "set-url", "origin", url, cwd=dest)  # push-back goes to the real origin
    return Checkout(url=url, ref=ref or "HEAD", commit=commit, path=dest)
