"""The service's one listening socket, in front of everything.

/s/<id>/… goes straight to the session's Jupyter: a notebook page makes dozens of
those requests and every kernel call is one, so this path parses only what routing
and the session rules (proxy.py) need and relays bodies as they come; websockets
become a byte tunnel once Jupyter has agreed to the upgrade.  Everything else goes
to the tornado application, which listens on a loopback port of its own.  Going
through tornado's request machinery cost as much again as Jupyter's own work on a
small request (benchmarks/proxy.py measures the difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
from collections.abc import Callable
from functools import partial

from binder_lite.web.base import Service
from binder_lite.web.proxy import HOP_BY_HOP, authorise, identity_in, session_headers, token_in
from binder_lite.web.upstream import (
    CHUNK,
    CHUNKED,
    MAX_HEAD,
    UNTIL_CLOSE,
    Connection,
    Head,
    MessageError,
    Pool,
    copy_body,
    read_head,
    request_framing,
    response_framing,
)

log = logging.getLogger(__name__)

SESSION_PATH = re.compile(r"/s/([0-9a-f]{16})/")
KEEPALIVE_IDLE = 300.0  # seconds a client connection may wait between requests
UPSTREAM_TIMEOUT = 300.0  # seconds to wait for a response's head
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# Where a request goes: a port on 127.0.0.1, the headers it is sent with, and what to
# call on activity (for sessions, which are culled when idle).
Route = tuple[int, list[tuple[str, str]], Callable[[], None] | None]


class Front:
    def __init__(self, service: Service, cookie_secret: str, app_port: int) -> None:
        self.service = service
        self.cookie_secret = cookie_secret
        self.app_port = app_port
        self.pool = Pool()
        self.clients: set[asyncio.StreamWriter] = set()

    async def listen(self, address: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, address or None, port, limit=MAX_HEAD,
                                          reuse_address=True)  # fmt: skip

    def close_clients(self) -> None:
        for writer in list(self.clients):
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection, request after request."""
        self.clients.add(writer)
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        try:
            while await self._serve_one(reader, writer, peer_ip):
                pass
        except MessageError as e:
            _reply(writer, e.status, f"{e}\n", close=True)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError):  # fmt: skip
            pass  # the client went away or stayed silent: nothing to answer
        except Exception:
            log.exception("serving a request failed")
        finally:
            self.clients.discard(writer)
            writer.close()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_ip: str
    ) -> bool:
        """Serve one request; whether the connection may carry another."""
        async with asyncio.timeout(KEEPALIVE_IDLE):
            head = await read_head(reader)
        if head is None:
            return False
        method, target, version = head.start
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise MessageError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        framing = request_framing(head)
        keep = version == "HTTP/1.1" and not head.has_token("Connection", "close")
        upgrade = head.get("Upgrade") is not None and head.has_token("Connection", "upgrade")
        if upgrade and framing:
            raise MessageError(400, "an upgrade request has no body")
        route = self._route(head, peer_ip, upgrade)
        if route is None:
            # The same answer for "not yours" as for "no such session".
            _reply(writer, 404, "not found\n", close=bool(framing))
            return keep and not framing
        port, headers, touch = route
        if framing and head.has_token("Expect", "100-continue"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        out = _encode_head(f"{method} {target} {version}", headers, framing, method)
        if upgrade:
            await self._tunnel(reader, writer, out, port, touch)
            return False
        return await self._exchange(reader, writer, method, out, framing, port) and keep

    def _route(self, head: Head, peer_ip: str, upgrade: bool) -> Route | None:
        """Where the request goes (a session's Jupyter, or the application), with which
        headers; None for a session the caller may not use."""
        m = SESSION_PATH.match(head.start[1])
        if not m:
            return self.app_port, _app_headers(head, peer_ip, upgrade), None
        manager = self.service.manager
        record = authorise(manager, m.group(1), identity_in(head, self.cookie_secret),
                           self.service.oauth is None, token_in(head))  # fmt: skip
        if record is None or record.port is None:
            return None
        manager.touch(record.id)
        return (
            record.port,
            session_headers(head, record, upgrade),
            partial(manager.touch, record.id),
        )

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
        out: bytes, framing: int, port: int,
    ) -> bool:  # fmt: skip
        """Send one request on and relay its response; whether both sides stay open."""
        # A small body is read first, so that a kept connection the upstream closed
        # meanwhile can be retried; a large or chunked one streams on a fresh connection.
        small = 0 <= framing <= CHUNK
        body = await reader.readexactly(framing) if small and framing else b""
        for attempt in (0, 1):
            try:
                reused, (up_reader, up_writer) = await self.pool.connect(
                    port, fresh=attempt == 1 or not small
                )
            except OSError:
                return self._bad_gateway(writer, port, keep=small)
            try:
                if small:
                    up_writer.write(out + body)
                else:
                    await copy_body(reader, up_writer, framing, prefix=out)
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    response = await read_head(up_reader)
            except (OSError, asyncio.IncompleteReadError, MessageError, TimeoutError):
                up_writer.close()
                if not small:
                    raise  # part of the body is gone: nothing can be retried or answered
                response = None
            if response is not None:
                break
            up_writer.close()
            if not (reused and attempt == 0):
                return self._bad_gateway(writer, port, keep=True)
        assert response is not None
        return await self._relay_response(method, response, (up_reader, up_writer), writer, port)

    async def _relay_response(
        self, method: str, response: Head,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        writer: asyncio.StreamWriter, port: int,
    ) -> bool:  # fmt: skip
        framing = response_framing(method, response)
        try:
            await copy_body(upstream[0], writer, framing, prefix=response.raw)
        except MessageError as e:
            upstream[1].close()
            # The answer has begun: a broken body can only end the connection.
            raise ConnectionAbortedError(f"upstream on port {port}: {e}") from e
        except BaseException:
            upstream[1].close()
            raise
        closing = framing == UNTIL_CLOSE or response.has_token("Connection", "close")
        if not closing and response.start[0] == "HTTP/1.1":
            self.pool.release(port, upstream)
        else:
            upstream[1].close()
        return not closing

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: bytes,
        port: int, touch: Callable[[], None] | None,
    ) -> None:  # fmt: skip
        """Pass an upgrade on; once the upstream agrees (101), copy bytes both ways."""
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_HEAD)
        except OSError:
            self._bad_gateway(writer, port, keep=False)
            return
        try:
            up_writer.write(out)
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                response = await read_head(up_reader)
            if response is None:
                self._bad_gateway(writer, port, keep=False)
            elif response.start[1] != "101":
                await copy_body(up_reader, writer, response_framing("GET", response),
                                prefix=response.raw)  # fmt: skip
            else:
                writer.write(response.raw)
                await _splice((reader, writer), (up_reader, up_writer), touch)
        finally:
            up_writer.close()

    def _bad_gateway(self, writer: asyncio.StreamWriter, port: int, keep: bool) -> bool:
        self.pool.forget(port)
        if port == self.app_port:
            log.error("the service's own application is not answering on port %d", port)
            _reply(writer, 502, "the service is not answering\n", close=not keep)
        else:
            _reply(writer, 502, "the notebook server is not answering\n", close=not keep)
        return keep


def _app_headers(head: Head, peer_ip: str, upgrade: bool) -> list[tuple[str, str]]:
    """The request's headers for the application: as sent, less hop-by-hop ones, and
    with the client's address added where tornado looks for it (xheaders)."""
    named = {part.strip().lower() for v in head.all("Connection") for part in v.split(",")}
    headers = [(n, v) for n, v in head.headers
               if n.lower() not in HOP_BY_HOP and n.lower() not in named]  # fmt: skip
    forwarded = head.get("X-Forwarded-For")
    headers = [(n, v) for n, v in headers if n.lower() != "x-forwarded-for"]
    headers.append(("X-Forwarded-For", f"{forwarded}, {peer_ip}" if forwarded else peer_ip))
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", head.get("Upgrade") or "")]
    return headers


def _encode_head(start: str, headers: list[tuple[str, str]], framing: int, method: str) -> bytes:
    lines = [start, *(f"{name}: {value}" for name, value in headers)]
    if framing > 0 or (framing == 0 and method in BODY_METHODS):
        lines.append(f"Content-Length: {framing}")
    elif framing == CHUNKED:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reply(writer: asyncio.StreamWriter, status: int, text: str, close: bool) -> None:
    body = text.encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n")  # fmt: skip
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode("latin-1") + body)


async def _splice(
    client: Connection, upstream: Connection, touch: Callable[[], None] | None
) -> None:
    """Copy both ways until either side closes; each chunk counts as activity."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(CHUNK):
            if touch is not None:
                touch()
            sink.write(data)
            await sink.drain()

    tasks = [asyncio.create_task(pipe(client[0], upstream[1])),
             asyncio.create_task(pipe(upstream[0], client[1]))]  # fmt: skip
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
