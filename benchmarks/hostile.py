"""Reading hostile files against ordinary files of the same size, from one run.

    .venv/bin/python benchmarks/hostile.py [RUNS]

The hostile inputs are the tests' own: near 1 MiB environment files made to make
regular expressions backtrack (tests/test_detect.py HOSTILE), and a YAML alias bomb
of 9**10 values (tests/test_site_load.py).  The tests check what comes out; this
measures how long it takes, against an ordinary file of the same kind and size (for
the alias bomb: the example site).  A regular expression that backtracks, or aliases
expanded, would show as a ratio in the thousands or a run that does not end.  Every
number is measured here, in this run; nothing is compared with a stored figure.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from test_detect import HOSTILE, files, outcome  # noqa: E402
from test_site_load import alias_bomb, problems_and_peak  # noqa: E402


def ordinary(name: str, size: int) -> str:
    """A file called `name` of about `size` characters, written as people write them."""
    if name == "requirements.txt":
        head, line = "numpy\npandas>=2\n", "# pinned below once the paper is out\n"
    elif name == "DESCRIPTION":
        head, line = "Package: lab\nImports: ggplot2, dplyr\nDescription:", " a few words\n"
    else:
        head, line = 'install.packages("ggplot2")\n', "# see the README for the data\n"
    return head + line * ((size - len(head)) // len(line))


def median_time(work: Callable[[Path], object], path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(label: str, work: Callable[[Path], object], hostile: Path, baseline: Path) -> None:
    """Print `work`'s time on `hostile` and on `baseline`, and their ratio."""
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    slow, base = median_time(work, hostile, runs), median_time(work, baseline, runs)
    print(f"{label:<28} {slow * 1000:8.1f} ms  ordinary {base * 1000:8.1f} ms  {slow / base:6.1f}x")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, text, _expected) in enumerate(HOSTILE):
            bad = files(Path(tmp) / f"hostile{n}", **{name: text})
            good = files(Path(tmp) / f"ordinary{n}", **{name: ordinary(name, len(text))})
            compare(f"{name} #{n}", outcome, bad, good)
        bomb, site = Path(tmp) / "bomb.yaml", ROOT / "examples/genenetwork.yaml"
        bomb.write_text(alias_bomb())
        compare("alias bomb / example site", problems_and_peak, bomb, site)


if __name__ == "__main__":
    main()
