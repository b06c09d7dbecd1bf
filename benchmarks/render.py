"""Render speed against Guix's own lowering, and CLI start-up, from one run.

    .venv/bin/python benchmarks/render.py [SITE]

Goals (issue #2): `binder-lite render` takes at most 5% of `guix system image -d`
on the same site; `binder-lite --version` starts in under 150 ms.  Every number is
measured here, in this run; nothing is compared with a stored figure.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wall(argv: Sequence[str | os.PathLike[str]], runs: int) -> float:
    """Median wall time of `argv` over `runs` runs, in seconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "examples/genenetwork.yaml"
    sys.path.insert(0, str(ROOT / "src"))
    from binder_lite.guix import ImageCommand, guix_program
    from binder_lite.render import image_config_name
    from binder_lite.site import load_site

    loaded = load_site(site)
    image_type = loaded.images[0].type
    binder_lite = BIN / "binder-lite"
    with tempfile.TemporaryDirectory() as out:
        render_s = wall([binder_lite, "render", site, "-o", out], runs=5)
        config = Path(out) / image_config_name(loaded, image_type)
        command = ImageCommand(loaded, image_type, config, grafts=False)
        os.environ.setdefault("BINDER_LITE_GUIX", guix_program())
        guix_s = wall(command.argv(derivation=True), runs=3)
    python_s = wall([sys.executable, "-c", "pass"], runs=10)
    startup_s = wall([binder_lite, "--version"], runs=10)

    print(f"site: {site} ({image_type})")
    print(f"binder-lite render:        {render_s * 1000:8.0f} ms")
    print(f"guix system image -d:      {guix_s * 1000:8.0f} ms")
    print(f"ratio render / guix:       {render_s / guix_s:8.1%}   (goal <= 5%)")
    print(f"python -c pass:            {python_s * 1000:8.0f} ms")
    print(f"binder-lite --version:     {startup_s * 1000:8.0f} ms   (goal < 150 ms)")
    print(f"start-up over bare Python: {startup_s / python_s:8.2f}x")


if __name__ == "__main__":
    main()
