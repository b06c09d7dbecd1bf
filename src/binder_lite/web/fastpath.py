"""Plain HTTP requests to /s/<id>/ handled below tornado's RequestHandler.

A notebook page makes dozens of requests through the proxy and every kernel API call
is one; tornado's handler machinery (routing, handler objects, header objects,
logging) costs about as much as Jupyter's own work on a small request.  This
delegate serves those requests with the same rules as ProxyHandler (which still
takes websockets, and everything else goes to the application as usual).
"""

from __future__ import annotations

import asyncio
import http.cookies
import logging
import re

from tornado import httputil
from tornado.web import Application, decode_signed_value

from binder_lite.web.auth import Identity
from binder_lite.web.base import USER_COOKIE, Service
from binder_lite.web.proxy import HOP_BY_HOP, POOL, authorise, token_in, upstream_headers
from binder_lite.web.upstream import UpstreamError

log = logging.getLogger(__name__)

_PATH = re.compile(r"/s/([0-9a-f]{16})/(.*)")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Router(httputil.HTTPServerConnectionDelegate):
    def __init__(self, app: Application) -> None:
        self.app = app

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Dispatch(self.app, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _Dispatch(httputil.HTTPMessageDelegate):
    """Chooses, once the headers are in, who handles the request."""

    def __init__(
        self, app: Application, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> None:
        self.app, self.server_conn, self.request_conn = app, server_conn, request_conn
        self.delegate: httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        upgrade = headers.get("Upgrade", "").lower() == "websocket"
        if start_line.path.startswith("/s/") and not upgrade:
            self.delegate = _Proxy(self.app, self.request_conn, start_line, headers)
        else:
            self.delegate = self.app.start_request(self.server_conn, self.request_conn)
        return self.delegate.headers_received(start_line, headers)  # type: ignore[return-value]

    def data_received(self, chunk: bytes) -> None:
        assert self.delegate is not None
        return self.delegate.data_received(chunk)  # type: ignore[return-value]

    def finish(self) -> None:
        assert self.delegate is not None
        self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()


class _Proxy(httputil.HTTPMessageDelegate):
    def __init__(
        self, app: Application, conn: httputil.HTTPConnection,
        start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
    ) -> None:  # fmt: skip
        self.app = app
        self.conn = conn
        self.request = httputil.HTTPServerRequest(connection=conn, start_line=start_line,
                                                  headers=headers)  # fmt: skip
        self.chunks: list[bytes] = []

    def headers_received(self, start_line: object, headers: object) -> None:
        pass

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        task = asyncio.ensure_future(self._respond())
        task.add_done_callback(_log_failure)

    def on_connection_close(self) -> None:
        self.chunks.clear()

    async def _respond(self) -> None:
        service: Service = self.app.settings["service"]
        m = _PATH.fullmatch(self.request.path)
        record = None
        if m:
            identity = self._identity(service)
            record = authorise(service.manager, m.group(1), identity, service.oauth is None,
                               token_in(self.request))  # fmt: skip
        if record is None or record.port is None or m is None:
            self._reply(404, "Not Found", [("Content-Type", "text/plain")], b"not found\n")
            return
        service.manager.touch(record.id)
        method = self.request.method or "GET"
        body = b"".join(self.chunks) if method in BODY_METHODS else None
        target = self.request.uri or self.request.path
        try:
            response = await POOL.request(record.port, method, target,
                                          upstream_headers(self.request, record), body)  # fmt: skip
        except (OSError, UpstreamError, TimeoutError):
            POOL.forget(record.port)
            self._reply(502, "Bad Gateway", [("Content-Type", "text/plain")],
                        b"the notebook server is not answering\n")  # fmt: skip
            return
        headers = [(n, v) for n, v in response.headers if n.lower() not in HOP_BY_HOP]
        self._reply(response.status, response.reason, headers, response.body)

    def _identity(self, service: Service) -> str:
        raw = self.request.headers.get("Cookie")
        if not raw:
            return ""
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        try:
            jar.load(raw)
        except http.cookies.CookieError:
            return ""
        morsel = jar.get(USER_COOKIE)
        if morsel is None:
            return ""
        value = decode_signed_value(self.app.settings["cookie_secret"], USER_COOKIE,
                                    morsel.value, max_age_days=30)  # fmt: skip
        identity = Identity.from_cookie(value) if value else None
        return identity.id if identity else ""

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        out = httputil.HTTPHeaders()
        for name, value in headers:
            out.add(name, value)
        if self.request.method == "HEAD" or status in (204, 304):
            body = b""
        else:
            out["Content-Length"] = str(len(body))
        self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, reason), out, body)
        self.conn.finish()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("proxying failed", exc_info=task.exception())
