"""/s/<id>/…: HTTP and websockets to a session's Jupyter on 127.0.0.1, for its owner.

Jupyter only ever sees requests from here: the proxy adds the session's token
(browsers never need it), rewrites Host and Origin to the loopback address Jupyter
listens on, and keeps binder-lite's own cookies to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import urllib.parse

from tornado import httpclient, httputil, websocket
from tornado.websocket import WebSocketClientConnection, WebSocketHandler

from binder_lite.web.base import BaseMixin
from binder_lite.web.manager import SessionManager
from binder_lite.web.store import Record
from binder_lite.web.upstream import Pool, UpstreamError

log = logging.getLogger(__name__)

# Hop-by-hop headers are the proxy's business, not the upstream's.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})  # fmt: skip
MAX_BODY = 512 * 1024 * 1024
# Set by the proxy itself.
REPLACED = frozenset({"authorization", "x-forwarded-proto"})


POOL = Pool()


class ProxyHandler(BaseMixin, WebSocketHandler):
    """One handler for both kinds: a websocket upgrade is proxied as a websocket."""

    upstream: WebSocketClientConnection | None = None
    record: Record

    def check_xsrf_cookie(self) -> None:
        # Jupyter checks its own XSRF cookie; binder-lite's does not apply below /s/.
        pass

    def compute_etag(self) -> None:
        # Jupyter sends its own ETags; hashing every proxied body again costs time.
        return None

    def _authorised(self, session_id: str) -> Record | None:
        return authorise(self.manager, session_id, self.identity(create=False).id,
                         self.auth_off, token_in(self.request))  # fmt: skip

    def _upstream_url(self, scheme: str, session_id: str, path: str) -> str:
        query = f"?{self.request.query}" if self.request.query else ""
        return f"{scheme}://127.0.0.1:{self.record.port}/s/{session_id}/{path}{query}"

    def _upstream_headers(self) -> list[tuple[str, str]]:
        return upstream_headers(self.request, self.record)

    def _begin(self, session_id: str) -> bool:
        """Find the caller's session, or answer 404 (the same for "not yours")."""
        record = self._authorised(session_id)
        if record is None:
            self.send_error(404)
            return False
        self.record = record
        self.manager.touch(session_id)
        return True

    async def get(self, session_id: str, path: str) -> None:
        if not self._begin(session_id):
            return
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await WebSocketHandler.get(self, session_id, path)
            return
        await self._proxy_http(session_id, path)

    async def _proxy_http(self, session_id: str, path: str) -> None:
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH", "DELETE") else None
        query = f"?{self.request.query}" if self.request.query else ""
        assert self.record.port is not None
        try:
            response = await POOL.request(
                self.record.port, method, f"/s/{session_id}/{path}{query}",
                self._upstream_headers(), body,
            )  # fmt: skip
        except (OSError, UpstreamError, TimeoutError):
            POOL.forget(self.record.port)
            self.send_error(502)
            return
        self.set_status(response.status, response.reason or None)
        self._headers = httputil.HTTPHeaders()  # nothing of tornado's defaults
        for name, value in response.headers:
            if name.lower() not in HOP_BY_HOP:
                self.add_header(name, value)
        if response.body:
            self.write(response.body)
        self.finish()

    async def post(self, session_id: str, path: str) -> None:
        # Plain HTTP normally takes the fast path (fastpath.py); this serves an
        # application run without it.
        if self._begin(session_id):
            await self._proxy_http(session_id, path)

    put = patch = delete = head = options = post

    # -- websockets --------------------------------------------------------------

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return subprotocols[0] if subprotocols else None

    async def open(self, session_id: str, path: str) -> None:
        headers = httputil.HTTPHeaders()
        for name, value in self._upstream_headers():
            headers.add(name, value)
        request = httpclient.HTTPRequest(
            self._upstream_url("ws", session_id, path), headers=headers, request_timeout=30
        )
        protocols = self.request.headers.get("Sec-WebSocket-Protocol")
        subprotocols = [p.strip() for p in protocols.split(",")] if protocols else None
        try:
            self.upstream = await websocket.websocket_connect(
                request, on_message_callback=self._from_upstream, subprotocols=subprotocols,
                max_message_size=MAX_BODY,
            )  # fmt: skip
        except (OSError, httpclient.HTTPClientError, websocket.WebSocketError) as e:
            log.warning("session %s: websocket upstream failed: %s", session_id, e)
            self.close(1011, "the notebook server is not reachable")

    def _from_upstream(self, message: str | bytes | None) -> None:
        if message is None:
            self.close()
            return
        self.manager.touch(self.record.id)
        with contextlib.suppress(websocket.WebSocketClosedError):
            self.write_message(message, binary=isinstance(message, bytes))

    async def on_message(self, message: str | bytes) -> None:
        self.manager.touch(self.record.id)
        while self.upstream is None and self.ws_connection is not None:
            await asyncio.sleep(0.01)  # the upstream connection is still being opened
        if self.upstream is not None:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()

    def on_ping(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.ping(data)


def authorise(
    manager: SessionManager, session_id: str, identity: str, auth_off: bool, token: str | None
) -> Record | None:
    """The running session `session_id` if the caller may use it, else None."""
    record = manager.running.get(session_id)
    if record is None or record.port is None:
        return None
    if record.owner == identity:
        return record
    # Without logins, BinderHub clients hold the token instead of a cookie.
    if auth_off and record.token and token and hmac.compare_digest(token, record.token):
        return record
    return None


def token_in(request: httputil.HTTPServerRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("token "):
        return header[6:].strip()
    values = urllib.parse.parse_qs(request.query).get("token")
    return values[0] if values else None


def upstream_headers(request: httputil.HTTPServerRequest, record: Record) -> list[tuple[str, str]]:
    """The request's headers as Jupyter gets them (see the module's docstring)."""
    local = f"127.0.0.1:{record.port}"
    headers = [("Host", local), ("Authorization", f"token {record.token}"),
               ("X-Forwarded-Proto", request.protocol)]  # fmt: skip
    for name, value in request.headers.get_all():
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in REPLACED or lowered.startswith("sec-websocket"):
            continue
        if lowered == "cookie":
            value = _without_our_cookies(value)
            if not value:
                continue
        elif lowered == "origin":
            value = f"http://{local}"
        headers.append((name, value))
    return headers


def _without_our_cookies(header: str) -> str:
    kept = [c for c in header.split(";") if not c.strip().startswith("binder-lite")]
    return ";".join(kept).strip()
