"""The web service, run for real on loopback, launching real Jupyter (local runtime)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import execute, git, make_repo, processes_mentioning
from webkit import Client, Server

from binder_lite.web import providers

SITE = """\
version: 1
site:
  name: "GN <Binder> & Co"
  slug: gn
  tagline: "Notebooks, <b>reproducibly</b>"
  logo: logo.svg
  primary_color: "#123abc"
binder:
  max_sessions: {max_sessions}
  max_sessions_per_user: {per_user}
  idle_timeout: 3600
"""


def write_site(tmp: Path, max_sessions: int = 4, per_user: int = 4, extra: str = "") -> Path:
    (tmp / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    path = tmp / "site.yaml"
    path.write_text(SITE.format(max_sessions=max_sessions, per_user=per_user) + extra)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"requirements.txt": "numpy\n"})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(write_site(tmp_path), tmp_path / "state", ("--allow-local-repos",)).start()
    yield srv
    srv.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


def build_path(repo: str, ref: str = "HEAD", query: str = "") -> str:
    return f"/build/git/{urllib.parse.quote(repo, safe='')}/{ref}" + (f"?{query}" if query else "")


def local_build_path(repo: Path, urlpath: str = "") -> str:
    """The launch URL of a local repository, opening `urlpath` as BinderHub's does."""
    return build_path(f"file://{repo}", query=urlpath and f"urlpath={urllib.parse.quote(urlpath)}")


def launch(client: Client, repo: Path, query: str = "") -> dict[str, object]:
    events = client.events(build_path(f"file://{repo}", query=query))
    assert events[-1]["phase"] == "ready", events[-1]
    return events[-1]


def session_id(ready: dict[str, object]) -> str:
    m = re.search(r"/s/([0-9a-f]{16})/", str(ready["url"]))
    assert m
    return m.group(1)


def test_landing_page_is_branded_and_escaped(server: Server) -> None:
    client = Client(server.url)
    page = client.get("/")
    assert page.status == 200
    assert "GN &lt;Binder&gt; &amp; Co" in page.text and "<Binder>" not in page.text
    assert "Notebooks, &lt;b&gt;reproducibly&lt;/b&gt;" in page.text
    assert 'src="/logo"' in page.text and 'name="_xsrf"' in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/theme.css").text.strip() == ":root { --primary: #123abc; }"
    assert client.get("/logo").headers["Content-Type"] == "image/svg+xml"
    badge = client.get("/badge.svg")
    assert badge.headers["Content-Type"] == "image/svg+xml" and "#123abc" in badge.text
    assert "GN &lt;Binder&gt; &amp; Co" in badge.text
    health = json.loads(client.get("/health").text)
    assert health == {"status": "ok", "sessions": 0, "capacity": 4}


def test_binderhub_build_stream_and_proxy(server: Server, repo: Path) -> None:
    client = Client(server.url)
    events = client.events(build_path(f"file://{repo}", query="urlpath=lab/tree/index.ipynb"))
    phases = [e["phase"] for e in events]
    assert phases[0] == "fetching" and phases[-1] == "ready"
    assert {"fetching", "launching"} <= set(phases)
    ready = events[-1]
    token = str(ready["token"])
    assert re.fullmatch(r"[0-9a-f]{48}", token)
    assert all(token not in json.dumps(e) for e in events[:-1])
    base = str(ready["url"])
    sid = session_id(ready)
    assert ready["view"] == f"{base}notebooks/index.ipynb"
    # The owner (by cookie) gets the notebook page through the proxy, without the token.
    page = client.get(f"/s/{sid}/notebooks/index.ipynb")
    assert page.status == 200 and "<html" in page.text.lower()
    assert client.get(f"/s/{sid}/api/kernelspecs").status == 200
    # Someone else: nothing, unless they hold the token (BinderHub clients do).
    stranger = Client(server.url)
    assert stranger.get(f"/s/{sid}/api/kernelspecs").status == 404
    assert stranger.get(f"/s/{sid}/api/kernelspecs?token=wrong").status == 404
    assert stranger.get(f"/s/{sid}/api/kernelspecs?token={token}").status == 200
    # A cell runs over the proxied websocket.
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.jar)
    origin = {"Origin": server.url, "Cookie": cookie}
    assert execute(f"{server.url}/s/{sid}/", "unused", "6 * 7", headers=origin) == "42"
    # Provenance: the page names the commit and the manifest.
    details = client.get(f"/sessions/{sid}").text
    assert git(repo, "rev-parse", "HEAD") in details and "python-numpy" in details
    assert token not in details and token not in client.get("/sessions").text
    assert server.log is not None and token not in server.log.read_text()
    assert (server.state_dir / "sessions" / sid).stat().st_mode & 0o077 == 0


def test_binderhub_launch_links(server: Server, repo: Path) -> None:
    client = Client(server.url)
    escaped = urllib.parse.quote(f"file://{repo}", safe="")
    page = client.get(f"/v2/git/{escaped}/main?urlpath=tree/index.ipynb")
    assert page.status == 200
    # The page's stream carries its own build token (buildtokens.py) after the query.
    events = f'data-events="/build/git/{escaped}/main?urlpath=tree/index.ipynb&amp;build_token='
    assert events in page.text
    github = client.get("/v2/gh/genenetwork/notebooks/main")
    assert github.status == 200 and "https://github.com/genenetwork/notebooks" in github.text
    assert client.get("/v2/gh/only-owner").status == 400
    gitlab = client.get("/v2/gl/group%2Fsub%2Fproject/main")
    assert gitlab.status == 200 and "https://gitlab.com/group/sub/project.git" in gitlab.text
    gist = client.get("/v2/gist/someone/0123abcd/HEAD")
    assert gist.status == 200 and "https://gist.github.com/someone/0123abcd.git" in gist.text
    unknown = client.get("/v2/zenodo/10.5281/zenodo.3242074")
    assert unknown.status == 404 and "No provider found for prefix zenodo" in unknown.text


COMMIT = "c0ffee" * 6 + "abcd"


@pytest.mark.parametrize(
    ("provider", "spec", "url", "ref", "persistent", "ref_url"),
    [
        (
            "gh",
            "owner/repo/feature/x",
            "https://github.com/owner/repo",
            "feature/x",
            f"v2/gh/owner/repo/{COMMIT}",
            f"https://github.com/owner/repo/tree/{COMMIT}",
        ),
        (
            "gl",
            "group%2Fsub%2Fproject/main",
            "https://gitlab.com/group/sub/project.git",
            "main",
            f"v2/gl/group%2Fsub%2Fproject/{COMMIT}",
            f"https://gitlab.com/group/sub/project/-/tree/{COMMIT}",
        ),
        (
            "gist",
            "someone/0123abcd",
            "https://gist.github.com/someone/0123abcd.git",
            "HEAD",
            f"v2/gist/someone/0123abcd/{COMMIT}",
            f"https://gist.github.com/someone/0123abcd/{COMMIT}",
        ),
        (
            "git",
            "https%3A%2F%2Fexample.org%2Fr.git/v1%2F2/",
            "https://example.org/r.git",
            "v1/2",
            f"v2/git/https%3A%2F%2Fexample.org%2Fr.git/{COMMIT}",
            "https://example.org/r.git",
        ),
    ],
)
def test_binderhub_provider_specs(
    provider: str, spec: str, url: str, ref: str, persistent: str, ref_url: str
) -> None:
    parsed = providers.parse(provider, spec)
    assert (parsed.url, parsed.ref) == (url, ref)
    assert parsed.request() == f"v2/{provider}/{spec.rstrip('/')}"
    assert parsed.persistent_request(COMMIT) == persistent
    assert parsed.ref_url(COMMIT) == ref_url


def test_binderhub_refusals_are_failed_events_on_200_streams(server: Server) -> None:
    client = Client(server.url)
    for path, message in [
        ("/build/zenodo/10.5281/zenodo.3242074", "No provider found for prefix zenodo"),
        ("/build/nosuch/a/b", "No provider found for prefix nosuch"),
        ("/build/gh/only-owner", "GitHub links look like"),
        ("/build/gl/not-a-project/main", "GitLab links look like"),
    ]:
        answer = client.get(path)
        assert answer.status == 200, (path, answer)
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        events = client.events(path)
        assert len(events) == 1 and set(events[0]) == {"phase", "message"}, events
        assert events[0]["phase"] == "failed" and message in str(events[0]["message"])


def test_build_only_makes_the_environment_ready_and_starts_nothing(
    server: Server, repo: Path
) -> None:
    client = Client(server.url)
    events = client.events(build_path(f"file://{repo}", query="build_only=true"))
    ready = events[-1]
    commit = git(repo, "rev-parse", "HEAD")
    assert ready["phase"] == "ready" and ready["imageName"] == commit, ready
    assert "url" not in ready and "token" not in ready
    assert [e["phase"] for e in events].count("launching") == 0
    assert json.loads(client.get("/health").text)["sessions"] == 0
    assert processes_mentioning(str(server.state_dir / "sessions")) == []


def test_ready_event_has_binderhubs_fields(server: Server, repo: Path) -> None:
    client = Client(server.url)
    escaped = urllib.parse.quote(f"file://{repo}", safe="")
    ready = launch(client, repo)
    commit = git(repo, "rev-parse", "HEAD")
    assert ready["image"] == commit and ready["repo_url"] == f"file://{repo}"
    assert ready["binder_ref_url"] == f"file://{repo}"
    assert ready["binder_launch_host"] == f"{server.url}/"
    assert ready["binder_request"] == f"v2/git/{escaped}/HEAD"
    assert ready["binder_persistent_request"] == f"v2/git/{escaped}/{commit}"


def test_form_launch_progress_sessions_stop(server: Server, repo: Path) -> None:
    client = Client(server.url)
    assert client.post("/launch", {"repo": f"file://{repo}"}, xsrf=False).status == 403
    response = client.post(
        "/launch", {"repo": f"file://{repo}", "ref": "main", "path": "index.ipynb"}
    )
    assert response.status == 303
    progress = response.headers["Location"]
    sid = progress.split("/")[2]
    assert "EventSource" not in client.get(progress).text  # the script is a separate file
    events = client.events(f"/sessions/{sid}/events")
    assert events[-1]["phase"] == "ready" and "token" not in events[-1]
    listing = client.get("/sessions").text
    assert f"/s/{sid}/notebooks/index.ipynb" in listing and "Push changes" in listing
    assert Client(server.url).get(f"/sessions/{sid}").status == 404
    assert Client(server.url).post(f"/sessions/{sid}/stop").status == 404
    assert client.post(f"/sessions/{sid}/stop").status == 303
    assert "stopped by its owner" in client.get(f"/sessions/{sid}").text
    assert processes_mentioning(f"/sessions/{sid}/") == []
    assert client.get(f"/s/{sid}/api/status").status == 404


def test_metrics(server: Server, repo: Path) -> None:
    client = Client(server.url)
    launch(client, repo)
    metrics = client.get("/metrics").text
    assert 'binder_lite_sessions{state="running"} 1' in metrics
    assert 'binder_lite_launches_total{result="ready"} 1' in metrics
    assert re.search(r"binder_lite_launch_seconds_sum \d", metrics)


def test_capacity_answer(tmp_path: Path, repo: Path) -> None:
    srv = Server(
        write_site(tmp_path, max_sessions=1), tmp_path / "state", ("--allow-local-repos",)
    ).start()
    try:
        client = Client(srv.url)
        launch(client, repo)
        other = Client(srv.url)
        full = other.post("/launch", {"repo": f"file://{repo}"})
        assert full.status == 503 and full.headers["Retry-After"] == "60"
        assert "all 1 sessions are in use" in full.text
        # BinderHub's clients read only 200 streams: the refusal is an event on one.
        streamed = other.get(build_path(f"file://{repo}"))
        assert streamed.status == 200 and "Retry-After" not in streamed.headers
        assert other.events(build_path(f"file://{repo}")) == [
            {"phase": "failed", "message": "all 1 sessions are in use; try again in a minute\n"}
        ]
    finally:
        srv.stop()


def test_twenty_concurrent_launches(tmp_path: Path, repo: Path) -> None:
    srv = Server(
        write_site(tmp_path, max_sessions=3, per_user=3),
        tmp_path / "state",
        ("--allow-local-repos",),
    ).start()
    try:

        def one(_: int) -> str:
            events = Client(srv.url).events(build_path(f"file://{repo}"))
            return str(events[-1]["phase"]) + ":" + str(events[-1].get("message", ""))

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(one, range(20)))
        ready = [r for r in results if r.startswith("ready:")]
        full = [r for r in results if "sessions are in use" in r]
        assert len(ready) == 3 and len(full) == 17, results
        assert json.loads(Client(srv.url).get("/health").text)["sessions"] == 3
    finally:
        srv.stop()
    assert srv.proc is not None and srv.proc.returncode == 0
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


@pytest.mark.parametrize(
    ("repo_url", "message"),
    [
        ("file:///etc", "local repositories (file://) are not allowed"),
        ("http://127.0.0.1/x.git", "only https:// and git:// URLs are allowed"),
        ("https://127.0.0.1/x.git", "resolves to a local or private address"),
        ("https://10.1.2.3/x.git", "resolves to a local or private address"),
        ("https://user:pw@example.org/x.git", "credentials in repository URLs"),
        ("https://example.org/a/../../b.git", "may not contain . or .. path segments"),
        ('https://example.org/"><script>alert(1)</script>', "<script>"),
    ],
)
def test_abuse_is_refused(tmp_path: Path, repo_url: str, message: str) -> None:
    srv = Server(
        write_site(tmp_path, extra="  allowed_repos: ['https://*']\n"), tmp_path / "state"
    ).start()
    try:
        client = Client(srv.url)
        page = client.post("/launch", {"repo": repo_url})
        assert page.status == 400
        if message == "<script>":
            assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text
        else:
            assert message in page.text
        streamed = client.events(build_path(repo_url))
        assert streamed[-1]["phase"] == "failed"
        assert json.loads(client.get("/health").text)["sessions"] == 0
    finally:
        srv.stop()


def test_open_path_escaping_the_repository_is_refused(server: Server, repo: Path) -> None:
    client = Client(server.url)
    page = client.post("/launch", {"repo": f"file://{repo}", "path": "../../etc/passwd"})
    assert page.status == 400 and "must be a path inside the repository" in page.text
    streamed = client.events(build_path(f"file://{repo}", query="urlpath=tree/../../etc"))
    assert streamed[-1]["phase"] == "failed"


def test_restart_adopts_live_sessions_and_stops_dead_ones(tmp_path: Path, repo: Path) -> None:
    site = write_site(tmp_path)
    state = tmp_path / "state"
    first = Server(site, state, ("--allow-local-repos",)).start()
    client = Client(first.url)
    alive = session_id(launch(client, repo))
    dead = session_id(launch(client, repo))
    first.stop(signal.SIGKILL)  # a crash: sessions keep running, nobody stops them
    for pid in processes_mentioning(f"/sessions/{dead}/repo"):
        os.kill(pid, signal.SIGKILL)
    second = Server(site, state, ("--allow-local-repos",), port=first.port).start()
    try:
        assert client.get(f"/s/{alive}/api/status").status == 200
        assert "lost while the service was not running" in client.get(f"/sessions/{dead}").text
        assert processes_mentioning(f"/sessions/{dead}/") == []
    finally:
        second.stop()
    assert processes_mentioning(str(state / "sessions")) == []


def test_idle_sessions_are_culled(tmp_path: Path, repo: Path) -> None:
    flags = ("--allow-local-repos", "--idle-timeout", "2", "--cull-interval", "0.5")
    srv = Server(write_site(tmp_path), tmp_path / "state", flags).start()
    try:
        client = Client(srv.url)
        sid = session_id(launch(client, repo))
        deadline = time.monotonic() + 30
        while "idle for more than" not in client.get(f"/sessions/{sid}").text:
            assert time.monotonic() < deadline, "not culled"
            time.sleep(0.5)
        assert processes_mentioning(f"/sessions/{sid}/") == []
        assert "binder_lite_sessions_culled_total 1" in client.get("/metrics").text
    finally:
        srv.stop()


def test_session_folders_are_removed_on_stop_and_failure(server: Server, repo: Path) -> None:
    client = Client(server.url)
    sid = session_id(launch(client, repo))
    folder = server.state_dir / "sessions" / sid
    assert (folder / "repo" / "index.ipynb").is_file()
    assert client.post(f"/sessions/{sid}/stop").status == 303
    assert not folder.exists()
    assert "stopped by its owner" in client.get(f"/sessions/{sid}").text  # the record stays
    failed = client.events(build_path(f"file://{repo}", ref="no-such-ref"))
    assert failed[-1]["phase"] == "failed" and "unknown ref" in str(failed[-1]["message"])
    deadline = time.monotonic() + 10
    while any((server.state_dir / "sessions").iterdir()):
        assert time.monotonic() < deadline, list((server.state_dir / "sessions").iterdir())
        time.sleep(0.05)
