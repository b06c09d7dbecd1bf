"""Where a session's files come from: a git repository, fetched into a cache.

Each repository URL gets one bare mirror in the cache; a ref is resolved against
the remote, and only fetched when the mirror lacks the commit, so relaunching a
commit costs a `git ls-remote` at most.  Sessions get their own clone of the
mirror: the user's own working tree is only ever read.

Repositories come from strangers: every git command that talks to a server is bounded
in time (a low-speed limit for HTTP, an overall limit for every transport), in size
(`FetchLimits.max_size`, watched while git writes), follows no redirects, sends no
credentials, and connects to the addresses the caller checked (`Pin`), not to whatever
the name resolves to a moment later.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

from binder_lite import run
from binder_lite.errors import CommandError, SourceError

if TYPE_CHECKING:
    from subprocess import Popen

REMOTE_SCHEMES = ("https", "http", "git", "ssh")
_SHA = re.compile(r"[0-9a-f]{7,40}")
_FULL_COMMIT = re.compile(r"[0-9a-f]{40}")

Log = Callable[[str], None]

# git must never stop to ask for a password: a private repository is an error here.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}


@dataclass(frozen=True)
class Pin:
    """The addresses a repository's host had when it was checked.  git connects to these
    (curl's resolve list for HTTP, the address in place of the name for git://) and never
    looks the name up again: a second DNS answer could point at this machine."""

    host: str
    port: int
    addresses: tuple[str, ...]

    def curl_resolve(self) -> list[str]:
        """HOST:PORT:ADDR,... entries, for each spelling curl may look the host up by."""
        listed = ",".join(f"[{a}]" if ":" in a else a for a in self.addresses)
        bare = (self.host.rstrip("."), self.host.lower().rstrip("."))
        spellings = dict.fromkeys(h for name in bare for h in (name, name + "."))
        return [f"{h}:{self.port}:{listed}" for h in spellings]


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on fetching a repository somebody else chose."""

    max_size: int = 512 * 1024**2  # bytes: one repository's mirror, and one checkout
    timeout: float = 300.0  # seconds for one git command (git:// has no other bound)
    low_speed_limit: int = 1000  # bytes/s; HTTP slower than this ...
    low_speed_time: int = 30  # ... for this many seconds is given up


class FetchCancelled(SourceError):
    """The launch was stopped while git was working."""


class TooLargeError(SourceError):
    """The repository, or the commit's files, are larger than the site allows."""


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


def mirror_dir(cache: Path, url: str) -> Path:
    """Where the mirror of `url` lives in `cache`."""
    return _mirror_dir(cache, url)


def _mirror_dir(cache: Path, url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:20]
    return cache / "repos" / f"{key}.git"


@contextmanager
def _locked(path: Path, how: int = fcntl.LOCK_EX) -> Iterator[None]:
    """Serialise fetches into one mirror (two sessions of one repository at once);
    with LOCK_SH, hold a cache entry while it is read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, how)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _locked_now(path: Path) -> Iterator[bool]:
    """Like `_locked`, without waiting: yields whether the lock was free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_mirror(mirror: Path, url: str) -> None:
    if (mirror / "HEAD").is_file():
        return
    tmp = mirror.with_name(mirror.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
    git("init", "--quiet", "--bare", tmp)
    git("remote", "add", "origin", url, cwd=tmp)
    tmp.rename(mirror)


@dataclass(frozen=True)
class _Remote:
    """How git reaches one repository: the URL it fetches and the bounds it works in."""

    url: str  # as the user gave it
    fetch_url: str  # the same, with a pinned address in place of a git:// host
    config: tuple[str, ...]  # `-c` options for every command that talks to the server
    limits: FetchLimits
    cancel: threading.Event | None


def _remote(
    url: str, pin: Pin | None, limits: FetchLimits, cancel: threading.Event | None
) -> _Remote:
    config = [
        "http.followRedirects=false",  # a redirect could lead anywhere the check did not see
        f"http.lowSpeedLimit={limits.low_speed_limit}",
        f"http.lowSpeedTime={limits.low_speed_time}",
        "credential.helper=",  # never offer a stored credential to a stranger's server
        "fetch.unpackLimit=1",  # one pack file, not loose objects: the size limit bites
    ]
    fetch_url = url
    if pin is not None:
        config += [f"http.curloptResolve={entry}" for entry in pin.curl_resolve()]
        fetch_url = _pinned_git_url(url, pin)
    options = tuple(arg for c in config for arg in ("-c", c))
    return _Remote(url, fetch_url, options, limits, cancel)


def _pinned_git_url(url: str, pin: Pin) -> str:
    """git:// goes through no curl: its host is replaced by the checked address."""
    parsed = urlparse(url)
    if parsed.scheme != "git" or not pin.addresses:
        return url
    address = next((a for a in pin.addresses if ":" not in a), pin.addresses[0])
    host = f"[{address}]" if ":" in address else address
    return urlunparse(parsed._replace(netloc=f"{host}:{pin.port}"))


def _remote_refs(remote: _Remote, mirror: Path) -> dict[str, str]:
    """refname → commit on the remote, annotated tags peeled."""
    try:
        output = _git_bounded(remote, mirror, "ls-remote", "--symref", remote.fetch_url)
    except CommandError as e:
        raise SourceError(_explain_git_failure(remote.url, e.output)) from None
    refs: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if sha.startswith("ref:") or not name:
            continue
        if name.endswith("^{}"):
            refs[name[:-3]] = sha  # the peeled commit wins over the tag object
        else:
            refs.setdefault(name, sha)
    return refs


def _git_bounded(remote: _Remote, mirror: Path, *args: str) -> str:
    """Run a git command that talks to the server: killed, with everything it started,
    when it runs out of time, when the mirror grows past the size limit, or when the
    launch is stopped.  (binder_lite.run cannot watch a command while it runs.)"""
    limits = remote.limits
    argv = [*_file_size_limit(limits.max_size), "git", *remote.config, *args]
    with tempfile.TemporaryFile() as out:
        proc = run.spawn(
            argv,
            cwd=mirror,
            env={"LC_ALL": "C.UTF-8", **GIT_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
            new_session=True,
        )
        if argv[0] == "git":
            _limit_file_size(proc.pid, limits.max_size)
        deadline = time.monotonic() + limits.timeout
        while True:
            try:
                proc.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                pass
            if problem := _why_stop(remote, mirror, deadline):
                _kill_group(proc)
                raise problem
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        if proc.returncode == -signal.SIGXFSZ or _size(mirror) > limits.max_size:
            raise _too_large(remote.url, limits.max_size)
        raise CommandError(argv, proc.returncode, output)
    return output


def _why_stop(remote: _Remote, mirror: Path, deadline: float) -> SourceError | None:
    if remote.cancel is not None and remote.cancel.is_set():
        return FetchCancelled(f"{remote.url}: stopped while fetching")
    if time.monotonic() > deadline:
        return SourceError(
            f"{remote.url}: git took longer than {remote.limits.timeout:.0f} s; "
            "the repository's server is too slow or does not answer"
        )
    if _size(mirror) > remote.limits.max_size:
        return _too_large(remote.url, remote.limits.max_size)
    return None


def _too_large(url: str, limit: int) -> TooLargeError:
    return TooLargeError(
        f"{url}: the repository is larger than this site's limit of "
        f"{_mib(limit)} (binder.max_repo_size)"
    )


def _mib(size: int) -> str:
    return f"{size / 1024**2:.0f} MiB" if size >= 1024**2 else f"{size} bytes"


def _file_size_limit(limit: int) -> list[str]:
    """No file git writes (the incoming pack, with fetch.unpackLimit=1) may outgrow the
    limit, even between two looks at the mirror: util-linux's prlimit sets it before
    git starts."""
    prlimit = shutil.which("prlimit")
    return [prlimit, f"--fsize={limit}:{limit}", "--"] if prlimit else []


def _limit_file_size(pid: int, limit: int) -> None:
    """Without prlimit(1): set the limit on git just started; the helpers it starts
    a moment later (usually) inherit it."""
    with contextlib.suppress(OSError, ValueError):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))


def _kill_group(proc: Popen[bytes]) -> None:
    # git runs git-remote-https and index-pack as children: end them all, and wait
    # (briefly) until they are gone, not only git itself.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.01)


def _size(path: Path) -> int:
    """Bytes in the files under `path` (not following symbolic links)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _explain_git_failure(url: str, output: str) -> str:
    text = output.strip().splitlines()
    detail = "\n  ".join(text[-3:]) if text else "(no output)"
    lowered = output.lower()
    if "does not appear to be a git repository" in lowered or "not found" in lowered:
        return f"{url}: not a git repository, or it does not exist\n  git: {detail}"
    if "operation too slow" in lowered:
        return f"{url}: the repository's server sends too slowly\n  git: {detail}"
    if any(
        s in lowered
        for s in (
            "could not resolve",
            "connection refused",
            "timed out",
            "unable to access",
            "could not read",
        )
    ):
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


def _fetch(remote: _Remote, mirror: Path, log: Log) -> None:
    log(f"fetching {remote.url}")
    try:
        _git_bounded(
            remote,
            mirror,
            "fetch",
            "--quiet",
            "--prune",
            "--tags",
            remote.fetch_url,
            "+refs/heads/*:refs/heads/*",
        )
    except CommandError as e:
        raise SourceError(_explain_git_failure(remote.url, e.output)) from None


def resolve(
    url: str,
    ref: str | None,
    cache: Path,
    log: Log,
    *,
    pin: Pin | None = None,
    limits: FetchLimits | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Path, str]:
    """Make sure the mirror of `url` has `ref`; return the mirror and the commit."""
    mirror = _mirror_dir(cache, url)
    remote = _remote(url, pin, limits or FetchLimits(), cancel)
    wanted = ref or "HEAD"
    with _locked(mirror):
        _ensure_mirror(mirror, url)
        os.utime(mirror)  # the cache forgets the least recently used mirrors first
        if ref and _SHA.fullmatch(ref) and (commit := _has_commit(mirror, ref)):
            log(f"{ref} is already in the cache")
            return mirror, commit
        refs = _remote_refs(remote, mirror)
        commit = _match_ref(refs, wanted)
        if commit and _has_commit(mirror, commit):
            log(f"{wanted} is {commit[:12]}, already in the cache")
            return mirror, commit
        try:
            _fetch(remote, mirror, log)
        except TooLargeError:
            shutil.rmtree(mirror, ignore_errors=True)  # keep nothing of it
            raise
        found = commit or (_has_commit(mirror, wanted) if _SHA.fullmatch(wanted) else None)
        if not found or not _has_commit(mirror, found):
            raise SourceError(f"{url}: unknown ref {wanted!r} (not a branch, tag or commit)")
        return mirror, _has_commit(mirror, found) or found


def check_out(
    url: str,
    ref: str | None,
    cache: Path,
    dest: Path,
    log: Log,
    *,
    pin: Pin | None = None,
    limits: FetchLimits | None = None,
    cancel: threading.Event | None = None,
) -> Checkout:
    """Clone the resolved commit of `url` into `dest` (which must not exist).  `pin`:
    the addresses git must connect to; `limits`: time and size bounds; `cancel`: set
    to stop git at once."""
    limits = limits or FetchLimits()
    mirror, commit = resolve(url, ref, cache, log, pin=pin, limits=limits, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise FetchCancelled(f"{url}: stopped while fetching")
    _check_tree_size(url, mirror, commit, limits.max_size)
    log(f"checking out {commit[:12]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # --shared borrows the mirror's objects: a checkout costs its files, not its history.
    git("clone", "--quiet", "--shared", "--no-checkout", mirror, dest)
    git("checkout", "--quiet", "--detach", commit, cwd=dest)
    git("remote", "set-url", "origin", url, cwd=dest)  # push-back goes to the real origin
    if _size(dest) > limits.max_size:
        shutil.rmtree(dest, ignore_errors=True)
        raise _too_large(url, limits.max_size)
    return Checkout(url=url, ref=ref or "HEAD", commit=commit, path=dest)


def take_checkout(made: Path, url: str, commit: str, dest: Path) -> Checkout | None:
    """Move `made`, a checkout of `commit` that the service has made already, to `dest`
    (a Slurm job's session takes the one its service prepared, on the shared state
    directory, rather than cloning again); None when `made` is not one, and nothing
    is moved.  Its size was checked when it was made."""
    try:
        if not _FULL_COMMIT.fullmatch(commit) or not all(
            stat.S_ISDIR(p.lstat().st_mode) for p in (made, made / ".git")
        ):
            return None  # (git would look for a repository in the folders above)
        if git("rev-parse", "--verify", "HEAD", cwd=made).strip() != commit:
            return None
    except (OSError, CommandError):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(made, dest)
    return Checkout(url=url, ref=commit, commit=commit, path=dest)


def _check_tree_size(url: str, mirror: Path, commit: str, limit: int) -> None:
    """Refuse a commit whose files add up to more than the limit before writing them: a
    few megabytes of pack can hold gigabytes of zeros."""
    listing = git("ls-tree", "-r", "-l", "--full-tree", commit, cwd=mirror)
    total = sum(
        int(size)
        for line in listing.splitlines()
        if (size := line.split("\t", 1)[0].split()[-1]).isdigit()
    )
    if total > limit:
        raise _too_large(url, limit)


def trim_cache(cache: Path, max_bytes: int, keep: Collection[Path] = ()) -> list[Path]:
    """Remove the least recently used entries — repository mirrors, postBuild
    results, Julia depots — until the cache holds at most `max_bytes`; never those in
    `keep` (running sessions borrow a mirror's objects and read their depot) or locked
    now (a fetch into a mirror, a restore from a postBuild result)."""
    entries = sorted(_cache_entries(cache), key=lambda e: e.stat().st_mtime)
    sizes = {e: _size(e) for e in entries}
    total = sum(sizes.values())
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        if entry in keep:
            continue
        with _locked_now(entry) as free:
            if free:
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]
                removed.append(entry)
    return removed


def _cache_entries(cache: Path) -> list[Path]:
    """The cache's removable entries: `repos/<key>.git`, `postbuild/<key>` and
    `julia/<key>` (Pluto's depots); a name starting with a dot is still being written."""
    mirrors = [m for m in (cache / "repos").glob("*.git") if m.is_dir()]
    kept = [k for d in ("postbuild", "julia") for k in (cache / d).glob("[!.]*") if k.is_dir()]
    return mirrors + kept


def shared_lock(entry: Path) -> contextlib.AbstractContextManager[None]:
    """Hold a cache entry while it is read (a postBuild result being restored):
    `trim_cache` then leaves it, and readers do not wait for each other."""
    return _locked(entry, fcntl.LOCK_SH)
