"""HTTP/1.1 messages as the front relays them: heads parsed, bodies copied as they arrive.

Bodies are never held whole: a notebook's download or upload can be large and a
server-sent event stream never ends, so the framing (Content-Length, chunked, or
"until the connection closes") is followed while the bytes pass through.  Every
session's Jupyter and the service's own application are reached over kept-alive
connections on 127.0.0.1 (`Pool`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

MAX_HEAD = 64 * 1024  # also the StreamReader limit: a longer head or chunk line is refused
MAX_BODY = 512 * 1024 * 1024
CHUNK = 256 * 1024
IDLE_PER_PORT = 8

# Body framings besides a plain length (a length of 0 means no body).
CHUNKED = -1
UNTIL_CLOSE = -2


class MessageError(Exception):
    """A malformed or refused message; `status` is what to answer a client with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Head:
    """A request or response head: start line parts and headers, in order."""

    start: tuple[str, str, str]  # (method, target, version) or (version, status, reason)
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header (Connection, Upgrade…) lists `token`."""
        return any(token == part.strip().lower() for v in self.all(name) for part in v.split(","))


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head on `reader`, or None when the peer closed between messages."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise MessageError(400, "the message ended inside its head") from None
        return None
    except asyncio.LimitOverrunError:
        raise MessageError(431, "the message head is too large") from None
    lines = raw.lstrip(b"\r\n").decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) != 3:
        raise MessageError(400, "malformed start line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        # No obsolete line folding and no space before the colon: both are smuggling aids.
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise MessageError(400, "malformed header line")
        headers.append((name, value.strip()))
    return Head((parts[0], parts[1], parts[2]), headers, raw)


def request_framing(head: Head) -> int:
    """How the request's body is delimited; ambiguous framings are refused."""
    encodings = head.all("Transfer-Encoding")
    lengths = head.all("Content-Length")
    if encodings:
        if lengths or [e.strip().lower() for e in encodings] != ["chunked"]:
            raise MessageError(400, "unsupported or ambiguous Transfer-Encoding")
        return CHUNKED
    if not lengths:
        return 0
    if len(set(lengths)) != 1 or not lengths[0].isascii() or not lengths[0].isdigit():
        raise MessageError(400, "bad Content-Length")
    length = int(lengths[0])
    if length > MAX_BODY:
        raise MessageError(413, "the request body is too large")
    return length


def response_framing(method: str, head: Head) -> int:
    status = head.start[1]
    if method == "HEAD" or status[:1] == "1" or status in ("204", "304"):
        return 0
    encoding = head.get("Transfer-Encoding")
    if encoding is not None:
        return CHUNKED if encoding.lower().rsplit(",", 1)[-1].strip() == "chunked" else UNTIL_CLOSE
    length = head.get("Content-Length")
    if length is not None and length.isascii() and length.isdigit():
        return int(length)
    return UNTIL_CLOSE


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
    if framing > 0:
        await _copy_exactly(reader, writer, framing)
    elif framing == CHUNKED:
        await _copy_chunked(reader, writer)
    else:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        writer.write(data)
        n -= len(data)
        await writer.drain()


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise MessageError(400, "malformed chunk size") from None
        total += size
        if total > MAX_BODY:
            raise MessageError(413, "the body is too large")
        writer.write(line)
        if size == 0:
            break
        await _copy_exactly(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise MessageError(400, "malformed chunk")
        writer.write(b"\r\n")
    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
        writer.write(trailer)
    writer.write(b"\r\n")
    await writer.drain()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Idle kept-alive connections to servers on 127.0.0.1, by port."""

    def __init__(self) -> None:
        self._idle: dict[int, list[Connection]] = {}

    async def connect(self, port: int, fresh: bool = False) -> tuple[bool, Connection]:
        """A connection to `port`, and whether it was kept from an earlier request."""
        idle = self._idle.get(port, [])
        while idle and not fresh:
            reader, writer = idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return True, (reader, writer)
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_HEAD)
        return False, (reader, writer)

    def release(self, port: int, connection: Connection) -> None:
        idle = self._idle.setdefault(port, [])
        if len(idle) < IDLE_PER_PORT:
            idle.append(connection)
        else:
            connection[1].close()

    def forget(self, port: int) -> None:
        for _, writer in self._idle.pop(port, []):
            writer.close()
