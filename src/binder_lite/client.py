"""A client of a binder-lite service's REST API (/api/v1/, web/openapi.yaml), standard
library only, so a script or another service can launch notebooks with it:

    client = Client("https://binder.example.org", token=TOKEN)
    session = client.launch_files(["analysis.ipynb", "requirements.txt"])
    print(client.wait_ready(session.id, timeout=600).open_url)

Every failure is a RemoteError (the API's error code and message) or, for files that
cannot be sent, a UsageError raised before anything is sent."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binder_lite.errors import RemoteError, UsageError
from binder_lite.sent import MAX_CONTENT, MAX_FILES, path_refused

# The service's bounds on files sent (sent.py) are checked here first, so a user hears
# about them before a large upload, not after.
ENVIRONMENT_FILES = ("manifest.scm", "requirements.txt")
TIMEOUT = 30.0  # seconds for one request; the event stream has a heartbeat every 15

Files = Sequence[str | os.PathLike[str]] | Mapping[str, str | bytes]


@dataclass(frozen=True)
class Session:
    """A session as the API describes it (the `Session` schema)."""

    id: str
    status: str  # pending, running, stopped, failed
    message: str
    repository: str
    ref: str
    open: str | None
    commit: str | None
    created: float
    ready: float | None
    stopped: float | None
    provenance: Mapping[str, Any] | None
    token: str | None
    urls: Mapping[str, str]

    @property
    def open_url(self) -> str | None:
        """The view to open, with its token (it works in any browser), while it runs."""
        return self.urls.get("open")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Session:
        return cls(
            id=data["id"],
            status=data["status"],
            message=data["message"],
            repository=data["repository"],
            ref=data["ref"],
            open=data["open"],
            commit=data["commit"],
            created=data["created"],
            ready=data["ready"],
            stopped=data["stopped"],
            provenance=data["provenance"],
            token=data["token"],
            urls=dict(data["urls"]),
        )


@dataclass(frozen=True)
class Event:
    """One progress event of a launch (the `Event` schema); `data` is all it said."""

    phase: str  # fetching, building, launching, ready, failed, stopped
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.phase in ("ready", "failed", "stopped")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Client:
    """The API of the service at `url`, as the owner of `token` (or, on a site without
    logins and without a token, as an anonymous visitor known by its cookie)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"{url}: not the http(s) URL of a binder-lite service")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    # -- sessions --------------------------------------------------------------------

    def launch(self, repo: str, ref: str | None = None, open: str | None = None) -> Session:
        """Start a session from a git repository (a branch, tag or commit `ref`)."""
        body: dict[str, Any] = {"repo": repo}
        if ref is not None:
            body["ref"] = ref
        return self._create(body, open)

    def launch_files(
        self, files: Files, *, root: str | os.PathLike[str] | None = None, open: str | None = None
    ) -> Session:
        """Start a session from files: paths on disk (files or folders, inside `root`,
        which is the one folder given or else the current directory), or a mapping of
        relative paths to contents.  A manifest.scm or requirements.txt must be among
        them, at the top."""
        if isinstance(files, Mapping):
            found = [(check_path(p), _bytes(c)) for p, c in files.items()]
        else:
            found = read_files(files, root)
        check_files(found)
        return self._create({"files": [_file_json(p, c) for p, c in found]}, open)

    def session(self, session_id: str) -> Session:
        return Session.from_json(self._json("GET", f"/api/v1/sessions/{_id(session_id)}"))

    def sessions(self) -> list[Session]:
        return [Session.from_json(s) for s in self._json("GET", "/api/v1/sessions")["sessions"]]

    def stop(self, session_id: str) -> Session:
        return Session.from_json(self._json("DELETE", f"/api/v1/sessions/{_id(session_id)}"))

    def events(self, session_id: str, timeout: float | None = None) -> Iterator[Event]:
        """The launch's progress, from its first event to `ready`, `failed` or
        `stopped`; a read waits at most `timeout` seconds (the client's by default)."""
        for event in self._stream(session_id, timeout or self.timeout):
            if event is not None:
                yield event

    def wait_ready(
        self,
        session_id: str,
        timeout: float = 600.0,
        on_event: Callable[[Event], None] | None = None,
    ) -> Session:
        """Follow the launch until it is ready (then the session, with its URLs), or
        raise RemoteError: `failed`, `stopped` or `timeout` after `timeout` seconds.
        `on_event(event)`, when given, sees every event on the way."""
        deadline = time.monotonic() + timeout
        where = f"{self.url}/api/v1/sessions/{session_id}"
        for event in self._stream(session_id, min(self.timeout, timeout), deadline):
            if time.monotonic() > deadline:
                break
            if event is None:
                continue
            if on_event is not None:
                on_event(event)
            if event.phase == "ready":
                return self.session(session_id)
            if event.final:
                raise RemoteError(where, event.phase, event.message.strip() or event.phase)
        else:
            if time.monotonic() <= deadline:
                raise RemoteError(where, "protocol", "the event stream ended before ready")
        raise RemoteError(where, "timeout", f"not ready within {timeout:g} seconds")

    # -- HTTP --------------------------------------------------------------------------

    def _create(self, body: dict[str, Any], open: str | None) -> Session:
        if open is not None:
            body["open"] = open
        return Session.from_json(self._json("POST", "/api/v1/sessions", body))

    def _json(self, method: str, path: str, body: object = None) -> Any:
        answer = self._request(method, path, body)
        try:
            return json.loads(answer.body)
        except ValueError:
            raise RemoteError(self.url + path, "protocol", "the answer is not JSON") from None

    def _headers(self, body: bytes | None, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _request(self, method: str, path: str, body: object = None) -> Answer:
        """One request and its whole answer; any status but 2xx raises RemoteError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self._headers(data)
        )
        with closing(self._open(request, self.timeout)) as response:
            return Answer(response.status, dict(response.headers), _read(response, self.url))

    def _open(self, request: urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
        url = request.full_url
        try:
            response: http.client.HTTPResponse = self._opener.open(request, timeout=timeout)
            return response
        except urllib.error.HTTPError as e:
            raise _refusal(url, e.code, e.read()) from None
        except urllib.error.URLError as e:
            reason = getattr(e.reason, "strerror", None) or str(e.reason)
            message = f"cannot reach the service: {reason}"
            raise RemoteError(self.url, "unreachable", message) from None
        except TimeoutError:
            raise RemoteError(url, "timeout", f"no answer within {timeout:g} seconds") from None
        except (http.client.HTTPException, OSError) as e:
            raise RemoteError(self.url, "unreachable", f"cannot reach the service: {e}") from None

    def _stream(
        self, session_id: str, timeout: float, deadline: float | None = None
    ) -> Iterator[Event | None]:
        """The event stream: events, and None for each heartbeat (so that a caller
        with a deadline looks at the clock at least every heartbeat)."""
        path = f"/api/v1/sessions/{_id(session_id)}/events"
        request = urllib.request.Request(
            self.url + path, headers=self._headers(None, "text/event-stream")
        )
        with closing(self._open(request, timeout)) as response:
            data: list[str] = []
            while True:
                try:
                    raw = response.readline()
                except TimeoutError:
                    if deadline is not None and time.monotonic() > deadline:
                        return  # the caller's deadline says what happened
                    raise RemoteError(
                        self.url + path, "timeout", f"no event within {timeout:g} seconds"
                    ) from None
                except (http.client.HTTPException, OSError) as e:
                    raise RemoteError(self.url, "unreachable", f"the stream broke: {e}") from None
                if not raw:
                    return
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line.startswith(":"):
                    yield None
                elif not line and data:
                    yield _event(self.url + path, "\n".join(data))
                    data = []


# -- files ---------------------------------------------------------------------------


def check_path(path: str) -> str:
    """The service's rule (web/api.py): relative, `/` between parts, none empty, `.`,
    `..` or `.git`."""
    if path_refused(path):
        raise UsageError(f"{path!r}: not a relative path inside the folder sent")
    return path


def check_files(files: Sequence[tuple[str, bytes]]) -> None:
    """What the service would refuse, refused before sending."""
    if not files:
        raise UsageError("no files to send")
    if len(files) > MAX_FILES:
        raise UsageError(f"{len(files)} files: the service takes at most {MAX_FILES}")
    total = sum(len(content) for _, content in files)
    if total > MAX_CONTENT:
        raise UsageError(f"{total} bytes of files: the service takes {MAX_CONTENT // 1024**2} MiB")
    paths = [p for p, _ in files]
    if len(set(paths)) != len(paths):
        raise UsageError("a path is there twice")
    if not set(ENVIRONMENT_FILES) & set(paths):
        raise UsageError("send a manifest.scm or a requirements.txt at the top of the files")


def read_files(
    paths: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str] | None = None
) -> list[tuple[str, bytes]]:
    """The files at `paths` (folders: every file in them, leaving out `.git`), each
    named relative to `root`.  Like the service, only regular files inside `root` are
    sent: a symbolic link or a path outside is refused, not followed."""
    if root is None:
        one = Path(paths[0]) if len(paths) == 1 else None
        root = one if one is not None and one.is_dir() and not one.is_symlink() else Path()
    top = Path(os.path.abspath(root))
    if not top.is_dir():
        raise UsageError(f"{root}: not a folder")
    found: dict[str, bytes] = {}
    for given in paths:
        target = Path(os.path.abspath(given))  # lexical: `..` cannot climb out unseen
        if not target.is_relative_to(top):
            raise UsageError(f"{given}: outside the folder sent ({top})")
        _refuse_links(top, target, given)
        for path in _walk(top, target):
            relative = path.relative_to(top).as_posix()
            found[check_path(relative)] = path.read_bytes()
    return sorted(found.items())


def _refuse_links(top: Path, target: Path, given: object) -> None:
    """Every part from below `top` down to `target` is a real file or folder."""
    current = top
    for part in target.relative_to(top).parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError as e:
            raise UsageError(f"{given}: {e.strerror}") from None
        if stat.S_ISLNK(mode):
            raise UsageError(f"{current}: a symbolic link; send the file it names instead")


def _walk(top: Path, target: Path) -> Iterator[Path]:
    mode = target.lstat().st_mode
    if stat.S_ISREG(mode):
        yield target
    elif stat.S_ISDIR(mode):
        for child in sorted(target.iterdir()):
            if child.name.lower() == ".git" and child.is_dir():
                continue  # the service makes the repository itself
            if child.is_symlink():
                raise UsageError(f"{child}: a symbolic link; send the file it names instead")
            yield from _walk(top, child)
    elif target != top:
        raise UsageError(f"{target}: not a regular file")


def _bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _file_json(path: str, content: bytes) -> dict[str, str]:
    try:
        return {"path": path, "content": content.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": path, "content_base64": b64encode(content).decode("ascii")}


# -- answers -------------------------------------------------------------------------


def _id(session_id: str) -> str:
    if len(session_id) != 16 or any(c not in "0123456789abcdef" for c in session_id):
        raise UsageError(f"{session_id!r}: not a session ID (16 hexadecimal digits)")
    return session_id


def _read(response: http.client.HTTPResponse, url: str) -> bytes:
    try:
        return response.read()
    except (http.client.HTTPException, OSError) as e:
        raise RemoteError(url, "unreachable", f"the answer broke off: {e}") from None


def _refusal(url: str, status: int, body: bytes) -> RemoteError:
    """The API's `{"error": {"code", "message"}}`, or what a proxy in front said."""
    try:
        error = json.loads(body)["error"]
        return RemoteError(url, str(error["code"]), str(error["message"]), status)
    except (ValueError, KeyError, TypeError):
        return RemoteError(url, "http_error", f"HTTP {status} (not binder-lite's API?)", status)


def _event(url: str, data: str) -> Event:
    try:
        parsed = json.loads(data)
        return Event(str(parsed["phase"]), str(parsed.get("message", "")), parsed)
    except (ValueError, KeyError, TypeError):
        raise RemoteError(url, "protocol", "an event that is not binder-lite's") from None
