"""Time-to-ready through Slurm against the local runtime, on the same machine.

    .venv/bin/python benchmarks/slurm.py [N]

Starts a test cluster (tests/slurmkit.py: munged, slurmctld, two slurmd in network
namespaces) and two `binder-lite serve`, one with `--runtime local` and one with
`--runtime slurm` (node_runtime local, so that both start the same sandboxed Jupyter),
then launches the same repository N times on each (one session at a time, each
stopped before the next) and prints the median time from the launch request to the
ready event, and their ratio (goal: Slurm ≤ 1.5× local, the scheduler's latency
included).  Both are measured in the same run, so the ratio does not depend on how
busy the machine was on another day.  Needs root and Debian's slurm-wlm and munge.
"""

from __future__ import annotations

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


def time_to_ready(server: Server, repo: Path, n: int) -> list[float]:
    client = Client(server.url)
    escaped = urllib.parse.quote(f"file://{repo}", safe="")
    times = []
    for _ in range(n):
        started = time.perf_counter()
        events = client.events(f"/build/git/{escaped}/HEAD")
        times.append(time.perf_counter() - started)
        assert events[-1]["phase"] == "ready", events[-1]
        sid = str(events[-1]["url"]).rstrip("/").rsplit("/", 1)[1]
        assert client.post(f"/sessions/{sid}/stop").status == 303
    return times


def main(n: int) -> int:
    why = slurmkit.available()
    if why is not None:
        print(f"cannot run: {why}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cluster").mkdir()
        results = measure(Path(tmp), n)
    local, slurm = (statistics.median(results[r]) for r in ("local", "slurm"))
    print(f"time to ready, median of {n}: local {local:.2f} s, slurm {slurm:.2f} s")
    ratio = slurm / local
    print(f"slurm / local: {ratio:.2f}x (goal <= {GOAL}x): {'met' if ratio <= GOAL else 'NOT met'}")
    return 0


def measure(tmp: Path, n: int) -> dict[str, list[float]]:
    with slurmkit.cluster(tmp / "cluster") as cluster:
        os.environ.update(cluster.env)
        repo = make_repo(tmp / "repo")
        results = {}
        for runtime in ("local", "slurm"):
            folder = tmp / runtime
            folder.mkdir()
            site = folder / "site.yaml"
            site.write_text(SITE.format(partition=cluster.partition))
            args = ("--allow-local-repos", "--runtime", runtime)
            server = Server(site, folder / "state", args).start()
            try:
                time_to_ready(server, repo, 1)  # warm: the repository's mirror, caches
                results[runtime] = time_to_ready(server, repo, n)
            finally:
                server.stop()
        return results


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
