"""VM and image-build timings, from one run.

    .venv/bin/python benchmarks/vm.py

1. Boot-to-SSH and the smoke suite's time for the stand-in image (tests/standin.py),
   booted by `binder-lite vm run` (accelerator chosen as users get it: auto), and how
   long `vm run --timeout 45` takes to give up on a guest that never starts SSH.
2. A no-op `binder-lite image build` (the image exists, the derivation is unchanged)
   against plain `guix system image -d` on the same site: goal ≤ 1.2×.  Guix cannot
   build images here, so the first build's build step is a stand-in (as in the tests);
   the timed no-op runs Guix for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

BIN = Path(sys.executable).parent
SITE = (ROOT / "tests/test_vm.py").read_text().split('SITE = """\\\n', 1)[1].split('"""', 1)[0]


def timed(
    argv: list[str | os.PathLike[str]], env: dict[str, str] | None = None
) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, env=env, check=True
    )
    return time.perf_counter() - started, proc.stdout + proc.stderr


def vm_times(work: Path) -> None:
    import standin

    from binder_lite.site import load_site

    key = work / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    site = work / "site.yaml"
    site.write_text(SITE.format(key=key.with_suffix(".pub").read_text().strip()))
    started = time.perf_counter()
    image = standin.build(load_site(site), work / "image", "secret")
    print(f"stand-in image (cached layers):  {time.perf_counter() - started:7.1f} s")
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    name = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        boot, output = timed([BIN / "binder-lite", "vm", "run", image, "--name", name])
        accel = re.search(r"accelerator (\w+)", output)
        print(
            f"vm run to SSH ({accel.group(1) if accel else '?'}):           {boot:7.1f} s"
            + ("   (includes a failed KVM attempt)" if "warning" in output else "")
        )
        smoke, _ = timed([BIN / "binder-lite", "smoke", name, "--site", site, "-i", key])
        print(f"smoke suite ({len(smoke_checks())} checks):          {smoke:7.1f} s")
    finally:
        subprocess.run([BIN / "binder-lite", "vm", "stop", name], capture_output=True)
    print(f"vm run giving up (no SSH, 45 s): {give_up_time(image, work):7.1f} s")


def smoke_checks() -> list[str]:
    from binder_lite.smoke import checks

    return [name for name in vars(checks) if name.startswith("test_")]


def give_up_time(image: Path, work: Path) -> float:
    """A guest whose init does not exist: `vm run` waits its --timeout, then stops it."""
    import standin

    broken = standin.without_init(image, work / "broken.img")
    argv: list[str | os.PathLike[str]] = [BIN / "binder-lite", "vm", "run", broken]
    started = time.perf_counter()
    subprocess.run([*argv, "--accel", "tcg", "--timeout", "45"], capture_output=True)
    return time.perf_counter() - started


def build_times(work: Path) -> None:
    from binder_lite.guix import ImageCommand, guix_program
    from binder_lite.site import load_site

    real = guix_program()
    fake = work / "fake-guix"
    fake.mkdir()
    store = work / "fake-root/gnu/store"
    store.mkdir(parents=True)
    (store / "00000000000000000000000000000000-image.qcow2").write_bytes(b"\0" * 4096)
    (fake / "store-root").write_text(str(work / "fake-root"))
    script = (ROOT / "tests/test_guix.py").read_text().split('FAKE_BUILD = """', 1)[1]
    (fake / "guix").write_text(script.split('"""', 1)[0].format(real=real))
    (fake / "guix").chmod(0o755)
    site_file = ROOT / "examples/demo.yaml"
    build = [
        BIN / "binder-lite",
        "image",
        "build",
        site_file,
        "--no-grafts",
        "-o",
        work / "images",
        "-w",
        work / "build",
    ]
    env = {**os.environ, "BINDER_LITE_GUIX": str(fake / "guix")}
    timed(build, env)  # the first build: copies the stand-in out, writes the metadata
    noop = min(timed(build, env)[0] for _ in range(3))
    site = load_site(site_file)
    config = work / "build/demo/demo-qcow2.scm"
    command = ImageCommand(site, site.images[0].type, config, grafts=False)
    plain = min(timed(command.argv(derivation=True))[0] for _ in range(3))
    print(f"guix system image -d:            {plain:7.2f} s")
    print(
        f"binder-lite image build (no-op): {noop:7.2f} s   ratio {noop / plain:.2f}x (goal <= 1.2x)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "vm").mkdir()
        (work / "build").mkdir()
        vm_times(work / "vm")
        build_times(work / "build")


if __name__ == "__main__":
    main()
