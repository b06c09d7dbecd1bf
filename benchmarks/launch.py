"""The launcher's time-to-ready against `jupyter notebook` started by hand, one run.

    .venv/bin/python benchmarks/launch.py [RUNS]

Both serve the same checkout with the same Jupyter (local runtime); "ready" is the
first 200 from /api/status with the token.  The launcher runs Jupyter in its sandbox
(bubblewrap, a cgroup, slirp4netns for outbound network: the defaults), and once more
unsandboxed for comparison.  Goals (issues #3, #8): sandboxed launcher ≤ 1.3× by hand;
a warm relaunch of the same commit adds under 0.3 s.
"""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from launchkit import make_repo  # noqa: E402

from binder_lite.launch import launch  # noqa: E402
from binder_lite.launch.runtime import ServerSpec, local_argv  # noqa: E402
from binder_lite.launch.session import Isolation, free_port  # noqa: E402
from binder_lite.site.model import Runtime  # noqa: E402


def by_hand(repo: Path, work: Path) -> float:
    """`jupyter notebook` on the checkout, as a person would start it."""
    port, token = free_port(), secrets.token_hex(24)
    spec = ServerSpec(port=port, base_url="/", kernel="python3", root_dir=str(repo))
    env = {
        **os.environ,
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_DIR": str(work / "cfg"),
        "JUPYTER_RUNTIME_DIR": str(work / "rt"),
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        local_argv(spec),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def launcher(repo: Path, cache: Path, sandboxed: bool = True) -> float:
    started = time.perf_counter()
    session = launch(
        str(repo),
        runtime_kind=Runtime.LOCAL,
        cache_dir=cache,
        isolation=Isolation(sandboxed=sandboxed),
    )
    elapsed = time.perf_counter() - started
    session.stop()
    return elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = make_repo(work / "repo", {"requirements.txt": "numpy\n"})
        launcher(repo, work / "warmup")  # first imports and compiled caches, for both
        cold = [launcher(repo, work / f"cold-{i}") for i in range(runs)]
        warm = [launcher(repo, work / "cold-0") for _ in range(runs)]
        bare = [launcher(repo, work / "cold-0", sandboxed=False) for _ in range(runs)]
        hand = [by_hand(repo, work) for _ in range(runs)]
    cold_s, warm_s, bare_s, hand_s = map(statistics.median, (cold, warm, bare, hand))
    print(f"runs: {runs} each, medians")
    print(f"jupyter notebook by hand:      {hand_s:6.2f} s")
    print(f"launcher, warm, no sandbox:    {bare_s:6.2f} s   ({bare_s / hand_s:.2f}x by hand)")
    print(f"launcher, cold cache:          {cold_s:6.2f} s   ({cold_s / hand_s:.2f}x by hand)")
    print(
        f"launcher, warm, sandboxed:     {warm_s:6.2f} s   ({warm_s / hand_s:.2f}x by hand;"
        " goal <= 1.3x)"
    )
    print(f"warm relaunch over by hand:    {warm_s - hand_s:+6.2f} s   (goal < 0.3 s)")


if __name__ == "__main__":
    main()
