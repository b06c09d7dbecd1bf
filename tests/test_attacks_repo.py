"""Issue 8, finding 2: host files disclosed by repository content.

A repository whose requirements.txt includes a host file (`-r /abs/path`, `-r ../../..`),
or whose requirements.txt / binder/channels.scm / binder/ is a symlink to one, made the
provenance page and the progress events show that file.  Here a host file holds a random
marker; real git repositories try every way in, through `detect`, `launch()` and a real
`binder-lite serve` over file:// and over HTTP; the marker must show up nowhere, and the
launch must say plainly why it was refused.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import git, make_repo, served_over_http
from webkit import Client, Server

from binder_lite.errors import EnvironmentSpecError, LaunchError
from binder_lite.launch import Event, Phase, launch
from binder_lite.launch.detect import detect
from binder_lite.site.model import Runtime

MANIFEST = '(specifications->manifest (list "python"))\n'
LEAVES = "a symlink that leaves the repository is not followed"
OUTSIDE = "a path outside the repository is not read"
SITE = """\
version: 1
site:
  name: Attacks
  slug: attacks
binder:
  max_sessions: 4
  max_sessions_per_user: 4
  idle_timeout: 3600
"""


class Host:
    """Files of the host a repository must not reach: a credential and a folder that
    looks like a binder/ folder, each holding `marker`."""

    def __init__(self, root: Path) -> None:
        self.marker = f"hostsecret{secrets.token_hex(8)}"
        self.dir = root / "host-secrets"
        self.dir.mkdir()
        # A valid package name, a pin, Scheme and a bare token: whatever a reader keeps.
        text = f'{self.marker}\ntoken=={self.marker}\n(define x "{self.marker}")\n'
        self.secret = self.dir / "push-credential"
        for name in ("push-credential", "requirements.txt", "channels.scm", "manifest.scm"):
            (self.dir / name).write_text(text)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def attack_cases(host: Host) -> dict[str, tuple[dict[str, str], dict[str, str], str]]:
    """name -> (files, symlinks, the refusal expected), for a repository each."""
    up = "../" * 40 + str(host.secret).lstrip("/")
    secret = str(host.secret)
    return {
        "-r absolute": (
            {"requirements.txt": f"numpy\n-r {secret}\n"},
            {},
            rf"^requirements\.txt:2: -r: {OUTSIDE}$",
        ),
        "-r dot-dot": (
            {"requirements.txt": f"numpy\n\n-r {up}\n"},
            {},
            rf"^requirements\.txt:3: -r: {OUTSIDE}$",
        ),
        "--requirement=": (
            {"requirements.txt": f"--requirement={secret}\n"},
            {},
            rf"^requirements\.txt:1: -r: {OUTSIDE}$",
        ),
        "-r to a symlink": (
            {"requirements.txt": "-r more.txt\n"},
            {"more.txt": secret},
            rf"^requirements\.txt:1: -r: {LEAVES}$",
        ),
        "-c absolute": (
            {"requirements.txt": f"numpy\n-c {secret}\n"},
            {},
            rf"^requirements\.txt:2: -c: {OUTSIDE}$",
        ),
        "requirements.txt symlink": (
            {},
            {"requirements.txt": secret},
            rf"^requirements\.txt: {LEAVES}$",
        ),
        "requirements.txt relative symlink": (
            {},
            {"requirements.txt": up},
            rf"^requirements\.txt: {LEAVES}$",
        ),
        "binder/channels.scm symlink": (
            {"binder/manifest.scm": MANIFEST},
            {"binder/channels.scm": secret},
            rf"^binder/channels\.scm: {LEAVES}$",
        ),
        "binder directory symlink": ({}, {"binder": str(host.dir)}, rf"^binder: {LEAVES}$"),
        "manifest.scm symlink": ({}, {"manifest.scm": secret}, rf"^manifest\.scm: {LEAVES}$"),
    }


CASES = [  # the names of attack_cases(), for parametrize (checked in the first test)
    "-r absolute",
    "-r dot-dot",
    "--requirement=",
    "-r to a symlink",
    "-c absolute",
    "requirements.txt symlink",
    "requirements.txt relative symlink",
    "binder/channels.scm symlink",
    "binder directory symlink",
    "manifest.scm symlink",
]


def attack_repo(path: Path, files: dict[str, str], links: dict[str, str]) -> Path:
    """A real git repository with `files` and `links` (symlinks, committed as such)."""
    repo = make_repo(path, files)
    for name, target in links.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).symlink_to(target)
    if links:
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "links")
    return repo


def spliced_lines(marker: str) -> str:
    """Lines carrying a secret in ways that are not package names."""
    return (
        f"numpy\ntoken={marker}\n-i https://user:{marker}@example.org/simple\n"
        f"pandas ; python_version > '{marker}'\nscipy --hash=sha256:{marker}\n"
        f"git+https://{marker}@example.org/x.git\n{marker}!!\n"
    )


def refused(source: str, tmp_path: Path, events: list[Event], marker: str) -> LaunchError:
    """Launch `source` (local runtime), which must fail; a session that started anyway
    is stopped, and checked for `marker` first, before the test fails."""
    try:
        session = launch(
            source, runtime_kind=Runtime.LOCAL, cache_dir=tmp_path / "cache", on_event=events.append
        )
    except LaunchError as e:
        return e
    session.stop()
    shown = [
        *(e.message for e in events),
        session.provenance.manifest,
        session.provenance.channels or "",
    ]
    assert not [text for text in shown if marker in text], "the host file was shown"
    pytest.fail("launched anyway")


# -- detection, on a real checkout --------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_detect_refuses_host_files(tmp_path: Path, host: Host, case: str) -> None:
    assert list(attack_cases(host)) == CASES
    files, links, message = attack_cases(host)[case]
    repo = attack_repo(tmp_path / "repo", files, links)
    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", str(repo), str(checkout))
    try:
        env = detect(checkout)
    except EnvironmentSpecError as e:
        assert re.search(message, str(e)), str(e)
        assert host.marker not in str(e)
        assert str(host.dir) not in str(e)  # the path written there is not repeated either
    else:
        assert host.marker not in repr(env), "the host file was read"
        pytest.fail(f"not refused: {env.kind} environment from {env.config_dir}")


def test_lines_not_understood_are_never_echoed(tmp_path: Path, host: Host) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": spliced_lines(host.marker)})
    env = detect(repo)
    assert env.packages == ("python-numpy", "python-pandas", "python-scipy")
    assert host.marker not in repr(env)
    assert [(s.where, s.reason) for s in env.skipped] == [
        ("requirements.txt:2", "not understood"),
        ("requirements.txt:3", "option -i ignored (Guix packages are used)"),
        ("requirements.txt:6", "a URL or path, not a package name: skipped"),
        ("requirements.txt:7", "not understood"),
    ]


def test_symlinks_inside_the_repository_are_followed(tmp_path: Path) -> None:
    """Refusing is for links that leave: one that stays inside is an ordinary file."""
    repo = attack_repo(
        tmp_path / "repo",
        {"envs/py/requirements.txt": "numpy\n-r ../extra.txt\n", "envs/extra.txt": "scipy\n"},
        {"binder": "envs/py", "envs/py/loop": "../py"},
    )
    env = detect(repo)
    assert env.config_dir == repo / "envs/py"
    assert env.packages == ("python-numpy", "python-scipy")


def test_oversized_special_and_non_utf8_files(tmp_path: Path) -> None:
    import os

    big = make_repo(tmp_path / "big", {"requirements.txt": "numpy\n" + "#" * (1 << 20)})
    with pytest.raises(EnvironmentSpecError, match=r"^requirements\.txt: larger than 1 MiB"):
        detect(big)
    latin = make_repo(tmp_path / "latin", {})
    (latin / "requirements.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(EnvironmentSpecError, match=r"^requirements\.txt: not UTF-8 text"):
        detect(latin)
    fifo = make_repo(tmp_path / "fifo", {})
    os.mkfifo(fifo / "requirements.txt")  # a local folder can hold one; reading would block
    with pytest.raises(EnvironmentSpecError, match=r"^requirements\.txt: not a regular file"):
        detect(fifo)
    dotgit = make_repo(tmp_path / "dotgit", {"requirements.txt": "-r .git/config\n"})
    with pytest.raises(EnvironmentSpecError, match=r"^requirements\.txt:1: -r: files inside "):
        detect(dotgit)


# -- launch(), as the service calls it -----------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "-r absolute",
        "requirements.txt symlink",
        "binder/channels.scm symlink",
        "binder directory symlink",
    ],
)
def test_launch_says_why_and_shows_nothing(tmp_path: Path, host: Host, case: str) -> None:
    files, links, message = attack_cases(host)[case]
    repo = attack_repo(tmp_path / "repo", files, links)
    events: list[Event] = []
    error = refused(f"file://{repo}", tmp_path, events, host.marker)
    assert re.search(message, str(error), re.MULTILINE)
    assert events[-1].phase is Phase.FAILED and events[-1].message == str(error)
    assert all(host.marker not in e.message for e in events)
    sessions = tmp_path / "cache" / "sessions"
    assert not list(sessions.glob("*/provenance.json"))


# -- a real service, over file:// and over HTTP --------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "site.yaml").write_text(SITE)
    server = Server(tmp_path / "site.yaml", tmp_path / "state", ("--allow-local-repos",))
    server.start()
    yield server
    server.stop()


def _launch_form(client: Client, url: str) -> str:
    response = client.post("/launch", {"repo": url})
    assert response.status == 303, response.text
    return response.headers["Location"].split("/")[2]


def _build_stream(client: Client, url: str) -> list[dict[str, object]]:
    """BinderHub's JSON event API for the same repository."""
    from urllib.parse import quote

    return client.events(f"/build/git/{quote(url, safe='')}/HEAD")


def _assert_refused_everywhere(server: Server, url: str, host: Host, message: str) -> None:
    client = Client(server.url)
    sid = _launch_form(client, url)
    events = client.events(f"/sessions/{sid}/events")
    built = _build_stream(client, url)
    page = client.get(f"/sessions/{sid}")
    shown = {
        "events": str(events),
        "build API": str(built),
        "provenance page": page.text,
        "sessions": client.get("/sessions").text,
        "health": client.get("/health").text,
        "metrics": client.get("/metrics").text,
    }
    assert [where for where, text in shown.items() if host.marker in text] == []
    for stream in (events, built):
        assert stream[-1]["phase"] == "failed", stream[-1]
        assert re.search(message, str(stream[-1]["message"]).strip()), stream[-1]
    assert page.status == 200 and re.search(message.strip("^$"), html.unescape(page.text))
    for sid_ in _session_ids(client):  # stop what a failed check left running
        client.post(f"/sessions/{sid_}/stop")


def _session_ids(client: Client) -> set[str]:
    return set(re.findall(r"/sessions/([0-9a-f]{16})", client.get("/sessions").text))


def _state_holds_no_marker(server: Server, host: Host) -> None:
    """Nothing the service wrote (its database, session files, log) holds the marker."""
    for path in server.state_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and "/repo/" not in str(path):
            assert host.marker.encode() not in path.read_bytes(), path
    assert server.log is not None and host.marker not in server.log.read_text()


REFUSED_IN_SERVICE = [
    "-r absolute",
    "-r dot-dot",
    "requirements.txt symlink",
    "binder/channels.scm symlink",
    "binder directory symlink",
]


def test_service_over_file_urls(tmp_path: Path, host: Host, service: Server) -> None:
    cases = attack_cases(host)
    for n, case in enumerate(REFUSED_IN_SERVICE):
        files, links, message = cases[case]
        repo = attack_repo(tmp_path / f"repo{n}", files, links)
        _assert_refused_everywhere(service, f"file://{repo}", host, message)
    _state_holds_no_marker(service, host)


def test_service_over_http(tmp_path: Path, host: Host, service: Server) -> None:
    cases = attack_cases(host)
    for n, case in enumerate(REFUSED_IN_SERVICE):
        files, links, message = cases[case]
        repo = attack_repo(tmp_path / f"repo{n}", files, links)
        with served_over_http(repo) as url:
            _assert_refused_everywhere(service, url, host, message)
    _state_holds_no_marker(service, host)


def test_service_launch_with_spliced_lines(tmp_path: Path, host: Host, service: Server) -> None:
    """A launch that goes ahead: the lines it could not use are named by number only,
    in the events and on the provenance page."""
    repo = make_repo(tmp_path / "repo", {"requirements.txt": spliced_lines(host.marker)})
    client = Client(service.url)
    sid = _launch_form(client, f"file://{repo}")
    events = client.events(f"/sessions/{sid}/events")
    page = client.get(f"/sessions/{sid}").text
    try:
        for text in (page, str(events), client.get("/sessions").text):
            assert host.marker not in text
        assert events[-1]["phase"] == "ready", events[-1]
        messages = [str(e["message"]) for e in events]
        assert "skipped requirements.txt:2: not understood\n" in messages
        assert "skipped requirements.txt:3: option -i ignored (Guix packages are used)\n" in (
            messages
        )
        assert "python-numpy" in page and "requirements.txt:7: skipped, not understood" in page
    finally:
        assert client.post(f"/sessions/{sid}/stop").status == 303
