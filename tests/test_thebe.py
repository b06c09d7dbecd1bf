"""thebe and a launch link in headless Chromium, against a real `binder-lite serve`.

thebe (the npm package, from tests/js: `npm ci` from the lock file) runs on a page of
another origin, a documentation site listed in `binder.cors_allowed_origins`: it
launches through /build/… with an EventSource, then starts a kernel and runs a cell
through the session's API and websocket, all cross-origin.  A launch URL with
`?token=` opened in a second browser profile, which has none of the service's
cookies, loads the notebook page and its scripts.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launchkit import make_repo, processes_mentioning
from test_web import launch, write_site
from webkit import Client, Server, headless_chromium, wait_for

from binder_lite.net import free_port

pytestmark = pytest.mark.browser

JS = Path(__file__).parent / "js"
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "c1",
            "metadata": {},
            "outputs": [],
            "source": "print(6*7)",
        }
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture
def docs(tmp_path: Path) -> Iterator[str]:
    """Another origin: a small web server for a page and the npm packages it loads."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "node_modules").symlink_to(JS / "node_modules")
    if not (JS / "node_modules" / "thebe" / "lib" / "index.js").is_file():
        pytest.fail("tests/js lacks thebe: run scripts/setup", pytrace=False)
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo", {"requirements.txt": "numpy\n", "index.ipynb": json.dumps(NOTEBOOK)}
    )


@pytest.fixture
def server(tmp_path: Path, docs: str) -> Iterator[Server]:
    site = write_site(tmp_path, extra=f"  cors_allowed_origins: ['{docs}']\n")
    srv = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    try:
        yield srv
    finally:
        srv.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


def thebe_page(server: Server, repo: Path) -> str:
    options = {
        "requestKernel": True,
        "binderOptions": {
            "repo": f"file://{repo}",
            "ref": "HEAD",
            "binderUrl": server.url,
            "repoProvider": "git",
        },
        "savedSessions": {"enabled": False},
    }
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>docs</title>
<script src="/node_modules/thebe/lib/index.js"></script></head>
<body>
<pre data-executable="true" data-language="python">print(6*7)</pre>
<script>
window.outcome = null;
thebe.bootstrap({json.dumps(options)})
  .then(async ({{ notebook }}) => {{
    await notebook.executeAll();
    window.outcome = "ran";
  }})
  .catch((e) => {{ window.outcome = "error: " + e; }});
</script>
</body></html>
"""


def test_thebe_on_another_origin_launches_and_runs_a_cell(
    tmp_path: Path, docs: str, server: Server, repo: Path
) -> None:
    (tmp_path / "docs" / "index.html").write_text(thebe_page(server, repo))
    with headless_chromium() as driver:
        driver.get(f"{docs}/index.html")
        outcome = wait_for(
            lambda: driver.execute_script("return window.outcome"), 180, "thebe's launch"
        )
        logs = _browser_log(driver)
        assert outcome == "ran", (outcome, logs)
        text = driver.execute_script(
            "return [...document.querySelectorAll('.jp-OutputArea-output')]"
            ".map((e) => e.textContent.trim()).join('|')"
        )
        assert text == "42", (text, logs)
    sessions = json.loads(Client(server.url).get("/health").text)["sessions"]
    assert sessions == 1


def test_thebe_shows_a_refusal_at_capacity(tmp_path: Path, docs: str, repo: Path) -> None:
    """A refusal is a failed event on a 200 stream: thebe reports the service's words,
    not a lost connection."""
    site = write_site(tmp_path, max_sessions=1, extra=f"  cors_allowed_origins: ['{docs}']\n")
    srv = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    try:
        launch(Client(srv.url), repo)
        (tmp_path / "docs" / "index.html").write_text(thebe_page(srv, repo))
        with headless_chromium() as driver:
            driver.get(f"{docs}/index.html")
            outcome = wait_for(
                lambda: driver.execute_script("return window.outcome"), 120, "thebe's refusal"
            )
        assert outcome == "error: all 1 sessions are in use; try again in a minute\n", outcome
    finally:
        srv.stop()


def test_a_launch_url_opens_in_a_second_profile(tmp_path: Path, server: Server, repo: Path) -> None:
    """A URL handed out by a client that launched elsewhere (here the service's own
    event stream, read by Python): a fresh browser profile, with no cookie of the
    service, opens it; the token becomes a cookie for that session and leaves the URL."""
    ready = launch(Client(server.url), repo)
    url = f"{ready['url']}lab/tree/index.ipynb?token={ready['token']}"
    profile = tmp_path / "second-profile"
    with headless_chromium(f"--user-data-dir={profile}") as driver:
        assert driver.get_cookies() == []
        driver.get(url)
        path = urllib.parse.urlsplit(str(ready["url"])).path
        # The cell's source, drawn by the page's scripts (an empty notebook first shows
        # "Click to add a cell." while the contents are still loading).
        wait_for(
            lambda: "print(6*7)" in driver.find_element("css selector", ".jp-Notebook").text,
            120,
            "the notebook's cell, drawn by its scripts",
        )
        assert driver.current_url == f"{ready['url']}lab/tree/index.ipynb"
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert cookies["binder-lite-token"]["path"] == path


def _browser_log(driver: Any) -> list[str]:
    try:
        return [entry["message"] for entry in driver.get_log("browser")][-20:]
    except Exception:
        return []
