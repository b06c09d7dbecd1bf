"""How many live sessions one front carries, and its memory per session.

    .venv/bin/python benchmarks/front.py [SESSIONS] [ROUNDS]

The sessions' servers are small stand-ins (one tornado process, a Unix socket per
session, speaking enough of Jupyter's API: /api/status, /api/contents and a kernel
channel websocket that echoes), so that the memory measured is the front's and not
Jupyter's.  The service adopts them at start as it adopts sessions after a restart
(a record, a handle naming the stand-ins' process, a status that answers).  Then
every session gets an open websocket through the front, one untimed round warms
both paths (the front's pooled connection to each session, like the direct side's),
and ROUNDS rounds of one request per session go through the front (with the
websockets open), each timed against the same request sent straight to the
session's socket, by the same client, one request at a time.

Printed: sessions adopted, errors (goal: none), the median proxied and direct request
and their ratio (goal: proxied <= 1.5x direct, at 1,000 sessions); the front's CPU
time per proxied request; the same request through a bare relay (asyncio protocols,
no rules, no checks) and through the same relay on asyncio streams, each in rounds of
its own beside the direct request, for what the extra hop costs a Python process at
all and what streams add to it; and the front's resident memory per session (the
service's RSS with every session's websocket open, less its RSS before any session,
over the sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from webkit import Server  # noqa: E402

from binder_lite.launch.sandbox import Handle  # noqa: E402
from binder_lite.procs import ProcessId  # noqa: E402
from binder_lite.web.store import Record, Store  # noqa: E402

GOAL = 1.5
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# The floors timed with the front: the extra hop with no rules, on protocols and on
# streams (the front's own way of reading and writing).
RELAYS = {
    "--bare-relay": "the hop alone (a bare relay on protocols, no rules)",
    "--stream-relay": "the hop on streams (the bare relay on asyncio streams, no rules)",
}
SITE = """\
version: 1
site: {{name: Front, slug: front}}
binder:
  max_sessions: {n}
  max_sessions_per_user: {n}
  idle_timeout: 86400
"""

# -- the stand-ins: one process, a socket per session ----------------------------------


def stand_ins(folders: list[str]) -> None:
    import tornado.httpserver
    import tornado.ioloop
    import tornado.netutil
    import tornado.web
    import tornado.websocket

    class Status(tornado.web.RequestHandler):
        def get(self, _sid: str) -> None:
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            self.write({"started": now, "last_activity": now, "connections": 1, "kernels": 0})

    class Contents(tornado.web.RequestHandler):
        def get(self, _sid: str) -> None:
            self.write({"name": "", "path": "", "type": "directory", "content": []})

    class Channels(tornado.websocket.WebSocketHandler):
        def check_origin(self, origin: str) -> bool:
            return True

        def on_message(self, message: str | bytes) -> None:
            self.write_message(message, binary=isinstance(message, bytes))

    app = tornado.web.Application(
        [
            (r"/s/([0-9a-f]{16})/api/status", Status),
            (r"/s/([0-9a-f]{16})/api/contents", Contents),
            (r"/s/([0-9a-f]{16})/api/kernels/[^/]+/channels", Channels),
        ]
    )
    server = tornado.httpserver.HTTPServer(app)
    for folder in folders:
        path = Path(folder) / "run" / "jupyter.sock"
        server.add_socket(tornado.netutil.bind_unix_socket(str(path)))
    print("ready", flush=True)
    tornado.ioloop.IOLoop.current().start()


# -- a bare relay: the hop alone ----------------------------------------------------------


def bare_relay(state: str) -> None:
    """A proxy with no rules, no checks and no pool limits, on asyncio protocols (a
    callback per read, no task per request): /s/<id>/… goes to that session's socket,
    and the answer comes back by its Content-Length.  Timed in the same run as the
    front, it says how much of the ratio the extra hop costs a Python process at all."""
    length = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")

    class Up(asyncio.Protocol):
        def __init__(self, down: asyncio.Transport) -> None:
            self.down, self.data = down, b""

        def data_received(self, data: bytes) -> None:
            self.data += data
            end = self.data.find(b"\r\n\r\n") + 4
            found = length.search(self.data, 0, end) if end > 3 else None
            if found and len(self.data) >= end + int(found.group(1)):
                self.down.write(self.data)
                self.data = b""

    class Down(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport, self.data = transport, b""
            self.ups: dict[str, asyncio.Transport] = {}

        def data_received(self, data: bytes) -> None:
            self.data += data
            if self.data.endswith(b"\r\n\r\n"):
                request, self.data = self.data, b""
                sid = request.split(b"/", 3)[2].decode()
                up = self.ups.get(sid)
                if up is not None:
                    up.write(request)
                else:
                    asyncio.ensure_future(self.connect(sid, request))

        async def connect(self, sid: str, request: bytes) -> None:
            path = str(Path(state) / "sessions" / sid / "run" / "jupyter.sock")
            loop = asyncio.get_running_loop()
            up, _ = await loop.create_unix_connection(lambda: Up(self.transport), path)
            self.ups[sid] = up
            up.write(request)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Down, "127.0.0.1", 0)
        print("ready", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

    asyncio.run(serve())


def stream_relay(state: str) -> None:
    """The bare relay again, on asyncio streams as the front is (a task per client
    connection, awaiting each head and answer): what streams cost over protocols."""
    length = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ups: dict[str, Connection] = {}
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while request := await reader.readuntil(b"\r\n\r\n"):
                sid = request.split(b"/", 3)[2].decode()
                if sid not in ups:
                    path = Path(state) / "sessions" / sid / "run" / "jupyter.sock"
                    ups[sid] = await asyncio.open_unix_connection(str(path))
                up_reader, up_writer = ups[sid]
                up_writer.write(request)
                answer = await up_reader.readuntil(b"\r\n\r\n")
                found = length.search(answer)
                body = await up_reader.readexactly(int(found.group(1))) if found else b""
                writer.write(answer + body)
                await writer.drain()
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        print("ready", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

    asyncio.run(serve())


# -- the sessions, as the service's store holds them ------------------------------------


def seed(state: Path, n: int) -> tuple[list[Record], list[str]]:
    """N records of running sessions, and their folders (the stand-ins' sockets)."""
    records, folders = [], []
    for _ in range(n):
        sid = secrets.token_hex(8)
        folder = state / "sessions" / sid
        (folder / "run").mkdir(parents=True)
        (folder / "repo").mkdir()
        folders.append(str(folder))
        records.append(
            Record(
                id=sid,
                owner="bench",
                repository="https://example.org/r.git",
                ref="HEAD",
                open_path=None,
                status="running",
                token=secrets.token_hex(24),
                socket=str(folder / "run" / "jupyter.sock"),
                view="tree",
                work_dir=str(folder / "repo"),
                session_dir=str(folder),
                ready=time.time(),
                last_activity=time.time(),
            )
        )
    return records, folders


def adopt_by(records: list[Record], state: Path, process: ProcessId) -> None:
    store = Store(state / "sessions.sqlite")
    for record in records:
        record.process = json.dumps(process.to_json())
        record.pid = process.pid
        store.add(record)
        Handle(process, ()).save(Path(str(record.session_dir)) / "sandbox.json")
    store.close()


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else 0


# -- the load ------------------------------------------------------------------------------


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> float:
    started = time.perf_counter()
    writer.write(head)
    await writer.drain()
    status = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", status).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(status.split(b"\r\n")[0].decode())
    return time.perf_counter() - started


def head(record: Record, host: str) -> bytes:
    return (
        f"GET /s/{record.id}/api/contents HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: token {record.token}\r\n\r\n"
    ).encode()


async def websocket(port: int, record: Record) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    writer.write(
        (
            f"GET /s/{record.id}/api/kernels/k/channels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: token {record.token}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = await reader.readuntil(b"\r\n\r\n")
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(answer.split(b"\r\n")[0].decode())
    return reader, writer


async def load(
    port: int, relays: dict[str, int], records: list[Record], rounds: int, pid: int
) -> dict[str, object]:
    """Timings by path, each beside the same request sent direct in the same rounds:
    "proxied" (the front) and "direct" first, then each relay with "direct <relay>";
    and the front's CPU time over its rounds."""
    errors: list[str] = []
    sockets = await asyncio.gather(*(websocket(port, r) for r in records), return_exceptions=True)
    errors += [f"websocket: {s}" for s in sockets if isinstance(s, BaseException)]
    memory = rss(pid)
    # Kept-alive connections both ways: the front keeps its own to each upstream.
    straight = {r.id: await asyncio.open_unix_connection(str(r.socket)) for r in records}
    times: dict[str, list[float]] = {}

    async def pairs(name: str, to: int, conns: list[Connection], timed: bool) -> None:
        """A round: for each session, the request through `to`, then direct."""
        clients = len(conns)
        direct = "direct" if name == "proxied" else f"direct {name}"
        for i, record in enumerate(records):
            try:
                through = await request(*conns[i % clients], head(record, f"127.0.0.1:{to}"))
                straight_ = await request(*straight[record.id], head(record, "localhost"))
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as e:
                if timed:
                    errors.append(f"request ({name}): {e}")
                conns[i % clients] = await asyncio.open_connection("127.0.0.1", to)
                continue
            if timed:
                times.setdefault(name, []).append(through)
                times.setdefault(direct, []).append(straight_)

    # Each path alone with the direct one: a relay timed in the same rounds as the
    # front would run its process between every two of the front's requests, which
    # is not the front's cost (docs/scaling.md).  One round untimed first, so that
    # the front's pool holds a connection to each session as the direct side does: a
    # session's first request, which pays for connecting, is one in hundreds in a
    # notebook's life, not one in ROUNDS.
    # The clients' connections last all the rounds of their path, as the front's and
    # the relays' connections to the sessions do.
    started = cpu_seconds(pid)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    for n in range(rounds + 1):
        await pairs("proxied", port, conns, timed=n > 0)
    front_cpu = (cpu_seconds(pid) - started) / (len(records) * (rounds + 1))
    for name, relay in relays.items():
        conns = [await asyncio.open_connection("127.0.0.1", relay)]
        for n in range(rounds + 1):
            await pairs(name, relay, conns, timed=n > 0)
    for s in sockets:
        if not isinstance(s, BaseException):
            s[1].close()
    return {"errors": errors, "rss": memory, "front_cpu": front_cpu, **times}


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_relay(kind: str, state: Path) -> tuple[subprocess.Popen[str], int]:
    relay = subprocess.Popen(
        [sys.executable, __file__, kind, str(state)], stdout=subprocess.PIPE, text=True
    )
    assert relay.stdout is not None
    return relay, int(relay.stdout.readline().split()[1])


def main(n: int, rounds: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        records, folders = seed(state, n)
        helper = subprocess.Popen(
            [sys.executable, __file__, "--stand-ins", *folders],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert helper.stdout is not None and helper.stdout.readline().strip() == "ready"
            process = ProcessId.of(helper.pid)
            assert process is not None
            site = Path(tmp) / "site.yaml"
            site.write_text(SITE.format(n=n))
            # The service alone, for its memory without sessions.
            empty = Server(site, Path(tmp) / "empty", ("--runtime", "local")).start(timeout=120)
            assert empty.proc is not None
            base = rss(empty.proc.pid)
            empty.stop()
            adopt_by(records, state, process)
            relays = {kind: start_relay(kind, state) for kind in RELAYS}
            server = Server(site, state, ("--runtime", "local")).start(timeout=600)
            assert server.proc is not None
            try:
                ports = {kind: port for kind, (_, port) in relays.items()}
                result = asyncio.run(load(server.port, ports, records, rounds, server.proc.pid))
            finally:
                server.stop()
                for relay, _ in relays.values():
                    relay.kill()
                    relay.wait()
        finally:
            helper.kill()
            helper.wait()
    errors = result["errors"]
    assert isinstance(errors, list)
    proxied = statistics.median(result["proxied"])  # type: ignore[arg-type]
    direct = statistics.median(result["direct"])  # type: ignore[arg-type]
    per_session = (int(result["rss"]) - base) / n  # type: ignore[call-overload]
    print(f"sessions: {n}, each with an open websocket; {rounds} rounds of a request each")
    print(f"errors: {len(errors)}{(' (first: ' + errors[0] + ')') if errors else ''}")
    ratio = proxied / direct
    verdict = "met" if ratio <= GOAL and not errors else "NOT met"
    print(
        f"median request: proxied {proxied * 1000:.2f} ms, direct {direct * 1000:.2f} ms, "
        f"ratio {ratio:.2f}x (goal <= {GOAL}x, no error): {verdict}"
    )
    front_cpu = float(result["front_cpu"])  # type: ignore[arg-type]
    print(f"the front's CPU time per proxied request: {front_cpu * 1e6:.0f} us")
    for kind, what in RELAYS.items():
        relayed = statistics.median(result[kind])  # type: ignore[arg-type]
        beside = statistics.median(result[f"direct {kind}"])  # type: ignore[arg-type]
        print(f"{what}: {relayed * 1000:.2f} ms, ratio {relayed / beside:.2f}x")
    print(f"front memory: {base / 2**20:.0f} MiB alone, {per_session / 1024:.1f} KiB per session")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stand-ins"]:
        stand_ins(sys.argv[2:])
    elif sys.argv[1:2] == ["--bare-relay"]:
        bare_relay(sys.argv[2])
    elif sys.argv[1:2] == ["--stream-relay"]:
        stream_relay(sys.argv[2])
    else:
        args = [int(a) for a in sys.argv[1:3]]
        sys.exit(main(*(args + [1000, 3][len(args) :])))
