"""Reading a checkout's files as data: inside the checkout, regular, bounded, UTF-8.

A repository is chosen by a stranger, and its symlinks may point anywhere on the host
(an absolute target, or enough `..`).  The service reads some of its files on the host
(requirements, channels) and shows what it made of them, so every path is resolved
here one component at a time against the checkout, and a symlink that would leave it
is refused by name, never followed.  `.git` is the service's bookkeeping, not the
repository's content, so it is not read either.

The checkout is the session's own fresh clone, which nothing else writes to while it
is read here; the last component is still opened with O_NOFOLLOW.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from binder_lite.errors import EnvironmentSpecError

CONFIG_LIMIT = 1 << 20  # bytes: configuration files are small; a larger one is refused
MAX_SYMLINKS = 40  # as Linux's own bound on symlinks in one lookup

LEAVES = "a symlink that leaves the repository is not followed"
OUTSIDE = "a path outside the repository is not read"


class RepositoryFileError(EnvironmentSpecError):
    """A repository file that is refused; `reason` says why without naming the file,
    so that a caller can name it its own way (by line number, for an include)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


@dataclass(frozen=True)
class RepoFile:
    name: str  # as asked for, relative to the checkout
    real: PurePosixPath  # where it really is, relative to the checkout
    path: Path  # that place on disk
    text: str


@dataclass(frozen=True)
class RepoTree:
    """A checkout, read only through `resolve`, `directory` and `read`."""

    root: Path

    def resolve(self, name: str | PurePosixPath) -> PurePosixPath | None:
        """Where `name` really is, relative to the root, following symlinks only while
        they stay inside; None when nothing is there.  Raises RepositoryFileError for a
        path or symlink leading out of the checkout, or into `.git`."""
        asked = PurePosixPath(name)
        if asked.is_absolute():
            raise RepositoryFileError(str(asked), OUTSIDE)
        # (component, whether a symlink's target brought it): that decides the words.
        todo = [(part, False) for part in reversed(asked.parts)]
        done: list[str] = []  # real directories below the root, no symlinks among them
        hops = 0
        while todo:
            part, linked = todo.pop()
            if part == ".":
                continue
            if part == "..":
                if not done:
                    raise RepositoryFileError(str(asked), LEAVES if linked else OUTSIDE)
                done.pop()
                continue
            here = self.root.joinpath(*done, part)
            try:
                mode = os.lstat(here).st_mode
                target = os.readlink(here) if stat.S_ISLNK(mode) else None
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                raise RepositoryFileError(str(asked), f"cannot be read ({e.strerror})") from None
            if target is None:
                done.append(part)
                continue
            hops += 1
            if hops > MAX_SYMLINKS:
                raise RepositoryFileError(str(asked), "too many levels of symlinks")
            if target.startswith("/"):
                raise RepositoryFileError(str(asked), LEAVES)
            todo.extend((p, True) for p in reversed(PurePosixPath(target).parts))
        if ".git" in done:
            raise RepositoryFileError(str(asked), "files inside .git are not read")
        return PurePosixPath(*done)

    def directory(self, name: str | PurePosixPath) -> PurePosixPath | None:
        """`name`, resolved, when it is a directory inside the checkout."""
        real = self.resolve(name)
        if real is None or not stat.S_ISDIR(os.lstat(self.root / real).st_mode):
            return None
        return real

    def read(self, name: str | PurePosixPath, limit: int = CONFIG_LIMIT) -> RepoFile | None:
        """The text of `name`, a regular file inside the checkout of at most `limit`
        bytes in UTF-8; None when there is no such file (or a directory is there)."""
        real = self.resolve(name)
        if real is None:
            return None
        path = self.root / real
        shown = str(PurePosixPath(name))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except IsADirectoryError:
            return None
        except OSError as e:
            raise RepositoryFileError(shown, f"cannot be read ({e.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISDIR(info.st_mode):
                return None
            if not stat.S_ISREG(info.st_mode):
                raise RepositoryFileError(shown, "not a regular file; not read")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise RepositoryFileError(shown, f"larger than {_size(limit)}; not read")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RepositoryFileError(shown, f"not UTF-8 text (byte {e.start})") from None
        return RepoFile(shown, real, path, text.removeprefix("\ufeff"))  # an editor's BOM


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit} B"
