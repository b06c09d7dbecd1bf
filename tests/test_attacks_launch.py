"""Launch lifecycle and address policy, tried as an attacker would (issue 8, findings 5
and 6): git servers that never answer, trickle or redirect; a repository too large for
the site; address spellings that lead back to this machine; a name that resolves
differently after the check; launches that outstay or outnumber their welcome.

Real git against real servers on 127.0.0.1 (so `allow_local`/`--allow-local-repos`
where a launch must reach loopback at all), and a real `binder-lite serve`."""

from __future__ import annotations

import asyncio
import functools
import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from launchkit import git, make_repo, processes_mentioning, serving
from test_web import build_path, write_site
from webkit import Client, Server, git_http_server

from binder_lite.errors import SourceError
from binder_lite.launch import sources
from binder_lite.net import free_port
from binder_lite.site.model import Runtime
from binder_lite.web.manager import Limits, SessionManager
from binder_lite.web.policy import RefusedError, RepoPolicy, is_public
from binder_lite.web.store import Store

MiB = 1024**2


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def bare_copy(repo: Path, root: Path) -> Path:
    """A bare clone of `repo` in `root`, ready for git's smart and dumb HTTP."""
    bare = root / f"{repo.name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", repo, bare], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    return bare


# -- git servers that misbehave --------------------------------------------------------


class _Behaviour(http.server.ThreadingHTTPServer):
    """A dumb-HTTP git server that records what it was asked, and can hold every answer
    back (sending nothing, or a byte now and then) until released or 45 s have passed
    (then `gave_in` is set: git did not give up first), or redirect everything elsewhere."""

    requests: list[str]
    asked: threading.Event
    release: threading.Event
    gave_in: threading.Event
    trickle: bool = False
    redirect: str | None = None

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # git hung up on a held answer: that is the point


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Behaviour

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(self.path)
        srv.asked.set()
        if srv.redirect is not None:
            self.send_response(302)
            self.send_header("Location", srv.redirect + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.trickle:
            self._trickle()
            return
        if not srv.release.wait(45):
            srv.gave_in.set()
        super().do_GET()

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-git-upload-pack-advertisement")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        deadline = time.monotonic() + 45
        while not self.server.release.is_set():
            if time.monotonic() > deadline:
                self.server.gave_in.set()
                return
            try:
                self.wfile.write(b"0")
                self.wfile.flush()
            except OSError:
                return
            self.server.release.wait(0.5)


@contextmanager
def misbehaving(
    root: Path, *, trickle: bool = False, redirect: str | None = None, address: str = "127.0.0.1"
) -> Iterator[_Behaviour]:
    server = _Behaviour((address, 0), functools.partial(_Handler, directory=str(root)))
    server.requests, server.asked = [], threading.Event()
    server.release, server.gave_in = threading.Event(), threading.Event()
    server.trickle, server.redirect = trickle, redirect
    with serving(server):
        try:
            yield server
        finally:
            server.release.set()  # let held answers go, so no thread outlives the test


def url_of(server: _Behaviour, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{path}"


@contextmanager
def git_daemon(root: Path) -> Iterator[int]:
    """`git daemon` serving the bare repositories under `root` (git://) on 127.0.0.1."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            f"--base-path={root}",
            "--listen=127.0.0.1",
            f"--port={port}",
            "--reuseaddr",
            root,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _connects(port), 10, "git daemon")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def silent_tcp() -> Iterator[int]:
    """A server that accepts connections and never says anything: git:// has no curl
    and so no low-speed limit; only the overall timeout ends a fetch from it.  After
    45 s it hangs up, so that a fetch with no timeout fails instead of hanging."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        deadline = time.monotonic() + 45
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()
        listener.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def check_out(url: str, tmp: Path, **kw: object) -> sources.Checkout:
    return sources.check_out(url, None, tmp / "cache", tmp / "dest", lambda line: None, **kw)  # type: ignore[arg-type]


def git_processes_for(port: int) -> list[int]:
    return processes_mentioning(f"127.0.0.1:{port}/")


# -- finding 6: addresses --------------------------------------------------------------

REFUSED_HOSTS = [
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[64:ff9b:1::a9fe:a9fe]",  # local-use NAT64
    "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254
    "[2001:0:a9fe:a9fe::1]",  # Teredo
    "[::a9fe:a9fe]",  # IPv4-compatible
    "[::ffff:169.254.169.254]",  # IPv4-mapped
    "[::ffff:7f00:1]",  # IPv4-mapped loopback
    "[fec0::1]",  # site-local
    "[fe80::1]",  # link-local
    "[fd00::2]",  # unique local (this machine's own)
    "[::1]",
    "[::]",
    "[2001:db8::1]",  # documentation
    "[ff02::1]",  # multicast
    "2852039166",  # 169.254.169.254, as one decimal number
    "0xa9fea9fe",  # ... in hex
    "0251.0376.0251.0376",  # ... in octal
    "169.254.169.254",
    "127.1",
    "127.0.0.1",
    "0.0.0.0",
    "0",
    "10.1.2.3",
    "192.168.0.1",
    "100.64.0.1",  # shared address space (carrier NAT)
    "192.0.0.8",
    "198.18.0.1",  # benchmarking
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "localhost",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
@pytest.mark.parametrize("scheme", ["https", "git"])
def test_addresses_that_are_not_the_internet_are_refused(host: str, scheme: str) -> None:
    policy = RepoPolicy(allowed=("*",))
    with pytest.raises(RefusedError, match="resolves to a local or private address"):
        policy.check(f"{scheme}://{host}/owner/repo")


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "140.82.112.3", "2001:4860:4860::8888", "2606:4700::1111", "2a00:1450:4001::1"],
)
def test_public_addresses_are_admitted(address: str) -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    admitted = RepoPolicy(allowed=("*",)).admit(f"https://{host}/owner/repo")
    assert admitted.url == f"https://{host}/owner/repo"
    assert admitted.pin is None  # an address: there is no name to look up again


def test_admitted_names_come_with_the_addresses_they_were_checked_at() -> None:
    admitted = RepoPolicy(allowed=(), allow_local=True).admit("http://localhost:8123/r.git")
    assert admitted.pin is not None
    assert admitted.pin.host == "localhost" and admitted.pin.port == 8123
    assert "127.0.0.1" in admitted.pin.addresses
    assert admitted.pin.curl_resolve()[0].startswith("localhost:8123:")


def test_git_connects_to_the_pinned_address_not_to_a_new_lookup(tmp_path: Path) -> None:
    """The name does not resolve at all: git reaches the server only through the pin,
    so it never looked the name up again after the check (over HTTP and git://)."""
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    with misbehaving(tmp_path / "srv") as server:
        server.release.set()
        port = server.server_address[1]
        for n, host in enumerate(["pinned.invalid", "PINNED.Invalid", "pinned.invalid."]):
            url = f"http://{host}:{port}/repo.git"
            with pytest.raises(SourceError, match="cannot reach"):
                check_out(url, tmp_path / f"unpinned{n}")
            pin = sources.Pin(urllib.parse.urlparse(url).hostname or "", port, ("127.0.0.1",))
            checkout = check_out(url, tmp_path / f"pinned{n}", pin=pin)
            assert (checkout.path / "index.ipynb").is_file()
    with git_daemon(tmp_path / "srv") as port:
        url = f"git://pinned.invalid:{port}/repo.git"
        with pytest.raises(SourceError):
            check_out(url, tmp_path / "git-unpinned")
        pin = sources.Pin("pinned.invalid", port, ("127.0.0.1",))
        checkout = check_out(url, tmp_path / "git-pinned", pin=pin)
        assert (checkout.path / "index.ipynb").is_file()
        # Pushing back goes to the URL as given, not to the address.
        assert git(checkout.path, "remote", "get-url", "origin") == url


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    with misbehaving(tmp_path / "srv") as target:
        target.release.set()
        elsewhere = f"http://127.0.0.1:{target.server_address[1]}"
        with misbehaving(tmp_path / "srv", redirect=elsewhere) as first:
            with pytest.raises(SourceError) as caught:
                check_out(url_of(first, "repo.git"), tmp_path)
            assert first.requests  # git asked the first server ...
    assert target.requests == []  # ... and never went where it pointed
    assert "302" in str(caught.value) or "redirect" in str(caught.value).lower()


# -- finding 5: time and size bounds on git --------------------------------------------


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_slow_http_server_fails_the_fetch_at_the_low_speed_limit(
    tmp_path: Path, trickle: bool
) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    limits = sources.FetchLimits(low_speed_time=2, timeout=30)
    with misbehaving(tmp_path / "srv", trickle=trickle) as server:
        # Not the overall timeout ("took longer than 30 s"), nor the server giving in.
        with pytest.raises(SourceError, match="sends too slowly") as caught:
            check_out(url_of(server, "repo.git"), tmp_path, limits=limits)
        assert server.asked.is_set() and not server.gave_in.is_set()
        assert "repo.git" in str(caught.value)
        assert git_processes_for(server.server_address[1]) == []


def test_a_silent_git_protocol_server_is_bounded_by_the_overall_timeout(tmp_path: Path) -> None:
    with silent_tcp() as port:
        with pytest.raises(SourceError, match="took longer than 3 s"):
            check_out(
                f"git://127.0.0.1:{port}/repo.git", tmp_path, limits=sources.FetchLimits(timeout=3)
            )
        assert git_processes_for(port) == []


def test_a_fetch_is_cancelled_at_once(tmp_path: Path) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    cancel = threading.Event()
    with misbehaving(tmp_path / "srv") as server:

        def cancel_once_asked() -> None:
            server.asked.wait(10)
            cancel.set()

        threading.Thread(target=cancel_once_asked).start()
        with pytest.raises(sources.FetchCancelled):
            check_out(url_of(server, "repo.git"), tmp_path, cancel=cancel)
        assert not server.gave_in.is_set()  # stopped while the server still held its answer
        assert git_processes_for(server.server_address[1]) == []


def _large_repo(path: Path, size: int) -> Path:
    repo = make_repo(path)
    for n in range(size // (5 * MiB)):
        (repo / f"blob{n}.bin").write_bytes(os.urandom(5 * MiB))  # incompressible
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "large")
    return repo


@pytest.fixture(scope="module")
def large_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _large_repo(tmp_path_factory.mktemp("large") / "repo", 30 * MiB)


def _peak_size(paths: list[Path], stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], sum(sources._size(p) for p in paths if p.exists()))
        time.sleep(0.005)


@pytest.mark.parametrize("protocol", ["smart", "dumb"])
def test_a_repository_over_the_size_limit_fails_and_leaves_nothing(
    tmp_path: Path,
    large_repo: Path,
    protocol: str,
) -> None:
    limit = 10 * MiB
    bare = bare_copy(large_repo, tmp_path / "srv")
    # One pack, as forges serve them (git clone --bare of a local repository keeps its
    # loose objects, which a dumb fetch downloads five at a time between two looks).
    subprocess.run(["git", "repack", "-q", "-a", "-d"], cwd=bare, check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    peak = [0]
    stop = threading.Event()
    watched = [tmp_path / "cache", tmp_path / "dest"]
    sampler = threading.Thread(target=_peak_size, args=(watched, stop, peak))
    sampler.start()
    try:
        message = r"larger than this site's limit of 10 MiB \(binder.max_repo_size\)"
        with (
            _server_for(protocol, tmp_path / "srv") as base,
            pytest.raises(sources.TooLargeError, match=message),
        ):
            check_out(f"{base}/repo.git", tmp_path, limits=sources.FetchLimits(max_size=limit))
    finally:
        stop.set()
        sampler.join()
    on_disk = sum(sources._size(p) for p in watched if p.exists())
    assert on_disk < MiB, on_disk  # the mirror went, nothing was checked out
    # ... and it never grew much past the limit (the pack is held to it as it is written;
    # git's other files come on top).
    assert peak[0] <= limit + 2 * MiB, peak[0]


@contextmanager
def _server_for(protocol: str, root: Path) -> Iterator[str]:
    if protocol == "smart":
        with git_http_server(root, "nobody", lambda password: False) as base:
            yield base
    else:
        with misbehaving(root) as server:
            server.release.set()
            yield f"http://127.0.0.1:{server.server_address[1]}"


def test_a_small_pack_of_large_files_is_not_checked_out(tmp_path: Path) -> None:
    """A few kilobytes of pack can hold gigabytes of zeros: the files a commit would
    write are counted before they are written."""
    repo = make_repo(tmp_path / "repo")
    with open(repo / "zeros.bin", "wb") as f:
        f.truncate(64 * MiB)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "zeros")
    with pytest.raises(sources.TooLargeError):
        check_out(f"file://{repo}", tmp_path, limits=sources.FetchLimits(max_size=10 * MiB))
    assert not (tmp_path / "dest").exists()


def test_the_cache_forgets_least_recently_used_mirrors(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mirrors = []
    for n in range(4):
        repo = make_repo(tmp_path / f"repo{n}")
        (repo / "data.bin").write_bytes(os.urandom(MiB))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "data")
        sources.check_out(f"file://{repo}", None, cache, tmp_path / f"dest{n}", lambda _: None)
        mirrors.append(sources.mirror_dir(cache, f"file://{repo}"))
        os.utime(mirrors[-1], (1000 + n, 1000 + n))  # repo0 was used longest ago
    removed = sources.trim_cache(cache, int(2.5 * MiB), keep={mirrors[0]})
    assert removed == [mirrors[1], mirrors[2]]  # repo0 is in use: kept
    assert mirrors[0].exists() and mirrors[3].exists()
    assert sum(sources._size(m) for m in mirrors if m.exists()) <= 2.5 * MiB


def test_postbuild_results_are_trimmed_with_the_mirrors_but_not_while_restored(
    tmp_path: Path,
) -> None:
    """A repository can make a postBuild result per commit: without a bound, pushing
    commits would fill the service's disk.  They share the cache's bound with the
    mirrors, least recently used first; one being restored is held."""
    cache = tmp_path / "cache"
    results = []
    for n in range(3):
        kept = cache / "postbuild" / f"{n:064x}"
        kept.mkdir(parents=True)
        (kept / "files.tar").write_bytes(os.urandom(MiB))
        os.utime(kept, (1000 + n, 1000 + n))
        results.append(kept)
    partial = cache / "postbuild" / f".{results[2].name}.abcd"  # one still being written
    partial.mkdir()
    with sources.shared_lock(results[0]):
        removed = sources.trim_cache(cache, int(2.5 * MiB))
    assert removed == [results[1]]  # results[0], the oldest, was being restored
    assert results[0].exists() and results[2].exists() and partial.exists()
    assert sources.trim_cache(cache, int(1.5 * MiB)) == [results[0]]


# -- finding 5: the service's lifecycle ------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    srv = Server(
        write_site(tmp_path, max_sessions=6, per_user=2),
        tmp_path / "state",
        ("--allow-local-repos",),
    ).start()
    yield srv
    srv.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


def _status(server: Server, session_id: str) -> str:
    return str(server.session_field(session_id, "status"))


def test_a_launch_stopped_while_pending_never_comes_back(tmp_path: Path, served: Server) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    folder = served.state_dir / "sessions"
    with misbehaving(tmp_path / "srv") as slow:
        client = Client(served.url)
        response = client.post("/launch", {"repo": url_of(slow, "repo.git")})
        assert response.status == 303
        sid = response.headers["Location"].split("/")[2]
        assert slow.asked.wait(20)
        assert _status(served, sid) == "pending"
        assert client.post(f"/sessions/{sid}/stop").status == 303
        assert _status(served, sid) == "stopped"
        # git is stopped with the launch; were it not, the answer it waits for comes now.
        slow.release.set()
        wait_for(
            lambda: not (folder / sid).exists() or _status(served, sid) != "stopped",
            60,
            "the launch to end and tidy up",
        )
        assert _status(served, sid) == "stopped"
        assert not (folder / sid).exists()
        assert processes_mentioning(str(folder / sid)) == []
        assert git_processes_for(slow.server_address[1]) == []
    assert _status(served, sid) == "stopped"
    assert served.session_field(sid, "port") is None


def test_a_server_that_never_answers_fails_the_launch_by_itself(
    tmp_path: Path,
    served: Server,
) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    with misbehaving(tmp_path / "srv") as silent:
        events = Client(served.url).events(build_path(url_of(silent, "repo.git")))
        assert not silent.gave_in.is_set()  # git gave up before the server's 45 s
    assert events[-1]["phase"] == "failed", events[-1]
    assert "too slowly" in str(events[-1]["message"])


def _launch_from(
    server: Server, repo: str, source: str, streams: list[http.client.HTTPConnection]
) -> str:
    """GET /build without cookies from `source` (a loopback address); the first event's
    phase.  The stream stays open (in `streams`): closing it would stop the launch."""
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    streams.append(conn)
    conn.request("GET", build_path(repo))
    response = conn.getresponse()
    assert response.status == 200  # refusals are events, as BinderHub sends them
    line = next(line for line in iter(response.fp.readline, b"") if line.startswith(b"data: "))
    return str(json.loads(line[6:])["phase"])


def test_cookieless_launches_from_one_address_do_not_take_every_slot(
    tmp_path: Path,
    served: Server,
) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    streams: list[http.client.HTTPConnection] = []
    with misbehaving(tmp_path / "srv") as slow:  # keeps every launch pending
        repo = url_of(slow, "repo.git")
        phases = [_launch_from(served, repo, "127.0.0.1", streams) for _ in range(30)]
        assert phases.count("fetching") == 2 and phases.count("failed") == 28  # per user
        assert _launch_from(served, repo, "127.0.0.2", streams) == "fetching"  # others can
        health = Client(served.url).get("/health").text
        assert '"sessions": 3' in health and '"capacity": 6' in health
        for conn in streams:
            conn.close()


def test_pending_launches_are_culled(tmp_path: Path) -> None:
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")

    async def scenario(slow: _Behaviour) -> tuple[str, str]:
        limits = Limits(4, 4, 600, 600, 60, max_pending=1.0)
        manager = SessionManager(
            Store(tmp_path / "db.sqlite"), tmp_path / "state", Runtime.LOCAL, limits
        )
        manager._loop = asyncio.get_running_loop()
        sid = manager.request("someone", url_of(slow, "repo.git"), "HEAD", None)
        assert await asyncio.to_thread(slow.asked.wait, 20)
        await asyncio.sleep(1.1)
        await asyncio.to_thread(manager.cull)
        culled = manager.store.get(sid)
        assert culled is not None
        slow.release.set()
        live = manager.live[sid]
        await asyncio.to_thread(wait_for, lambda: not live.launching, 60, "the launch to end")
        final = manager.store.get(sid)
        assert final is not None
        return culled.status + ": " + culled.message, final.status

    with misbehaving(tmp_path / "srv") as slow:
        culled, final = asyncio.run(scenario(slow))
    assert culled == "stopped: the launch took longer than 1 s"
    assert final == "stopped"
    assert not (tmp_path / "state" / "sessions").exists() or not any(
        (tmp_path / "state" / "sessions").iterdir()
    )
