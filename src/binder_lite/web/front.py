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

A client connection has two lanes (class Lane).  The commonest request, one without
a body to a server the front already holds a connection to, is served in the
transports' callbacks; everything else by a task reading and writing streams.  Both
plan a request the same way (Front.plan) and read heads with the same parsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import NamedTuple, cast

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
    UpstreamProtocol,
    body,
    copy_body,
    framed,
    open_connection,
    parse_request,
    parse_response,
    read_request,
    read_response,
    request_framing,
    response_framing,
    unread,
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

# Where a request goes, its headers, what to call while it is used, and its target
# as the upstream sees it.
Route = tuple[Address, list[tuple[str, str]], Callable[[], None] | None, str]
# Headers the front adds to an answer (CORS, proxy.py's Cors).
Extra = tuple[tuple[str, str], ...]


class Alarm:
    """One timer for a connection's successive waits (for the client's next request,
    for an upstream's answer), at a fraction of what asyncio.timeout costs: it
    schedules and cancels a timer on every wait, a fifth of the front's own time per
    proxied request (docs/scaling.md).  Here a wait only writes down when it must end,
    and the timer, when it goes off before that, is set again for then; `ring` is
    called when a wait outlasts its limit."""

    __slots__ = ("loop", "ring", "until", "timer")

    def __init__(self, ring: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.ring = ring
        self.until: float | None = None  # when the current wait ends; None: no wait
        self.timer: asyncio.TimerHandle | None = None

    def set(self, seconds: float) -> None:
        self.until = self.loop.time() + seconds
        if self.timer is None or self.timer.when() > self.until:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(self.until, self._check)

    def clear(self) -> None:
        self.until = None  # no wait now: the next one sets the timer again

    def _check(self) -> None:
        self.timer = None
        if self.until is None:
            return
        if self.loop.time() < self.until:
            self.timer = self.loop.call_at(self.until, self._check)
            return
        self.until = None
        self.ring()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Deadline:
    """Time limits on the waits of a task serving one connection (Alarm): an expired
    wait is cancelled and raises TimeoutError, as with asyncio.timeout."""

    __slots__ = ("task", "alarm", "expired", "cancelling")

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.alarm = Alarm(self._expire)
        self.expired = False
        self.cancelling = 0

    def within(self, seconds: float) -> Deadline:
        self.alarm.set(seconds)
        return self

    def __enter__(self) -> None:
        assert self.task is not None
        self.cancelling = self.task.cancelling()

    def __exit__(self, kind: type[BaseException] | None, error: object, tb: object) -> None:
        self.alarm.clear()
        if self.expired:
            self.expired = False
            assert self.task is not None
            # Our cancellation, not someone else's (the service stopping, say).
            if self.task.uncancel() <= self.cancelling and kind is asyncio.CancelledError:
                raise TimeoutError

    def _expire(self) -> None:
        if self.task is not None:
            self.expired = True
            self.task.cancel()

    def close(self) -> None:
        self.alarm.close()


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
        self.fast = 0  # requests sent on in the fast lane (Lane): tests see which lane served

    async def listen(
        self, address: str, port: int, tls: ssl.SSLContext | None = None
    ) -> asyncio.Server:
        """Listen on `port`; with `tls`, HTTPS (tls.py): its clients' scheme is https
        and every answer carries HSTS."""
        return await asyncio.get_running_loop().create_server(
            lambda: Lane(self),
            address or None,
            port,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
        )

    def close_clients(self) -> None:
        for writer in list(self.clients):
            writer.close()

    def peer(self, writer: asyncio.StreamWriter) -> Peer:
        """Who is at the other end of a client connection, as the front tells it on."""
        address = writer.get_extra_info("peername")
        ip = str(address[0]) if isinstance(address, tuple) else ""
        secure = writer.get_extra_info("ssl_object") is not None
        # Only a trusted proxy's word on the client is taken; anyone else is the client.
        client = None if self.trusted.trusts_peer(ip) else Client(ip, "https" if secure else "http")
        return Peer(ip, client, (HSTS,) if secure else ())

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        deadline: Deadline,
        first: Callable[[Deadline], Awaitable[bool]] | None,
        more: Callable[[], bool],
    ) -> None:
        """Serve a client connection on its streams: `first` (the rest of a request
        begun elsewhere; whether the connection stays open), then requests while
        `more()` says to.  A connection not handed back this way is closed here."""
        abort = False
        try:
            if first is None or await first(deadline):
                while more():
                    if not await self._serve_one(reader, writer, peer, deadline):
                        break
                else:
                    return
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
        except BaseException:
            writer.close()  # cancelled (the service stopping): no lingering
            raise
        self.clients.discard(writer)
        await _close(reader, writer, linger=not abort)

    async def _serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        deadline: Deadline,
    ) -> bool:
        """Serve one request; whether the connection may carry another."""
        with deadline.within(KEEPALIVE_IDLE):
            request = await next_request(reader)
        if request is None:
            return False
        head, framing, keep, upgrade = request
        plan = self.plan(request, peer)
        if isinstance(plan, Reply):
            # A refusal or a redirect: the body, if any, is not read, so the
            # connection ends with it.
            writer.write(plan.encode(close=bool(framing)))
            return keep and not framing
        if framing and head.start[2] == "HTTP/1.1" and head.has_token("expect", "100-continue"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if upgrade:
            await self._tunnel(
                reader, writer, plan.out, plan.address, plan.touch, plan.cors, deadline
            )
            return False
        exchange = self._exchange(
            reader, writer, head, plan.out, framing, plan.address, plan.cors, deadline
        )
        return await exchange and keep

    def plan(self, request: Request, peer: Peer) -> Plan | Reply:
        """Where a request goes and what is sent there, or the front's own answer.
        Called once per request: it counts as the session's activity, and a handoff
        it redeems is used up."""
        head, framing, _, upgrade = request
        method, _, version = head.start
        route = self._route(head, peer.client or self.trusted.client(head, peer.ip), upgrade)
        cors = (() if is_preflight(head) else self.gate.cors_headers(head)) + peer.extra
        if isinstance(route, Reply):
            return Reply(route.status, route.text, route.headers + cors)
        address, headers, touch, target = route
        out = _encode_head(f"{method} {target} {version}", headers, framing, method)
        return Plan(address, out, touch, cors)

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
        # What a tunnel calls as it is used (a plain request counts once, here).
        touch = partial(manager.touch, record.id) if upgrade else None
        app = app_route(record, head.start[1])  # the session's Shiny app (launch/apps.py)
        if isinstance(app, Reply):
            return app
        if app is not None:
            return app[0], app_headers(head, record, upgrade, client), touch, app[1]
        headers = session_headers(head, record, upgrade, client)
        return address, headers, touch, head.start[1]

    async def exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: Head,
        plan: Plan,
        deadline: Deadline,
        fresh_only: bool = False,
    ) -> bool:
        """A request without a body that the fast lane planned (Lane), on the streams."""
        exchange = self._exchange(
            reader, writer, head, plan.out, 0, plan.address, plan.cors, deadline, fresh_only
        )
        return await exchange

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
        fresh_only: bool = False,
    ) -> bool:
        """Send one request on and relay its response; whether the client's connection
        stays open.  `fresh_only`: not on a kept connection (one just failed)."""
        method, _, version = head.start
        # A request with a body, or one that changes something, goes on a fresh
        # connection and is sent once: it may have been acted on even if no answer came.
        retryable = framing == 0 and method in RETRYABLE
        for fresh in (False, True) if retryable and not fresh_only else (True,):
            try:
                reused, upstream = await self.pool.connect(address, fresh=fresh)
            except OSError as e:
                log.warning("upstream %s: %s", address, e)
                return self.bad_gateway(writer, address, keep=framing == 0)
            try:
                await _send(reader, upstream[1], out, framing)
                response, informational = await _response_head(upstream[0], False, deadline)
            except UpstreamFailure as e:
                upstream[1].close()
                if e.silent and reused and retryable:
                    continue
                log.warning("upstream %s: %s", address, e)
                return self.bad_gateway(writer, address, keep=framing == 0)
            except BaseException:
                upstream[1].close()
                raise
            reusable = version == "HTTP/1.1" and not informational
            return await self._relay(method, response, upstream, writer, address, reusable, cors)
        return self.bad_gateway(writer, address, keep=True)

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
            return self.bad_gateway(writer, address, keep=True)
        try:
            prefix = self.answer_head(response, address, cors)
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

    async def resume(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        upstream: Connection,
        address: Address,
        cors: Extra,
        deadline: Deadline,
        response: Head | None,
    ) -> bool:
        """Finish an exchange the fast lane began (Lane): from the answer's head, whose
        bytes are back in the upstream's reader, or after `response`, its head, read
        already.  Whether the client's connection stays open."""
        informational = False
        if response is None:
            try:
                response, informational = await _response_head(upstream[0], False, deadline)
            except UpstreamFailure as e:
                upstream[1].close()
                log.warning("upstream %s: %s", address, e)
                return self.bad_gateway(writer, address, keep=True)
            except BaseException:
                upstream[1].close()
                raise
        return await self._relay(
            method, response, upstream, writer, address, not informational, cors
        )

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
            self.bad_gateway(writer, address, keep=False)
            return
        try:
            up_writer.write(out)
            try:
                response, _ = await _response_head(up_reader, True, deadline)
            except UpstreamFailure as e:
                log.warning("upstream %s: %s", address, e)
                self.bad_gateway(writer, address, keep=False)
                return
            prefix = self.answer_head(response, address, cors)
            if response.start[1] != "101":
                await copy_body(up_reader, writer, response_framing("GET", response), prefix=prefix)
            else:
                writer.write(prefix)
                deadline.close()  # a tunnel has no time limit: no timer kept for it
                await _splice((reader, writer), (up_reader, up_writer), touch)
        finally:
            up_writer.close()

    def answer_head(self, response: Head, address: Address, cors: Extra) -> bytes:
        if HSTS in cors:  # over HTTPS every cookie is Secure, Jupyter's too
            response = secure_set_cookies(response)
        if address == self.app_port:
            return app_response_head(response, cors)
        return session_response_head(response, cors)

    def bad_gateway(self, writer: asyncio.StreamWriter, address: Address, keep: bool) -> bool:
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


class Peer(NamedTuple):
    """A client connection's other end: its address, the client as the front tells
    the servers behind it (None: a trusted proxy, which names the client in each
    request), and the headers every answer on the connection gets (HSTS, over HTTPS)."""

    ip: str
    client: Client | None
    extra: Extra


class Plan(NamedTuple):
    """Where a request goes: the upstream, the head sent there, what to call while
    a tunnel is used, and the headers the front adds to the answer."""

    address: Address
    out: bytes
    touch: Callable[[], None] | None
    cors: Extra


async def next_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a client's connection, as the front reads it; None if the
    client closed between requests.  Its body, if any, is still to be read (`body`)."""
    head = await read_request(reader)
    return None if head is None else request_of(head)


def request_of(head: Head) -> Request:
    framing = request_framing(head)
    keep = head.start[2] == "HTTP/1.1" and not head.has_token("connection", "close")
    upgrade = head.get("upgrade") is not None and head.has_token("connection", "upgrade")
    if upgrade and framing:
        raise MessageError(400, "an upgrade request has no body")
    return Request(head, framing, keep, upgrade)


class Lane(asyncio.StreamReaderProtocol):
    """A client connection.  The commonest request, one without a body to a server
    the front holds a kept connection to, is served in the transports' callbacks
    (the fast lane): its head is read, checked and sent on, and the answer read,
    checked and passed back, without a task waking for either (which, across
    processes, cost the front a tenth of its CPU time per request when this lane
    came).
    Everything else goes to a task running the stream code (Front.serve: bodies,
    upgrades, refusals, a first request to a server, an answer that is not small
    and plainly framed), which hands the connection back once it has served what
    came and nothing more is waiting.  Both lanes apply the same rules (Front.plan,
    upstream.py's parsers), and a request is never begun in one and planned again in
    the other.  One Alarm per connection ends an idle connection and a wait for an
    answer, as the slow lane's Deadline does there."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader(limit=MAX_HEAD)
        super().__init__(self.reader)
        self.buffer = bytearray()  # the fast lane's bytes from the client, not yet served
        self.task: asyncio.Task[None] | None = None  # the slow lane, while it has the connection
        self.waiting: Waiting | None = None  # a fast request, until its answer is passed back
        self.alarm = Alarm(self._too_long)  # the fast lane's waits
        self.full = False  # the client's side of the connection is not taking more
        self.ended = False  # the client ended its side
        self.held = False  # reading paused until the request in progress is answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A socket's transport (asyncio's, or another loop's that is not a subclass).
        self.transport_ = cast(asyncio.Transport, transport)
        self.writer = asyncio.StreamWriter(self.transport_, self, self.reader, self.loop)
        self.peer = self.front.peer(self.writer)
        self.front.clients.add(self.writer)
        self._wait(KEEPALIVE_IDLE)

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            super().data_received(data)
        elif self.waiting is not None:
            self.buffer += data
            if len(self.buffer) > MAX_HEAD and not self.held:
                self.held = True  # a pipelining client: enough until this answer is out
                self.transport_.pause_reading()
        elif self.buffer:
            self.buffer += data
            self._next(bytes(self.buffer))
        else:
            self._next(data)  # the commonest: a head in one piece, nothing held

    def eof_received(self) -> bool:
        if self.task is None:
            self.ended = True
            if self.waiting is not None:
                return not self._secure()  # the answer may still go out
            self._slow(None)
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_up()
        self.alarm.close()
        self.front.clients.discard(self.writer)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.full = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.full = False
        super().resume_writing()

    def _secure(self) -> bool:
        return self.transport_.get_extra_info("sslcontext") is not None

    # -- the fast lane -------------------------------------------------------------

    def _next(self, data: bytes) -> None:
        """Serve the head in `data` (all the fast lane holds from the client), if it is
        there whole."""
        self.buffer.clear()
        end = data.find(b"\r\n\r\n")
        if end == -1:
            if len(data) > MAX_HEAD:
                self._slow(None, data)  # which refuses it
            else:
                self.buffer += data
            return
        # Bytes after the head (a body, or pipelined requests), or a client that is not
        # reading its answers: the slow lane's, which reads and writes with flow control.
        if end + 4 != len(data) or self.full:
            self._slow(None, data)
            return
        try:
            request = request_of(parse_request(data))
        except MessageError:
            self._slow(None, data)  # which refuses it, as it says why
            return
        if request.framing or request.upgrade or not request.keep:
            self._slow(None, data)
            return
        try:
            self._begin(request)
        except Exception:
            log.exception("serving a request failed")
            self.transport_.abort()

    def _begin(self, request: Request) -> None:
        """Plan a request and send it on a kept connection; from here it is this
        request's only plan."""
        plan = self.front.plan(request, self.peer)
        if isinstance(plan, Reply):
            self.transport_.write(plan.encode(close=False))
            self._wait(KEEPALIVE_IDLE)
            return
        method = request.head.start[0]
        upstream = self.front.pool.take(plan.address) if method in RETRYABLE else None
        protocol = upstream[1].transport.get_protocol() if upstream is not None else None
        if upstream is None or not isinstance(protocol, UpstreamProtocol):
            if upstream is not None:
                upstream[1].close()
            head = request.head
            self._slow(lambda d: self.front.exchange(self.reader, self.writer, head, plan, d))
            return
        self.waiting = Waiting(request.head, plan, upstream, protocol)
        self.front.fast += 1
        protocol.answers = self
        upstream[1].write(plan.out)
        self._wait(UPSTREAM_TIMEOUT)

    def answer_data(self, data: bytes) -> None:
        waiting = self.waiting
        assert waiting is not None
        if waiting.answer:  # the answer so far, in pieces
            waiting.answer += data
            data = bytes(waiting.answer)
        try:
            head_read = waiting.response is not None or self._read_head(waiting, data)
            if head_read and len(data) >= waiting.length:
                self._pass_back(waiting, data)
                return
            if self.waiting is waiting and not waiting.answer:
                waiting.answer += data  # its first piece: kept for the rest
        except Exception:
            log.exception("serving a request failed")
            self._give_up()
            self.transport_.abort()

    def _read_head(self, waiting: Waiting, answer: bytes) -> bool:
        """Read the answer's head once it is there whole (`answer`: all there is of it
        so far); whether the fast lane goes on with it (its body is small and plainly
        framed)."""
        end = answer.find(b"\r\n\r\n")
        if end == -1:
            if len(answer) > MAX_HEAD:
                self._failed(waiting, "the message head is too large")
            return False
        method = waiting.head.start[0]
        try:
            response = parse_response(answer[: end + 4])
            framing = response_framing(method, response)
        except MessageError as e:
            self._failed(waiting, str(e))
            return False
        if int(response.start[1]) < 200:
            self._hand_over(waiting, None, answer)  # informational answers: the slow lane's
            return False
        if not 0 <= framing <= CHUNK:
            self._hand_over(waiting, response, answer[end + 4 :])
            return False
        self.alarm.clear()  # the head came in time; a body has no time limit, as there
        waiting.response = response
        waiting.length = end + 4 + framing
        return True

    def _pass_back(self, waiting: Waiting, answer: bytes) -> None:
        """The whole answer is here: pass it back, and keep the upstream connection if
        the exchange went as HTTP/1.1 says and nothing came after the answer."""
        response = waiting.response
        assert response is not None
        self.waiting = None
        waiting.protocol.answers = None
        prefix = self.front.answer_head(response, waiting.plan.address, waiting.plan.cors)
        self.transport_.write(prefix + answer[len(response.raw) : waiting.length])
        closing = response.start[0] != "HTTP/1.1" or response.has_token("connection", "close")
        if not closing and len(answer) == waiting.length:
            self.front.pool.release(waiting.plan.address, waiting.upstream)
        else:
            waiting.upstream[1].close()
        if closing:
            self._slow(lambda _: _false())  # which ends the connection, lingering
        else:
            self._idle()

    def answer_ended(self) -> None:
        waiting = self.waiting
        if waiting is None:
            return
        if waiting.response is not None:
            # The answer broke off in its body: as in the slow lane, the connection ends.
            self._give_up()
            self.transport_.abort()
        elif waiting.answer:
            self._failed(waiting, "the message ended inside its head")
        else:
            # A kept connection found closed before answering: sent again on a fresh
            # one, as the slow lane does (only requests that may be sent twice come here).
            self.waiting = None
            waiting.upstream[1].close()
            head, plan = waiting.head, waiting.plan
            self._slow(lambda d: self.front.exchange(self.reader, self.writer, head, plan, d, True))

    def _failed(self, waiting: Waiting, message: str) -> None:
        self.waiting = None
        waiting.protocol.answers = None
        waiting.upstream[1].close()
        log.warning("upstream %s: %s", waiting.plan.address, message)
        self.front.bad_gateway(self.writer, waiting.plan.address, keep=True)
        self._idle()

    def _hand_over(self, waiting: Waiting, response: Head | None, rest: bytes) -> None:
        """Give an answer to the slow lane: `rest`, its bytes after `response` (or all
        of them, with None), goes back into the upstream's reader, and a task finishes
        the exchange."""
        self.waiting = None
        protocol = waiting.protocol
        protocol.answers = None
        if rest:
            protocol.data_received(rest)
        method, plan, upstream = waiting.head.start[0], waiting.plan, waiting.upstream
        self._slow(
            lambda d: self.front.resume(
                self.writer, method, upstream, plan.address, plan.cors, d, response
            )
        )

    def _give_up(self) -> None:
        """The exchange in progress ends unanswered: its upstream connection goes."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.protocol.answers = None
            waiting.upstream[1].close()

    def _idle(self) -> None:
        """Ready for the next request: any already here is served."""
        self._wait(KEEPALIVE_IDLE)
        if self.held:
            self.held = False
            self.transport_.resume_reading()
        if self.ended:
            self._slow(None)
            super().eof_received()
        elif self.buffer:
            self._next(bytes(self.buffer))

    def _wait(self, seconds: float) -> None:
        self.alarm.set(seconds)

    def _too_long(self) -> None:
        if self.task is not None:
            return  # the slow lane keeps its own time
        if self.waiting is not None:
            self._failed(self.waiting, "no answer in time")
        else:
            self.writer.close()  # silent between requests

    # -- the slow lane -------------------------------------------------------------

    def _slow(self, first: Callable[[Deadline], Awaitable[bool]] | None, data: bytes = b"") -> None:
        """Give the connection to a task running the stream code, `first` (the rest of
        a request the fast lane began) and then what comes.  What the fast lane holds
        (`data`, else its buffer) goes to the task's reader first."""
        self.alarm.clear()
        if self.held:
            self.held = False
            self.transport_.resume_reading()
        pending = data or bytes(self.buffer)
        self.buffer.clear()
        if pending:
            super().data_received(pending)
        self.task = self.loop.create_task(self._run(first))

    async def _run(self, first: Callable[[Deadline], Awaitable[bool]] | None) -> None:
        deadline = Deadline()
        try:
            await self.front.serve(self.reader, self.writer, self.peer, deadline, first, self._more)
        finally:
            deadline.close()

    def _more(self) -> bool:
        """Whether the slow lane serves another request; if not, the fast lane has the
        connection from now on (decided with nothing awaited between, so that no byte
        goes to the wrong lane)."""
        reader = self.reader
        if unread(reader) or reader.at_eof() or reader.exception() is not None or self.full:
            return True
        self.task = None
        self._wait(KEEPALIVE_IDLE)
        return False


class Waiting:
    """A fast-lane request whose answer is on its way."""

    __slots__ = ("head", "plan", "upstream", "protocol", "answer", "response", "length")

    def __init__(
        self, head: Head, plan: Plan, upstream: Connection, protocol: UpstreamProtocol
    ) -> None:
        self.head = head
        self.plan = plan
        self.upstream = upstream
        self.protocol = protocol
        self.answer = bytearray()
        self.response: Head | None = None
        self.length = 0  # the answer's length, head and body, once its head is read


async def _false() -> bool:
    return False


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
    lines = [start]
    lines += [f"{name}: {value}" for name, value in headers]
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
