"""Sessions as Slurm jobs, the service's side (`binder.runtime: slurm`).

A launch is fetched and resolved by the service as always (`prepare`); then `submit`
writes the job's spec (node.py reads it) and its batch script into the session's
folder, which compute nodes see at the same path (a shared state directory), and
runs `sbatch`.  `wait_ready` follows the job with `scontrol show job` (accounting may
be off, so sacct is not used; Slurm keeps an ended job there for MinJobAge): queued
with Slurm's reason and the job's place in the queue, starting on its node, and then
ready once node.py's signed report names where the session listens and Jupyter
answers there (the report is looked for between Slurm's looks: it is the first to
know).  `cancel` is scancel; `ours` lists the service's jobs (by name) for
adoption after a restart.

The job's name is `binder-lite-<session id>`; its time limit is binder.max_age (or
binder.slurm.time_limit), in minutes rounded up; memory, CPUs and GPUs are Slurm's
to enforce (binder.slurm), the session's sandbox keeps its own limits inside.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from binder_lite.errors import CommandError, LaunchError, ToolNotFoundError
from binder_lite.launch.node import REPORT_FILE, SPEC_FILE, Report, Spec, write_private
from binder_lite.launch.session import Event, Phase
from binder_lite.run import run
from binder_lite.site.model import Slurm

JOB_PREFIX = "binder-lite-"
SCRIPT = "job.sh"
JOB_LOG = "job.log"
# Job states after which nothing of the job runs (squeue's long names).
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}
_FIELD = re.compile(r"(\w+)=(\S*)")
_SESSION = re.compile(rf"{JOB_PREFIX}([0-9a-f]{{16}})")


class SlurmError(LaunchError):
    """Slurm refused or failed; the message has Slurm's own words."""


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # PENDING, RUNNING, ..., or GONE when Slurm no longer knows it
    reason: str  # Slurm's Reason (None, Resources, Priority, TimeLimit, ...)
    node: str | None  # where it runs (BatchHost)

    @property
    def ended(self) -> bool:
        return self.state in ENDED or self.state == "GONE"

    def why(self) -> str:
        """In words, for the session's page: the state, and the reason when there is one."""
        reason = f" ({self.reason})" if self.reason not in ("", "None") else ""
        return f"{self.state}{reason}"


def _slurm(*argv: str, timeout: float = 30.0) -> str:
    """Run a Slurm client; a failure is a SlurmError with Slurm's own words."""
    try:
        return run(argv, timeout=timeout)
    except ToolNotFoundError:
        raise SlurmError(
            f"{argv[0]} not found: the Slurm runtime needs Slurm's client tools"
        ) from None
    except CommandError as e:
        raise SlurmError(f"{argv[0]}: {_words(e)}") from None


def job_time(slurm: Slurm, max_age: float) -> int:
    """The job's time limit in minutes: binder.slurm.time_limit, else max_age."""
    return slurm.time_limit or max(1, math.ceil(max_age / 60))


def sbatch_argv(
    slurm: Slurm, session_id: str, folder: Path, minutes: int, memory: int
) -> list[str]:
    """sbatch's command line for a session (memory: bytes, when binder.slurm has none)."""
    mebibytes = math.ceil((slurm.memory or memory) / 1024**2)
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={JOB_PREFIX}{session_id}",
        f"--output={folder / JOB_LOG}",
        f"--chdir={folder}",
        f"--time={minutes}",
        f"--mem={mebibytes}M",
        f"--cpus-per-task={slurm.cpus}",
        "--nodes=1",
        "--ntasks=1",
        "--no-requeue",  # a session is not restarted elsewhere: it ends, and says why
        # The service's environment (which holds no secret: secrets are files): NONE
        # would have slurmd load the login environment of the service's account, which
        # has no login shell.  The session's own environment is made afresh (sandbox.py).
        "--export=ALL",
    ]
    for option, value in (
        ("--partition", slurm.partition),
        ("--account", slurm.account),
        ("--qos", slurm.qos),
        ("--gres", slurm.gres),
    ):
        if value:
            argv.append(f"{option}={value}")
    return [*argv, *slurm.extra_args, str(folder / SCRIPT)]


def batch_script(folder: Path) -> str:
    """The job: this same Python and binder-lite, at the same paths on the node (the
    shared /gnu/store of a Guix cluster, or a shared installation)."""
    command = shlex.join([sys.executable, "-m", "binder_lite.launch.node", str(folder)])
    # The service's PATH, for git and bubblewrap, whatever the node's profile sets.
    path = shlex.quote(os.environ.get("PATH", os.defpath))
    lines = ["#!/bin/sh", "# a binder-lite session (launch/node.py)", f"export PATH={path}"]
    return "\n".join([*lines, f"exec {command}", ""])


@dataclass(frozen=True)
class Submitted:
    job_id: str
    secret: str


def submit(spec: Spec, slurm: Slurm, folder: Path, minutes: int, memory: int) -> Submitted:
    """Write the job's spec and script into `folder` and submit it; the job's id."""
    secret = secrets.token_hex(32)
    spec = dataclasses.replace(spec, secret=secret)
    write_private(folder / SPEC_FILE, json.dumps(spec.to_json()))
    (folder / REPORT_FILE).unlink(missing_ok=True)
    write_private(folder / SCRIPT, batch_script(folder))
    (folder / SCRIPT).chmod(0o700)
    try:
        out = _slurm(*sbatch_argv(slurm, spec.session_id, folder, minutes, memory))
    except SlurmError as e:
        raise SlurmError(f"Slurm refused the session's job: {e}") from None
    job_id = out.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
    return Submitted(job_id, secret)


def _words(e: CommandError) -> str:
    """Slurm's message, without sbatch's prefixes."""
    text = e.output.strip()
    lines = [re.sub(r"^\w+: error: ", "", line) for line in text.splitlines() if line.strip()]
    return "; ".join(lines[-2:]) or str(e)


def state(job_id: str) -> JobState:
    """The job as scontrol shows it (GONE once Slurm has forgotten it)."""
    try:
        out = _slurm("scontrol", "--oneliner", "show", "job", job_id)
    except SlurmError as e:
        if "Invalid job id" in str(e):
            return JobState(job_id, "GONE", "", None)
        raise
    fields = dict(_FIELD.findall(out))
    host = fields.get("BatchHost") or None
    return JobState(job_id, fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""), host)


def queue_position(job_id: str) -> tuple[int, int] | None:
    """The job's place among the pending jobs, in the order Slurm would start them."""
    out = _slurm("squeue", "--noheader", "--states=PENDING", "--sort=-p,i", "--format=%i")
    pending = out.split()
    return (pending.index(job_id) + 1, len(pending)) if job_id in pending else None


def cancel(job_id: str, wait: float = 20.0) -> JobState:
    """scancel the job, then wait (bounded) until nothing of it runs any more."""
    try:
        _slurm("scancel", job_id)
    except SlurmError as e:
        if "Invalid job id" not in str(e):
            raise
    deadline = time.monotonic() + wait
    while True:
        now = state(job_id)
        if now.ended or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def ours() -> dict[str, str]:
    """Session id -> job id of the service's jobs still in the queue (this user's)."""
    out = _slurm("squeue", "--noheader", "--me", "--format=%i %j")
    found = {}
    for line in out.splitlines():
        job_id, _, name = line.strip().partition(" ")
        if m := _SESSION.fullmatch(name.strip()):
            found[m.group(1)] = job_id
    return found


def read_report(folder: Path, secret: str) -> Report | None:
    """node.py's report, if it is there and signed with `secret`."""
    try:
        data = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Report.verified(data, secret)


def jupyter_status(host: str, port: int, base_url: str, token: str) -> dict[str, object] | None:
    """Jupyter's /api/status through the node's relay, or None when it does not answer."""
    request = urllib.request.Request(
        f"http://{host}:{port}{base_url}api/status",
        headers={"Authorization": f"token {token}", "Host": "localhost"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# The service looks for the job's report often: one failed open while it is not there
# (the shared state directory, as every node writes it).  Slurm it asks less and less
# often, up to once a second: each look is a request to slurmctld (scontrol, and squeue
# while the job waits), and it only says where the job is, which the report says first.
REPORT_POLL = 0.05
SLURM_POLL = (0.1, 1.0)


def wait_ready(
    submitted: Submitted,
    folder: Path,
    base_url: str,
    report: Callable[[Event], None],
    cancel_event: threading.Event,
    deadline: float,
) -> Report:
    """Follow the job until its session answers; its events say where it is.  Raises
    a SlurmError with Slurm's reason when the job ends first."""
    said: tuple[object, ...] = ()
    job = JobState(submitted.job_id, "PENDING", "", None)
    ask_at, interval = time.monotonic(), SLURM_POLL[0]
    while True:
        if cancel_event.is_set():
            raise LaunchError("stopped while the job was queued or starting")
        if time.monotonic() >= ask_at:
            job = state(submitted.job_id)
            said = _follow(job, folder, said, report)
            ask_at, interval = time.monotonic() + interval, min(interval * 1.5, SLURM_POLL[1])
        # A signed report is the job's own word that it runs: Slurm is not asked again.
        found = read_report(folder, submitted.secret)
        if found is not None and jupyter_status(found.host, found.port, base_url, found.token):
            if said[:1] != ("RUNNING",):
                report(Event(Phase.STARTING, f"starting on {found.node or found.host}"))
            return found
        if time.monotonic() > deadline:
            raise SlurmError(f"the Slurm job {submitted.job_id} was not ready in time: {job.why()}")
        time.sleep(REPORT_POLL)


def _follow(
    job: JobState, folder: Path, said: tuple[object, ...], report: Callable[[Event], None]
) -> tuple[object, ...]:
    """Say where the job is when that changed (what was said is returned); raise a
    SlurmError with Slurm's reason once it has ended."""
    if job.ended:
        raise SlurmError(f"the Slurm job {job.job_id} ended: {job.why()}{_tail(folder)}")
    if job.state == "PENDING":
        place = queue_position(job.job_id)
        if (job.state, job.reason, place) != said:
            report(Event(Phase.STARTING, _queued(job, place)))
            return (job.state, job.reason, place)
    elif job.state == "RUNNING" and said[:1] != ("RUNNING",):
        report(Event(Phase.STARTING, f"starting on {job.node}"))
        return ("RUNNING",)
    return said


def _queued(job: JobState, place: tuple[int, int] | None) -> str:
    """`queued in Slurm: Resources, position 2 of 5`; before the scheduler has looked
    at the job, Slurm's reason is None: then only the place is said."""
    where = f"position {place[0]} of {place[1]}" if place else ""
    if job.reason in ("", "None"):
        return f"queued in Slurm, {where or 'waiting for the scheduler'}"
    return f"queued in Slurm: {job.reason}" + (f", {where}" if where else "")


def _tail(folder: Path, lines: int = 10) -> str:
    try:
        text = (folder / JOB_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if "token" not in line][-lines:]
    return "; the end of the job's log:\n" + "\n".join(kept) if kept else ""
