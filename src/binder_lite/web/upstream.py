"""HTTP/1.1 messages as the front relays them: request heads parsed by h11 behind a
strict gate, response heads matched whole against one grammar, bodies copied as they
arrive under framing the front checks itself.

Request heads are parsed with h11 (python-hyper's HTTP/1.1 library, which does no
I/O of its own): it is strict by design, one grammar taken from the RFCs with no
lenient modes; it is pure Python, so nothing is compiled where the service is
installed; and Guix packages it (python-h11).  httptools (llhttp) would parse faster,
but it is a C extension, and what it lets through depends on flags.  The commonest
head, a request without a body, is first matched whole against REQUEST_HEAD (h11's
grammar, narrowed: an origin-form target, HTTP/1.0 or 1.1, one Host, no framing
header); only what that does not match goes to h11, which took nearly a third of the
front's own time per proxied request (docs/scaling.md).  tests/test_request_heads.py
holds the two to the same reading.  A head the grammar matches needs none of the
byte checks below (the grammar makes them all), and is read by splitting its lines:
the grammar has said what each line is.

Response heads come from tornado too, but a session's code can replace its Jupyter:
they are as hostile as requests.  They are matched whole by RESPONSE_HEAD, RFC 9112's
status-line and field-lines in one regular expression, which is stricter than h11
(tests/test_upstream.py holds the two to the same reading) and a quarter of the cost:
h11 took a third of the front's time per proxied request (benchmarks/proxy.py).  A
head that does not match ends its upstream connection with a 502 to the client; one
that does is read, as a request head is, by splitting its lines.

The servers behind the front are tornado (the application, and every session's
Jupyter).  Where h11 and tornado read the same bytes differently, the front refuses
them, because a difference is what request smuggling is made of:

- In a request head, a CR or LF outside a CRLF, any other control character, and a
  folded line are refused before h11 sees them: h11, like tornado, ends a line at a bare LF,
  and h11 unfolds folded lines, which tornado refuses.
- Chunked bodies are read here, not by h11: sizes of 1 to 16 hex digits and nothing
  else on the line, no trailers.  h11 allows 20 digits, extensions and trailers;
  tornado refuses extensions and trailers.
- One Content-Length, or one `Transfer-Encoding: chunked` (never both, never on an
  HTTP/1.0 request), with bodies up to MAX_BODY.

Bodies are never held whole: a notebook's download or upload can be large and a
server-sent event stream never ends, so the framing (Content-Length, chunked, or
"until the connection closes") is followed while the bytes pass through, and chunked
bodies go on in chunks of the front's own making.  Every session's Jupyter and the
service's own application are reached over kept-alive connections (`Pool`) to a port
on 127.0.0.1, to a Unix socket, or to a Slurm session's node (launch/node.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import AsyncIterator, Iterable, KeysView
from typing import Final, Protocol

import h11

MAX_HEAD = 64 * 1024  # also the StreamReader limit: a longer head or chunk line is refused
MAX_BODY = 512 * 1024 * 1024
CHUNK = 256 * 1024
IDLE_PER_UPSTREAM = 8

# Body framings besides a plain length (a length of 0 means no body).
CHUNKED = -1
UNTIL_CLOSE = -2

# Where an upstream listens: a TCP port on 127.0.0.1, the path of a Unix socket, or
# (host, port) on the cluster network (a Slurm session's node; launch/node.py).
Address = int | str | tuple[str, int]
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]

# The bytes a head may hold: all but the control characters other than HTAB, CR and
# LF (which check_request_bytes checks come only as CRLF).
_ALLOWED = bytes(c for c in range(256) if c in b"\t\r\n" or 0x20 <= c != 0x7F)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\r\n")
_DIGITS = re.compile(r"[0-9]{1,18}")

# A response head, whole: RFC 9112's status-line (HTTP/1.0 or 1.1, a status of
# 100-599, a reason phrase that h11 allows to be missing) and field-lines (a token,
# a colon, and a value of visible characters or obs-text with spaces or tabs only
# between them), each ending in CRLF, then the blank line.  Nothing else matches:
# no control character, no bare CR or LF, no folded line, no space before a colon.
# tests/test_upstream.py holds it to h11's reading of the same bytes.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# A field-line's OWS, value and OWS (`[ \t]*` field-value `[ \t]*`, the value being
# visible characters or obs-text with spaces or tabs only between them) are, taken
# together, any run of those characters, spaces and tabs: the grammar written as one
# character class matches the same lines in half the time (tests/test_upstream.py
# holds the two forms to the same strings).  Where the value starts and ends is
# found after the match (_fields).
_OWS_VALUE_OWS = rb"[\t !-~\x80-\xff]*"
_FIELD_LINE = _TOKEN + rb":" + _OWS_VALUE_OWS + rb"\r\n"
RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.[01] [1-5][0-9][0-9](?: [\t !-~\x80-\xff]*)?\r\n(?:" + _FIELD_LINE + rb")*\r\n"
)
# A request head, whole, as h11 reads it (its request-line and field-line rules on
# the bytes check_request_bytes lets through), narrowed to an origin-form target and HTTP/1.0
# or 1.1.  A head that does not match goes to h11, which refuses it or reads it.
REQUEST_HEAD = re.compile(_TOKEN + rb" /[!-~]* HTTP/1\.[01]\r\n(?:" + _FIELD_LINE + rb")*\r\n")


class MessageError(Exception):
    """A malformed or refused message; `status` is what to answer a client with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Head:
    """A request or response head: start line parts and headers (names in lower
    case), in order, and the bytes it was read from.  Not to be changed once made:
    the front asks a dozen questions of each head, answered from what __init__ works
    out once."""

    __slots__ = ("start", "headers", "raw", "_first", "_repeats")

    def __init__(
        self,
        start: tuple[str, str, str],  # (method, target, version) or (version, status, reason)
        headers: list[tuple[str, str]],
        raw: bytes,
    ) -> None:
        self.start: Final = start
        self.headers: Final = headers
        self.raw: Final = raw
        # Each name's first value, the later ones overwritten by the earlier; and
        # whether any name comes twice, which is rare: only then are the headers
        # searched for a name's every value.
        self._first: Final = dict(reversed(headers))
        self._repeats: Final = len(self._first) != len(headers)

    def __repr__(self) -> str:
        return f"Head({self.start!r}, {self.headers!r}, {self.raw!r})"

    def get(self, name: str) -> str | None:
        """The first value of header `name` (in any case), or None."""
        value = self._first.get(name)
        # The front asks in lower case, as the names are kept: lower() only otherwise.
        return value if value is not None or name.islower() else self._first.get(name.lower())

    def all(self, name: str) -> tuple[str, ...]:
        """Every value of header `name` (in any case), in order."""
        if not name.islower():
            name = name.lower()
        if self._repeats:
            return tuple(v for n, v in self.headers if n == name)
        value = self._first.get(name)
        return () if value is None else (value,)

    def names(self) -> KeysView[str]:
        """The names of the head's headers, each once."""
        return self._first.keys()

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header (Connection, Upgrade…) lists `token`."""
        if name.lower() not in self._first:
            return False
        return any(token == part.strip().lower() for v in self.all(name) for part in v.split(","))


def _fields(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The start line and the headers of a head (decoded as latin-1) that matched
    REQUEST_HEAD or RESPONSE_HEAD.  The grammar has said what each line is,
    `token ":" OWS value OWS`, so splitting reads it as the grammar does: the first
    colon ends the name, and the value is what lies between the spaces and tabs at
    either end.  (Cheaper than the second regular expression, over the fields, that
    it replaced.)"""
    lines = text.split("\r\n")  # the start line, the field lines, and two "" at the end
    headers = []
    for line in lines[1:-2]:
        name, _, value = line.partition(":")
        headers.append((name.lower(), value.strip(" \t")))
    return lines[0], headers


async def read_request(reader: asyncio.StreamReader) -> Head | None:
    """The next request head on `reader`, or None when the client closed between
    requests.  Refused heads raise MessageError."""
    raw = await _head_bytes(reader, ended=400, too_large=431)
    return None if raw is None else parse_request(raw)


def parse_request(raw: bytes) -> Head:
    """A request head from its bytes (up to and including its blank line), read as
    h11 reads it: by REQUEST_HEAD, or else checked byte by byte and read by h11.
    Refused heads raise MessageError."""
    # The grammar admits none of the bytes check_request_bytes refuses (no control
    # character but HTAB, CR and LF only as CRLF, no line starting with a space or
    # tab): a head it reads needs no second look.
    simple = _simple_request(raw)
    if simple is not None:
        return simple
    check_request_bytes(raw)
    event = _parse(h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD), raw)
    if not isinstance(event, h11.Request):
        raise MessageError(400, "malformed request head")
    version = "HTTP/" + event.http_version.decode()
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise MessageError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    target = event.target.decode("ascii")
    # Only origin-form: absolute-form and authority-form are for proxies, which the
    # front is not, and the servers behind it route on the path.
    if not target.startswith("/"):
        raise MessageError(400, "the request target must be a path")
    return Head((event.method.decode("ascii"), target, version), _decoded(event.headers), raw)


def _simple_request(raw: bytes) -> Head | None:
    """The head of a request without a body, read as h11 reads it; None for any
    other head (h11's to read or refuse).  h11 also wants exactly one Host on
    HTTP/1.1 and at most one on HTTP/1.0: a head here has exactly one."""
    if REQUEST_HEAD.fullmatch(raw) is None:
        return None
    line, headers = _fields(raw.decode("latin-1"))
    # The grammar's request-line: three parts, one space between each.
    method, target, version = line.split(" ")
    head = Head((method, target, version), headers, raw)
    names = head.names()
    if len(head.all("host")) != 1 or "content-length" in names or "transfer-encoding" in names:
        return None
    return head


async def read_response(reader: asyncio.StreamReader, upgrade: bool = False) -> Head | None:
    """The next response head from an upstream, or None if it closed before sending
    a byte of one."""
    raw = await _head_bytes(reader, ended=502, too_large=502)
    return None if raw is None else parse_response(raw, upgrade)


def parse_response(raw: bytes, upgrade: bool = False) -> Head:
    """A response head from its bytes.  A 101 is accepted only in answer to an
    `upgrade` request.  The head must match RESPONSE_HEAD whole; anything else is
    refused (502)."""
    if RESPONSE_HEAD.fullmatch(raw) is None:
        raise MessageError(502, "malformed response head")
    line, headers = _fields(raw.decode("latin-1"))
    version, status, *reason = line.split(" ", 2)
    if status == "101" and not upgrade:
        raise MessageError(502, "switched protocols unasked")
    return Head((version, status, reason[0] if reason else ""), headers, raw)


def check_request_bytes(raw: bytes) -> None:
    """Refuse a request head with a control character, a CR or LF outside a CRLF, or
    a folded line (see the module's docstring)."""
    lines = raw[:-4]
    # Every CR and LF in a CRLF, and no other control character.  (Counting, and
    # deleting the allowed bytes, cost a third of a regular expression's search.)
    crlf = lines.count(b"\r\n")
    if lines.count(b"\r") != crlf or lines.count(b"\n") != crlf or lines.translate(None, _ALLOWED):
        raise MessageError(400, "a control character, or a CR or LF outside a CRLF, in the head")
    if b"\r\n " in lines or b"\r\n\t" in lines:
        raise MessageError(400, "a folded header line")


async def _head_bytes(reader: asyncio.StreamReader, ended: int, too_large: int) -> bytes | None:
    """A head's bytes up to and including its blank line; None when the peer closed
    before its first byte; MessageError(`ended` or `too_large`) otherwise."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise MessageError(ended, "the message ended inside its head") from None
        return None
    except asyncio.LimitOverrunError:
        raise MessageError(too_large, "the message head is too large") from None


def _parse(conn: h11.Connection, raw: bytes) -> object:
    conn.receive_data(raw)
    try:
        return conn.next_event()
    except h11.RemoteProtocolError as e:
        raise MessageError(400, f"malformed head: {e}") from None


def _decoded(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("ascii"), value.decode("latin-1")) for name, value in headers]


def request_framing(head: Head) -> int:
    """How the request's body is delimited; ambiguous framings are refused.  (h11 has
    checked that a length is digits and that a transfer coding is `chunked` alone.)"""
    length = head.get("content-length")
    if head.get("transfer-encoding") is not None:
        if length is not None or head.start[2] != "HTTP/1.1":
            raise MessageError(
                400, "ambiguous framing: Transfer-Encoding with Content-Length or on HTTP/1.0"
            )
        return CHUNKED
    if length is None:
        return 0
    if not _one_length(head.raw):
        raise MessageError(400, "more than one Content-Length")
    if int(length) > MAX_BODY:
        raise MessageError(413, "the request body is too large")
    return int(length)


def _one_length(raw: bytes) -> bool:
    # h11 merges equal lengths ("5, 5", or two headers): the raw head tells them apart.
    lowered = raw.lower()
    start = lowered.find(b"\r\ncontent-length:")
    if lowered.find(b"\r\ncontent-length:", start + 2) != -1:
        return False
    return b"," not in lowered[start : lowered.find(b"\r\n", start + 2)]


def response_framing(method: str, head: Head) -> int:
    """How a response's body is delimited.  Its framing headers are checked even
    where there is no body: one Content-Length of digits, or Transfer-Encoding
    `chunked` alone on HTTP/1.1, never both (a response is refused, 502, otherwise)."""
    lengths = head.all("content-length")
    codings = head.all("transfer-encoding")
    if codings and (
        lengths or head.start[0] != "HTTP/1.1" or [c.lower() for c in codings] != ["chunked"]
    ):
        raise MessageError(502, "ambiguous or unknown response framing")
    if len(lengths) > 1 or (lengths and not _DIGITS.fullmatch(lengths[0])):
        raise MessageError(502, "a malformed Content-Length in the response")
    status = int(head.start[1])
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0
    if codings:
        return CHUNKED
    return int(lengths[0]) if lengths else UNTIL_CLOSE


async def body(reader: asyncio.StreamReader, framing: int) -> AsyncIterator[bytes]:
    """A body's content, piece by piece as it arrives (chunked framing taken off)."""
    if framing > 0:
        async for piece in _exactly(reader, framing):
            yield piece
    elif framing == CHUNKED:
        async for piece in _chunked(reader):
            yield piece
    elif framing == UNTIL_CLOSE:
        while data := await reader.read(CHUNK):
            yield data


async def _exactly(reader: asyncio.StreamReader, n: int) -> AsyncIterator[bytes]:
    while n:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        yield data


async def _chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise MessageError(400, "malformed chunk size") from None
        if not _CHUNK_SIZE.fullmatch(line):
            raise MessageError(400, "malformed chunk size")
        size = int(line[:-2], 16)
        if size == 0:
            break
        total += size
        if total > MAX_BODY:
            raise MessageError(413, "the body is too large")
        async for piece in _exactly(reader, size):
            yield piece
        if await reader.readexactly(2) != b"\r\n":
            raise MessageError(400, "malformed chunk")
    if await reader.readexactly(2) != b"\r\n":
        raise MessageError(400, "trailers are not accepted")


def framed(piece: bytes, framing: int) -> bytes:
    """`piece` of a body as it goes on the wire."""
    return b"%x\r\n%s\r\n" % (len(piece), piece) if framing == CHUNKED and piece else piece


async def copy_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: int, prefix: bytes = b""
) -> None:
    """Copy one body framed as `framing` from `reader` to `writer`, after `prefix`
    (a head), which goes out in the same write as a small body: one packet, not two."""
    if 0 <= framing <= CHUNK:
        writer.write(prefix + (await reader.readexactly(framing) if framing else b""))
        await writer.drain()
        return
    writer.write(prefix)
    async for piece in body(reader, framing):
        writer.write(framed(piece, framing))
        await writer.drain()
    if framing == CHUNKED:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


class Answers(Protocol):
    """Who takes an upstream's answer as it arrives, instead of its StreamReader (a
    request the front serves in callbacks, front.Lane)."""

    def answer_data(self, data: bytes) -> None: ...

    def answer_ended(self) -> None:
        """The upstream closed (or ended its side) before the answer was taken."""


class UpstreamProtocol(asyncio.StreamReaderProtocol):
    """An upstream connection: what it sends goes to its StreamReader, except while
    `answers` is set, when it goes there.  Set only while a request waits for its
    answer, so an idle connection's bytes (an answer ahead of its question) still
    land in the reader, where the pool sees them (`unread`)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.reader = reader  # StreamReaderProtocol holds it only weakly
        self.answers: Answers | None = None

    def data_received(self, data: bytes) -> None:
        if self.answers is not None:
            self.answers.answer_data(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        self._ended()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        super().connection_lost(exc)

    def _ended(self) -> None:
        answers, self.answers = self.answers, None
        if answers is not None:
            answers.answer_ended()


async def open_connection(address: Address) -> Connection:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_HEAD)
    protocol = UpstreamProtocol(reader)
    if isinstance(address, str):
        transport: asyncio.BaseTransport = await _open_unix(address, protocol)
    else:
        host, port = address if isinstance(address, tuple) else ("127.0.0.1", address)
        transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]


async def _open_unix(path: str, protocol: UpstreamProtocol) -> asyncio.BaseTransport:
    """Connect to a session's socket.  The session can write the directory it is in,
    so the last component is opened without following links and must be a socket;
    connecting through /proc/self/fd also lifts the 107-byte limit on socket paths
    (as sandbox.connect_unix does, which blocks)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConnectionRefusedError(f"{path} is not a socket")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: protocol, f"/proc/self/fd/{fd}")
        return transport
    finally:
        os.close(fd)


class Pool:
    """Idle kept-alive connections to upstreams, by address."""

    def __init__(self) -> None:
        self._idle: dict[Address, list[Connection]] = {}

    async def connect(self, address: Address, fresh: bool = False) -> tuple[bool, Connection]:
        """A connection to `address`, and whether it was kept from an earlier request."""
        kept = None if fresh else self.take(address)
        return (True, kept) if kept is not None else (False, await open_connection(address))

    def take(self, address: Address) -> Connection | None:
        """A kept connection to `address` that is still fit for a request, if any."""
        idle = self._idle.get(address)
        while idle:
            reader, writer = idle.pop()
            if not (writer.is_closing() or reader.at_eof() or unread(reader)):
                return reader, writer
            writer.close()
        return None

    def release(self, address: Address, connection: Connection) -> None:
        """Keep a connection whose every exchange went as HTTP/1.1 says."""
        idle = self._idle.setdefault(address, [])
        if len(idle) < IDLE_PER_UPSTREAM:
            idle.append(connection)
        else:
            connection[1].close()

    def forget(self, address: Address) -> None:
        for _, writer in self._idle.pop(address, []):
            writer.close()


def unread(reader: asyncio.StreamReader) -> bool:
    """Whether an idle connection holds bytes nobody asked for (an answer ahead of
    its question): such a connection would hand the next client someone else's
    response.  StreamReader has no public way to ask, hence its private buffer."""
    return bool(getattr(reader, "_buffer", b""))
