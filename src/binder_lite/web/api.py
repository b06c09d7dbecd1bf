"""The REST API under /api/v1/, described by openapi.yaml (served as JSON).

Sessions come from a git repository, or from files sent in the request: those become a
fresh git repository under the state directory, committed and launched as any other
(the same sandbox, limits and provenance).  Callers are API tokens (tokens.py); on a
site without logins, a caller without one is an anonymous visitor as on the web form.

No XSRF token is asked for: a token-bearing request carries no ambient credential, and
an anonymous one (logins off) must be JSON or a DELETE, which a page of another origin
can send only after a preflight the front answers for listed origins alone; its
SameSite=Lax cookie is not sent with such a request anyway."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from tornado.web import HTTPError

from binder_lite.errors import CommandError, LaunchError
from binder_lite.run import run
from binder_lite.sent import MAX_CONTENT, MAX_FILES, MAX_PATH, path_refused
from binder_lite.web.base import BaseMixin
from binder_lite.web.handlers import SSEMixin
from binder_lite.web.manager import CapacityError
from binder_lite.web.policy import RefusedError
from binder_lite.web.store import Record
from binder_lite.web.tokens import api_tokens

MAX_REQUEST = MAX_CONTENT * 3 // 2 + 1024**2  # base64 and JSON around them
ENVIRONMENT_FILES = ("manifest.scm", "requirements.txt")

_MESSAGES = {
    400: ("bad_request", "The request was not understood."),
    401: ("unauthorized", "Send a valid API token: Authorization: Bearer TOKEN."),
    404: ("not_found", "There is nothing here, or it is not yours."),
    405: ("method_not_allowed", "This method is not allowed here."),
    413: ("too_large", "The request is too large."),
    415: ("unsupported_media_type", "Send JSON: Content-Type: application/json."),
    503: ("capacity", "No room for another session now."),
}


class ApiError(HTTPError):
    """An answer other than success: its status, code and message go out as JSON (an
    HTTPError: tornado answers it without logging a traceback)."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        default_code, default_message = _MESSAGES.get(status, ("internal", "Internal error."))
        super().__init__(status)
        self.message = message or default_message
        self.code = code or default_code
        self.retry_after = retry_after


@cache
def openapi() -> dict[str, Any]:
    text = resources.files("binder_lite.web").joinpath("openapi.yaml").read_text("utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


# -- who is asking -------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCaller:
    owner: str
    client: str | None  # an anonymous visitor's address, counted like the web form's


class ApiMixin(BaseMixin):
    caller: ApiCaller

    def check_xsrf_cookie(self) -> None:
        """See the module's docstring."""

    def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        header = self.request.headers.get("Authorization")
        if header is not None:
            scheme, _, secret = header.partition(" ")
            found = api_tokens(self).caller(secret.strip()) if scheme.lower() == "bearer" else None
            if found is None:
                raise ApiError(401, "this API token is unknown, revoked or expired")
            self.caller = ApiCaller(found.owner, None)
        elif self.auth_off:
            identity = self.identity()
            self.caller = ApiCaller(identity.id, self.request.remote_ip)
        else:
            raise ApiError(401)

    def answer(self, data: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, ApiError):
            exc = ApiError(status_code)
        # Headers go here: tornado clears those set before an error.
        if exc.status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="binder-lite"')
        if exc.retry_after is not None:
            self.set_header("Retry-After", str(exc.retry_after))
        # A 500's details are in the log, not the answer.
        self.answer({"error": {"code": exc.code, "message": exc.message}}, exc.status_code)

    def owned(self, session_id: str) -> Record:
        record = self.manager.store.get(session_id)
        if record is None or record.owner != self.caller.owner:
            raise ApiError(404)  # the same answer for "not there" and "not yours"
        return record

    def describe(self, record: Record) -> dict[str, Any]:
        origins = self.service.origins
        api = f"{origins.service}/api/v1/sessions/{record.id}"
        urls = {
            "api": api,
            "events": f"{api}/events",
            "page": f"{origins.service}/sessions/{record.id}",
        }
        running = record.status == "running" and record.token
        if running:
            urls["server"] = origins.session_url(record.id)
            urls["open"] = (
                origins.session_url(record.id, record.view or "") + f"?token={record.token}"
            )
        return {
            "id": record.id,
            "status": record.status,
            "message": record.message,
            "repository": record.repository,
            "ref": record.ref,
            "open": record.open_path,
            "commit": record.commit_sha,
            "created": record.created,
            "ready": record.ready,
            "stopped": record.stopped,
            "provenance": record.provenance_dict() or None,
            "token": record.token if running else None,
            "urls": urls,
        }


# -- handlers ----------------------------------------------------------------------------


class OpenApiHandler(BaseMixin):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(openapi()))


class SessionsApiHandler(ApiMixin):
    def get(self) -> None:
        records = self.manager.store.owned_by(self.caller.owner)
        self.answer({"sessions": [self.describe(r) for r in records]})

    async def post(self) -> None:
        body = self._body()
        open_path = body.get("open")
        if open_path is not None and not isinstance(open_path, str):
            raise ApiError(400, "`open` must be a path")
        loop = asyncio.get_running_loop()
        try:
            if "files" in body:
                files = read_files(body)
                session_id = await loop.run_in_executor(None, self._from_files, files, open_path)
            else:
                repo, ref = _repository(body)
                session_id = await loop.run_in_executor(
                    None, self._from_repository, repo, ref, open_path
                )
        except RefusedError as e:
            raise ApiError(400, str(e), "refused") from None
        except LaunchError as e:
            raise ApiError(400, str(e)) from None
        except CapacityError as e:
            raise ApiError(503, str(e), retry_after=e.retry_after) from None
        record = self.manager.store.get(session_id)
        assert record is not None
        self.set_header("Location", f"/api/v1/sessions/{session_id}")
        self.answer(self.describe(record), 201)

    def _body(self) -> dict[str, Any]:
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type.lower() != "application/json":
            raise ApiError(415)
        if len(self.request.body) > MAX_REQUEST:
            raise ApiError(413, f"a request may have at most {MAX_REQUEST // 1024**2} MiB")
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _from_repository(self, repo: str, ref: str, open_path: str | None) -> str:
        admitted = self.service.policy.admit(repo)
        return self.manager.request(
            self.caller.owner,
            admitted.url,
            ref,
            open_path,
            client=self.caller.client,
            pin=admitted.pin,
        )

    def _from_files(self, files: list[tuple[str, bytes]], open_path: str | None) -> str:
        folder = self.service.state_dir / "uploads" / secrets.token_hex(8)
        try:
            commit_files(folder, files)
            # The service's own repository: no policy to ask, no host to pin.
            return self.manager.request(
                self.caller.owner, f"file://{folder}", "HEAD", open_path, client=self.caller.client
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise


class SessionApiHandler(ApiMixin):
    def get(self, session_id: str) -> None:
        self.answer(self.describe(self.owned(session_id)))

    async def delete(self, session_id: str) -> None:
        record = self.owned(session_id)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.manager.stop, record.id)
        stopped = self.manager.store.get(record.id)
        assert stopped is not None
        self.answer(self.describe(stopped))


class EventsApiHandler(SSEMixin, ApiMixin):
    async def get(self, session_id: str) -> None:
        record = self.owned(session_id)
        if record.id in self.manager.live and record.status in ("pending", "running"):
            await self.stream_session(record, with_token=True)
            return
        # Over (or adopted after a restart): one event says how it ended.
        self.start_stream()
        phase = {"running": "ready", "failed": "failed"}.get(record.status, "stopped")
        event: dict[str, Any] = {"phase": phase, "message": record.message + "\n"}
        if phase == "ready":
            described = self.describe(record)
            event.update(url=described["urls"]["server"], token=record.token)
            event["view"] = self.service.origins.session_url(record.id, record.view or "")
        await self.send(event)
        self.finish()


class NotFoundApiHandler(ApiMixin):
    def prepare(self) -> None:
        raise ApiError(404, "no such API endpoint")


# -- sessions from files -----------------------------------------------------------------


def _repository(body: dict[str, Any]) -> tuple[str, str]:
    repo, ref = body.get("repo"), body.get("ref", "HEAD")
    if not isinstance(repo, str) or not repo.strip():
        raise ApiError(400, "send `repo` (a git repository's URL) or `files`")
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(400, "`ref` must be a branch, tag or commit")
    return repo.strip(), ref.strip()


def read_files(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The files of a request, checked: relative paths inside the repository, each once,
    within the bounds, with an environment file at the top."""
    items = body.get("files")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "`files` must be a list of files")
    if len(items) > MAX_FILES:
        raise ApiError(413, f"at most {MAX_FILES} files")
    files: list[tuple[str, bytes]] = []
    total = 0
    for item in items:
        path, content = _file(item)
        total += len(content)
        if total > MAX_CONTENT:
            raise ApiError(413, f"at most {MAX_CONTENT // 1024**2} MiB of files")
        files.append((path, content))
    paths = [p for p, _ in files]
    if len(set(paths)) != len(paths):
        raise ApiError(400, "a path was sent twice")
    if not set(ENVIRONMENT_FILES) & set(paths):
        raise ApiError(400, "send a manifest.scm or a requirements.txt with the files")
    return files


def _file(item: object) -> tuple[str, bytes]:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise ApiError(400, "each file needs a `path`")
    path = check_path(item["path"])
    text, encoded = item.get("content"), item.get("content_base64")
    if (text is None) == (encoded is None):
        raise ApiError(400, f"{path}: send either `content` or `content_base64`")
    if isinstance(text, str):
        return path, text.encode("utf-8")
    if isinstance(encoded, str):
        try:
            return path, base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{path}: `content_base64` is not base64") from None
    raise ApiError(400, f"{path}: the content must be a string")


def check_path(path: str) -> str:
    """A relative path with `/` between its parts, none empty, `.`, `..` or `.git`."""
    if path_refused(path):
        raise ApiError(400, f"{path[:MAX_PATH]!r}: not a relative path inside the repository")
    return path


def commit_files(folder: Path, files: list[tuple[str, bytes]]) -> None:
    """Write `files` into a new git repository at `folder` and commit them.  Only regular
    files and folders are made, each new (O_EXCL, O_NOFOLLOW): nothing sent can name a
    link or reach outside."""
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    for path, content in files:
        target = folder / path
        try:
            _make_parents(folder, target.parent)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise ApiError(400, f"{path}: a file and a folder of the same name") from None
        with os.fdopen(fd, "wb") as f:
            f.write(content)
    env = {
        "GIT_AUTHOR_NAME": "binder-lite API",
        "GIT_AUTHOR_EMAIL": "binder-lite@localhost",
        "GIT_COMMITTER_NAME": "binder-lite API",
        "GIT_COMMITTER_EMAIL": "binder-lite@localhost",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    git = ["git", "-C", str(folder), "-c", "core.hooksPath=/dev/null"]
    try:
        run([*git, "init", "-q", "-b", "main"], env=env)
        run([*git, "add", "-A"], env=env)
        run([*git, "commit", "-q", "-m", "Files sent to the API"], env=env)
    except CommandError as e:
        raise LaunchError(f"could not commit the files: {e}") from e


def _make_parents(root: Path, parent: Path) -> None:
    """Folders from `root` down to `parent`, each a real folder (never a link)."""
    current = root
    for part in parent.relative_to(root).parts:
        current = current / part
        try:
            current.mkdir(mode=0o755)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise NotADirectoryError(current) from None


API_ROUTES: list[tuple[str, type]] = [
    (r"/api/v1/openapi\.json", OpenApiHandler),
    (r"/api/v1/sessions", SessionsApiHandler),
    (r"/api/v1/sessions/([0-9a-f]{16})", SessionApiHandler),
    (r"/api/v1/sessions/([0-9a-f]{16})/events", EventsApiHandler),
    (r"/api/v1/.*", NotFoundApiHandler),
]
