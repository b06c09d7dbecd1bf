"""repo2docker's two scripts, `postBuild` and `start`, found and checked in a checkout.

Both are code from the repository: they are run only inside the session's sandbox
(postbuild.py runs `postBuild` once per commit; session.py puts `start` in front of
Jupyter, which it must `exec "$@"`).  Here they are only looked at: found in the
configuration folder through `repofiles` (a symlink may not leave the checkout),
refused when they are not regular files, and hashed, so that a changed `postBuild`
runs again.  One committed without its executable bit runs all the same, through the
interpreter its #! line names (or /bin/sh), as repo2docker makes it executable.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

from binder_lite.launch.repofiles import RepositoryFileError, RepoTree

POSTBUILD = "postBuild"
START = "start"
NAMES = (POSTBUILD, START)

# What `binder-lite manifest --explain` and the launch's progress say about each.
WHAT = {
    POSTBUILD: "a script, run in the sandbox once per commit, before Jupyter starts",
    START: "a script, run in the sandbox in front of Jupyter, which it must exec",
}
SCRIPT_LIMIT = 16 << 20  # bytes hashed at most; a larger script is refused


@dataclass(frozen=True)
class Script:
    name: str  # as shown, relative to the checkout: "binder/postBuild"
    real: PurePosixPath  # where it really is, relative to the checkout
    digest: str  # SHA-256 of its bytes
    shebang: tuple[str, ...] = ()  # its #! line's words, if it has one
    executable: bool = True  # its executable bit, as committed

    def inside(self, work_dir: str) -> str:
        """Its path where the checkout is `work_dir`."""
        return f"{work_dir}/{self.real}"

    def command(self, work_dir: str) -> list[str]:
        """How to run it where the checkout is `work_dir`, with the host's programs:
        itself, or, without its executable bit, its #! line's interpreter (the
        checkout's files are the person's: their modes are not changed)."""
        path = self.inside(work_dir)
        if self.executable:
            return [path]
        return [*(self.shebang[:2] or ("/bin/sh",)), path]


@dataclass(frozen=True)
class Scripts:
    postbuild: Script | None = None
    start: Script | None = None


def find(tree: RepoTree, where: PurePosixPath) -> Scripts:
    """The scripts of the configuration folder `where`.  Raises RepositoryFileError for
    one that is there but refused."""
    return Scripts(check(tree, where / POSTBUILD), check(tree, where / START))


def check(tree: RepoTree, name: PurePosixPath) -> Script | None:
    """The script at `name`, or None when nothing is there.  Raises RepositoryFileError
    for a symlink leaving the checkout, and for what is not a regular, executable file."""
    real = tree.resolve(name)
    if real is None:
        return None
    shown = str(name)
    try:
        fd = os.open(tree.root / real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RepositoryFileError(shown, f"cannot be read ({e.strerror}); not run") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RepositoryFileError(shown, "not a regular file; not run")
    with os.fdopen(fd, "rb") as f:
        data = f.read(SCRIPT_LIMIT + 1)
    if len(data) > SCRIPT_LIMIT:
        raise RepositoryFileError(shown, f"larger than {SCRIPT_LIMIT >> 20} MiB; not run")
    executable = bool(info.st_mode & 0o100)
    return Script(shown, real, hashlib.sha256(data).hexdigest(), _shebang(data), executable)


def _shebang(data: bytes) -> tuple[str, ...]:
    if not data.startswith(b"#!"):
        return ()
    line = data[2:].split(b"\n", 1)[0][:256]
    return tuple(line.decode("utf-8", "replace").split())


# In a Guix container: into the checkout, then the program by name on the profile's
# PATH; bash, when the profile has none, is the container's /bin/sh (bash too).
_GUIX_RUN = (
    'cd "$1" || exit 1; shift; p=$1; shift; '
    'if ! command -v "$p" >/dev/null 2>&1 && [ "$p" = bash ]; then p=/bin/sh; fi; '
    'exec "$p" "$@"'
)


def guix_command(script: Script, work_dir: str) -> list[str]:
    """How to run `script` in a Guix container, in the checkout: only /bin/sh is at a
    fixed path there, so the interpreter its #! line names is looked up on the
    profile's PATH by its name (`#!/bin/bash` runs bash, `#!/usr/bin/env python3`
    python3)."""
    path = script.inside(work_dir)
    words = script.shebang
    command = [path] if script.executable else ["/bin/sh", path]
    if words and words[0] != "/bin/sh":
        program, *arguments = words
        if PurePosixPath(program).name == "env" and arguments:
            program, arguments = arguments[0], arguments[1:]
        command = [PurePosixPath(program).name, *arguments[:1], path]
    return ["/bin/sh", "-c", _GUIX_RUN, "sh", work_dir, *command]
