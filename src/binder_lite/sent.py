"""What the API takes as files sent to it, shared by the service (web/api.py) and the
client (client.py), which checks before sending without importing the service."""

from __future__ import annotations

MAX_FILES = 100
MAX_CONTENT = 16 * 1024**2  # bytes of files' content, decoded
MAX_PATH = 255


def path_refused(path: str) -> bool:
    """True unless `path` is relative with `/` between its parts, none of them empty,
    `.`, `..` or `.git` (any case), and no backslash or NUL."""
    parts = path.split("/")
    return (
        len(path) > MAX_PATH
        or path.startswith("/")
        or any(c in path for c in "\\\x00")
        or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts)
    )
