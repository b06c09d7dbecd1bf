"""Where a session's code runs: a sandbox that sees its checkout and nothing of the service.

Each session gets its own user, mount, PID, IPC, UTS and network namespaces.  The local
runtime builds them with bubblewrap; the guix runtime lets `guix shell --container`
build them (without `--network`).  Either way Jupyter listens on a Unix socket in a
directory shared with the host (`run/` in the session directory), which the service's
front connects to: the session has no address on the host's network, so it cannot
reach the service's ports, another session, or anything on the host's loopback.

Limits: memory and the number of tasks through a cgroup per session (v2 when the
service has a delegated cgroup, else v1), file sizes through RLIMIT_FSIZE and /tmp
through a bounded tmpfs; the manager checks the checkout's size as it culls.  A
`Handle` finds every process of the cgroup, or, without one, of the session's PID
namespaces and process tree; lifetime.py stops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import json
import logging
import os
import select
import shutil
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binder_lite.errors import LaunchError
from binder_lite.guix import guix_program
from binder_lite.procs import ProcessId
from binder_lite.run import spawn
from binder_lite.site.model import SessionLimits, SessionNetwork

if TYPE_CHECKING:
    from subprocess import Popen

    from binder_lite.launch.runtime import GuixPaths

log = logging.getLogger(__name__)

# Paths as the session sees them.
WORK_DIR = "/notebooks"  # the checkout
RUN_DIR = "/run/binder-lite"  # shared with the host: the socket, Jupyter's runtime files
HOME = "/tmp/home"
SOCKET_NAME = "jupyter.sock"
SANDBOX_UID = 1000

# What of the host a local-runtime session may read: programs and libraries, and the
# few files of /etc that programs need to start.  Never /home, /root, /var or /srv.
SYSTEM_DIRS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/gnu/store",
    "/run/current-system",
)
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "fonts",
    "matplotlibrc",
    "R",
    "jupyter",
)
# Outbound traffic must not reach the host's networks (its LAN, a cloud's metadata
# service at 169.254.169.254): these are unreachable inside the sandbox.  slirp4netns'
# own network, 10.0.2.0/24 (its gateway and DNS), is more specific and stays reachable;
# the host's loopback is refused by slirp4netns itself (--disable-host-loopback).
PRIVATE_ROUTES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "192.0.0.0/24",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
FIB = Path("/proc/net/fib_trie")


def host_addresses(fib: Path = FIB) -> tuple[str, ...]:
    """This machine's own IPv4 addresses outside PRIVATE_ROUTES and loopback: slirp4netns
    connects from the host, so a session reaching one of them reaches every service
    the host runs on all its addresses.  Read when each session starts (addresses
    come and go with DHCP)."""
    try:
        lines = fib.read_text().splitlines()
    except OSError as e:
        raise SandboxError(f"cannot read this machine's addresses ({fib}: {e.strerror})") from None
    private = [ipaddress.ip_network(r) for r in PRIVATE_ROUTES]
    found: dict[str, None] = {}
    for line, after in zip(lines, lines[1:], strict=False):
        leaf, local = line.strip(), after.strip()
        if not (leaf.startswith("|-- ") and local == "/32 host LOCAL"):
            continue
        address = ipaddress.ip_address(leaf[4:])
        if address.is_loopback or any(address in net for net in private):
            continue
        found[str(address)] = None
    return tuple(found)


def net_setup(routes: Sequence[str]) -> str:
    """Run first in an outbound sandbox, with CAP_NET_ADMIN of the sandbox's namespace
    only: make `routes` unreachable (before any interface exists, so that they are
    whatever happens later), wait (bounded) for slirp4netns' interface, then run the
    rest without that capability.  `routes` are checked addresses and networks."""
    checked = [str(ipaddress.ip_network(r)).removesuffix("/32") for r in routes]
    return (
        # A few tries each (seen once, under load, to fail); failing, the session does
        # not start: it never runs with a private range open.
        "for r in " + " ".join(checked) + "; do n=0; "
        'until ip route add unreachable $r || ip route show | grep -q "^unreachable $r "; '
        "do n=$((n+1)); if [ $n -ge 5 ]; then "
        'echo "binder-lite: cannot close $r to the session" >&2; exit 71; fi; sleep 0.1; '
        "done; done; i=0; while ! grep -q '^tap0' /proc/net/route 2>/dev/null; do "
        "i=$((i+1)); if [ $i -gt 500 ]; then echo 'binder-lite: starting without a network' "
        '>&2; break; fi; sleep 0.02; done; exec "$@"'
    )


def closed_routes() -> tuple[str, ...]:
    """What an outbound session may not reach: the private ranges and this machine."""
    return (*PRIVATE_ROUTES, *host_addresses())


CGROUP_ROOT = Path("/sys/fs/cgroup")


class SandboxError(LaunchError):
    """The sandbox could not be made; the message says what is missing."""


@dataclass(frozen=True)
class Sandbox:
    """One session's sandbox: where its files are on the host, and what it may use."""

    session_id: str
    session_dir: Path
    repo: Path  # the checkout, on the host
    network: SessionNetwork = SessionNetwork.NONE
    limits: SessionLimits = SessionLimits()

    @property
    def run_dir(self) -> Path:
        return self.session_dir / "run"

    @property
    def socket(self) -> Path:
        """Where Jupyter listens, on the host."""
        return self.run_dir / SOCKET_NAME

    @property
    def inner_socket(self) -> str:
        return f"{RUN_DIR}/{SOCKET_NAME}"


def bubblewrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxError(
            "bubblewrap (bwrap) is not installed: it is what keeps sessions apart from "
            "the host (apt-get install bubblewrap, or guix install bubblewrap)"
        )
    return found


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _python_binds() -> list[str]:
    """The Python that runs Jupyter in the local runtime: its prefixes, read-only."""
    args: list[str] = []
    seen: set[str] = set()
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        for path in (prefix, os.path.realpath(prefix)):
            if path in seen or any(path.startswith(d + "/") for d in SYSTEM_DIRS):
                continue
            seen.add(path)
            args += ["--ro-bind", path, path]
    return args


def _identity_files(session_dir: Path) -> list[str]:
    """/etc/passwd and /etc/group naming only the session's user."""
    etc = session_dir / "etc"
    etc.mkdir(exist_ok=True)
    user = f"binder:x:{SANDBOX_UID}:{SANDBOX_UID}:binder:{HOME}:/bin/sh\n"
    (etc / "passwd").write_text(user + "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (etc / "group").write_text(f"binder:x:{SANDBOX_UID}:\nnobody:x:65534:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost binder\n::1 localhost\n")
    args = []
    for name in ("passwd", "group", "hosts"):
        args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    return args


# Root of the sandbox's own user namespace: its capabilities reach that namespace only.
_ROOT = ("--uid", "0", "--gid", "0", "--cap-add", "ALL")


def _bwrap_base(box: Sandbox, user: Sequence[str], tools: Sequence[str]) -> list[str]:
    """What both runtimes' sandboxes start with: namespaces of their own, `user`, the
    host's programs (and `tools`, read-only), the session's identity, and a bounded
    /tmp with the home in it."""
    return [
        bubblewrap(),
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        # A session of its own: no ioctl(TIOCSTI) into a terminal of the service.
        "--new-session",
        *user,
        "--hostname",
        "binder",
        *_system_binds(),
        *tools,
        *_identity_files(box.session_dir),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(box.limits.disk),
        "--tmpfs",
        "/tmp",
        "--dir",
        HOME,
    ]


def bwrap_argv(
    box: Sandbox,
    inner: list[str],
    readonly: Iterable[tuple[Path, str]] = (),
    *,
    share_run: bool = True,
) -> list[str]:
    """The local runtime's sandbox around `inner`; without `share_run`, the folder of
    Jupyter's socket is not in it (a postBuild has no business there).

    No --die-with-parent: sessions outlive a crash of the service, which adopts them
    when it comes back (manager.adopt); the cgroup or the PID namespace ends them.
    """
    box.run_dir.mkdir(mode=0o700, exist_ok=True)
    outbound = box.network is SessionNetwork.OUTBOUND
    # Outbound: root of the sandbox's namespace (its capabilities over the sandbox's
    # namespaces only) for net_setup and for making the nested namespace, which then
    # runs the session as its user, with no capability.
    user = _ROOT if outbound else ("--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID))
    if outbound:
        inner = ["/bin/sh", "-c", net_setup(closed_routes()), "sh", *_drop_to_user(inner)]
    args = [
        *_bwrap_base(box, user, ()),
        # After /tmp's tmpfs, which would hide a Python installed under /tmp.
        *_python_binds(),
        "--bind",
        str(box.repo),
        WORK_DIR,
        *(["--bind", str(box.run_dir), RUN_DIR] if share_run else []),
    ]
    if box.network is SessionNetwork.OUTBOUND:
        args += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    for host_path, inside in readonly:
        args += ["--ro-bind", str(host_path), inside]
    return [*args, "--chdir", WORK_DIR, "--", *inner]


# -- the guix runtime: `guix shell --container` inside the sandbox -----------------------

# Where the session's files are, inside the sandbox, for `guix shell` (under /tmp, which
# a Guix from scripts/guix-chroot.sh also sees).
GUIX_STAGE = "/tmp/binder"
# Passed on to Guix from the service's environment: locales and certificates.
GUIX_ENV = ("GUIX_LOCPATH", "SSL_CERT_DIR", "SSL_CERT_FILE", "GIT_SSL_CAINFO")


def guix_stage(box: Sandbox, channels: bool, network: bool) -> GuixPaths:
    from binder_lite.launch.runtime import GuixPaths

    stage = Path(GUIX_STAGE)
    return GuixPaths(
        repo=stage / "notebooks",
        manifest=stage / "manifest.scm",
        channels=stage / "channels.scm" if channels else None,
        run_dir=stage / "run",
        network=network,
    )


def guix_program_inside() -> str:
    """The Guix to run in the sandbox, by a path the sandbox has."""
    program = guix_program()
    return os.path.realpath(shutil.which(program) or program)


def _guix_binds(program: str) -> list[str]:
    """The store, the daemon's socket, and the Guix installation `program` belongs to
    (scripts/guix-chroot.sh's wrapper names its chroot in a store-root file)."""
    args = ["--ro-bind-try", "/gnu/store", "/gnu/store", "--ro-bind-try", "/var/guix", "/var/guix"]
    home = Path(program).parent
    marker = home / "store-root"
    if marker.is_file():
        root = marker.read_text().strip()
        args += ["--ro-bind", str(home), str(home), "--ro-bind", root, root]
    return args


def guix_bwrap_argv(
    box: Sandbox,
    inner: list[str],
    manifest: Path,
    channels: Path | None,
    binds: Sequence[str] = (),
) -> list[str]:
    """The guix runtime's sandbox around `guix shell …` (`inner`): Guix evaluates the
    repository's manifest (Guile code) in here, seeing the store, the daemon's socket
    and the session's files, and nothing of the service.  Guix then makes its own
    container inside, so the sandbox's user is root there (of its namespace only).
    `binds`: more of bubblewrap's options (pluto.bwrap_binds: a Julia depot)."""
    box.run_dir.mkdir(mode=0o700, exist_ok=True)
    stage = GUIX_STAGE
    files = ["--ro-bind", str(manifest), f"{stage}/manifest.scm"]
    if channels is not None:
        files += ["--ro-bind", str(channels), f"{stage}/channels.scm"]
    args = [
        *_bwrap_base(box, _ROOT, _guix_binds(inner[0])),
        "--bind",
        str(box.repo),
        f"{stage}/notebooks",
        "--bind",
        str(box.run_dir),
        f"{stage}/run",
        *files,
        *binds,
    ]
    if not _needs_root(inner[0]):
        # A Guix of its own makes an unprivileged container (its own user namespace):
        # nothing in it holds a capability over the sandbox's network or mounts.
        inner = _drop_to_user(inner, stage)
    if box.network is SessionNetwork.OUTBOUND:
        args += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
        inner = ["/bin/sh", "-c", net_setup(closed_routes()), "sh", *inner]
    return [*args, "--chdir", stage, "--", *inner]


def _needs_root(program: str) -> bool:
    """scripts/guix-chroot.sh's Guix (development machines without Guix) enters its
    chroot with mount and chroot, which need the sandbox namespace's root."""
    return (Path(program).parent / "store-root").is_file()


def guix_environment(extra: dict[str, str]) -> dict[str, str]:
    env = session_environment(extra)
    env["PATH"] += ":/usr/sbin:/sbin:/run/current-system/profile/sbin"
    env.update({k: os.environ[k] for k in GUIX_ENV if k in os.environ})
    env["XDG_CACHE_HOME"] = f"{HOME}/.cache"
    return env


def _drop_to_user(inner: list[str], chdir: str = WORK_DIR) -> list[str]:
    """`inner` in a nested user namespace as the session's user, without capabilities
    (so it cannot undo net_setup's routes)."""
    return [
        bubblewrap(),
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        # --dev-bind: a plain --bind remounts everything nodev, and /dev/null with it
        # (R's start-up script writes to it); the devices are only the few that the
        # outer --dev made, and no new ones can be made in a user namespace.
        "--dev-bind",
        "/",
        "/",
        "--cap-drop",
        "ALL",
        "--chdir",
        chdir,
        "--",
        *inner,
    ]


def session_environment(extra: dict[str, str]) -> dict[str, str]:
    """The whole environment a session starts with: nothing of the service's own (its
    variables can name secrets)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/run/current-system/profile/bin:/usr/sbin:/sbin",
        "HOME": HOME,
        "USER": "binder",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "SHELL": "/bin/sh",
    }
    python_bin = os.path.dirname(sys.executable)
    env["PATH"] = f"{python_bin}:{env['PATH']}"
    env.update(extra)
    return env


# -- limits: cgroups -------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroups:
    """The cgroup directories holding one session (one in v2, one per controller in v1)."""

    dirs: tuple[Path, ...]

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def members(self) -> set[int]:
        pids: set[int] = set()
        for f in self.procs_files():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in f.read_text().split())
        return pids

    def oom_kills(self) -> int:
        """How often the memory limit made the kernel stop one of the session's
        processes (or, where the kernel does not count kills, hit the limit)."""
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError, ValueError):
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
            with contextlib.suppress(OSError, ValueError):
                return int((d / "memory.failcnt").read_text())
        return 0

    def tasks_refused(self) -> int:
        """How often the task limit refused a fork or a thread (pids.events' `max`)."""
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                for line in (d / "pids.events").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "max":
                        return int(value)
        return 0

    def remove(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()


def _v2_base() -> Path | None:
    """The service's own cgroup in the unified hierarchy, if it may make children there
    (systemd's Delegate=yes, or root)."""
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    try:
        line = next(
            x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::")
        )
    except (OSError, StopIteration):
        return None
    base = CGROUP_ROOT / line[3:].lstrip("/")
    return base if os.access(base, os.W_OK) else None


_v2_lock = threading.Lock()


def _v2_prepare(base: Path) -> Path:
    """Move the service into a leaf of its own, so the base may delegate memory and
    pids to session cgroups (cgroup v2 allows no processes in an inner node)."""
    with _v2_lock:
        sessions = base / "binder-lite-sessions"
        if sessions.is_dir():
            return sessions
        leaf = base / "binder-lite-service"
        leaf.mkdir(exist_ok=True)
        for pid in (base / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (leaf / "cgroup.procs").write_text(pid)
        (base / "cgroup.subtree_control").write_text("+memory +pids")
        sessions.mkdir(exist_ok=True)
        (sessions / "cgroup.subtree_control").write_text("+memory +pids")
        return sessions


def make_cgroups(session_id: str, limits: SessionLimits) -> Cgroups | None:
    """A cgroup for the session with its memory and task limits, or None when this
    host lets the service make none (then only per-process limits apply)."""
    try:
        base = _v2_base()
        if base is not None:
            d = _v2_prepare(base) / session_id
            d.mkdir(exist_ok=True)
            (d / "memory.max").write_text(str(limits.memory))
            (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(limits.processes))
            return Cgroups((d,))
        memory = CGROUP_ROOT / "memory" / "binder-lite" / session_id
        pids = CGROUP_ROOT / "pids" / "binder-lite" / session_id
        memory.mkdir(parents=True, exist_ok=True)
        pids.mkdir(parents=True, exist_ok=True)
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory))
        (pids / "pids.max").write_text(str(limits.processes))
        return Cgroups((memory, pids))
    except OSError as e:
        log.warning(
            "no cgroup for session %s (%s): memory and task limits are per process",
            session_id,
            e.strerror or e,
        )
        return None


def disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` take (without following links): what a session's
    checkout is measured by against its disk limit."""
    total = 0
    for root, dirs, files in os.walk(folder):
        for name in (*files, *dirs):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def limited(argv: list[str], cgroups: Cgroups | None, limits: SessionLimits) -> list[str]:
    """`argv`, started inside the session's cgroups and with its per-process limits:
    a shell joins the cgroups and execs, so that nothing runs outside them even briefly."""
    rlimits = [f"--fsize={limits.disk}", "--core=0"]
    if cgroups is None:
        # Without a cgroup, memory is bounded per process; tasks are not (RLIMIT_NPROC
        # counts every process of the service's user, not the session's).
        rlimits += [f"--data={limits.memory}"]
    prlimit = shutil.which("prlimit") or "prlimit"
    files = [str(f) for f in cgroups.procs_files()] if cgroups else []
    join = (
        'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; '
        'n=$((n-1)); done; exec "$@"'
    )
    return [prlimit, *rlimits, "--", "/bin/sh", "-c", join, "sh", str(len(files)), *files, *argv]


# -- outbound network -----------------------------------------------------------------


def outbound_helper() -> str | None:
    return shutil.which("slirp4netns")


def attach_network(box: Sandbox, process: Popen[bytes]) -> Popen[bytes]:
    """Give the sandbox of `process` (whose PID namespace's first process is found
    under it) outbound access through slirp4netns, which cannot reach the host's
    loopback.  Raises SandboxError when it cannot."""
    helper = outbound_helper()
    if helper is None:
        raise SandboxError("slirp4netns is not installed: sessions get no network")
    child = _sandbox_child(process.pid)
    if child is None:
        raise SandboxError("the sandbox ended before its network could be attached")
    ready_read, ready_write = os.pipe()
    log = box.session_dir / "slirp4netns.log"
    with open(log, "wb") as errors:
        slirp = spawn(
            [
                helper,
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                f"--ready-fd={ready_write}",
                str(child),
                "tap0",
            ],
            stdout=errors,
            stderr=errors,
            new_session=True,
            pass_fds=(ready_write,),
        )
    os.close(ready_write)
    try:
        ready = _wait_readable(ready_read, SLIRP_READY_SECONDS)
    finally:
        os.close(ready_read)
    if not ready:
        slirp.kill()
        slirp.wait()
        tail = log.read_text(errors="replace").strip().splitlines()[-2:]
        raise SandboxError("slirp4netns did not start: " + (" / ".join(tail) or "no output"))
    return slirp


SLIRP_READY_SECONDS = 10.0


def _wait_readable(fd: int, timeout: float) -> bool:
    """Whether slirp4netns wrote its ready byte on `fd` within `timeout`."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready) and os.read(fd, 1) == b"1"


def _sandbox_child(pid: int, timeout: float = 5.0) -> int | None:
    """The first process inside the sandbox that `pid` (bwrap, or guix) starts: the
    first descendant in another network namespace."""
    deadline = time.monotonic() + timeout
    own = _ns(pid, "net")
    while time.monotonic() < deadline:
        for child in descendants(pid):
            ns = _ns(child, "net")
            if ns and ns != own:
                return child
        time.sleep(0.01)
    return None


# -- processes ------------------------------------------------------------------------


def _ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _parents() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    children = _parents()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _in_namespaces(namespaces: set[str]) -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _ns(int(entry.name), "pid") in namespaces:
            yield int(entry.name)


def _namespace_inits(pid: int) -> list[int]:
    """The first process of each PID namespace under `pid` (the last of its NSpid
    values, its PID in its own namespace, is 1), other than ours."""
    own = _ns(os.getpid(), "pid")
    inits = []
    for child in descendants(pid):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        lines = status.splitlines()
        nspid = next((x.split()[1:] for x in lines if x.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1" and _ns(child, "pid") != own:
            inits.append(child)
    return inits


HANDLE_FORMAT = 2  # 1 named processes by bare PIDs: never trusted (see `Handle.load`)


@dataclass(frozen=True)
class Handle:
    """How to find every process of a running session, also after a restart of the
    service: its first process, its cgroups, the first process of each PID namespace
    it made, and its network helper.

    Each process is a `ProcessId`, and only one that is still current counts: after a
    reboot or once a PID is reused, the number names someone else's process.  A PID
    namespace is named by its first process, not by its inode number (which the
    kernel hands out again): the namespace ends with that process."""

    process: ProcessId
    cgroups: tuple[str, ...] = ()
    namespaces: tuple[ProcessId, ...] = ()
    helpers: tuple[ProcessId, ...] = ()  # slirp4netns

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "format": HANDLE_FORMAT,
                    "process": self.process.to_json(),
                    "cgroups": self.cgroups,
                    "namespaces": [p.to_json() for p in self.namespaces],
                    "helpers": [p.to_json() for p in self.helpers],
                }
            )
        )

    @staticmethod
    def load(path: Path) -> Handle | None:
        """The handle saved at `path`; None when there is none, or it is of an older
        format (bare PIDs, which name nothing we can trust)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != HANDLE_FORMAT:
            return None
        process = ProcessId.from_json(data.get("process"))
        cgroups = data.get("cgroups")
        if process is None or not isinstance(cgroups, list):
            return None
        return Handle(
            process,
            tuple(str(d) for d in cgroups),
            _process_ids(data.get("namespaces")),
            _process_ids(data.get("helpers")),
        )

    def with_namespaces(self) -> Handle:
        """Note the PID namespaces the session's processes are in now (bwrap makes
        its namespace a moment after it starts)."""
        if not self.process.is_current():
            return self
        inits = (ProcessId.of(pid) for pid in _namespace_inits(self.process.pid))
        found = tuple(sorted({p for p in inits if p is not None}, key=lambda p: p.pid))
        return dataclasses.replace(self, namespaces=found)

    def processes(self) -> set[ProcessId]:
        """The session's processes that still run (zombies only wait to be reaped),
        each named as it is now, so that a signal reaches that very process."""
        pids: set[int] = set()
        if self.cgroups:
            pids |= Cgroups(tuple(Path(d) for d in self.cgroups)).members()
        if self.process.is_current():
            pids.add(self.process.pid)
            pids.update(descendants(self.process.pid))
        spaces = {ns for p in self.namespaces if p.is_current() and (ns := _ns(p.pid, "pid"))}
        if spaces:
            pids.update(_in_namespaces(spaces))
        pids.discard(os.getpid())
        found = (ProcessId.of(pid) for pid in pids)
        return {p for p in found if p is not None and p.alive()}

    def members(self) -> set[int]:
        """The PIDs of `processes()`."""
        return {p.pid for p in self.processes()}

    def alive(self) -> bool:
        return bool(self.processes())


def _process_ids(data: object) -> tuple[ProcessId, ...]:
    items = data if isinstance(data, list) else []
    return tuple(p for p in map(ProcessId.from_json, items) if p is not None)


# -- talking to the session's Jupyter -------------------------------------------------


def connect_unix(path: Path, timeout: float | None = None) -> socket.socket:
    """A connected socket to the Unix socket at `path`.

    The session can write the directory its socket is in: it could put a symlink there
    (to another session's socket, or anything else the service may reach).  So the
    last component is opened without following links, checked to be a socket, and
    connected through /proc/self/fd, which also lifts the 107-byte limit of socket
    addresses (tests' temporary directories are long)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError as e:
        raise ConnectionRefusedError(e.errno, f"{path}: {e.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConnectionRefusedError(f"{path} is not a socket")
        sock.settimeout(timeout)
        sock.connect(f"/proc/self/fd/{fd}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(fd)
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        # Jupyter serves only local host names: the Host it is sent is 127.0.0.1.
        super().__init__("127.0.0.1", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, self.timeout)


def jupyter_status(
    path: Path, base_url: str, token: str, timeout: float = 5.0
) -> dict[str, Any] | None:
    """Jupyter's /api/status through its Unix socket, or None when it does not answer."""
    connection = _UnixHTTPConnection(path, timeout)
    try:
        connection.request(
            "GET", f"{base_url}api/status", headers={"Authorization": f"token {token}"}
        )
        response = connection.getresponse()
        data = json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return data if isinstance(data, dict) else None


class Forwarder:
    """127.0.0.1:PORT → the session's socket, for the launcher, whose user opens the
    notebook in a browser on this machine (the web service's front does this itself)."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="forward").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = connect_unix(self.path)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._open:
                s.close()
            self._open.clear()
