"""/s/<id>/…: HTTP and websockets to a session's Jupyter on 127.0.0.1, for its owner.

Jupyter only ever sees requests from here: the proxy adds the session's token
(browsers never need it), rewrites Host and Origin to the loopback address Jupyter
listens on, and keeps binder-lite's own cookies to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tornado import httpclient, httputil, websocket
from tornado.websocket import WebSocketClientConnection, WebSocketHandler

from binder_lite.web.base import BaseMixin
from binder_lite.web.store import Record

log = logging.getLogger(__name__)

# Hop-by-hop headers are the proxy's business, not the upstream's.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})  # fmt: skip
MAX_BODY = 512 * 1024 * 1024


class ProxyHandler(BaseMixin, WebSocketHandler):
    """One handler for both kinds: a websocket upgrade is proxied as a websocket."""

    upstream: WebSocketClientConnection | None = None
    record: Record

    def check_xsrf_cookie(self) -> None:
        # Jupyter checks its own XSRF cookie; binder-lite's does not apply below /s/.
        pass

    def _authorised(self, session_id: str) -> Record | None:
        record = self.manager.store.get(session_id)
        if record is None or record.status != "running" or record.port is None:
            return None
        if record.owner == self.identity().id:
            return record
        # Without logins, BinderHub clients hold the token instead of a cookie.
        if self.auth_off and record.token and self._token_in_request() == record.token:
            return record
        return None

    def _token_in_request(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        if header.lower().startswith("token "):
            return header[6:].strip()
        return self.get_query_argument("token", None)

    def _upstream_url(self, scheme: str, session_id: str, path: str) -> str:
        query = f"?{self.request.query}" if self.request.query else ""
        return f"{scheme}://127.0.0.1:{self.record.port}/s/{session_id}/{path}{query}"

    def _upstream_headers(self) -> httputil.HTTPHeaders:
        headers = httputil.HTTPHeaders()
        for name, value in self.request.headers.get_all():
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered.startswith("sec-websocket"):
                continue
            if lowered == "cookie":
                value = _without_our_cookies(value)
                if not value:
                    continue
            headers.add(name, value)
        headers["Host"] = f"127.0.0.1:{self.record.port}"
        if "Origin" in headers:
            headers["Origin"] = f"http://127.0.0.1:{self.record.port}"
        headers["Authorization"] = f"token {self.record.token}"
        headers["X-Forwarded-Proto"] = self.request.protocol
        return headers

    async def get(self, session_id: str, path: str) -> None:
        record = self._authorised(session_id)
        if record is None:
            self.send_error(404)
            return
        self.record = record
        self.manager.touch(session_id)
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await WebSocketHandler.get(self, session_id, path)
            return
        await self._proxy_http(session_id, path)

    async def _proxy_http(self, session_id: str, path: str) -> None:
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH", "DELETE") else None
        request = httpclient.HTTPRequest(
            self._upstream_url("http", session_id, path), method=method,
            headers=self._upstream_headers(), body=body, follow_redirects=False,
            allow_nonstandard_methods=True, request_timeout=300, decompress_response=False,
        )  # fmt: skip
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError:
            self.send_error(502)
            return
        if response.code == 599:  # no connection at all
            self.send_error(502)
            return
        self.set_status(response.code, response.reason)
        self._headers = httputil.HTTPHeaders()  # nothing of tornado's defaults
        for name, value in response.headers.get_all():
            if name.lower() not in HOP_BY_HOP:
                self.add_header(name, value)
        if response.body and response.code not in (204, 304):
            self.write(response.body)
        self.finish()

    async def post(self, session_id: str, path: str) -> None:
        record = self._authorised(session_id)
        if record is None:
            self.send_error(404)
            return
        self.record = record
        self.manager.touch(session_id)
        await self._proxy_http(session_id, path)

    put = patch = delete = head = options = post

    # -- websockets --------------------------------------------------------------

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return subprotocols[0] if subprotocols else None

    async def open(self, session_id: str, path: str) -> None:
        request = httpclient.HTTPRequest(
            self._upstream_url("ws", session_id, path), headers=self._upstream_headers(),
            request_timeout=30,
        )  # fmt: skip
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


def _without_our_cookies(header: str) -> str:
    kept = [c for c in header.split(";") if not c.strip().startswith("binder-lite")]
    return ";".join(kept).strip()
