"""Push a session's changes back to its origin, on a new branch, never forcing.

The session's own `.git` is written by the code running in the session, so it is
never used: a hook, `core.fsmonitor` or a changed remote there would run commands
on the host or send the push credential elsewhere.  Instead the session's plain
files are copied into a repository the service owns (under the state directory,
made from the cache's mirror at the commit the session was launched from), git
runs there with every configuration file but its own ignored and hooks off, and
the push goes to the URL the service validated at launch, with the credential
offered to that scheme, host and port only.

The packages the session's notebooks installed are offered as an update to the
repository's environment file (writeback.py), computed from that same private copy:
the first push returns the offer instead of pushing, and the answer names the exact
change it accepts by its digest, or declines it.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from binder_lite import run
from binder_lite.errors import BinderLiteError, CommandError
from binder_lite.launch.sources import mirror_dir
from binder_lite.web import writeback
from binder_lite.web.writeback import WriteBack

DEFAULT_MAX_SIZE = 512 * 1024**2  # bytes of files copied for one push (binder.max_repo_size)
MAX_ENTRIES = 200_000  # files, links and folders copied for one push
MAX_DEPTH = 100  # folders nested deeper are refused (each level holds two descriptors open)


class PushError(BinderLiteError):
    """The push did not happen; the message says why, plainly."""


@dataclass(frozen=True)
class Credential:
    username: str
    password: str  # a token
    # The one host it may be sent to (a login's token: its provider's); None: the
    # origin of whichever session is pushed (the site's own push credential).
    host: str | None = None

    @staticmethod
    def for_provider(provider: str, token: str, issuer: str) -> Credential:
        # GitHub takes any user name with a token; GitLab wants "oauth2".
        user = "oauth2" if provider == "gitlab" else "x-access-token"
        return Credential(user, token, (urlparse(issuer).hostname or "").lower())

    def fits(self, origin: str) -> bool:
        """Whether this credential may be sent to the host of `origin`."""
        return self.host is None or (urlparse(origin).hostname or "").lower() == self.host

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
    updated: tuple[str, ...] = ()  # environment files the write-back changed
    notes: tuple[str, ...] = ()  # what the write-back did not do, and why


@dataclass(frozen=True)
class PushSource:
    """What a push takes from a session: all of it from the service's record, except
    the plain files in `files`, which are the only thing read from the session."""

    session_id: str
    files: Path  # the session's working tree
    origin: str  # the repository URL the service validated at launch
    base_commit: str  # the commit the session was launched from


def push_changes(
    source: PushSource,
    author: tuple[str, str],
    credential: Credential | None,
    state_dir: Path,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    plain_http: bool = False,
    offer: bool = False,
    write_back: str | None = None,
) -> Pushed | WriteBack:
    """Commit the session's files on top of its base commit, in a repository the
    service owns, and push that to the origin as binder-lite/<id>.  `plain_http`
    (development) allows sending a credential over http:// to any host.

    With `offer`, a write-back of the packages the notebooks installed is returned
    instead, when there is one, and nothing is committed.  `write_back` is the
    digest of the write-back the person accepted: it is committed with the files
    if it is still exactly that one; None pushes the files alone."""
    branch = f"binder-lite/{source.session_id}"
    _check_transport(source.origin, credential, plain_http)
    git = _Git(state_dir, author, source.origin, credential)
    repo = state_dir / "push" / source.session_id
    with _locked(repo):
        if not (repo / ".git" / "HEAD").is_file():
            _create(repo, source, state_dir, git)
        _replace_files(repo, source.files, max_size)
        _accepted_again(repo)
        proposal = _proposal(repo) if offer or write_back is not None else WriteBack()
        if offer and proposal.changes:
            return proposal
        if write_back is not None:
            if write_back != proposal.digest:
                raise PushError(
                    "the update to the environment file is no longer the one shown "
                    "(a notebook changed since); nothing was pushed: push again to see it"
                )
            writeback.apply(repo, proposal)
            _remember(repo, proposal)
        git(repo, "add", "--all")
        if git(repo, "status", "--porcelain").strip():
            message = f"Changes from binder-lite session {source.session_id}"
            git(repo, "commit", "--quiet", "--no-verify", "-m", message)
        commit = git(repo, "rev-parse", "HEAD").strip()
        if commit == source.base_commit:
            raise PushError("there are no changes in this session to push")
        try:
            git(
                repo,
                "push",
                "--porcelain",
                "--no-verify",
                source.origin,
                f"HEAD:refs/heads/{branch}",
                timeout=120,
                explain=False,
            )
        except CommandError as e:
            raise PushError(_explain(e.output, credential)) from None
    updated = tuple(c.path for c in proposal.changes) if write_back is not None else ()
    notes = proposal.notes + tuple(
        f"{n.text} ({n.where}): {n.reason}" for n in proposal.not_written
    )
    return Pushed(branch, source.origin, commit, _web_url(source.origin, branch), updated, notes)


def _proposal(repo: Path) -> WriteBack:
    """The write-back for the files copied into `repo`; a failure to read them
    costs the write-back, never the push."""
    try:
        return writeback.propose(repo)
    except (BinderLiteError, OSError) as e:
        return WriteBack(notes=(f"the notebooks were not read for packages: {e}",))


# The write-backs a person accepted, kept with the session's push repository: the
# session's own files never get them (the service does not write into a session), so
# each later push puts them back, or the next push would offer them again and, declined,
# take them out of the branch.
ACCEPTED = "binder-lite-write-back.json"


def _remember(repo: Path, accepted: WriteBack) -> None:
    path = repo / ".git" / ACCEPTED
    known = _accepted(repo)
    known.update({c.path: {"old": c.old, "new": c.new} for c in accepted.changes})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known))
    tmp.replace(path)


def _accepted(repo: Path) -> dict[str, dict[str, str | None]]:
    try:
        known = json.loads((repo / ".git" / ACCEPTED).read_text())
    except FileNotFoundError:
        return {}
    return known if isinstance(known, dict) else {}


def _accepted_again(repo: Path) -> None:
    """Put back each accepted write-back whose file the session left as it was then;
    a file the person changed since is theirs (and offered an update again)."""
    for path, change in _accepted(repo).items():
        old, new = change.get("old"), change.get("new")
        if not isinstance(new, str) or writeback.current(repo, path) != old:
            continue
        again = writeback.FileChange(path, old if isinstance(old, str) else None, new, ())
        try:
            writeback.apply(repo, WriteBack(changes=(again,)))
        except OSError:
            continue  # a folder on the way is a link now, or the new file is there


def discard(state_dir: Path, session_id: str) -> None:
    """Remove the repository pushes of a session used (when the session ends)."""
    repo = state_dir / "push" / session_id
    shutil.rmtree(repo, ignore_errors=True)
    repo.with_name(repo.name + ".lock").unlink(missing_ok=True)


def _check_transport(origin: str, credential: Credential | None, plain_http: bool) -> None:
    parsed = urlparse(origin)
    if credential is not None and not credential.fits(origin):
        raise PushError(
            f"your login's token is only ever sent to {credential.host}, and this "
            f"repository is on {parsed.hostname}"
        )
    if credential is None or parsed.scheme != "http" or plain_http:
        return
    host = (parsed.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        # Anyone on the path would read it, and could answer in the forge's place.
        raise PushError(
            "this site sends push credentials over https:// only, and this "
            "repository was launched over http://"
        )


# Settings every git command here runs with: no hooks, no fsmonitor, no credential
# helper but the one below, no redirects (a redirect could carry the credential to
# another host), no background maintenance outliving the push.
_SETTINGS = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "credential.helper=",
    "http.followRedirects=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "protocol.ext.allow=never",
    "push.recurseSubmodules=no",
    "submodule.recurse=false",
)

# Hands the user name and password to git from its environment (never its command
# line or a file), for the one URL it is configured for.
_HELPER = (
    "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' "
    '"$BINDER_LITE_GIT_USERNAME" "$BINDER_LITE_GIT_PASSWORD"; }; f'
)


class _Git:
    """git with the environment and settings above; errors become PushError."""

    def __init__(
        self, state_dir: Path, author: tuple[str, str], origin: str, credential: Credential | None
    ) -> None:
        name, email = author
        email = email or "binder-lite@localhost"
        home = state_dir / "push"
        # Nothing from the service's own environment steers git (GIT_DIR, GIT_CONFIG_*),
        # and no configuration file is read but the repository's own, which we write:
        # no system or global file, no ~/.netrc (HOME is ours).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
            HOME=str(home),
            XDG_CONFIG_HOME=str(home),
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="/bin/false",
            SSH_ASKPASS="/bin/false",
            LC_ALL="C.UTF-8",
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
        )
        self.settings = [arg for setting in _SETTINGS for arg in ("-c", setting)]
        parsed = urlparse(origin)
        if credential is not None and parsed.scheme in ("http", "https"):
            # Offered for this scheme, host and port only, whatever URL git is sent to.
            scope = f"{parsed.scheme}://{parsed.netloc.lower()}"
            self.settings += ["-c", f"credential.{scope}.helper={_HELPER}"]
            self.env.update(
                BINDER_LITE_GIT_USERNAME=credential.username,
                BINDER_LITE_GIT_PASSWORD=credential.password,
            )

    def __call__(self, cwd: Path, *args: str, timeout: float = 60, explain: bool = True) -> str:
        try:
            return run.run(["git", *self.settings, *args], cwd=cwd, env=self.env, timeout=timeout)
        except CommandError as e:
            if not explain:
                raise
            detail = e.output.strip()[-500:]
            raise PushError(f"git {args[0]} failed: {detail}") from None


@contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """One push of a session at a time (a double click)."""
    repo.parent.mkdir(parents=True, exist_ok=True)
    repo.parent.chmod(0o700)  # the credential passes through here; nobody else looks
    with open(repo.with_name(repo.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _create(repo: Path, source: PushSource, state_dir: Path, git: _Git) -> None:
    """A repository at the session's base commit, from the cache's mirror of the
    origin (object files linked, not copied) or, when the cache lost it, the origin."""
    new = repo.with_name(repo.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    mirror = mirror_dir(state_dir / "cache", source.origin)
    origin = str(mirror) if (mirror / "HEAD").is_file() else source.origin
    # --template= : not even the sample hooks.
    git(
        repo.parent,
        "clone",
        "--quiet",
        "--no-checkout",
        "--template=",
        origin,
        str(new),
        timeout=600,
    )
    base = source.base_commit
    if not _has_commit(git, new, base):
        git(new, "fetch", "--quiet", source.origin, base, timeout=600)
    if not _has_commit(git, new, base):
        raise PushError("the commit this session started from is no longer in its repository")
    git(new, "update-ref", "--no-deref", "HEAD", base)
    git(new, "read-tree", base)  # the index says "base"; the files come next
    # Jupyter's checkpoints are its own bookkeeping, not the person's work: new ones
    # stay out (ones the repository already tracks stay tracked).
    (new / ".git" / "info").mkdir(exist_ok=True)
    (new / ".git" / "info" / "exclude").write_text(".ipynb_checkpoints/\n")
    new.rename(repo)


def _has_commit(git: _Git, repo: Path, commit: str) -> bool:
    try:
        git(repo, "rev-parse", "--quiet", "--verify", f"{commit}^{{commit}}")
    except PushError:
        return False
    return True


# -- copying the session's files -------------------------------------------------------


@dataclass
class _Budget:
    bytes_left: int
    entries_left: int = MAX_ENTRIES

    def take(self, size: int) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise PushError("the session's files are larger than this site pushes")

    def count(self) -> None:
        self.entries_left -= 1
        if self.entries_left < 0:
            raise PushError(
                f"the session has more than {MAX_ENTRIES} files; this site does not push that many"
            )


# Entries that vanished, or turned into a link or a file, while being copied.
_CHANGED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _replace_files(repo: Path, files: Path, max_size: int) -> None:
    """Make the work tree of `repo` a copy of the files under `files`: every folder
    opened relative to its parent without following links, links copied as links,
    regular files copied, everything else (sockets, FIFOs, devices) and every `.git`
    left out."""
    for entry in repo.iterdir():
        if entry.name != ".git":
            _remove(entry)
    try:
        src = os.open(files, _DIR)
    except OSError as e:
        raise PushError(f"the session's files cannot be read: {e.strerror}") from None
    dest = os.open(repo, _DIR)
    try:
        _copy_dir(src, dest, _Budget(max_size), 0)
    finally:
        os.close(src)
        os.close(dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _copy_dir(src: int, dest: int, budget: _Budget, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PushError(f"the session's folders are nested more than {MAX_DEPTH} deep")
    with os.scandir(src) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        if name.lower() == ".git":  # git refuses the name in any case, as a path component
            continue
        budget.count()
        try:
            _copy_entry(name, src, dest, budget, depth)
        except OSError as e:
            if e.errno not in _CHANGED:
                raise PushError(f"cannot copy {name!r} from the session: {e.strerror}") from None


def _copy_entry(name: str, src: int, dest: int, budget: _Budget, depth: int) -> None:
    mode = os.stat(name, dir_fd=src, follow_symlinks=False).st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dest)
        inner_src = os.open(name, _DIR, dir_fd=src)
        try:
            inner_dest = os.open(name, _DIR, dir_fd=dest)
            try:
                _copy_dir(inner_src, inner_dest, budget, depth + 1)
            finally:
                os.close(inner_dest)
        finally:
            os.close(inner_src)
    elif stat.S_ISLNK(mode):
        target = os.readlink(name, dir_fd=src)  # committed as a link: never read through
        budget.take(len(os.fsencode(target)))
        os.symlink(target, name, dir_fd=dest)
    elif stat.S_ISREG(mode):
        _copy_file(name, src, dest, budget)


def _copy_file(name: str, src: int, dest: int, budget: _Budget) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=src)
    with open(fd, "rb") as reader:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced since it was looked at
            return
        # git keeps one bit of a file's mode: executable by its owner or not.
        perms = 0o700 if mode & stat.S_IXUSR else 0o600
        out = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            perms,
            dir_fd=dest,
        )
        with open(out, "wb") as writer:
            while chunk := reader.read(1 << 20):
                budget.take(len(chunk))
                writer.write(chunk)


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
