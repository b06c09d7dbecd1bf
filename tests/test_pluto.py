"""Pluto notebooks: detected (notebooks, or a Project.toml naming Pluto), where
BinderHub's urlpath opens, refused by the local runtime in its progress stream, served
by the front from a session's pluto.sock (a stand-in server in a real session: nothing
here runs Julia), the depot kept per commit, the guix runtime's build step and server
checked by the real Guix, and hostile names, projects and trees."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import make_repo
from test_web import local_build_path
from webkit import Client, Server, local_server

from binder_lite import guix as guix_module
from binder_lite.errors import EnvironmentSpecError, LaunchError
from binder_lite.kernel import run_cell
from binder_lite.launch import apps, detect, explain, pluto, postbuild, runtime, sandbox, sources
from binder_lite.launch import session as session_module
from binder_lite.launch.repofiles import RepoTree
from binder_lite.site.model import SessionLimits, SessionNetwork
from binder_lite.web.proxy import Reply, app_route
from binder_lite.web.store import Record

PLUTO = "### A Pluto.jl notebook ###\n# v0.19.40\n\nusing Markdown\n\n# ╔═╡ 1\nx = 1\n"
NAMING = '[deps]\nPluto = "c3e4b0f8-55cb-11ea-2926-15256bba5781"\n'
JSON_DEP = 'JSON = "682c06a0-de6a-54ab-a142-c8b1cf79cde6"\n'
SITE = "version: 1\nsite:\n  name: Pluto Binder\n  slug: pluto-binder\n"
SESSION = "0123456789abcdef"


# -- detection and reports --------------------------------------------------------------


def test_pluto_notebooks_make_a_pluto_repository(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"notebook.jl": PLUTO, "plain.jl": "println(1)\n", "sub/deep.jl": PLUTO},
    )
    env = detect.detect(repo)
    assert env.pluto == apps.Pluto(("notebook.jl",), (), False)
    assert set(pluto.PACKAGES) <= set(env.packages)
    assert '"julia"' in env.manifest and '"socat"' in env.manifest
    text = explain.explain(env)
    assert "notebook.jl: read, a Pluto notebook, served at pluto/ by the guix runtime" in text
    assert "Pluto, with Julia's Pkg: Pluto added" in text
    assert "plain.jl" not in text and "deep.jl" not in text


def test_a_project_naming_pluto_makes_one_and_pkg_installs_what_guix_lacks(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {
            "binder/Project.toml": NAMING + 'NoSuchPackageXyz = "1"\n',
            "binder/Manifest.toml": "",
            "README.md": "x\n",
        },
    )
    env = detect.detect(repo)
    assert env.kind == "Julia"
    assert env.pluto == apps.Pluto((), ("binder/Project.toml", "binder/Manifest.toml"), True)
    pkg = {r.source: r.note for r in env.unavailable}
    assert pkg["Pluto"] == pkg["NoSuchPackageXyz"] == detect.FROM_PKG
    assert "IJulia" in pkg and pkg["IJulia"] != detect.FROM_PKG  # a kernel, not a package
    assert "Pluto, with Julia's Pkg: [deps] name Pluto" in explain.explain(env)


def test_a_julia_project_without_pluto_is_not_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"Project.toml": "[deps]\n" + JSON_DEP})
    env = detect.detect(repo)
    assert env.pluto is None and "socat" not in env.packages


def test_an_own_manifest_is_told_what_pluto_needs(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"manifest.scm": '(specifications->manifest (list "julia"))\n', "n.jl": PLUTO},
    )
    env = detect.detect(repo)
    assert env.pluto is not None and env.pluto.notebooks == ("n.jl",)
    assert "the manifest must provide julia, git-minimal, nss-certs, socat" in explain.explain(env)


def test_the_build_step_takes_juliaproject_toml_first() -> None:
    files = ("Project.toml", "JuliaProject.toml", "Manifest.toml")
    assert pluto.project_files(files) == [
        "/notebooks/JuliaProject.toml",
        "Project.toml",
        "/notebooks/Manifest.toml",
        "Manifest.toml",
    ]


# -- urlpath ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("urlpath", "target", "view"),
    [
        ("pluto", "/pluto/", "pluto/"),
        ("/pluto/", "/pluto/", "pluto/"),
        ("pluto/?x=1", "/pluto/", "pluto/"),
        ("pluto/notebook.jl", "/pluto/notebook.jl", "pluto/notebook.jl"),
        ("pluto/My_notebook-2.jl#cell", "/pluto/My_notebook-2.jl", "pluto/My_notebook-2.jl"),
    ],
)
def test_pluto_urlpaths(urlpath: str, target: str, view: str) -> None:
    assert apps.from_urlpath(urlpath) == target
    assert session_module.normalise_open_path(target) == target
    assert apps.view_path(target) == view


@pytest.mark.parametrize(
    "urlpath",
    [
        "pluto/../../etc/passwd",
        "pluto/sub/notebook.jl",
        "pluto/notebook.py",
        "pluto/.hidden.jl",
        "pluto/-e.jl",
        'pluto/x");run(`id`);(".jl',
        "pluto/x\n.jl",
        "pluto/$(id).jl",
        "pluto/x%2F..%2F.jl",
    ],
)
def test_a_pluto_urlpath_names_only_a_notebook_at_the_root(urlpath: str) -> None:
    with pytest.raises(LaunchError, match=r"must be a \.jl file at the repository's root"):
        apps.from_urlpath(urlpath)


@pytest.mark.parametrize("target", ["/pluto/../x.jl", "/pluto/a;b.jl", "/pluto/x.jl/"])
def test_a_pluto_target_from_elsewhere_is_checked_again(target: str) -> None:
    with pytest.raises(LaunchError):
        session_module.normalise_open_path(target)


# -- who serves it -----------------------------------------------------------------------

FOUND = apps.Pluto(("a.jl", "b.jl"), (), False)


def test_the_local_runtime_refuses_pluto_with_the_reason() -> None:
    said: list[str] = []
    assert apps.served_pluto(FOUND, None, True, True, said.append) is None
    assert said == [f"a.jl: {apps.PLUTO_REFUSED}", f"b.jl: {apps.PLUTO_REFUSED}"]
    assert "Debian has no Julia" in apps.PLUTO_REFUSED
    with pytest.raises(LaunchError, match="urlpath=pluto/a.jl: Pluto notebooks are not served"):
        apps.served_pluto(FOUND, "/pluto/a.jl", True, True, said.append)


def test_the_guix_runtime_serves_pluto_only_behind_the_front() -> None:
    said: list[str] = []
    assert apps.served_pluto(FOUND, "/pluto/b.jl", False, True, said.append) is FOUND
    assert apps.served_pluto(FOUND, None, False, True, said.append) is FOUND and not said
    with pytest.raises(LaunchError, match="binder-lite serve"):
        apps.served_pluto(FOUND, "/pluto/", False, False, said.append)
    with pytest.raises(EnvironmentSpecError, match="no Pluto notebook of that name"):
        apps.served_pluto(FOUND, "/pluto/c.jl", False, True, said.append)
    with pytest.raises(EnvironmentSpecError, match="no Pluto notebook at its root"):
        apps.served_pluto(None, "/pluto/", False, True, said.append)


# -- the front's route -------------------------------------------------------------------


def _record(tmp_path: Path) -> Record:
    return Record(SESSION, "u", "r", "HEAD", None, "ready", socket=str(tmp_path / "jupyter.sock"))


@pytest.mark.parametrize(
    ("target", "upstream"),
    [
        ("/pluto/", "/"),
        ("/pluto/edit?id=1&token=secret", "/edit?id=1"),
        ("/pluto/notebook.jl?token=secret", "/open?path=%2Fnotebooks%2Fnotebook.jl"),
        ("/pluto/../api/status", "/../api/status"),  # Pluto's to answer, not Jupyter's
        ("/pluto/..%2fx.jl", "/..%2fx.jl"),  # no notebook's name: passed on as it is
    ],
)
def test_pluto_requests_go_to_the_sessions_pluto_socket(
    tmp_path: Path, target: str, upstream: str
) -> None:
    route = app_route(_record(tmp_path), f"/s/{SESSION}{target}")
    assert route == (str(tmp_path / pluto.SOCKET), upstream)


def test_pluto_without_its_slash_is_redirected(tmp_path: Path) -> None:
    route = app_route(_record(tmp_path), f"/s/{SESSION}/pluto?token=t")
    assert isinstance(route, Reply) and route.status == 301
    assert dict(route.headers)["Location"] == f"/s/{SESSION}/pluto/?token=t"


# -- through `binder-lite serve` (the local runtime, sandboxed) ---------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with local_server(tmp_path, SITE) as srv:
        yield srv


def test_the_local_runtime_says_why_in_the_progress(server: Server, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"notebook.jl": PLUTO, "index.ipynb": "{}"})
    client = Client(server.url)
    events = client.events(local_build_path(repo, "pluto/notebook.jl"))
    assert events[-1]["phase"] == "failed", events
    assert "Debian has no Julia" in str(events[-1]["message"])
    events = client.events(local_build_path(repo))
    assert events[-1]["phase"] == "ready", events
    said = [str(e["message"]).rstrip("\n") for e in events]
    assert f"notebook.jl: {apps.PLUTO_REFUSED}" in said


# A stand-in for Pluto on the session's pluto.sock: it answers with what it was sent.
ECHO = """\
import json, os, socketserver, threading
from http.server import BaseHTTPRequestHandler
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
path = "/run/binder-lite/pluto.sock"
if os.path.lexists(path):
    os.unlink(path)
server = socketserver.ThreadingUnixStreamServer(path, Echo)
threading.Thread(target=server.serve_forever, daemon=True).start()
"serving"
"""


def test_the_front_serves_pluto_from_the_sessions_socket_without_its_token(
    server: Server, tmp_path: Path
) -> None:
    client = Client(server.url)
    events = client.events(local_build_path(make_repo(tmp_path / "repo", {"index.ipynb": "{}"})))
    assert events[-1]["phase"] == "ready", events
    base, token = str(events[-1]["url"]), str(events[-1]["token"])
    assert run_cell(base, token, ECHO, timeout=120) == "'serving'"
    # A launch's urlpath=pluto/notebook.jl: Pluto's page opening it.
    answer = client.get(f"{base}pluto/notebook.jl?token={token}")
    assert answer.status == 200, answer.text
    sent = json.loads(answer.text)
    assert sent["path"] == "/open?path=%2Fnotebooks%2Fnotebook.jl"
    assert token not in json.dumps(sent)  # neither in the query nor a header nor a cookie
    edit = client.get(f"{base}pluto/edit?id=7&token={token}")
    assert json.loads(edit.text)["path"] == "/edit?id=7"
    # Nobody else gets in, and `pluto/..` never reaches Jupyter.
    session = base.split("/s/")[1].rstrip("/")
    stranger = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    stranger.request("GET", f"/s/{session}/pluto/")
    response = stranger.getresponse()
    assert response.status != 200 and b'"path"' not in response.read()
    for path in ("pluto/../api/status", "pluto/..%2f..%2fapi/status"):
        answer = client.get(f"{base}{path}?token={token}")
        assert '"version"' not in answer.text
        assert answer.status == 404 or json.loads(answer.text)["path"].endswith("api/status")
    stranger.close()


# -- the depot, kept per commit -----------------------------------------------------------


def test_a_depot_is_built_once_and_kept_only_when_the_build_succeeded(tmp_path: Path) -> None:
    said: list[str] = []
    kept = tmp_path / "julia" / pluto.cache_key({"commit": "a" * 40})
    builds: list[Path] = []

    def failing(depot: Path) -> None:
        (depot / "half").write_text("x")
        raise LaunchError("Pkg failed")

    with pytest.raises(LaunchError, match="Pkg failed"):
        pluto.ensure(kept, failing, said.append)
    assert not kept.exists() and list(kept.parent.iterdir()) == []

    def build(depot: Path) -> None:
        builds.append(depot)
        (depot / "environments").mkdir()

    pluto.ensure(kept, build, said.append)
    pluto.ensure(kept, build, said.append)
    assert len(builds) == 1 and (kept / "environments").is_dir()
    assert said[-1] == "Pluto: Julia's packages already installed for this commit"
    assert pluto.cache_key({"commit": "b" * 40}) != kept.name


def test_a_depot_build_is_held_to_the_sessions_disk_limit(tmp_path: Path) -> None:
    """Pkg writes into the depot, outside the checkout: a project that asks for more
    than the session's disk is stopped all the same."""
    depot, repo = tmp_path / "depot", tmp_path / "repo"
    depot.mkdir()
    repo.mkdir()
    box = sandbox.Sandbox("s", tmp_path, repo, limits=SessionLimits(disk=8 * 1024**2))
    fill = f"for i in $(seq 1 100); do head -c 1000000 /dev/zero > {depot}/f$i; sleep 0.1; done"
    job = postbuild.Job(pluto.BUILD_STEP, ["/bin/sh", "-c", fill], {}, box, True, writes=(depot,))
    with pytest.raises(postbuild.PostBuildError, match="more than the session's disk limit"):
        postbuild.run(job, lambda line: None)
    assert len(list(depot.iterdir())) < 100


def test_depots_are_trimmed_with_the_cache_but_not_a_running_sessions(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    provenances = [{"repository": f"https://forge/{n}", "commit": "a" * 40} for n in range(3)]
    depots = [pluto.depot_dir(cache, p) for p in provenances]
    for n, depot in enumerate(depots):
        depot.mkdir(parents=True)
        (depot / "packages").write_bytes(os.urandom(1024**2))
        os.utime(depot, (1000 + n, 1000 + n))
    running = {pluto.depot_dir(cache, provenances[0])}  # as the service finds it
    removed = sources.trim_cache(cache, int(1.5 * 1024**2), keep=running)
    assert removed == depots[1:]


# -- the guix runtime's commands, checked by the real Guix -------------------------------

GUIX_REPOS = {
    "notebooks": {"notebook.jl": PLUTO, "index.ipynb": "{}"},
    "a project naming Pluto": {"binder/Project.toml": NAMING + JSON_DEP, "app.R": "1\n"},
}


def _guix_env(tmp_path: Path, kind: str) -> tuple[detect.Environment, Path]:
    repo = make_repo(tmp_path / "repo", GUIX_REPOS[kind])
    env = detect.with_checked_names(detect.detect(repo), guix_module.available_packages)
    assert env.pluto is not None
    assert not [
        r for r in env.unavailable if r.note not in (detect.FROM_PKG,) and r.source != "IJulia"
    ]
    return env, repo


def _box(tmp_path: Path, repo: Path) -> tuple[sandbox.Sandbox, runtime.ServerSpec, Path]:
    session_dir = tmp_path / "session"
    session_dir.mkdir()
    box = sandbox.Sandbox(SESSION, session_dir, repo, SessionNetwork.NONE)
    spec = runtime.ServerSpec(
        port=None,
        base_url=f"/s/{SESSION}/",
        kernel="guix",
        root_dir=runtime.CONTAINER_WORK_DIR,
        socket=box.inner_socket,
    )
    return box, spec, session_dir / "manifest.scm"


@pytest.mark.guix
@pytest.mark.parametrize("kind", list(GUIX_REPOS))
def test_guix_runtime_build_step_for_pluto(guix: str, tmp_path: Path, kind: str) -> None:
    """The exact sandboxed command that installs Julia's packages (the depot writable),
    run with --dry-run as the service runs its check."""
    env, repo = _guix_env(tmp_path, kind)
    box, spec, manifest = _box(tmp_path, repo)
    manifest.write_text(env.manifest)
    depot = tmp_path / "depot"
    depot.mkdir()
    assert env.pluto is not None
    command = pluto.build_command(env.pluto.project)
    argv = session_module._guix_command(
        spec, box, manifest, None, True, command=command, depot=(depot, True)
    )
    assert f"--share={pluto.DEPOT_STAGE}={pluto.DEPOT}" in argv
    at = argv.index("--bind", argv.index(str(box.run_dir)) + 1)
    assert argv[at : at + 3] == ["--bind", str(depot), pluto.DEPOT_STAGE]
    assert argv[-len(command) :] == command
    project = ["/notebooks/binder/Project.toml", "Project.toml"] if "project" in kind else []
    assert command[7:] == project
    guix_module.dry_run_shell(argv, sandbox.guix_environment({}))


@pytest.mark.guix
@pytest.mark.parametrize("kind", list(GUIX_REPOS))
def test_guix_runtime_server_for_pluto(guix: str, tmp_path: Path, kind: str) -> None:
    """The session's command: socat and Pluto before Jupyter, the depot read-only."""
    env, repo = _guix_env(tmp_path, kind)
    box, spec, manifest = _box(tmp_path, repo)
    manifest.write_text(env.manifest)
    depot = tmp_path / "depot"
    depot.mkdir()
    before = [*apps.app_prefix(env.shiny), *pluto.server_prefix()]
    argv = session_module._guix_command(
        spec, box, manifest, None, True, before, depot=(depot, False)
    )
    assert f"--expose={pluto.DEPOT_STAGE}={pluto.DEPOT}" in argv
    assert ["--ro-bind", str(depot), pluto.DEPOT_STAGE] == argv[
        argv.index(str(depot)) - 1 : argv.index(str(depot)) + 2
    ]
    at = argv.index(pluto.server_prefix()[2])
    assert argv[at + 1 : at + 7] == [
        "sh",
        pluto.DEPOT,
        pluto.ENVIRONMENT,
        str(pluto.PORT),
        f"{sandbox.RUN_DIR}/{pluto.SOCKET}",
        pluto.server_prefix()[-1],
    ]
    assert argv[at + 7] == "jupyter"
    guix_module.dry_run_shell(argv, sandbox.guix_environment({}))


# -- attacks -------------------------------------------------------------------------


def test_hostile_project_and_notebook_names_never_reach_a_command(tmp_path: Path) -> None:
    """Julia's code and the shell's are constants; a project's text and a notebook's
    name are never part of them, nor of the arguments (only fixed file names are)."""
    hostile = 'x"); run(`touch /tmp/pwned`); ("'
    files = {
        "Project.toml": f'[deps]\nPluto = "1"\n\'{hostile}\' = "2"\n',
        f"a$(touch x);{'b' * 10}.jl": PLUTO,
        "ok.jl": PLUTO,
    }
    repo = make_repo(tmp_path / "repo", files)
    env = detect.detect(repo)
    assert env.pluto == apps.Pluto(("ok.jl",), ("Project.toml",), True)
    assert any("[deps] entry 2" in s.where for s in env.skipped)
    argv = [*pluto.build_command(env.pluto.project), *pluto.server_prefix()]
    assert pluto.build_command(env.pluto.project) == pluto.build_command(("Project.toml",))
    assert not any(hostile in word or "touch" in word for word in argv)
    assert hostile not in explain.explain(env)


def test_notebook_look_alikes_are_not_followed_nor_waited_on(tmp_path: Path) -> None:
    """A FIFO and a symlink out of the checkout with notebooks' names, a notebook far
    larger than a configuration file (only its first line is read)."""
    repo = make_repo(tmp_path / "repo", {"README.md": "x\n"})
    outside = tmp_path / "outside.jl"
    outside.write_text(PLUTO)
    os.symlink(outside, repo / "link.jl")
    os.symlink("big.jl", repo / "inside-link.jl")
    os.mkfifo(repo / "fifo.jl")
    (repo / "big.jl").write_text(PLUTO + "#" * (8 << 20))
    (repo / "bom.jl").write_text("\ufeff" + PLUTO)
    assert apps.pluto_notebooks(RepoTree(repo)) == ("big.jl", "bom.jl")


def test_a_huge_root_is_scanned_boundedly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(apps.MAX_SCANNED * 3):
        (repo / f"n{i:05}.jl").write_text(PLUTO)
    found = apps.pluto_notebooks(RepoTree(repo))
    assert len(found) == apps.MAX_JL  # of the first MAX_SCANNED entries listed
