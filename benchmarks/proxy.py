"""Proxy overhead and memory per session, from one run of the real service.

    .venv/bin/python benchmarks/proxy.py [N]

Latency of a Jupyter API request and of a kernel execute round trip, through
binder-lite's front (/s/<id>/) and directly against the session's Jupyter (on the
Unix socket it listens on in its sandbox, with the same requests), with their ratio
(goal: proxy ≤ 1.5× direct); and the resident memory of an idle session (every
process of its sandbox: Jupyter with one kernel) against that of the service.
Both measurements come from the same run, so the ratio does not depend on how busy
the machine was on another day.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.netutil import Resolver
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from launchkit import make_repo  # noqa: E402
from webkit import Client, Server  # noqa: E402

from binder_lite.kernel import execute_request  # noqa: E402
from binder_lite.launch.sandbox import Handle, connect_unix  # noqa: E402

GOAL = 1.5


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the session's Unix socket, as the front speaks to it."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = connect_unix(self.path, self.timeout)


class UnixResolver(Resolver):
    """Every name resolves to one Unix socket (for tornado's websocket client)."""

    def initialize(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, object]]:
        return [(socket.AF_UNIX, self.address)]


def api_time(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    """The time of one GET `path` on a kept-alive connection, as a browser sends it."""
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    return time.perf_counter() - started


def api_latencies(
    proxied: http.client.HTTPConnection,
    direct: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str],
    n: int,
) -> tuple[list[float], list[float]]:
    """`n` times of each, one request through the front and one directly in turn (in
    either order), so that a busy moment of the machine slows both alike."""
    through, straight = [], []
    for i in range(n):
        if i % 2:
            through.append(api_time(proxied, path, headers))
            straight.append(api_time(direct, path, headers))
        else:
            straight.append(api_time(direct, path, headers))
            through.append(api_time(proxied, path, headers))
    return through, straight


async def execute_latency(request: HTTPRequest, n: int, resolver: Resolver | None = None) -> float:
    conn = await websocket_connect(request, resolver=resolver)
    times = []
    for _ in range(n):
        msg_id, message = execute_request("1 + 1")
        started = time.perf_counter()
        conn.write_message(json.dumps(message))
        while True:
            msg = json.loads(await conn.read_message())  # type: ignore[arg-type]
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["msg_type"] == "execute_reply"
            ):
                break
        times.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(times)


def rss_kib(pids: set[int] | list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(m.group(1)) if m else 0
    return total


def start_kernel(sock: Path, base: str, auth: dict[str, str]) -> str:
    conn = UnixConnection(sock)
    conn.request("POST", f"{base}api/kernels", body=b"{}", headers=auth)
    response = conn.getresponse()
    kernel = str(json.loads(response.read())["id"])
    conn.close()
    return kernel


def ratio_line(what: str, direct: float, proxied: float) -> str:
    return (
        f"{what:13} direct {direct * 1000:7.2f} ms   proxied {proxied * 1000:7.2f} ms"
        f"   ratio {proxied / direct:5.2f}x (goal <= {GOAL}x)"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "site.yaml").write_text("version: 1\nsite: {name: bench, slug: bench}\n")
        repo = make_repo(work / "repo")
        server = Server(work / "site.yaml", work / "state", ("--allow-local-repos",)).start()
        try:
            client = Client(server.url)
            path = f"/build/git/{urllib.parse.quote(f'file://{repo}', safe='')}/HEAD"
            ready = client.events(path)[-1]
            token = str(ready["token"])
            sid = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
            base = f"/s/{sid}/"
            auth = {"Authorization": f"token {token}"}
            sock = Path(str(server.session_field(sid, "socket")))
            proxy_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            direct_conn = UnixConnection(sock)
            api = f"{base}api/kernelspecs"
            api_latencies(proxy_conn, direct_conn, api, auth, 10)  # warming up
            api_proxy, api_direct = api_latencies(proxy_conn, direct_conn, api, auth, n)
            proxy_conn.close()
            direct_conn.close()
            kernel = start_kernel(sock, base, auth)
            channels = f"{base}api/kernels/{kernel}/channels"
            exec_proxy = asyncio.run(
                execute_latency(
                    HTTPRequest(
                        f"ws://127.0.0.1:{server.port}{channels}",
                        headers={**auth, "Origin": server.url},
                    ),
                    n // 4,
                )
            )
            # The socket's path may be longer than a socket address may be: connect
            # through a descriptor of it, as connect_unix does.
            fd = os.open(sock, os.O_PATH | os.O_NOFOLLOW)
            try:
                exec_direct = asyncio.run(
                    execute_latency(
                        HTTPRequest(
                            f"ws://localhost{channels}",
                            headers={**auth, "Origin": "http://localhost"},
                        ),
                        n // 4,
                        UnixResolver(address=f"/proc/self/fd/{fd}"),
                    )
                )
            finally:
                os.close(fd)
            time.sleep(1)
            handle = Handle.load(work / "state/sessions" / sid / "sandbox.json")
            session_kib = rss_kib(handle.members()) if handle else 0
            service_kib = rss_kib([server.proc.pid]) if server.proc else 0
        finally:
            server.stop()
    # Other work on the machine slows the proxied path more (three processes take
    # turns on the CPUs instead of two): a run on a busy machine says so.
    load = os.getloadavg()[0]
    print(
        f"requests: {n} API (interleaved), {n // 4} executes; medians; "
        f"load average {load:.1f} on {os.cpu_count()} CPUs"
    )
    print(ratio_line("API request", statistics.median(api_direct), statistics.median(api_proxy)))
    # The ratio in each fifth of the run: how steady the machine was.
    k = max(n // 5, 1)
    fifths = [
        statistics.median(api_proxy[i : i + k]) / statistics.median(api_direct[i : i + k])
        for i in range(0, k * 5, k)
    ]
    print("  by fifth:    " + "  ".join(f"{r:4.2f}x" for r in fifths))
    print(ratio_line("execute 1+1", exec_direct, exec_proxy))
    print(f"idle session (sandbox: server + kernel): {session_kib / 1024:7.1f} MiB resident")
    print(f"binder-lite service:                     {service_kib / 1024:7.1f} MiB resident")


if __name__ == "__main__":
    main()
