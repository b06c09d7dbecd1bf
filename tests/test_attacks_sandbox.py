"""Code inside a session, as an attacker writes it: what it must not reach.

Two real sessions are launched from real git repositories in the local runtime's
sandbox (bubblewrap).  A cell of the first tries everything the issue found possible
before the sandbox: the service's state and secrets, the other session's files and
socket, the launching process's /proc and signals, a TCP port on the host's loopback,
and a process that outlives its session.  The launching test process stands in for the
service here; tests/test_attacks_web.py does the same against `binder-lite serve`.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import Target, execute, hostile_target, make_repo, processes_mentioning

from binder_lite.launch import launch
from binder_lite.launch.sandbox import Cgroups, Handle
from binder_lite.launch.session import Isolation, Session
from binder_lite.site.model import Runtime, SessionLimits, SessionNetwork

# Each attempt's outcome: "ok:<what it got>" or "refused:<exception>".
PROBE = r"""
import json, os, socket
def attempt(f):
    try:
        return "ok:" + repr(f())[:300]
    except BaseException as e:
        return "refused:" + type(e).__name__
def connect_unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(path)
    return s
r = {
  "state_listing": attempt(lambda: os.listdir(STATE)),
  "state_db": attempt(lambda: open(STATE + "/sessions.sqlite", "rb").read(64)),
  "secret": attempt(lambda: open(SECRET).read()),
  "other_files": attempt(lambda: os.listdir(OTHER_REPO)),
  "other_socket": attempt(lambda: connect_unix(OTHER_SOCKET)),
  "service_environ": attempt(lambda: open(f"/proc/{SERVICE_PID}/environ", "rb").read(64)),
  "service_signal": attempt(lambda: os.kill(SERVICE_PID, 0)),
  "service_port": attempt(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2)),
  "host_shadow": attempt(lambda: open("/etc/shadow").read(16)),
  "host_var": attempt(lambda: os.listdir("/var/lib")),
  "host_home": attempt(lambda: os.listdir("/home")),
  "visible_pids": len([p for p in os.listdir("/proc") if p.isdigit()]),
  "uid": os.getuid(),
  "environment": dict(os.environ),
}
json.dumps(r)
"""

# PROBE's attempts on the service and on other sessions, and those on the host.
SERVICE_ATTEMPTS = (
    "state_listing",
    "state_db",
    "secret",
    "other_files",
    "other_socket",
    "service_environ",
    "service_signal",
    "service_port",
)
HOST_ATTEMPTS = ("host_shadow", "host_var", "host_home")


# Start 200 processes, as many as the task limit lets it: (whether it stopped short,
# the error that stopped it).
FORKS = (
    "import subprocess\n"
    "procs, error = [], None\n"
    "try:\n"
    "    for _ in range(200): procs.append(subprocess.Popen(['sleep', '30']))\n"
    "except OSError as e:\n"
    "    error = type(e).__name__\n"
    "for p in procs: p.kill(); p.wait()\n"
    "(len(procs) < 200, error)"
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with hostile_target(tmp_path_factory.mktemp("state"), "a session") as target:
        yield target


def sandboxed(repo: Path, state: Path, **isolation: object) -> Session:
    return launch(
        f"file://{repo}",
        runtime_kind=Runtime.LOCAL,
        cache_dir=state / "cache",
        isolation=Isolation(**isolation),
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sessions(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Session, Session]]:
    base = tmp_path_factory.mktemp("repos")
    # A secret in the launching process's environment (a service's can hold some).
    os.environ["BINDER_LITE_PROBE_SECRET"] = target.marker
    first = sandboxed(make_repo(base / "one"), target.state, network=SessionNetwork.NONE)
    try:
        second = sandboxed(
            make_repo(base / "two", {"private.txt": target.marker}),
            target.state,
            network=SessionNetwork.NONE,
        )
    except BaseException:
        first.stop()
        raise
    del os.environ["BINDER_LITE_PROBE_SECRET"]
    yield first, second
    first.stop()
    second.stop()


def probe_code(**names: object) -> str:
    """PROBE, after the names it aims at (STATE, SECRET, OTHER_REPO, ...)."""
    return "".join(f"{k} = {v!r}\n" for k, v in names.items()) + PROBE


def assert_refused(seen: dict[str, object], attempts: tuple[str, ...]) -> None:
    for attempt in attempts:
        assert str(seen[attempt]).startswith("refused:"), (attempt, seen[attempt])


def probe(session: Session, **names: object) -> dict[str, object]:
    code = probe_code(**names)
    return json.loads(ast.literal_eval(execute(session.base_url, session.token, code)))  # type: ignore[no-any-return]


def test_a_kernel_reaches_nothing_of_the_service_or_other_sessions(
    sessions: tuple[Session, Session], target: Target
) -> None:
    first, second = sessions
    assert second.socket is not None
    seen = probe(
        first,
        STATE=str(target.state),
        SECRET=str(target.secret),
        OTHER_REPO=str(second.work_dir),
        OTHER_SOCKET=str(second.socket),
        SERVICE_PID=os.getpid(),
        PORT=target.port,
    )
    assert_refused(seen, SERVICE_ATTEMPTS + HOST_ATTEMPTS)
    # Nothing of the service's environment reached the session.
    assert target.marker not in json.dumps(seen)
    assert "BINDER_LITE_PROBE_SECRET" not in seen["environment"]  # type: ignore[operator]
    # Its own PID namespace: Jupyter, its kernel and little else, not the host's processes.
    assert isinstance(seen["visible_pids"], int) and seen["visible_pids"] < 10
    assert seen["uid"] == 1000


def test_the_session_sees_only_its_own_checkout(sessions: tuple[Session, Session]) -> None:
    first, _ = sessions
    listing = execute(
        first.base_url, first.token, "import os; sorted(os.listdir('/notebooks')), os.getcwd()"
    )
    assert "index.ipynb" in listing and "private.txt" not in listing
    assert "'/notebooks'" in listing
    # git works on the checkout (its objects are borrowed from the cache, read-only).
    log = execute(
        first.base_url,
        first.token,
        "import subprocess; subprocess.run("
        "['git', 'log', '--format=%s', '-1'], capture_output=True, text=True,"
        " cwd='/notebooks').stdout.strip()",
    )
    assert log not in ("''", "")


def test_nothing_outlives_a_stopped_session(target: Target, tmp_path: Path) -> None:
    session = sandboxed(make_repo(tmp_path / "repo"), target.state, network=SessionNetwork.NONE)
    marker = f"survivor-{secrets.token_hex(6)}"
    # A daemon in a session of its own (double fork), and a plain background process.
    code = (
        "import subprocess\n"
        f"subprocess.Popen(['sh', '-c', '(sleep 600; echo {marker}) & exit'], "
        "start_new_session=True)\n"
        f"subprocess.Popen(['python3', '-c', 'import time; time.sleep(600)  # {marker}'])\n"
        "'started'"
    )
    assert execute(session.base_url, session.token, code) == "'started'"
    deadline = time.monotonic() + 10
    while len(processes_mentioning(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(processes_mentioning(marker)) >= 2
    handle = session.handle
    assert handle is not None and handle.alive()
    session.stop(grace=2)
    assert processes_mentioning(marker) == []
    assert not handle.alive()
    # The same is true for a service that restarted: the handle is on disk.
    saved = Handle.load(session.session_dir / "sandbox.json")
    assert saved is not None and saved.members() == set()


def test_limits_hold_and_the_host_stays_up(target: Target, tmp_path: Path) -> None:
    limits = SessionLimits(memory=400 * 1024**2, processes=128, disk=32 * 1024**2)
    session = sandboxed(
        make_repo(tmp_path / "repo"), target.state, network=SessionNetwork.NONE, limits=limits
    )
    try:
        # Files: one larger than the disk limit fails as it is written.
        big = execute(
            session.base_url,
            session.token,
            (
                "import errno\n"
                "try:\n"
                "    open('/notebooks/big', 'wb').write(b'x' * (40 * 2**20)); r = 'written'\n"
                "except OSError as e:\n"
                "    r = errno.errorcode[e.errno]\n"
                "r"
            ),
        )
        assert big.strip("'") in ("EFBIG", "ENOSPC")
        # Tasks: forking past the limit fails in the notebook, not on the host.
        forks = execute(session.base_url, session.token, FORKS)
        assert forks.startswith("(True, '") and "Error" in forks
        # Memory: a process that takes too much is killed; the notebook and the host go on.
        killed = execute(
            session.base_url,
            session.token,
            (
                "import subprocess, sys\n"
                "subprocess.run([sys.executable, '-c', 'b = bytearray(2**30)']).returncode"
            ),
        )
        assert killed == "-9"
        handle = session.handle
        assert handle is not None
        assert Cgroups(tuple(Path(d) for d in handle.cgroups)).oom_kills() > 0
        assert execute(session.base_url, session.token, "6 * 7") == "42"
    finally:
        session.stop()


def test_outbound_network_cannot_reach_the_hosts_loopback(target: Target, tmp_path: Path) -> None:
    session = sandboxed(make_repo(tmp_path / "repo"), target.state, network=SessionNetwork.OUTBOUND)
    try:
        handle = session.handle
        assert handle is not None and handle.helpers, "no user-mode network was attached"
        seen = execute(
            session.base_url,
            session.token,
            (
                "import socket, os\n"
                "def attempt(address):\n"
                "    try:\n"
                f"        socket.create_connection((address, {target.port}), timeout=3)\n"
                "        return 'ok'\n"
                "    except OSError as e:\n"
                "        return type(e).__name__\n"
                "('tap0' in open('/proc/net/dev').read(),\n"
                " attempt('127.0.0.1'), attempt('10.0.2.2'))"
            ),
        )
        assert seen.startswith("(True,")  # the user-mode stack is there
        assert "'ok'" not in seen  # and the host's loopback is not reachable through it
    finally:
        session.stop()


def own_addresses() -> list[str]:
    """This machine's IPv4 addresses besides loopback, as `ip` lists them (not as the
    code under test finds them)."""
    listed = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    found = [line.split()[3].split("/")[0] for line in listed.splitlines()]
    return [a for a in found if not a.startswith("127.")]


def test_outbound_network_cannot_reach_the_hosts_own_addresses(
    target: Target, tmp_path: Path
) -> None:
    """slirp4netns connects from the host: a service listening on all the host's
    addresses would be reached through its public one."""
    addresses = own_addresses()
    assert addresses, "this machine has no address but loopback"
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    session = sandboxed(make_repo(tmp_path / "repo"), target.state, network=SessionNetwork.OUTBOUND)
    try:
        seen = execute(
            session.base_url,
            session.token,
            (
                "import socket, os\n"
                "def attempt(address):\n"
                "    try:\n"
                f"        socket.create_connection((address, {port}), timeout=3); return 'ok'\n"
                "    except OSError as e:\n"
                "        return os.strerror(e.errno) if e.errno else type(e).__name__\n"
                f"[attempt(a) for a in {addresses!r}]"
            ),
        )
        assert "'ok'" not in seen, (addresses, seen)
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()
    finally:
        session.stop()
        listener.close()


def test_outbound_network_cannot_reach_private_ranges(target: Target, tmp_path: Path) -> None:
    """A cloud's metadata service, the host's LAN: unreachable, and the session's code
    cannot make them reachable again."""
    session = sandboxed(make_repo(tmp_path / "repo"), target.state, network=SessionNetwork.OUTBOUND)
    try:
        seen = execute(
            session.base_url,
            session.token,
            (
                "import socket, subprocess, os\n"
                "def attempt(address):\n"
                "    s = socket.socket(); s.settimeout(3)\n"
                "    try:\n"
                "        s.connect((address, 80)); return 'ok'\n"
                "    except OSError as e:\n"
                "        return os.strerror(e.errno)\n"
                "undo = subprocess.run(['ip', 'route', 'del', 'unreachable', '169.254.0.0/16'],"
                " capture_output=True).returncode\n"
                "([attempt(a) for a in ('169.254.169.254', '10.1.2.3', '172.17.0.1',"
                " '192.168.1.1', '100.64.0.1')], undo, os.getuid())"
            ),
        )
        reached, undo, uid = ast.literal_eval(seen)
        assert reached == ["No route to host"] * 5
        assert undo != 0 and uid == 1000  # the route stayed
    finally:
        session.stop()
