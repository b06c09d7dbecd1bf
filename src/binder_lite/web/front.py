"""The service's one listening socket, in front of everything.

/s/<id>/… goes straight to the session's Jupyter: a notebook page makes dozens of
those requests and every kernel call is one, so this path parses only what routing
and the session rules (proxy.py) need and relays bodies as they come; websockets
become a byte tunnel once Jupyter has agreed to the upgrade.  Everything else goes
to the tornado application, which listens on a loopback port of its own.  Going
through tornado's request machinery cost as much again as Jupyter's own work on a
small request (benchmarks/proxy.py measures the difference).

The front keeps every upstream connection in step with its clients: each request
gets exactly one final answer from one upstream connection, and a connection goes
back to the pool only after an exchange with nothing unusual in it (upstream.py
says what is parsed, and how strictly).  A request is sent twice only when that
cannot do harm: a GET, HEAD or OPTIONS without a body, whose kept connection turned
out to be closed before any answer came.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
from collections.abc import Callable, Iterable
from functools import partial
from typing import NamedTuple

from binder_lite.web.base import Service
from binder_lite.web.proxy import (
    NOT_FOUND,
    Client,
    Cors,
    Gate,
    Reply,
    TrustedProxies,
    app_headers,
    app_response_head,
    app_route,
    forwarded,
    is_preflight,
    session_headers,
    session_response_head,
    upstream_of,
)
from binder_lite.web.tls import HANDSHAKE_TIMEOUT, HSTS, secure_set_cookies
from binder_lite.web.upstream import (
    CHUNK,
    CHUNKED,
    MAX_HEAD,
    UNTIL_CLOSE,
    Address,
    Connection,
    Head,
    MessageError,
    Pool,
    body,
    copy_body,
    framed,
    open_connection,
    read_request,
    read_response,
    request_framing,
    response_framing,
)

log = logging.getLogger(__name__)

KEEPALIVE_IDLE = 300.0  # seconds a client connection may wait between requests
UPSTREAM_TIMEOUT = 300.0  # seconds to wait for a response's head
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_INFORMATIONAL = 8  # 1xx answers skipped before a final one, at most
# A closed client connection is read (and what comes discarded) this long, this much,
# so that a reset does not destroy the answer before the client has read it.
LINGER = 2.0
LINGER_BYTES = 1024 * 1024

# Where a request goes: an upstream address, the headers it is sent with, and what to
# call on activity (for sessions, which are culled when idle).
# Where a request goes, its headers, what to call while it is used, and its target
# as the upstream sees it.
Route = tuple[Address, list[tuple[str, str]], Callable[[], None] | None, str]
# Headers the front adds to an answer (CORS, proxy.py's Cors).
Extra = tuple[tuple[str, str], ...]


class Deadline:
    """Time limits on one connection's waits (for the client's next request, for an
    upstream's answer), as asyncio.timeout sets them but at a fraction of its cost:
    asyncio.timeout schedules and cancels a timer on every wait, a fifth of the
    front's own time per proxied request (docs/scaling.md).  Here one timer per
    connection stays set; a wait only writes down when it must end, and the timer,
    when it goes off before that, is set again for then.  An expired wait is
    cancelled and raises TimeoutError, as with asyncio.timeout."""

    __slots__ = ("task", "loop", "until", "timer", "expired", "cancelling")

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.until: float | None = None  # when the current wait ends; None: no wait
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False
        self.cancelling = 0

    def within(self, seconds: float) -> Deadline:
        self.until = self.loop.time() + seconds
        if self.timer is None or self.timer.when() > self.until:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(self.until, self._check)
        return self

    def __enter__(self) -> None:
        assert self.task is not None
        self.cancelling = self.task.cancelling()

    def __exit__(self, kind: type[BaseException] | None, error: object, tb: object) -> None:
        self.until = None
        if self.expired:
            self.expired = False
            assert self.task is not None
            # Our cancellation, not someone else's (the service stopping, say).
            if self.task.uncancel() <= self.cancelling and kind is asyncio.CancelledError:
                raise TimeoutError

    def _check(self) -> None:
        self.timer = None
        if self.until is None or self.task is None:
            return  # no wait now: the next one sets the timer again
        if self.loop.time() < self.until:
            self.timer = self.loop.call_at(self.until, self._check)
            return
        self.expired = True
        self.task.cancel()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class UpstreamFailure(Exception):
    """The upstream broke an exchange; `silent` if it had sent no byte of an answer."""

    def __init__(self, message: str, silent: bool = False) -> None:
        super().__init__(message)
        self.silent = silent


class Front:
    def __init__(
        self,
        service: Service,
        cookie_secret: str,
        app_port: int,
        trusted_proxies: Iterable[str] = (),
        cors_allowed_origins: Iterable[str] = (),
    ) -> None:
        self.service = service
        self.cookie_secret = cookie_secret
        self.app_port = app_port
        self.trusted = TrustedProxies(trusted_proxies)
        # Who may use which session, and which pages elsewhere may (proxy.py).
        self.gate = Gate(service, cookie_secret, Cors(cors_allowed_origins))
        self.pool = Pool()
        self.clients: set[asyncio.StreamWriter] = set()

    async def listen(
        self, address: str, port: int, tls: ssl.SSLContext | None = None
    ) -> asyncio.Server:
        """Listen on `port`; with `tls`, HTTPS (tls.py): its clients' scheme is https
        and every answer carries HSTS."""
        return await asyncio.start_server(
            self.handle,
            address or None,
            port,
            limit=MAX_HEAD,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
        )

    def close_clients(self) -> None:
        for writer in list(self.clients):
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection, request after request."""
        self.clients.add(writer)
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        secure = writer.get_extra_info("ssl_object") is not None
        # Only a trusted proxy's word on the client is taken; anyone else is the client.
        scheme = "https" if secure else "http"
        client = None if self.trusted.trusts_peer(peer_ip) else Client(peer_ip, scheme)
        extra: Extra = (HSTS,) if secure else ()
        abort = False
        deadline = Deadline()
        try:
            while await self._serve_one(reader, writer, peer_ip, client, deadline, extra):
                pass
        except MessageError as e:
            _reply(writer, e.status, f"{e}\n", close=True)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ssl.SSLError,
        ):
            abort = True  # the client went away or stayed silent, or an answer broke off
        except Exception:
            abort = True
            log.exception("serving a request failed")
        finally:
            deadline.close()
            self.clients.discard(writer)
            await _close(reader, writer, linger=not abort)

    async def _serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_ip: str,
        client: Client | None,
        deadline: Deadline,
        extra: Extra = (),
    ) -> bool:
        """Serve one request; whether the connection may carry another.  `extra`:
        headers every answer on this connection gets (HSTS, over HTTPS)."""
        with deadline.within(KEEPALIVE_IDLE):
            request = await next_request(reader)
        if request is None:
            return False
        head, framing, keep, upgrade = request
        method, target, version = head.start
        route = self._route(head, client or self.trusted.client(head, peer_ip), upgrade)
        cors = (() if is_preflight(head) else self.gate.cors_headers(head)) + extra
        if isinstance(route, Reply):
            # A refusal or a redirect: the body, if any, is not read, so the
            # connection ends with it.
            route = Reply(route.status, route.text, route.headers + cors)
            writer.write(route.encode(close=bool(framing)))
            return keep and not framing
        address, headers, touch, target = route
        if framing and version == "HTTP/1.1" and head.has_token("expect", "100-continue"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        out = _encode_head(f"{method} {target} {version}", headers, framing, method)
        if upgrade:
            await self._tunnel(reader, writer, out, address, touch, cors, deadline)
            return False
        exchange = self._exchange(reader, writer, head, out, framing, address, cors, deadline)
        return await exchange and keep

    def _route(self, head: Head, client: Client, upgrade: bool) -> Route | Reply:
        """Where the request goes (a session's Jupyter, or the application), with which
        headers; or the front's own answer (a refusal, a redirect to a session's origin)."""
        record = self.gate.target(head, upgrade)
        if record is None:
            return self.app_port, _app_headers(head, client, upgrade), None, head.start[1]
        if isinstance(record, Reply):
            return record
        manager = self.service.manager
        address = upstream_of(record)
        if address is None:
            return NOT_FOUND
        manager.touch(record.id)
        touch = partial(manager.touch, record.id)
        app = app_route(record, head.start[1])  # the session's Shiny app (launch/apps.py)
        if isinstance(app, Reply):
            return app
        if app is not None:
            return app[0], app_headers(head, record, upgrade, client), touch, app[1]
        headers = session_headers(head, record, upgrade, client)
        return address, headers, touch, head.start[1]

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: Head,
        out: bytes,
        framing: int,
        address: Address,
        cors: Extra,
        deadline: Deadline,
    ) -> bool:
        """Send one request on and relay its response; whether the client's connection
        stays open."""
        method, _, version = head.start
        # A request with a body, or one that changes something, goes on a fresh
        # connection and is sent once: it may have been acted on even if no answer came.
        retryable = framing == 0 and method in RETRYABLE
        for fresh in (False, True) if retryable else (True,):
            try:
                reused, upstream = await self.pool.connect(address, fresh=fresh)
            except OSError as e:
                log.warning("upstream %s: %s", address, e)
                return self._bad_gateway(writer, address, keep=framing == 0)
            try:
                await _send(reader, upstream[1], out, framing)
                response, informational = await _response_head(upstream[0], False, deadline)
            except UpstreamFailure as e:
                upstream[1].close()
                if e.silent and reused and retryable:
                    continue
                log.warning("upstream %s: %s", address, e)
                return self._bad_gateway(writer, address, keep=framing == 0)
            except BaseException:
                upstream[1].close()
                raise
            reusable = version == "HTTP/1.1" and not informational
            return await self._relay(method, response, upstream, writer, address, reusable, cors)
        return self._bad_gateway(writer, address, keep=True)

    async def _relay(
        self,
        method: str,
        response: Head,
        upstream: Connection,
        writer: asyncio.StreamWriter,
        address: Address,
        reusable: bool,
        cors: Extra,
    ) -> bool:
        """Relay a response head and its body; whether the client's connection stays
        open.  The upstream connection goes back to the pool only if it may."""
        try:
            framing = response_framing(method, response)
        except MessageError as e:
            upstream[1].close()
            log.warning("upstream %s: %s", address, e)
            return self._bad_gateway(writer, address, keep=True)
        try:
            prefix = self._answer_head(response, address, cors)
            await copy_body(upstream[0], writer, framing, prefix=prefix)
        except (MessageError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            upstream[1].close()
            # The answer has begun: a broken body can only end the connection.
            raise ConnectionAbortedError(f"upstream {address}: {e}") from e
        except BaseException:
            upstream[1].close()
            raise
        closing = (
            framing == UNTIL_CLOSE
            or response.start[0] != "HTTP/1.1"
            or response.has_token("connection", "close")
        )
        if reusable and not closing:
            self.pool.release(address, upstream)
        else:
            upstream[1].close()
        return not closing

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        out: bytes,
        address: Address,
        touch: Callable[[], None] | None,
        cors: Extra,
        deadline: Deadline,
    ) -> None:
        """Pass an upgrade on; once the upstream agrees (101), copy bytes both ways."""
        try:
            up_reader, up_writer = await open_connection(address)
        except OSError as e:
            log.warning("upstream %s: %s", address, e)
            self._bad_gateway(writer, address, keep=False)
            return
        try:
            up_writer.write(out)
            try:
                response, _ = await _response_head(up_reader, True, deadline)
            except UpstreamFailure as e:
                log.warning("upstream %s: %s", address, e)
                self._bad_gateway(writer, address, keep=False)
                return
            prefix = self._answer_head(response, address, cors)
            if response.start[1] != "101":
                await copy_body(up_reader, writer, response_framing("GET", response), prefix=prefix)
            else:
                writer.write(prefix)
                deadline.close()  # a tunnel has no time limit: no timer kept for it
                await _splice((reader, writer), (up_reader, up_writer), touch)
        finally:
            up_writer.close()

    def _answer_head(self, response: Head, address: Address, cors: Extra) -> bytes:
        if HSTS in cors:  # over HTTPS every cookie is Secure, Jupyter's too
            response = secure_set_cookies(response)
        if address == self.app_port:
            return app_response_head(response, cors)
        return session_response_head(response, cors)

    def _bad_gateway(self, writer: asyncio.StreamWriter, address: Address, keep: bool) -> bool:
        self.pool.forget(address)
        if address == self.app_port:
            log.error("the service's own application is not answering on port %s", address)
            _reply(writer, 502, "the service is not answering\n", close=not keep)
        else:
            _reply(writer, 502, "the notebook server is not answering\n", close=not keep)
        return keep


class Request(NamedTuple):
    head: Head
    framing: int  # how its body is delimited (upstream.py)
    keep: bool  # whether the client's connection may carry another request after it
    upgrade: bool


async def next_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a client's connection, as the front reads it; None if the
    client closed between requests.  Its body, if any, is still to be read (`body`)."""
    head = await read_request(reader)
    if head is None:
        return None
    framing = request_framing(head)
    keep = head.start[2] == "HTTP/1.1" and not head.has_token("connection", "close")
    upgrade = head.get("upgrade") is not None and head.has_token("connection", "upgrade")
    if upgrade and framing:
        raise MessageError(400, "an upgrade request has no body")
    return Request(head, framing, keep, upgrade)


async def _send(
    reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, out: bytes, framing: int
) -> None:
    """Send a request head and its body (read from the client as it comes).  What goes
    wrong on the client's side is raised as it is; on the upstream's, as UpstreamFailure."""
    small = 0 <= framing <= CHUNK
    data = out + (await reader.readexactly(framing) if small and framing else b"")
    try:
        up_writer.write(data)
        if small:
            return
        await up_writer.drain()
        async for piece in body(reader, framing):
            up_writer.write(framed(piece, framing))
            await up_writer.drain()
        if framing == CHUNKED:
            up_writer.write(b"0\r\n\r\n")
    except OSError as e:
        raise UpstreamFailure(f"sending the request failed: {e}", silent=True) from e


async def _response_head(
    reader: asyncio.StreamReader, upgrade: bool, deadline: Deadline
) -> tuple[Head, bool]:
    """The final response head (or a 101 to an upgrade), and whether 1xx answers came
    before it; those are not passed on, and the connection is not kept after them."""
    informational = False
    try:
        with deadline.within(UPSTREAM_TIMEOUT):
            for _ in range(MAX_INFORMATIONAL):
                head = await read_response(reader, upgrade)
                if head is None:
                    raise UpstreamFailure("closed without answering", silent=not informational)
                status = int(head.start[1])
                if status >= 200 or (status == 101 and upgrade):
                    return head, informational
                if status == 101:
                    raise UpstreamFailure("switched protocols unasked")
                informational = True
    except MessageError as e:
        raise UpstreamFailure(str(e)) from e
    except TimeoutError as e:
        raise UpstreamFailure("no answer in time") from e
    except (OSError, asyncio.IncompleteReadError) as e:
        raise UpstreamFailure(f"reading the answer failed: {e}", silent=not informational) from e
    raise UpstreamFailure("too many 1xx answers")


def _app_headers(head: Head, client: Client, upgrade: bool) -> list[tuple[str, str]]:
    """The request's headers for the application: as sent, less hop-by-hop ones, and
    with the client's address and scheme where tornado looks for them (xheaders)."""
    headers = [*forwarded(head), *client.headers()]
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", head.get("upgrade") or "")]
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
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode("latin-1") + body)


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, linger: bool) -> None:
    """Close a client connection.  With `linger`, first end the sending side and read
    (and drop) what the client still sends, for a bounded while: closing a socket with
    unread bytes makes the kernel reset the connection, which can destroy the last
    answer before the client has read it."""
    if linger and not writer.is_closing():
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            writer.write_eof()
            async with asyncio.timeout(LINGER):
                budget = LINGER_BYTES
                while budget > 0 and (data := await reader.read(CHUNK)):
                    budget -= len(data)
    writer.close()


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

    tasks = [
        asyncio.create_task(pipe(client[0], upstream[1])),
        asyncio.create_task(pipe(upstream[0], client[1])),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
