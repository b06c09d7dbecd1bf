"""Time-to-ready through Slurm against the local runtime, on the same machine.

    .venv/bin/python benchmarks/slurm.py [N]

Starts a test cluster (tests/slurmkit.py: munged, slurmctld, two slurmd in network
namespaces) and two `binder-lite serve`, one with `--runtime local` and one with
`--runtime slurm` (node_runtime local, so that both start the same sandboxed Jupyter),
then launches the same repository N times on each (one session at a time, each
stopped before the next, the two services taking turns) and prints the median time
from the launch request to the ready event, its spread, and the ratio of the medians
(goal: Slurm ≤ 1.5× local, the scheduler's latency included).  Both are measured in
the same run, in turns, so the ratio does not depend on how busy the machine was on
another day or in another minute.  The cluster's slurm.conf is tests/slurmkit.py's:
its scheduler keeps Slurm's defaults but for SchedulerParameters=batch_sched_delay=0
(see the README's Slurm section).  Needs root and Debian's slurm-wlm and munge.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import slurmkit  # noqa: E402
from launchkit import make_repo  # noqa: E402
from webkit import Client, Server  # noqa: E402

GOAL = 1.5
SITE = """\
version: 1
site: {{name: Bench, slug: bench}}
binder:
  max_sessions: 4
  max_sessions_per_user: 4
  session_network: none
  session_limits: {{memory: 512MiB}}
  slurm: {{partition: {partition}, node_runtime: local}}
"""


def time_to_ready(client: Client, repo: Path) -> float:
    """One launch, from the request to the ready event; the session is stopped after."""
    escaped = urllib.parse.quote(f"file://{repo}", safe="")
    started = time.perf_counter()
    events = client.events(f"/build/git/{escaped}/HEAD")
    took = time.perf_counter() - started
    assert events[-1]["phase"] == "ready", events[-1]
    sid = str(events[-1]["url"]).rstrip("/").rsplit("/", 1)[1]
    assert client.post(f"/sessions/{sid}/stop").status == 303
    return took


def main(n: int) -> int:
    why = slurmkit.available()
    if why is not None:
        print(f"cannot run: {why}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cluster").mkdir()
        results = measure(Path(tmp), n)
    for runtime, times in results.items():
        spread = f"{min(times):.2f} to {max(times):.2f} s"
        print(f"{runtime}: median {statistics.median(times):.2f} s of {n} ({spread})")
    local, slurm = (statistics.median(results[r]) for r in RUNTIMES)
    # What Slurm adds, round by round: the part of the ratio that is Slurm's own.
    rounds = zip(results["local"], results["slurm"], strict=True)
    added = statistics.median(there - here for here, there in rounds)
    print(f"slurm - local, per round: median {added:.2f} s")
    ratio = slurm / local
    print(f"slurm / local: {ratio:.2f}x (goal <= {GOAL}x): {'met' if ratio <= GOAL else 'NOT met'}")
    return 0


RUNTIMES = ("local", "slurm")


def measure(tmp: Path, n: int) -> dict[str, list[float]]:
    """Both services run at once and take turns, one launch each per round (each
    round in the other order), so that a busy moment of the machine weighs on both."""
    with slurmkit.cluster(tmp / "cluster") as cluster, contextlib.ExitStack() as stack:
        os.environ.update(cluster.env)
        repo = make_repo(tmp / "repo")
        clients = {}
        for runtime in RUNTIMES:
            folder = tmp / runtime
            folder.mkdir()
            site = folder / "site.yaml"
            site.write_text(SITE.format(partition=cluster.partition))
            args = ("--allow-local-repos", "--runtime", runtime)
            server = Server(site, folder / "state", args).start()
            stack.callback(server.stop)
            clients[runtime] = Client(server.url)
            time_to_ready(clients[runtime], repo)  # warm: the repository's mirror, caches
        results: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        for i in range(n):
            for runtime in RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]:
                results[runtime].append(time_to_ready(clients[runtime], repo))
        return results


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
