"""BinderHub's own JavaScript client against a real `binder-lite serve` (local runtime).

@jupyterhub/binderhub-client is what mybinder.org's page and thebe launch with; it runs
under node (tests/js, installed by `npm ci` from the lock file: scripts/setup does it).
It reads only 200 event streams: a refusal it cannot read shows as "Error connecting to
event stream", which is what people saw before refusals became events.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from launchkit import git, make_repo, processes_mentioning
from test_web import write_site
from webkit import Client, Server

JS = Path(__file__).parent / "js"
DRIVER = JS / "binderhub-client.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    """node with the npm packages of tests/js; a skip without node, except under CI."""
    program = shutil.which("node")
    if program is None:
        reason = "NO NODE: the real BinderHub client did not run (apt-get install nodejs npm)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    if not (JS / "node_modules" / "@jupyterhub" / "binderhub-client").is_dir():
        pytest.fail("tests/js has no node_modules: run scripts/setup", pytrace=False)
    return program


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"requirements.txt": "numpy\n"})


@contextmanager
def serve(tmp_path: Path, *args: str, extra: str = "", **limits: int) -> Iterator[Server]:
    srv = Server(write_site(tmp_path, extra=extra, **limits), tmp_path / "state", args).start()
    try:
        yield srv
    finally:
        srv.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve(tmp_path, "--allow-local-repos", max_sessions=1, per_user=4) as srv:
        yield srv


def launch(node: str, server: Server, spec: str, *flags: str) -> list[dict[str, object]]:
    """The events the client yields for `spec` (<provider>/<spec>), up to its last."""
    proc = subprocess.run(
        [node, DRIVER, f"{server.url}/build/", spec, *flags],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def git_spec(repo: Path, ref: str = "HEAD") -> str:
    return f"git/{urllib.parse.quote(f'file://{repo}', safe='')}/{ref}"


def test_a_launch_reaches_ready_and_the_server_answers(
    node: str, server: Server, repo: Path
) -> None:
    events = launch(node, server, git_spec(repo))
    phases = [e["phase"] for e in events]
    assert phases[0] == "fetching" and phases[-1] == "ready", events
    ready = events[-1]
    commit = git(repo, "rev-parse", "HEAD")
    assert ready["image"] == commit and ready["repo_url"] == f"file://{repo}"
    assert ready["binder_launch_host"] == f"{server.url}/"
    assert ready["binder_persistent_request"] == f"v2/{git_spec(repo, commit)}"
    # What a BinderHub client does next: the server at `url`, with `token`.
    status = f"{ready['url']}api/status?token={ready['token']}"
    with urllib.request.urlopen(status, timeout=30) as answer:
        assert answer.status == 200 and "started" in json.loads(answer.read())


def test_refusals_reach_the_client_as_failed_events(node: str, server: Server, repo: Path) -> None:
    assert launch(node, server, git_spec(repo))[-1]["phase"] == "ready"
    full = launch(node, server, git_spec(repo))
    assert full == [
        {"phase": "failed", "message": "all 1 sessions are in use; try again in a minute\n"}
    ]
    unknown = launch(node, server, "zenodo/10.5281/zenodo.3242074")
    assert unknown == [{"phase": "failed", "message": "No provider found for prefix zenodo\n"}]


def test_a_bad_ref_fails_cleanly(node: str, server: Server, repo: Path) -> None:
    events = launch(node, server, git_spec(repo, "no-such-ref"))
    assert events[-1]["phase"] == "failed" and "unknown ref" in str(events[-1]["message"])
    assert not any("event stream" in str(e.get("message")) for e in events), events


def test_repositories_the_site_does_not_allow_are_failed_events(
    node: str, tmp_path: Path, repo: Path
) -> None:
    with serve(tmp_path, extra="  allowed_repos: ['https://github.com/*']\n") as srv:
        banned = launch(node, srv, "gl/group%2Fproject/main")
        message = "this repository is not among the ones this site allows\n"
        assert banned == [{"phase": "failed", "message": message}]
        local = launch(node, srv, git_spec(repo))
        assert local[-1]["phase"] == "failed" and "file://" in str(local[-1]["message"])


def test_a_visitor_over_their_quota_gets_a_failed_event(
    node: str, tmp_path: Path, repo: Path
) -> None:
    # A client without cookies is a new visitor each time, counted by its address.
    with serve(tmp_path, "--allow-local-repos", max_sessions=4, per_user=1) as srv:
        assert launch(node, srv, git_spec(repo))[-1]["phase"] == "ready"
        again = launch(node, srv, git_spec(repo))
        assert len(again) == 1 and again[0]["phase"] == "failed", again
        assert "sessions were started from your address already" in str(again[0]["message"])


def test_build_only_ends_with_ready_and_no_server(node: str, server: Server, repo: Path) -> None:
    events = launch(node, server, git_spec(repo), "--build-only")
    ready = events[-1]
    assert ready["phase"] == "ready", events
    assert ready["imageName"] == git(repo, "rev-parse", "HEAD") and "url" not in ready
    assert json.loads(Client(server.url).get("/health").text)["sessions"] == 0
    # The one slot is free: a launch after it gets a server.
    assert launch(node, server, git_spec(repo))[-1]["phase"] == "ready"
