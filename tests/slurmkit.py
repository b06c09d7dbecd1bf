"""A real Slurm for tests, from Debian's packages: munged, slurmctld and two slurmd as
two compute nodes, each in a network namespace of its own with its own address on a
bridge, so that a session really is reached over a network.

Layout (names carry a random tag, so that two runs never clash):

    host (the tests, binder-lite serve, munged, slurmctld)  10.A.B.1  bridge blsTAGbr
      ├─ netns blsTAGn1: slurmd -N blsTAGn1                  10.A.B.11 veth
      └─ netns blsTAGn2: slurmd -N blsTAGn2                  10.A.B.12 veth

Slurm resolves names with AI_ADDRCONFIG, which finds nothing in a loopback-only
namespace; a namespace with an address on a veth resolves as a host would.  slurmd is
entered into its namespace with `nsenter --net` only (not `ip netns exec`, which also
remounts /sys and would hide the cgroup tree the sandbox needs).  Each node has one
CPU: two one-CPU sessions fill the cluster, and a third waits in the queue.

Teardown cancels every job, stops the daemons, SIGKILLs whatever is left in the
namespaces (job steps are daemons of their own) and removes namespaces and links.  A
run that was killed before its teardown leaves its record in REGISTRY, no longer
locked: the next run tears that cluster down first (`sweep`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from binder_lite.net import free_port
from binder_lite.procs import ProcessId

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "nsenter")
# Each running test cluster: <tag>.json (what to tear down) and <tag>.lock, held by the
# run that made it for as long as it runs.
REGISTRY = Path("/run/binder-lite-slurmkit")


def available() -> str | None:
    """Why Slurm cannot run here, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/setup installs slurm-wlm munge)"
    if os.geteuid() != 0:
        return "needs root (network namespaces, slurmd)"
    return None


@dataclass
class Node:
    name: str
    address: str
    netns: str
    host_link: str


@dataclass
class Cluster:
    """A running test cluster; `env` is what a client (sbatch, binder-lite) needs."""

    tag: str
    root: Path
    bridge: str
    controller: str  # the bridge's address, where slurmctld listens
    nodes: list[Node]
    partition: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        return {
            "tag": self.tag,
            "root": str(self.root),
            "bridge": self.bridge,
            "nodes": [[n.name, n.address, n.netns, n.host_link] for n in self.nodes],
        }

    @classmethod
    def from_record(cls, data: dict[str, object]) -> Cluster:
        nodes = [Node(*n) for n in data["nodes"]]  # type: ignore[attr-defined]
        tag = str(data["tag"])
        return cls(tag, Path(str(data["root"])), str(data["bridge"]), "", nodes, f"{tag}p")

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30.0) -> str:
        done = subprocess.run(
            argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> dict[str, str]:
        """Job id -> state of every job squeue shows (pending and running)."""
        out = self.run("squeue", "--noheader", "--format=%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields (also of a finished job, for MinJobAge)."""
        out = self.run("scontrol", "--oneliner", "show", "job", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def log(self, name: str = "slurmctld") -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _free_subnet() -> str:
    """`10.A.B` no interface of this machine is on."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(200):
        prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 254)}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet")


# slurmctld starts a batch job only in a scheduling pass, run on its once-a-second tick
# when a job was submitted or ended, and by default not within batch_sched_delay (3 s)
# of the last pass: 0 lets the next tick start it (the README recommends the same to
# sites with interactive sessions); the scheduler's other settings are its defaults.
SLURM_CONF = """\
ClusterName={tag}
SlurmctldHost=localhost({controller})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
MinJobAge=600
KillWait=5
SchedulerParameters=batch_sched_delay=0
{nodes}
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def cluster(root: Path, timeout: float = 60.0) -> Iterator[Cluster]:
    tag = "bls" + secrets.token_hex(2)
    prefix = _free_subnet()
    made = Cluster(
        tag=tag,
        root=root,
        bridge=f"{tag}br",
        controller=f"{prefix}.1",
        nodes=[
            Node(f"{tag}n{i}", f"{prefix}.{10 + i}", f"{tag}n{i}", f"{tag}h{i}") for i in (1, 2)
        ],
        partition=f"{tag}p",
    )
    sweep()
    REGISTRY.mkdir(mode=0o700, exist_ok=True)
    with open(REGISTRY / f"{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (REGISTRY / f"{tag}.json").write_text(json.dumps(made.record()))
        try:
            _network(made)
            _start(made, timeout)
            yield made
        finally:
            _teardown(made)
            (REGISTRY / f"{tag}.json").unlink(missing_ok=True)
            (REGISTRY / f"{tag}.lock").unlink(missing_ok=True)


def sweep() -> None:
    """Tear down the clusters of runs that ended without their teardown (killed): those
    whose lock nobody holds.  A running cluster's lock is held, and it is left alone."""
    if not REGISTRY.is_dir():
        return
    for record in REGISTRY.glob("*.json"):
        lock_path = record.with_suffix(".lock")
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its run is alive
            with contextlib.suppress(OSError, ValueError, KeyError):
                _teardown(Cluster.from_record(json.loads(record.read_text())))
            record.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)


def _network(c: Cluster) -> None:
    _sh("ip", "link", "add", c.bridge, "type", "bridge")
    _sh("ip", "addr", "add", f"{c.controller}/24", "dev", c.bridge)
    _sh("ip", "link", "set", c.bridge, "up")
    for node in c.nodes:
        inner = f"{node.host_link}x"
        _sh("ip", "netns", "add", node.netns)
        _sh("ip", "link", "add", node.host_link, "type", "veth", "peer", "name", inner)
        _sh("ip", "link", "set", inner, "netns", node.netns)
        _sh("ip", "link", "set", node.host_link, "master", c.bridge)
        _sh("ip", "link", "set", node.host_link, "up")
        inside = ("nsenter", f"--net=/run/netns/{node.netns}")
        _sh(*inside, "ip", "addr", "add", f"{node.address}/24", "dev", inner)
        _sh(*inside, "ip", "link", "set", inner, "up")
        _sh(*inside, "ip", "link", "set", "lo", "up")


def _start(c: Cluster, timeout: float) -> None:
    root = c.root
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    for d in ("state", *(f"spool-{n.name}" for n in c.nodes)):
        (root / d).mkdir(mode=0o700)
    nodes = "\n".join(
        f"NodeName={n.name} NodeAddr={n.address} CPUs=1 RealMemory=4000 State=UNKNOWN"
        for n in c.nodes
    )
    c.conf.write_text(
        SLURM_CONF.format(
            tag=c.tag,
            controller=c.controller,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            root=root,
            nodes=nodes,
            partition=c.partition,
        )
    )
    env = {**os.environ, **c.env}

    def spawn(*argv: str, log: str) -> None:
        with open(root / log, "ab") as out:
            c.processes.append(
                subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            )

    spawn(
        "munged",
        "--foreground",
        "--force",
        f"--key-file={key}",
        f"--socket={root}/munge.socket",
        f"--pid-file={root}/munged.pid",
        f"--log-file={root}/munged.log",
        f"--seed-file={root}/munged.seed",
        log="munged.out",
    )
    _until(lambda: (root / "munge.socket").exists(), timeout, "munged's socket", c)
    spawn("slurmctld", "-D", "-f", str(c.conf), log="slurmctld.out")
    _until(lambda: _answers(c), timeout, "slurmctld", c)
    for node in c.nodes:
        spawn(
            "nsenter",
            f"--net=/run/netns/{node.netns}",
            "slurmd",
            "-D",
            "-N",
            node.name,
            "-f",
            str(c.conf),
            log=f"{node.name}.out",
        )
    _until(lambda: _idle(c), timeout, "both nodes idle", c)


def _answers(c: Cluster) -> bool:
    try:
        c.run("sinfo", "--noheader", timeout=5)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def _idle(c: Cluster) -> bool:
    out = c.run("sinfo", "--noheader", "--Node", "--format=%N %t")
    states = dict(line.split() for line in out.splitlines() if line.strip())
    return all(states.get(n.name) == "idle" for n in c.nodes)


def _until(condition: object, timeout: float, what: str, c: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in c.processes:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args}: exited {p.returncode}\n{c.log()}")
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"waited {timeout} s for {what}\n{c.log()}")


def _teardown(c: Cluster) -> None:
    with contextlib.suppress(Exception):
        c.run("scancel", "--full", f"--partition={c.partition}", timeout=10)
        deadline = time.monotonic() + 20
        while c.jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
    for p in reversed(c.processes):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(c.processes):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    _stop_by_pid_files(c.root)
    for node in c.nodes:
        _kill_namespace(node.netns)
        with contextlib.suppress(subprocess.SubprocessError):
            _sh("ip", "netns", "delete", node.netns)
        with contextlib.suppress(subprocess.SubprocessError):
            _sh("ip", "link", "delete", node.host_link)
    with contextlib.suppress(subprocess.SubprocessError):
        _sh("ip", "link", "delete", c.bridge)


def _stop_by_pid_files(root: Path) -> None:
    """The daemons of a cluster whose run is gone, found by their pid files and known
    by their command lines, which name files of the cluster's folder."""
    marker = os.fsencode(root) + b"/"
    for pid_file in root.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            named = ProcessId.of(pid)
            if named is not None and marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                named.terminate(grace=10)


def in_namespace(netns: str) -> list[ProcessId]:
    """The processes whose network namespace is `netns` (slurmstepd, job processes:
    they outlive slurmd)."""
    try:
        target = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        named = ProcessId.of(int(entry.name))
        try:
            inode = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue
        if named is not None and named.alive() and inode == target:
            found.append(named)
    return found


def _kill_namespace(netns: str) -> None:
    for _ in range(50):
        left = in_namespace(netns)
        if not left:
            return
        for process in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                process.signal(signal.SIGKILL)
        time.sleep(0.1)
