"""R, Shiny and Julia: what is detected and reported, where BinderHub's urlpath opens,
real R sessions of the local runtime through `binder-lite serve` (a cell run in
IRkernel over the proxy's kernel websocket, a Shiny app drawn in Chromium over its
websocket), the guix runtime's commands checked by the real Guix, and attacks.
Pluto's are in test_pluto.py."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import git, make_repo
from test_web import local_build_path
from webkit import Client, Server, headless_chromium, local_server, wait_for

from binder_lite import guix as guix_module
from binder_lite.errors import LaunchError
from binder_lite.kernel import run_cell
from binder_lite.launch import apps, detect, explain, runtime, sandbox
from binder_lite.launch import session as session_module
from binder_lite.launch.repofiles import RepositoryFileError
from binder_lite.site.model import SessionNetwork

SITE = """\
version: 1
site:
  name: R Binder
  slug: r-binder
"""

APP = """\
library(shiny)
ui <- fluidPage(textOutput("greeting"))
server <- function(input, output, session) {
  output$greeting <- renderText(paste("shiny says", 6 * 7))
}
shinyApp(ui, server)
"""
DESCRIPTION = "Package: demo\nVersion: 0.1\nImports: shiny\n"


# -- detection, reports and urlpath (no session) -----------------------------------------


def test_an_r_repository_preselects_irkernel_and_its_app_gets_shiny(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"DESCRIPTION": DESCRIPTION, "app.R": APP})
    env = detect.detect(repo)
    assert env.kind == "R" and env.kernel == apps.R_KERNEL == "ir"
    assert env.shiny == apps.ShinyApp(".", ("app.R",))
    assert {"r", "r-irkernel", "r-shiny"} <= set(env.packages)
    text = explain.explain(env)
    assert "IRkernel (ir), preselected" in text
    assert "app.R: read, a Shiny app, started with the session and served at shiny/" in text


def test_ui_and_server_make_an_app_and_python_repositories_keep_their_kernel(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"requirements.txt": "numpy\n", "ui.R": "fluidPage()\n", "server.R": "function(i, o) {}\n"},
    )
    env = detect.detect(repo)
    assert env.kernel is None and env.shiny == apps.ShinyApp(".", ("ui.R", "server.R"))
    assert "r-shiny" in env.packages


@pytest.mark.parametrize(
    ("urlpath", "target"),
    [
        ("lab", "/lab"),
        ("/lab/", "/lab"),
        ("tree", "/tree"),
        ("lab/tree/a/b.ipynb", "a/b.ipynb"),
        ("notebooks/x.ipynb", "x.ipynb"),
        ("shiny", "/shiny/"),
        ("shiny/", "/shiny/"),
        ("shiny/apps/one/", "/shiny/apps/one/"),
        ("shiny/?x=1", "/shiny/"),
        (None, None),
    ],
)
def test_urlpath_becomes_a_target(urlpath: str | None, target: str | None) -> None:
    assert apps.from_urlpath(urlpath) == target
    if target is not None and target.startswith("/"):
        assert session_module.normalise_open_path(target) == target


@pytest.mark.parametrize(
    ("urlpath", "words"),
    [
        ("rstudio", "neither Guix nor Debian packages it"),
        ("shiny/../../etc/", "must be a path inside the repository"),
        ("shiny/a/../../..", "must be a path inside the repository"),
    ],
)
def test_what_cannot_be_served_is_refused_by_its_urlpath(urlpath: str, words: str) -> None:
    with pytest.raises(LaunchError, match=words.replace(".", r"\.")):
        apps.from_urlpath(urlpath)


@pytest.mark.parametrize("target", ["/etc/passwd", "/shiny/../x/", "/lab/../../etc"])
def test_a_target_from_elsewhere_is_checked_again(target: str) -> None:
    with pytest.raises(LaunchError, match="must be a path inside the repository"):
        session_module.normalise_open_path(target)


def test_an_app_file_leading_out_of_the_checkout_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.R"
    outside.write_text(APP)
    repo = make_repo(tmp_path / "repo", {"README.md": "x\n"})
    os.symlink(outside, repo / "app.R")
    with pytest.raises(RepositoryFileError, match="app.R: a symlink that leaves the repository"):
        detect.detect(repo)


# -- real R sessions through `binder-lite serve` (the local runtime, sandboxed) ----------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with local_server(tmp_path, SITE) as srv:
        yield srv


def _ready(client: Client, repo: Path, urlpath: str = "") -> dict[str, object]:
    events = client.events(local_build_path(repo, urlpath))
    assert events[-1]["phase"] == "ready", events
    return events[-1]


def _failed(client: Client, repo: Path, urlpath: str = "") -> str:
    events = client.events(local_build_path(repo, urlpath))
    assert events[-1]["phase"] == "failed", events
    return str(events[-1]["message"])


def test_a_cell_runs_in_irkernel_through_the_proxy(server: Server, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"DESCRIPTION": "Package: demo\nVersion: 0.1\n"})
    ready = _ready(Client(server.url), repo)
    base, token = str(ready["url"]), str(ready["token"])
    specs = json.loads(Client(server.url).get(f"{base}api/kernelspecs?token={token}").text)
    assert specs["default"] == "ir"
    # The default kernel, over the kernel websocket the front relays.
    assert run_cell(base, token, "1 + 1", timeout=180) == "[1] 2"


def test_shiny_app_and_its_websocket_through_the_proxy(server: Server, tmp_path: Path) -> None:
    """An app whose output is drawn only over Shiny's websocket, in Chromium, at the
    page urlpath=shiny/ opens."""
    repo = make_repo(tmp_path / "repo", {"app.R": APP, "index.ipynb": "{}"})
    client = Client(server.url)
    ready = _ready(client, repo, "shiny/")
    assert str(ready["url"]).endswith("/") and str(ready["view"]).endswith("/shiny/")
    base, token = str(ready["url"]), str(ready["token"])
    # Without its slash, the app's address is redirected (Shiny's URLs are relative).
    bare = client.get(f"{base}shiny?token={token}")
    assert bare.status == 301 and bare.headers["Location"].endswith("/shiny/?token=" + token)
    with headless_chromium() as driver:
        driver.get(f"{ready['view']}?token={token}")
        greeting = wait_for(
            lambda: driver.find_element("id", "greeting").text, 120, "the app's output"
        )
        assert greeting == "shiny says 42"
        # The token left the address bar for a cookie of this session's path.
        assert "token=" not in driver.current_url and driver.current_url.endswith("/shiny/")


def test_shiny_urlpath_needs_an_app_there(server: Server, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"app.R": APP, "other/readme.txt": "x\n"})
    client = Client(server.url)
    assert "urlpath=shiny/other/: no Shiny app there" in _failed(client, repo, "shiny/other/")
    assert "must be a path inside the repository" in _failed(client, repo, "shiny/../../")


def test_pages_no_session_serves_fail_in_the_progress_stream(
    server: Server, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"index.ipynb": "{}"})
    assert "RStudio is not served here" in _failed(Client(server.url), repo, "rstudio")


# -- attacks -------------------------------------------------------------------------


def test_an_app_symlinked_out_of_the_checkout_fails_the_launch(
    server: Server, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.R"
    secret.write_text('cat("secret")\n')
    repo = make_repo(tmp_path / "repo", {"index.ipynb": "{}"})
    os.symlink(secret, repo / "app.R")
    git(repo, "add", "app.R")
    git(repo, "commit", "-qm", "a link out")
    message = _failed(Client(server.url), repo, "shiny/")
    assert "app.R: a symlink that leaves the repository is not followed" in message
    assert "secret" not in message.replace("secret.R", "")


def test_app_paths_reach_only_the_sessions_own_app(server: Server, tmp_path: Path) -> None:
    """`shiny/../…` in a request goes to the session's app, as it is: never to Jupyter
    with the session's token, nor to anything of the host."""
    repo = make_repo(tmp_path / "repo", {"app.R": APP})
    ready = _ready(Client(server.url), repo, "shiny/")
    session = str(ready["url"]).split("/s/")[1].rstrip("/")
    token = str(ready["token"])
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for path in ("shiny/../api/status", "shiny/..%2f..%2fapi/status", "shiny/../../../etc/passwd"):
        connection.request(
            "GET", f"/s/{session}/{path}", headers={"Authorization": f"token {token}"}
        )
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        assert response.status == 404, (path, response.status, body)
        assert '"version"' not in body and "root:" not in body
    connection.close()


def test_an_app_cannot_reach_the_host(server: Server, tmp_path: Path) -> None:
    """The app runs in the session's sandbox: the host's loopback (the service's own
    port) and slirp4netns' alias for it are out of reach."""
    probe = f"""\
tried <- function(host) {{
  con <- tryCatch(socketConnection(host, {server.port}, blocking = TRUE, timeout = 3),
                  error = function(e) NULL, warning = function(w) NULL)
  if (is.null(con)) "refused" else {{ close(con); "reached" }}
}}
writeLines(c(tried("127.0.0.1"), tried("10.0.2.2")), "/notebooks/probe.txt")
"""
    repo = make_repo(tmp_path / "repo", {"app.R": probe + APP})
    ready = _ready(Client(server.url), repo, "shiny/")
    session = str(ready["url"]).split("/s/")[1].rstrip("/")
    work_dir = Path(server.session_field(session, "work_dir"))
    result = wait_for(lambda: (work_dir / "probe.txt").read_text().split(), 120, "the probe")
    assert result == ["refused", "refused"]


# -- the guix runtime: its commands for R and Julia, checked by the real Guix -----------

GUIX_REPOS = {
    "R with an app": {"DESCRIPTION": DESCRIPTION, "app.R": APP},
    "Julia": {"Project.toml": '[deps]\nJSON = "682c06a0-de6a-54ab-a142-c8b1cf79cde6"\n'},
}


@pytest.mark.guix
@pytest.mark.parametrize("kind", list(GUIX_REPOS))
def test_guix_runtime_commands_for_r_and_julia(guix: str, tmp_path: Path, kind: str) -> None:
    """The exact sandboxed `guix shell --container …` of the guix runtime (the app
    started before Jupyter, IRkernel preselected), run with --dry-run as the service
    runs it."""
    repo = make_repo(tmp_path / "repo", GUIX_REPOS[kind])
    env = detect.with_checked_names(detect.detect(repo), guix_module.available_packages)
    assert not [r for r in env.unavailable if r.source != "IJulia"], env.unavailable
    manifest = tmp_path / "manifest.scm"
    manifest.write_text(env.manifest)
    session_dir = tmp_path / "session"
    session_dir.mkdir()
    box = sandbox.Sandbox("0123456789abcdef", session_dir, repo, SessionNetwork.NONE)
    spec = runtime.ServerSpec(
        port=None,
        base_url="/s/0123456789abcdef/",
        kernel=env.kernel or "guix",
        root_dir=runtime.CONTAINER_WORK_DIR,
        socket=box.inner_socket,
    )
    before = apps.app_prefix(env.shiny)
    argv = session_module._guix_command(spec, box, manifest, None, True, before)
    assert ("r-shiny" in env.packages) == (kind == "R with an app")
    if env.shiny is not None:
        at = argv.index(before[0])
        assert argv[at : at + len(before)] == before and argv[at + len(before)] == "jupyter"
        assert f"{sandbox.RUN_DIR}/{apps.SHINY_SOCKET}" in argv
        assert "--MultiKernelManager.default_kernel_name=ir" in argv
    guix_module.dry_run_shell(argv, sandbox.guix_environment({}))


def test_lab_opens_jupyterlab_where_there_is_one(server: Server, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"index.ipynb": "{}"})
    client = Client(server.url)
    ready = _ready(client, repo, "lab")
    assert str(ready["view"]).endswith("/lab")
    assert client.get(f"{ready['view']}?token={ready['token']}").status == 200


def test_lab_opens_the_tree_where_jupyter_has_no_lab(tmp_path: Path) -> None:
    """The guix runtime's Jupyter is Guix's classic notebook."""
    repo = make_repo(tmp_path / "repo", {"index.ipynb": "{}"})
    said: list[str] = []
    env = detect.detect(repo)
    kernel, app, target = apps.for_launch(repo, env, "/lab", False, True, said.append)
    assert (kernel, app, target) == (None, None, "/tree")
    assert said == ["urlpath=lab: this session's Jupyter has no JupyterLab; the tree opens instead"]


def test_a_session_cannot_point_its_app_socket_at_another_session(
    server: Server, tmp_path: Path
) -> None:
    """The run directory is the session's to write: a symlink it puts where the app's
    socket goes (to another session's Jupyter, by its host path) is not followed."""
    client = Client(server.url)
    victim = _ready(client, make_repo(tmp_path / "victim", {"index.ipynb": "{}"}))
    victim_id = str(victim["url"]).split("/s/")[1].rstrip("/")
    victim_socket = server.session_field(victim_id, "socket")
    attacker = _ready(client, make_repo(tmp_path / "attacker", {"index.ipynb": "{}"}))
    base, token = str(attacker["url"]), str(attacker["token"])
    plant = f"import os; os.symlink({victim_socket!r}, '/run/binder-lite/{apps.SHINY_SOCKET}')"
    run_cell(base, token, f"{plant}; 'planted'", timeout=120)
    # Followed, this would reach the victim's Jupyter at its own path.
    answer = client.get(f"{base}shiny/s/{victim_id}/api/status?token={token}")
    assert answer.status == 502 and '"started"' not in answer.text
    # The victim's own Jupyter still answers its owner.
    assert client.get(f"{victim['url']}api/status?token={victim['token']}").status == 200
