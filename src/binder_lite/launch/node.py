"""A Slurm session's compute-node side: `python -m binder_lite.launch.node SESSION_DIR`,
the whole of a session's batch job (launch/slurm.py submits it).

The service has fetched the repository already (its policy and bounds apply there, on
the service's machine); the job starts the same sandboxed session `launch()` starts
locally, in the checkout the service made (in the shared state directory, moved into
the job's folder) or, if that is not there at the commit the service resolved, in a
clone of the service's mirror; with the manifest the service made, whose generated
package names its Guix has checked (session.Prepared).  A sandboxed Jupyter listens on
a Unix socket on the node; the job relays TCP on the node's address (NodeAddr, as
Slurm knows it) to it.

The relay is on the cluster network, where other users of the cluster can connect:
it reads each connection's first request head and passes the connection on only when
that head carries the session's token (`Authorization: token …`, as the front sends
on every request); anything else gets a 403 and is closed.  The bytes are not
encrypted: the cluster network is trusted as far as reading goes (see docs/scaling.md).

The job tells the service where it listens in `node.json` in the session's folder
(0600, the service's user; written whole, then renamed), signed with HMAC-SHA256
under a secret only the service's spec file held: a report the service did not ask
for is refused.  The spec file is removed once read.  On SIGTERM (scancel, a time
limit) the session is stopped with everything it started.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from binder_lite.errors import CommandError, LaunchError, ToolNotFoundError
from binder_lite.launch import sandbox
from binder_lite.launch.session import Event, Fetch, Isolation, Prepared, Session, launch
from binder_lite.run import run
from binder_lite.site.model import Runtime, SessionLimits, SessionNetwork

log = logging.getLogger(__name__)

SPEC_FILE = "node-spec.json"
REPORT_FILE = "node.json"
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 10.0


@dataclass(frozen=True)
class Spec:
    """What the service asks of the job (written by launch/slurm.py)."""

    session_id: str
    source: str  # the service's mirror of the repository
    commit: str
    open_path: str | None
    base_url: str
    runtime: Runtime
    sandboxed: bool
    network: SessionNetwork
    limits: SessionLimits
    secret: str  # signs the report
    manifest: str = ""  # the service's, from the same commit (session.Prepared)

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "source": self.source,
            "commit": self.commit,
            "open_path": self.open_path,
            "base_url": self.base_url,
            "runtime": str(self.runtime),
            "sandboxed": self.sandboxed,
            "network": str(self.network),
            "limits": [self.limits.memory, self.limits.processes, self.limits.disk],
            "secret": self.secret,
            "manifest": self.manifest,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Spec:
        limits = data["limits"]
        if not isinstance(limits, list) or len(limits) != 3:
            raise ValueError("limits: expected [memory, processes, disk]")
        memory, processes, disk = (int(n) for n in limits)
        return cls(
            session_id=str(data["session_id"]),
            source=str(data["source"]),
            commit=str(data["commit"]),
            open_path=str(data["open_path"]) if data.get("open_path") else None,
            base_url=str(data["base_url"]),
            runtime=Runtime(str(data["runtime"])),
            sandboxed=bool(data["sandboxed"]),
            network=SessionNetwork(str(data["network"])),
            limits=SessionLimits(memory, processes, disk),
            secret=str(data["secret"]),
            manifest=str(data.get("manifest") or ""),
        )


@dataclass(frozen=True)
class Report:
    """Where the job's session listens, as the job tells the service."""

    job_id: str
    host: str
    port: int
    token: str
    view: str
    work_dir: str
    node: str = ""  # the node's name in Slurm, for the launch page

    def payload(self) -> bytes:
        fields = (self.job_id, self.host, str(self.port), self.token, self.view, self.work_dir)
        return "\x00".join([*fields, self.node]).encode()

    def signed(self, secret: str) -> dict[str, object]:
        mac = hmac.new(secret.encode(), self.payload(), hashlib.sha256).hexdigest()
        return {**dataclasses.asdict(self), "mac": mac}

    @classmethod
    def verified(cls, data: object, secret: str) -> Report | None:
        """The report in `data` if its signature is the one `secret` makes; else None."""
        if not isinstance(data, dict):
            return None
        try:
            report = cls(
                str(data["job_id"]),
                str(data["host"]),
                int(data["port"]),
                str(data["token"]),
                str(data["view"]),
                str(data["work_dir"]),
                str(data["node"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        expected = report.signed(secret)["mac"]
        mac = data.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, str(expected)):
            return None
        return report


def write_private(path: Path, text: str) -> None:
    """`text` into `path`, 0600, whole (written aside, then renamed)."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


def node_address() -> str:
    """This node's address as Slurm knows it (NodeAddr), where the service reaches it."""
    name = os.environ.get("SLURMD_NODENAME", "")
    if not name:
        raise LaunchError("SLURMD_NODENAME is not set: this is not a Slurm job")
    try:
        out = run(["scontrol", "--oneliner", "show", "node", name], timeout=30)
    except (CommandError, ToolNotFoundError) as e:
        raise LaunchError(f"cannot ask Slurm for this node's address: {e}") from None
    found = re.search(r"\bNodeAddr=(\S+)", out)
    if found is None:
        raise LaunchError(f"Slurm names no address for node {name}")
    return socket.gethostbyname(found.group(1))


class Relay:
    """TCP on the node's address -> the session's Jupyter, for holders of its token."""

    def __init__(self, host: str, session: Session) -> None:
        self.session = session
        self._expected = f"token {session.token}".encode()
        self._listener = socket.create_server((host, 0))
        self.host, self.port = self._listener.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            head = _read_head(client)
            if head is None or not self._authorised(head):
                with contextlib.suppress(OSError):
                    client.sendall(FORBIDDEN)
                return
            upstream = stack.enter_context(self._connect())
            upstream.sendall(head)
            other = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            other.start()
            _pipe(client, upstream)
            other.join()

    def _authorised(self, head: bytes) -> bool:
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"authorization" and hmac.compare_digest(
                value.strip(), self._expected
            ):
                return True
        return False

    def _connect(self) -> socket.socket:
        if self.session.socket is not None:
            return sandbox.connect_unix(self.session.socket)
        assert self.session.port is not None
        return socket.create_connection(("127.0.0.1", self.session.port))

    def close(self) -> None:
        self._listener.close()


FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _read_head(client: socket.socket) -> bytes | None:
    """The first request head (bounded in size and time), or None."""
    client.settimeout(HEAD_TIMEOUT)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = client.recv(4096)
            if not piece or len(data) + len(piece) > MAX_HEAD:
                return None
            data += piece
    except OSError:
        return None
    client.settimeout(None)
    return data


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def serve(session_dir: Path) -> int:
    """Run the session the spec in `session_dir` asks for, until it ends or is stopped."""
    spec_file = session_dir / SPEC_FILE
    spec = Spec.from_json(json.loads(spec_file.read_text(encoding="utf-8")))
    spec_file.unlink()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    def report(event: Event) -> None:
        _say(f"{event.phase}: {event.message}")

    # Slurm names the node's address while Jupyter starts, rather than after it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="address") as pool:
        address = pool.submit(node_address)
        session = _launch(spec, session_dir, stopping, report)
        try:
            relay = Relay(address.result(), session)
        except (LaunchError, OSError):
            session.stop(grace=5.0)
            raise
    try:
        view = session.url[len(session.base_url) :].split("?")[0]
        found = Report(
            os.environ.get("SLURM_JOB_ID", ""),
            relay.host,
            relay.port,
            session.token,
            view,
            str(session.work_dir),
            os.environ.get("SLURMD_NODENAME", ""),
        )
        write_private(session_dir / REPORT_FILE, json.dumps(found.signed(spec.secret)))
        _say(f"ready: relaying {found.host}:{found.port}")
        while not stopping.wait(1.0) and session.alive():
            pass
    finally:
        relay.close()
        session.stop(grace=5.0)
    return 0


def _say(line: str) -> None:
    """A line of the job's log (Slurm's --output), timed to the millisecond: where a
    slow start spent its time is read from it."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    print(f"{stamp}.{int(now % 1 * 1000):03d} {line}", flush=True)  # noqa: T201


def _launch(
    spec: Spec, session_dir: Path, stopping: threading.Event, report: Callable[[Event], None]
) -> Session:
    """The same sandboxed session `launch()` starts locally, from the service's mirror."""
    return launch(
        spec.source,
        spec.commit,
        runtime_kind=spec.runtime,
        open_path=spec.open_path,
        base_url=spec.base_url,
        cache_dir=session_dir / "node-cache",
        session_dir=session_dir / "node",
        on_event=lambda e: report(e) if "token=" not in e.message else None,
        isolation=Isolation(spec.sandboxed, spec.network, spec.limits, forward=False),
        fetch=Fetch(cancel=stopping),
        # What the service prepared (launch/slurm.py), at the same paths here.
        prepared=Prepared(session_dir / "repo", spec.manifest),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m binder_lite.launch.node SESSION_DIR", file=sys.stderr)  # noqa: T201
        return 2
    try:
        return serve(Path(argv[0]))
    except (LaunchError, OSError) as e:
        print(f"failed: {e}", file=sys.stderr)  # noqa: T201
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
