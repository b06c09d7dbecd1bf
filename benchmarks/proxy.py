"""Proxy overhead and memory per session, from one run of the real service.

    .venv/bin/python benchmarks/proxy.py [N]

Latency of a Jupyter API request and of a kernel execute round trip, through
binder-lite's proxy (/s/<id>/) and directly against the session's Jupyter, with
their ratio (goal: proxy ≤ 1.5× direct); and the resident memory of an idle
session (its Jupyter server with one kernel) against that of the service.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from launchkit import make_repo, processes_mentioning  # noqa: E402
from webkit import Client, Server  # noqa: E402

from binder_lite.kernel import execute_request  # noqa: E402


def api_latency(url: str, headers: dict[str, str], n: int) -> float:
    """Median time of GET `url` over one kept-alive connection, as a browser does."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        times.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(times)


async def execute_latency(ws_url: str, headers: dict[str, str], n: int) -> float:
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    times = []
    for _ in range(n):
        msg_id, message = execute_request("1 + 1")
        started = time.perf_counter()
        conn.write_message(json.dumps(message))
        while True:
            msg = json.loads(await conn.read_message())  # type: ignore[arg-type]
            if (msg.get("parent_header", {}).get("msg_id") == msg_id
                    and msg["msg_type"] == "execute_reply"):  # fmt: skip
                break
        times.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(times)


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(m.group(1)) if m else 0
    return total


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
            proxied = f"{server.url}/s/{sid}/"
            auth = {"Authorization": f"token {token}"}
            port = int(server.session_field(sid, "port"))
            direct = f"http://127.0.0.1:{port}/s/{sid}/"
            api_proxy = api_latency(f"{proxied}api/kernelspecs", auth, n)
            api_direct = api_latency(f"{direct}api/kernelspecs", auth, n)
            request = urllib.request.Request(f"{direct}api/kernels", data=b"{}", method="POST",
                                             headers=auth)  # fmt: skip
            with urllib.request.urlopen(request) as response:
                kernel = json.loads(response.read())["id"]
            ws_headers = {**auth, "Origin": server.url}
            exec_proxy = asyncio.run(execute_latency(
                f"{proxied.replace('http', 'ws', 1)}api/kernels/{kernel}/channels",
                ws_headers, n // 4))  # fmt: skip
            exec_direct = asyncio.run(execute_latency(
                f"{direct.replace('http', 'ws', 1)}api/kernels/{kernel}/channels",
                {**auth, "Origin": f"http://127.0.0.1:{port}"}, n // 4))  # fmt: skip
            time.sleep(1)
            session_kib = rss_kib(processes_mentioning(str(work / "state/sessions" / sid)))
            service_kib = rss_kib([server.proc.pid]) if server.proc else 0
        finally:
            server.stop()
    print(f"requests: {n} API, {n // 4} executes; medians")
    print(f"API request   direct {api_direct * 1000:7.2f} ms   proxied {api_proxy * 1000:7.2f} ms"
          f"   ratio {api_proxy / api_direct:5.2f}x (goal <= 1.5x)")  # fmt: skip
    print(f"execute 1+1   direct {exec_direct * 1000:7.2f} ms   proxied {exec_proxy * 1000:7.2f} ms"
          f"   ratio {exec_proxy / exec_direct:5.2f}x (goal <= 1.5x)")  # fmt: skip
    print(f"idle session (server + kernel): {session_kib / 1024:7.1f} MiB resident")
    print(f"binder-lite service:            {service_kib / 1024:7.1f} MiB resident")


if __name__ == "__main__":
    main()
