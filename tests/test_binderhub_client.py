"""BinderHub's own JavaScript client against a real `binder-lite serve` (local runtime).

@jupyterhub/binderhub-client is what mybinder.org's page and thebe launch with; it runs
under node (tests/js, installed by `npm ci` from the lock file: scripts/setup does it).
It reads only 200 event streams: a refusal it cannot read shows as "Error connecting to
event stream", which is what people saw before refusals became events.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from launchkit import git, make_repo, processes_mentioning
from test_web import write_site
from webkit import Client, Server

from binder_lite.web.buildtokens import LIFETIME, BuildTokens

JS = Path(__file__).parent / "js"
DRIVER = JS / "binderhub-client.mjs"
SERVICES = JS / "services.mjs"
PAGES = "https://docs.example.org"  # a site's documentation, whose pages launch
EVIL = "https://evil.example.net"  # a page nobody listed


@pytest.fixture(scope="module")
def node() -> str:
    """node with the npm packages of tests/js; a skip without node, except under CI."""
    program = shutil.which("node")
    if program is None:
        reason = "NO NODE: the real BinderHub client did not run (apt-get install nodejs npm)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    for package in ("@jupyterhub/binderhub-client", "@jupyterlab/services", "ws"):
        if not (JS / "node_modules" / package).is_dir():
            pytest.fail(f"tests/js lacks {package}: run scripts/setup", pytrace=False)
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


def run_node(node: str, *args: str | Path) -> list[dict[str, Any]]:
    """The JSON lines a driver in tests/js prints."""
    proc = subprocess.run(
        [node, *args], cwd=JS, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def launch(node: str, server: Server, spec: str, *flags: str) -> list[dict[str, Any]]:
    """The events the client yields for `spec` (<provider>/<spec>), up to its last."""
    return run_node(node, DRIVER, f"{server.url}/build/", spec, *flags)


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


def test_a_kernel_runs_through_jupyterlab_services(node: str, server: Server, repo: Path) -> None:
    """What thebe and JupyterLab do after a launch: a kernel over the proxied websocket,
    and the contents API, with the ready event's url and token."""
    ready = launch(node, server, git_spec(repo))[-1]
    assert ready["phase"] == "ready", ready
    [seen] = run_node(node, SERVICES, str(ready["url"]), str(ready["token"]))
    assert seen["status"] == "ok" and seen["stdout"] == "42\n", seen
    assert seen["saved"] == "from-services.txt" and "from-services.txt" in seen["listed"]
    assert "requirements.txt" in seen["listed"]
    assert seen["read"] == "saved through @jupyterlab/services\n"


# -- build tokens (binder.cross_origin_launches) ----------------------------------------


@pytest.fixture
def signed(tmp_path: Path) -> Iterator[Server]:
    extra = f"  cors_allowed_origins: [{PAGES}]\n  cross_origin_launches: signed\n"
    with serve(tmp_path, "--allow-local-repos", extra=extra, max_sessions=2) as srv:
        yield srv


def build_token(server: Server, spec: str, origin: str, **headers: str) -> tuple[int, Any]:
    """The service's answer to GET /build-token/<spec>?origin=…: status and JSON."""
    query = urllib.parse.urlencode({"origin": origin})
    request = urllib.request.Request(f"{server.url}/build-token/{spec}?{query}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_page_elsewhere_launches_with_a_token_only(node: str, signed: Server, repo: Path) -> None:
    spec = git_spec(repo)
    bare = launch(node, signed, spec, "--origin", PAGES)
    assert bare == [
        {
            "phase": "failed",
            "message": f"pages of {PAGES} need a build token from this service to launch here\n",
        }
    ]
    status, answer = build_token(signed, spec, PAGES, Origin=PAGES)
    assert status == 200 and answer["repo_url"] == f"file://{repo}", answer
    events = launch(node, signed, spec, "--origin", PAGES, "--build-token", answer["token"])
    assert events[-1]["phase"] == "ready", events
    # Programs send no Origin: they need no token, as the other tests of this file show.
    assert launch(node, signed, spec)[-1]["phase"] == "ready"


def test_a_token_is_for_one_origin_and_one_repository(
    node: str, signed: Server, tmp_path: Path, repo: Path
) -> None:
    token = build_token(signed, git_spec(repo), PAGES)[1]["token"]
    elsewhere = launch(node, signed, git_spec(repo), "--origin", EVIL, "--build-token", token)
    assert elsewhere == [
        {"phase": "failed", "message": f"this build token is not for pages of {EVIL}\n"}
    ]
    other = make_repo(tmp_path / "other", {"requirements.txt": "numpy\n"})
    moved = launch(node, signed, git_spec(other), "--origin", PAGES, "--build-token", token)
    assert moved == [{"phase": "failed", "message": "this build token is for another repository\n"}]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = launch(node, signed, git_spec(repo), "--origin", PAGES, "--build-token", forged)
    assert bad[0]["message"] == "this build token is not one this service issued\n"


def test_an_expired_token_is_refused(node: str, signed: Server, repo: Path) -> None:
    secret = (signed.state_dir / "cookie-secret").read_text().strip()
    old = BuildTokens(secret).issue(f"file://{repo}", PAGES, now=time.time() - 2 * LIFETIME)
    events = launch(node, signed, git_spec(repo), "--origin", PAGES, "--build-token", old)
    assert events == [
        {"phase": "failed", "message": "this page's build token has expired; reload the page\n"}
    ]


def test_tokens_go_to_listed_origins_for_themselves(signed: Server, repo: Path) -> None:
    spec = git_spec(repo)
    status, answer = build_token(signed, spec, EVIL)
    assert (
        status == 403 and answer["message"] == f"this site gives no build tokens to pages of {EVIL}"
    )
    status, answer = build_token(signed, spec, PAGES, Origin=EVIL)
    assert status == 403 and "for itself only" in answer["message"]
    status, answer = build_token(signed, "zenodo/10.5281/zenodo.3242074", PAGES)
    assert status == 404 and answer["message"] == "No provider found for prefix zenodo"


def test_the_launch_page_carries_its_own_token(signed: Server, repo: Path) -> None:
    """The /v2/ page's stream is same-origin; the token it carries is for its origin."""
    page = Client(signed.url).get(f"/v2/{git_spec(repo)}").text
    match = re.search(r"build_token=([\w.-]+)", page)
    assert match, page
    secret = (signed.state_dir / "cookie-secret").read_text().strip()
    BuildTokens(secret).check(match.group(1), f"file://{repo}", signed.url)
