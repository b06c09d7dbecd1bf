"""A repository's postBuild and start, as an attacker writes them: what they must not do.

Real launches in the local runtime's sandbox (bubblewrap, cgroups, slirp4netns).  A
postBuild tries to write outside its checkout and /tmp, to read the service's files,
to reach the host's loopback and private networks, to signal the launching process,
to get past the memory, task and disk limits, to run forever, to flood its output and
to leave processes behind; a start script forks a daemon.  The launching test process
stands in for the service, as in tests/test_attacks_sandbox.py.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import Target, execute, git, hostile_target, make_repo, processes_mentioning

from binder_lite.launch import launch, postbuild
from binder_lite.launch.sandbox import Handle
from binder_lite.launch.session import Event, Isolation, Session
from binder_lite.site.model import Runtime, SessionLimits, SessionNetwork

# Each attempt's outcome: "ok:<what it got>" or "refused:<exception>".
PROBE = r"""
import json, os, socket, sys
def attempt(f):
    try:
        return "ok:" + repr(f())[:200]
    except BaseException as e:
        return "refused:" + type(e).__name__
def write(folder):
    with open(os.path.join(folder, MARKER), "w") as f:
        f.write("x")
    return folder
r = {"writes": {folder: attempt(lambda: write(folder)) for folder in FOLDERS},
     "secret": attempt(lambda: open(SECRET).read()),
     "state": attempt(lambda: os.listdir(STATE)),
     "cache": attempt(lambda: os.listdir(CACHE)),
     "service_environ": attempt(lambda: open(f"/proc/{SERVICE_PID}/environ", "rb").read(64)),
     "service_signal": attempt(lambda: os.kill(SERVICE_PID, 0)),
     "loopback": attempt(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3)),
     "gateway": attempt(lambda: socket.create_connection(("10.0.2.2", PORT), timeout=3)),
     "metadata": attempt(lambda: socket.create_connection(("169.254.169.254", 80), timeout=3)),
     "tap0": "tap0" in open("/proc/net/dev").read(),
     "uid": os.getuid(),
     "environment": dict(os.environ)}
with open("/notebooks/attempts.json", "w") as f:
    json.dump(r, f)
"""

LIMITS_PROBE = r"""
import errno, json, os, subprocess, sys
procs, forks = [], None
try:
    for _ in range(200):
        procs.append(subprocess.Popen(["sleep", "30"]))
except OSError as e:
    forks = type(e).__name__
for p in procs:
    p.kill(); p.wait()
try:
    open("/notebooks/big", "wb").write(b"x" * (40 * 2**20)); big = "written"
except OSError as e:
    big = errno.errorcode[e.errno]
os.remove("/notebooks/big")  # what was written up to the limit
memory = subprocess.run([sys.executable, "-c", "b = bytearray(2**30)"]).returncode
with open("/notebooks/limits.json", "w") as f:
    json.dump({"started": len(procs), "forks": forks, "big": big, "memory": memory}, f)
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    with hostile_target(tmp_path / "state", "a postBuild") as target:
        yield target


def scripted(path: Path, files: dict[str, str]) -> Path:
    """A repository whose `files` are all executable scripts."""
    repo = make_repo(path, files)
    for name in files:
        os.chmod(repo / name, 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "scripts")
    return repo


def python_script(body: str, **names: object) -> str:
    assignments = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    return f"#!/usr/bin/env python3\n{assignments}{body}"


def launched(
    repo: Path,
    state: Path,
    events: list[Event] | None = None,
    network: SessionNetwork = SessionNetwork.NONE,
    limits: SessionLimits | None = None,
) -> Session:
    return launch(
        f"file://{repo}",
        runtime_kind=Runtime.LOCAL,
        cache_dir=state / "cache",
        isolation=Isolation(network=network, limits=limits or SessionLimits()),
        on_event=events.append if events is not None else None,
    )


def test_postbuild_reaches_nothing_of_the_host(target: Target, tmp_path: Path) -> None:
    name = f"planted-{secrets.token_hex(6)}"
    sessions = tmp_path / "state" / "cache" / "sessions"
    outside = ["/etc", "/usr", "/var/tmp", sys.prefix, str(target.state), str(sessions)]
    script = python_script(
        PROBE,
        MARKER=name,
        FOLDERS=["/notebooks", "/tmp", "/run/binder-lite", *outside],
        SECRET=str(target.secret),
        STATE=str(target.state),
        CACHE=str(tmp_path / "state" / "cache"),
        SERVICE_PID=os.getpid(),
        PORT=target.port,
    )
    repo = scripted(tmp_path / "repo", {"binder/postBuild": script})
    os.environ["BINDER_LITE_PROBE_SECRET"] = target.marker
    try:
        session = launched(repo, target.state, network=SessionNetwork.OUTBOUND)
    finally:
        del os.environ["BINDER_LITE_PROBE_SECRET"]
    try:
        seen = json.loads((session.work_dir / "attempts.json").read_text())
        assert session.handle is not None and session.handle.helpers, "no network attached"
    finally:
        session.stop()
    writes = seen["writes"]
    assert writes["/notebooks"].startswith("ok:") and writes["/tmp"].startswith("ok:")
    assert (session.work_dir / name).exists()
    # Nothing reached the host: not the socket's folder, the system, the service's state
    # or another session's folder.  The sandbox's /etc is its own (bubblewrap's root
    # holds only the few files bound into it), so a file may be made there.
    assert writes["/run/binder-lite"].startswith("refused:")
    assert [f for f in outside if writes[f].startswith("ok:")] == ["/etc"]
    planted = [session.session_dir / "run", *(Path(f) for f in outside)]
    assert [p for p in planted if (p / name).exists()] == []
    for attempt in ("secret", "state", "cache", "service_environ", "service_signal"):
        assert seen[attempt].startswith("refused:"), (attempt, seen[attempt])
    assert seen["tap0"] is True  # it had the session's outbound network, and yet:
    for attempt in ("loopback", "gateway", "metadata"):
        assert seen[attempt].startswith("refused:"), (attempt, seen[attempt])
    assert seen["uid"] == 1000
    assert target.marker not in json.dumps(seen)
    assert "BINDER_LITE_PROBE_SECRET" not in seen["environment"]


def test_postbuild_is_held_to_the_sessions_limits(target: Target, tmp_path: Path) -> None:
    limits = SessionLimits(memory=300 * 1024**2, processes=64, disk=32 * 1024**2)
    repo = scripted(tmp_path / "repo", {"postBuild": python_script(LIMITS_PROBE)})
    session = launched(repo, target.state, limits=limits)
    try:
        seen = json.loads((session.work_dir / "limits.json").read_text())
        assert execute(session.base_url, session.token, "6 * 7") == "42"  # and the host is up
    finally:
        session.stop()
    assert seen["started"] < 200 and seen["forks"] is not None
    assert seen["big"] in ("EFBIG", "ENOSPC")
    assert seen["memory"] == -9


def test_postbuild_cannot_fill_the_disk_with_many_files(target: Target, tmp_path: Path) -> None:
    limits = SessionLimits(disk=16 * 1024**2)
    script = (
        "#!/bin/sh\nfor i in $(seq 1 40); do head -c 8000000 /dev/zero > /notebooks/f$i; done\n"
    )
    repo = scripted(tmp_path / "repo", {"postBuild": script})
    with pytest.raises(postbuild.PostBuildError, match="more than the session's disk limit"):
        launched(repo, target.state, limits=limits)


def test_postbuild_cannot_outlive_its_time(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postbuild, "TIME_LIMIT", 3.0)
    marker = f"lingering-{secrets.token_hex(6)}"
    script = (
        "#!/bin/sh\n"
        f"sh -c 'sleep 600; echo {marker}' &\n"
        f"setsid sh -c 'sleep 601; echo {marker}' &\n"
        "exec sleep 602\n"
    )
    repo = scripted(tmp_path / "repo", {"postBuild": script})
    with pytest.raises(postbuild.PostBuildError, match="ran longer than 3 seconds"):
        launched(repo, target.state)
    assert processes_mentioning(marker) == []


def test_a_failed_postbuild_leaves_nothing_running(target: Target, tmp_path: Path) -> None:
    marker = f"survivor-{secrets.token_hex(6)}"
    script = (
        "#!/bin/sh\n"
        f"(setsid sh -c 'sleep 600; echo {marker}' &) &\n"
        f"nohup sh -c 'sleep 601; echo {marker}' >/dev/null 2>&1 &\n"
        "i=0; while [ $(pgrep -c -f " + marker + ") -lt 2 ] && [ $i -lt 100 ]; do\n"
        "  i=$((i+1)); sleep 0.05; done\n"
        "echo started; exit 1\n"
    )
    repo = scripted(tmp_path / "repo", {"postBuild": script})
    events: list[Event] = []
    with pytest.raises(postbuild.PostBuildError, match="failed with status 1"):
        launched(repo, target.state, events)
    assert "postBuild: started" in [e.message for e in events]
    assert processes_mentioning(marker) == []
    sessions = list((target.state / "cache" / "sessions").iterdir())
    saved = Handle.load(sessions[0] / "sandbox.json")
    assert saved is not None and saved.members() == set()


def test_postbuild_cannot_flood_the_log_or_the_page(target: Target, tmp_path: Path) -> None:
    script = (
        "#!/bin/sh\n"
        "printf '\\033[31mred\\n'\n"
        "head -c 5000000 /dev/zero | tr '\\0' x\n"
        "echo\n"
        "seq 1 200000 | sed 's/$/ ................................................/'\n"
        "exit 1\n"
    )
    repo = scripted(tmp_path / "repo", {"postBuild": script})
    events: list[Event] = []
    with pytest.raises(postbuild.PostBuildError) as caught:
        launched(repo, target.state, events)
    shown = [e.message for e in events if e.message.startswith("postBuild: ")]
    assert len(shown) <= postbuild.EVENT_LINES + 3
    assert "postBuild: ?[31mred" in shown  # control characters never reach a terminal
    assert any("beyond 1000 lines is not shown" in m for m in shown)
    assert max(len(m) for m in shown) <= postbuild.LINE_LIMIT + 20
    lines = str(caught.value).splitlines()
    assert len(lines) == postbuild.TAIL_LINES + 1 and lines[-1].startswith("200000 ")
    sessions = list((target.state / "cache" / "sessions").iterdir())
    assert (sessions[0] / postbuild.LOG_NAME).stat().st_size <= postbuild.LOG_LIMIT


def test_kept_files_pointing_out_stay_inside(target: Target, tmp_path: Path) -> None:
    """What a postBuild leaves (symlinks to the host's files, a FIFO) is kept and
    restored as it is, and still leads nowhere outside the sandbox."""
    script = (
        f"#!/bin/sh\nset -e\nln -s {target.secret} secret-link\nln -s / root-link\nmkfifo fifo\n"
    )
    repo = scripted(tmp_path / "repo", {"postBuild": script})
    launched(repo, target.state).stop()
    events: list[Event] = []
    again = launched(repo, target.state, events)
    try:
        assert "postBuild: already run for this commit; its files restored" in [
            e.message for e in events
        ]
        assert os.readlink(again.work_dir / "secret-link") == str(target.secret)
        code = (
            "import os\n"
            "try:\n    r = open('/notebooks/secret-link').read()\n"
            "except OSError as e:\n    r = type(e).__name__\n"
            "r, os.path.exists('/notebooks/fifo')"
        )
        assert execute(again.base_url, again.token, code) == "('FileNotFoundError', True)"
    finally:
        again.stop()
    assert target.secret.read_text() == f"git:{target.marker}"


def test_a_daemon_forked_by_start_goes_with_the_session(target: Target, tmp_path: Path) -> None:
    marker = f"start-daemon-{secrets.token_hex(6)}"
    script = (
        "#!/bin/sh\n"
        f"sh -c 'sleep 600; echo {marker}' &\n"
        f"(setsid sh -c 'sleep 601; echo {marker}' &) &\n"
        'exec "$@"\n'
    )
    repo = scripted(tmp_path / "repo", {"start": script})
    session = launched(repo, target.state)
    try:
        assert len(processes_mentioning(marker)) >= 2
    finally:
        session.stop(grace=2)
    assert processes_mentioning(marker) == []
