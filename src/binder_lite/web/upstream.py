"""A small HTTP/1.1 client for the proxy: keep-alive connections to sessions' Jupyter
servers on 127.0.0.1.

tornado's own client opens a new connection for every request and costs about
0.6 ms more per request than the request itself; for a notebook page that loads
dozens of files, and for every API call, this proxy's overhead is what a user
feels.  Jupyter answers with Content-Length or chunked bodies; both are read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

MAX_HEADER = 64 * 1024
IDLE_PER_PORT = 8


@dataclass
class UpstreamResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class UpstreamError(Exception):
    pass


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    def __init__(self) -> None:
        self._idle: dict[int, list[Connection]] = {}

    async def request(
        self, port: int, method: str, target: str, headers: list[tuple[str, str]],
        body: bytes | None, timeout: float = 300.0,
    ) -> UpstreamResponse:  # fmt: skip
        """Send one request; retry once on a fresh connection if a kept one was stale."""
        for attempt in (0, 1):
            reused, (reader, writer) = await self._connection(port, fresh=attempt == 1)
            try:
                # asyncio.timeout, not wait_for: no extra task per request.
                async with asyncio.timeout(timeout):
                    response, keep = await self._exchange(
                        reader, writer, method, target, headers, body
                    )
            except (ConnectionError, asyncio.IncompleteReadError, UpstreamError) as e:
                writer.close()
                if reused and attempt == 0:
                    continue  # the server closed a kept connection meanwhile
                raise UpstreamError(str(e)) from e
            except BaseException:
                writer.close()
                raise
            if keep:
                self._release(port, (reader, writer))
            else:
                writer.close()
            return response
        raise UpstreamError("unreachable")

    async def _connection(self, port: int, fresh: bool) -> tuple[bool, Connection]:
        idle = self._idle.get(port, [])
        while idle and not fresh:
            reader, writer = idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return True, (reader, writer)
            writer.close()
        return False, await asyncio.open_connection("127.0.0.1", port)

    def _release(self, port: int, connection: Connection) -> None:
        idle = self._idle.setdefault(port, [])
        if len(idle) < IDLE_PER_PORT:
            idle.append(connection)
        else:
            connection[1].close()

    def forget(self, port: int) -> None:
        for _, writer in self._idle.pop(port, []):
            writer.close()

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, target: str,
        headers: list[tuple[str, str]], body: bytes | None,
    ) -> tuple[UpstreamResponse, bool]:  # fmt: skip
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head + (body or b""))
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise UpstreamError(f"bad status line {status_line[:80]!r}")
        raw = await reader.readuntil(b"\r\n\r\n")
        if len(raw) > MAX_HEADER:
            raise UpstreamError("response headers too large")
        response_headers = []
        for line in raw.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(":")
                response_headers.append((name.strip(), value.strip()))
        fields = {n.lower(): v for n, v in response_headers}
        status = int(code)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            payload = b""
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            payload = await _read_chunked(reader)
        elif "content-length" in fields:
            payload = await reader.readexactly(int(fields["content-length"]))
        else:
            payload = await reader.read()  # delimited by closing the connection
            return UpstreamResponse(status, reason, response_headers, payload), False
        keep = fields.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        return UpstreamResponse(status, reason, response_headers, payload), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
