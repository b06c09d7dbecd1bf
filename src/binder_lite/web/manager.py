"""Sessions of the web service: limits, launching in threads, culling, adoption."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from binder_lite.errors import BinderLiteError, LaunchError
from binder_lite.launch import lifetime, pluto, sandbox, slurm, sources
from binder_lite.launch.node import Spec
from binder_lite.launch.session import (
    DEFAULT_TIMEOUT,
    Event,
    Fetch,
    Isolation,
    Phase,
    Provenance,
    Session,
    launch,
    normalise_open_path,
    prepare,
)
from binder_lite.site.model import Runtime, Slurm
from binder_lite.web import push
from binder_lite.web.store import Record, Store

log = logging.getLogger(__name__)


class CapacityError(BinderLiteError):
    """No room for another session now; `retry_after` is a fair guess in seconds."""

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    max_sessions: int
    max_per_user: int
    idle_timeout: float
    max_age: float
    cull_interval: float
    # A launch still pending after this long is stopped (None: git's bounds plus the
    # runtime's time to start Jupyter).
    max_pending: float | None = None
    max_repo_size: int = sources.FetchLimits.max_size  # binder.max_repo_size
    max_cache: int = 4 * 1024**3  # bytes of mirrors, postBuild results, Julia depots kept


@dataclass
class Live:
    """What the service knows of a session beyond its record."""

    id: str
    events: list[Event] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    session: Session | None = None  # set when we started it (not adopted)
    last_proxy_activity: float = field(default_factory=time.time)
    last_answer: float = field(default_factory=time.time)  # Jupyter answered the culler
    client: str | None = None  # the address an anonymous visitor launched it from
    oom_kills: int = 0  # processes the memory limit stopped, as last seen
    tasks_refused: int = 0  # forks the task limit refused, as last seen
    pin: sources.Pin | None = None  # the addresses the policy checked, for git
    # Set by a stop: the launch ends what it started and never reports "running".
    cancelled: threading.Event = field(default_factory=threading.Event)
    launching: bool = False  # the launch thread is still at work (under `lock`)
    build_only: bool = False  # BinderHub's build_only: fetch and check, start nothing
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionManager:
    def __init__(
        self,
        store: Store,
        state_dir: Path,
        runtime: Runtime,
        limits: Limits,
        isolation: Isolation | None = None,
        slurm_settings: Slurm | None = None,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.runtime = runtime
        self.slurm = slurm_settings or Slurm()
        # How a session itself runs: on this machine, or on a Slurm job's node.
        self.session_runtime = (
            Runtime(self.slurm.node_runtime.value) if runtime is Runtime.SLURM else runtime
        )
        self.limits = limits
        # The front connects to each session's socket itself: no TCP relay.
        self.isolation = dataclasses.replace(isolation or Isolation(), forward=False)
        self.live: dict[str, Live] = {}
        # Running sessions' records, for the proxy: one lookup per proxied request.
        self.running: dict[str, Record] = {}
        # Launches block (git, Guix, waiting for Jupyter): they run in threads.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, limits.max_sessions), thread_name_prefix="launch"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._culler: asyncio.Task[None] | None = None
        fetching = 2 * sources.FetchLimits.timeout + 60  # ls-remote, fetch, checkout
        # A job may wait in Slurm's queue; at most as long as a session may live.
        queue = limits.max_age if runtime is Runtime.SLURM else 0
        self.max_pending = (
            limits.max_pending or DEFAULT_TIMEOUT[self.session_runtime] + fetching + queue
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, self.adopt)
        self._culler = asyncio.create_task(self._cull_forever())

    async def shutdown(self) -> None:
        """Stop every session (a graceful stop; a crash leaves them for adoption)."""
        if self._culler:
            self._culler.cancel()
        loop = asyncio.get_running_loop()
        running = self.store.with_status("pending", "running")
        await asyncio.gather(
            *(loop.run_in_executor(None, self._stop, r, "the service stopped") for r in running)
        )
        self._pool.shutdown(wait=False, cancel_futures=True)

    def adopt(self) -> None:
        """After a restart: take running sessions back, or stop them; none is orphaned.
        One record that cannot be judged (a file that cannot be read, a process that
        refuses a signal) is given up on its own: it never stops the start."""
        for record in self.store.with_status("pending", "running"):
            try:
                self._adopt(record)
            except Exception as e:
                log.warning(
                    "session %s: could not be judged after the restart (%s: %s); stopped",
                    record.id,
                    type(e).__name__,
                    e,
                )
                self._give_up(record, f"lost while the service was not running ({e})")
        if self.runtime is Runtime.SLURM:
            self._cancel_unknown_jobs()

    def _cancel_unknown_jobs(self) -> None:
        """Jobs of ours that no running session owns (a service that crashed between
        sbatch and its record, or a record given up on) are cancelled."""
        try:
            queued = slurm.ours()
        except slurm.SlurmError as e:
            log.warning("cannot list the service's Slurm jobs: %s", e)
            return
        for session_id, job_id in queued.items():
            if session_id not in self.running:
                log.info("cancelling Slurm job %s (session %s: not ours now)", job_id, session_id)
                slurm.cancel(job_id, wait=0)

    def _adopt(self, record: Record) -> None:
        """Adopt a running session whose recorded process is still that process (not
        a PID reused since, or in another boot, nor a record of an older format) and
        whose Jupyter answers; stop the others, which signals only processes that are
        still the session's (see lifetime.py)."""
        folder = self._folder(record)
        if record.job_id is not None:
            alive = slurm.state(record.job_id).state == "RUNNING"
        else:
            alive = lifetime.adoptable(folder, record.process_id()) is not None
        if record.status == "running" and alive and self._jupyter_status(record) is not None:
            self.live[record.id] = live = Live(record.id)
            live.done.set()
            self.running[record.id] = record
            log.info("adopted session %s", record.id)
        else:
            self._stop(record, "lost while the service was not running")

    def _folder(self, record: Record) -> Path:
        return Path(record.session_dir or self.state_dir / "sessions" / record.id)

    def _give_up(self, record: Record, reason: str) -> None:
        """Mark a session stopped and remove its files, signalling only processes that
        name its folder; nothing here raises but the store."""
        self.running.pop(record.id, None)
        self.live.pop(record.id, None)
        self.store.update(record.id, status="stopped", message=reason, stopped=time.time())
        for step in (
            functools.partial(self._end_processes, record),
            functools.partial(self._remove_files, record.id),
        ):
            try:
                step()
            except Exception as e:
                log.warning("session %s: %s", record.id, e)

    # -- launching ---------------------------------------------------------------

    def request(
        self,
        owner: str,
        repository: str,
        ref: str,
        open_path: str | None,
        *,
        client: str | None = None,
        pin: sources.Pin | None = None,
        build_only: bool = False,
    ) -> str:
        """Reserve a slot and start launching; returns the session id at once.  `client`:
        the address of an anonymous visitor, who gets no more sessions per address than
        a user gets (a new cookie per request is free); `pin`: see `RepoPolicy.admit`;
        `build_only`: the environment is made ready and nothing is started (the slot is
        held while it is made)."""
        target = normalise_open_path(open_path)
        active = self.store.with_status("pending", "running")
        if len(active) >= self.limits.max_sessions:
            raise CapacityError(
                f"all {self.limits.max_sessions} sessions are in use; try again in a minute"
            )
        if sum(r.owner == owner for r in active) >= self.limits.max_per_user:
            raise CapacityError(
                f"you already have {self.limits.max_per_user} sessions; stop one first", 30
            )
        if (
            client is not None
            and sum(self._client(r.id) == client for r in active) >= self.limits.max_per_user
        ):
            raise CapacityError(
                f"{self.limits.max_per_user} sessions were started from your address already; "
                "stop one first",
                30,
            )
        session_id = secrets.token_hex(8)
        self.store.add(
            Record(
                id=session_id,
                owner=owner,
                repository=repository,
                ref=ref,
                open_path=target,
                status="pending",
            )
        )
        self.live[session_id] = Live(
            session_id, client=client, pin=pin, launching=True, build_only=build_only
        )
        self.store.add_to("launches_requested")
        self._pool.submit(self._launch_and_tidy, session_id, repository, ref, target)
        return session_id

    def _client(self, session_id: str) -> str | None:
        live = self.live.get(session_id)
        return live.client if live is not None else None

    def _launch_and_tidy(
        self, session_id: str, repository: str, ref: str, target: str | None
    ) -> None:
        """Launch; then remove the files of a launch that failed or was stopped, and keep
        the checkout cache within its bound."""
        live = self.live[session_id]
        try:
            self._launch(session_id, repository, ref, target)
        finally:
            with live.lock:
                live.launching = False
            record = self.store.get(session_id)
            ended = record is not None and record.status in ("failed", "stopped")
            if live.cancelled.is_set() or ended:
                self._remove_files(session_id)
            self._trim_cache()

    def _trim_cache(self) -> None:
        cache = self.state_dir / "cache"
        live = self.store.with_status("pending", "running")
        # A running session reads its mirror's objects and its Julia depot.
        in_use = {sources.mirror_dir(cache, r.repository) for r in live}
        in_use |= {pluto.depot_dir(cache, r.provenance_dict()) for r in live if r.provenance}
        for entry in sources.trim_cache(cache, self.limits.max_cache, in_use):
            log.info("removed %s/%s from the cache", entry.parent.name, entry.name)

    def _remove_files(self, session_id: str) -> None:
        """A session's folder (its checkout, logs, Jupyter's files) goes with it, and so
        does the repository its pushes were made in."""
        _remove_tree(self.state_dir / "sessions" / session_id)
        push.discard(self.state_dir, session_id)
        record = self.store.get(session_id)
        if record is not None:
            self._remove_upload(record.repository)

    def _remove_upload(self, repository: str) -> None:
        """A repository made from files sent to the API belongs to its one session."""
        uploads = self.state_dir / "uploads"
        folder = Path(repository.removeprefix("file://"))
        if repository.startswith("file://") and folder.parent == uploads:
            _remove_tree(folder)

    def _launch(self, session_id: str, repository: str, ref: str, target: str | None) -> None:
        started = time.monotonic()
        live = self.live[session_id]
        try:
            result = self._start_or_build(live, repository, ref, target)
        except LaunchError as e:
            if live.cancelled.is_set():
                return  # stopped: the record says so already
            self.store.update(session_id, status="failed", message=str(e), stopped=time.time())
            self.store.add_to("launches_failed")
            return
        except Exception as e:  # a bug: record it, and keep serving the others
            log.exception("launch %s crashed", session_id)
            if live.cancelled.is_set():
                return
            self.store.update(
                session_id, status="failed", message=f"internal error: {e}", stopped=time.time()
            )
            self._event(session_id, Event(Phase.FAILED, "internal error; see the service log"))
            return
        if isinstance(result, Provenance) and live.build_only:
            self._record_built(live, result)
            return
        if isinstance(result, Provenance):
            self._launch_on_slurm(live, result, target, started)
            return
        session = live.session = result
        view = session.url[len(session.base_url) :].split("?")[0]
        if not self._record_running(
            live,
            session,
            status="running",
            commit_sha=session.provenance.commit,
            port=session.port,
            pid=session.pid,
            process=json.dumps(session.handle.process.to_json()),
            token=session.token,
            view=view,
            socket=str(session.socket) if session.socket else None,
            work_dir=str(session.work_dir),
            session_dir=str(session.session_dir),
            provenance=json.dumps(asdict(session.provenance)),
            ready=time.time(),
            last_activity=time.time(),
        ):
            return  # stopped while it launched
        self.store.add_to("launches_ready")
        self.store.add_to("launch_seconds_sum", time.monotonic() - started)
        # The ready event goes out after the record says "running".
        self._event(session_id, Event(Phase.READY, view), final=True)

    def _start_or_build(
        self, live: Live, repository: str, ref: str, target: str | None
    ) -> Session | Provenance:
        """Launch; or, for a build only, make the environment ready and start nothing."""
        session_id = live.id
        wanted = None if ref in ("", "HEAD") else ref
        cache, folder = self.state_dir / "cache", self.state_dir / "sessions" / session_id
        fetch = Fetch(
            pin=live.pin,
            cancel=live.cancelled,
            limits=sources.FetchLimits(max_size=self.limits.max_repo_size),
        )

        def report(event: Event) -> None:
            self._event(session_id, event)

        if live.build_only or self.runtime is Runtime.SLURM:
            return prepare(
                repository,
                wanted,
                runtime_kind=self.session_runtime,
                cache_dir=cache,
                session_dir=folder,
                on_event=report,
                isolation=self.isolation,
                fetch=fetch,
            )
        return launch(
            repository,
            wanted,
            runtime_kind=self.session_runtime,
            open_path=target,
            base_url=f"/s/{session_id}/",
            cache_dir=cache,
            session_dir=folder,
            on_event=report,
            isolation=self.isolation,
            fetch=fetch,
        )

    def _launch_on_slurm(
        self, live: Live, provenance: Provenance, target: str | None, started: float
    ) -> None:
        """The repository is checked out and resolved: submit its session as a Slurm
        job and follow the job until its session answers (launch/slurm.py)."""
        folder = self.state_dir / "sessions" / live.id
        base_url = f"/s/{live.id}/"
        spec = Spec(
            session_id=live.id,
            source=str(sources.mirror_dir(self.state_dir / "cache", provenance.repository)),
            commit=provenance.commit,
            open_path=target,
            base_url=base_url,
            runtime=self.session_runtime,
            sandboxed=self.isolation.sandboxed,
            network=self.isolation.network,
            limits=self.isolation.limits,
            secret="",
            manifest=provenance.manifest,
        )

        def report(event: Event) -> None:
            self._event(live.id, event)

        try:
            minutes = slurm.job_time(self.slurm, self.limits.max_age)
            memory = self.isolation.limits.memory
            submitted = slurm.submit(spec, self.slurm, folder, minutes, memory)
            with live.lock:
                self.store.update(live.id, job_id=submitted.job_id)
            report(Event(Phase.STARTING, f"submitted to Slurm as job {submitted.job_id}"))
            deadline = time.monotonic() + self.max_pending
            found = slurm.wait_ready(submitted, folder, base_url, report, live.cancelled, deadline)
        except LaunchError as e:
            self._slurm_failed(live, e)
            return
        except Exception as e:  # a bug, or a file that cannot be written: say so, end it
            log.exception("launch %s crashed", live.id)
            self._slurm_failed(live, LaunchError(f"internal error: {e}"))
            return
        fields = {
            "status": "running",
            "commit_sha": provenance.commit,
            "token": found.token,
            "view": found.view,
            "node": f"{found.host}:{found.port}",
            "work_dir": found.work_dir,
            "session_dir": str(folder),
            "provenance": json.dumps(asdict(provenance)),
            "ready": time.time(),
            "last_activity": time.time(),
        }
        with live.lock:
            if live.cancelled.is_set():
                slurm.cancel(submitted.job_id)
                return
            self.store.update(live.id, **fields)
            record = self.store.get(live.id)
            if record is not None:
                self.running[live.id] = record
        self.store.add_to("launches_ready")
        self.store.add_to("launch_seconds_sum", time.monotonic() - started)
        self._event(live.id, Event(Phase.READY, found.view), final=True)

    def _slurm_failed(self, live: Live, error: LaunchError) -> None:
        """A job that was refused, ended or stopped before its session was ready: its
        job is cancelled and, unless it was stopped, the launch failed with Slurm's words."""
        record = self.store.get(live.id)
        if record is not None and record.job_id is not None:
            with contextlib.suppress(slurm.SlurmError):
                slurm.cancel(record.job_id)
        if live.cancelled.is_set():
            return
        self.store.update(live.id, status="failed", message=str(error), stopped=time.time())
        self.store.add_to("launches_failed")
        self._event(live.id, Event(Phase.FAILED, str(error)))

    def _record_built(self, live: Live, provenance: Provenance) -> None:
        """A build only is over once its environment is ready: its record ends there,
        saying what it resolved to, and its ready event goes out after that."""
        with live.lock:
            if live.cancelled.is_set():
                return  # stopped meanwhile: the record says so already
            self.store.update(
                live.id,
                status="stopped",
                message="built only: the environment is ready; no server was started",
                commit_sha=provenance.commit,
                provenance=json.dumps(asdict(provenance)),
                stopped=time.time(),
            )
        self._event(live.id, Event(Phase.READY, provenance.commit), final=True)

    def _record_running(self, live: Live, session: Session, **fields: object) -> bool:
        """Record the session as running, unless it was stopped meanwhile: then end it.
        Under the lock `_stop` cancels with, so a stop comes wholly before or after."""
        with live.lock:
            if not live.cancelled.is_set():
                self.store.update(live.id, **fields)
                record = self.store.get(live.id)
                if record is not None:
                    self.running[live.id] = record
                return True
        session.stop()
        return False

    def _event(self, session_id: str, event: Event, final: bool = False) -> None:
        if event.phase is Phase.READY and not final:
            return  # launch() reports ready before the record is updated
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, session_id, event)

    def _deliver(self, session_id: str, event: Event) -> None:
        live = self.live.get(session_id)
        if live is None:
            return
        live.events.append(event)
        if event.phase in (Phase.READY, Phase.FAILED):
            live.done.set()
        live.changed.set()

    async def events(self, session_id: str, heartbeat: float = 15.0):  # type: ignore[no-untyped-def]
        """Yield the launch's events, from the first, then None as a heartbeat while
        nothing happens; ends after ready or failed."""
        live = self.live.get(session_id)
        if live is None:
            return
        sent = 0
        while True:
            while sent < len(live.events):
                yield live.events[sent]
                sent += 1
            if live.done.is_set():
                return
            live.changed.clear()
            try:
                await asyncio.wait_for(live.changed.wait(), heartbeat)
            except TimeoutError:
                yield None

    # -- running sessions ----------------------------------------------------------

    def touch(self, session_id: str) -> None:
        live = self.live.get(session_id)
        if live is not None:
            live.last_proxy_activity = time.time()

    def stop(self, session_id: str, reason: str = "stopped by its owner") -> bool:
        record = self.store.get(session_id)
        if record is None or record.status not in ("pending", "running"):
            return False
        self._stop(record, reason)
        return True

    def _stop(self, record: Record, reason: str) -> None:
        live = self.live.get(record.id)
        launching = live is not None and self._cancel(live)
        self.running.pop(record.id, None)
        if live is not None and live.session is not None:
            live.session.stop()
        else:  # adopted, or still launching: its folder (or its job) names its processes
            self._end_processes(record, stop=True)
        self.store.update(record.id, status="stopped", message=reason, stopped=time.time())
        if not launching:  # else the launch thread removes them when it has ended
            self._remove_files(record.id)
        log.info("session %s: %s", record.id, reason)

    def _end_processes(self, record: Record, stop: bool = False) -> None:
        """End what runs of a session we did not start in this process: its Slurm job
        (scancel; read again, a launch may have submitted it since), or the processes
        its folder names (`stop`: gracefully first)."""
        job_id = (self.store.get(record.id) or record).job_id
        if job_id is not None:
            try:
                slurm.cancel(job_id)
            except slurm.SlurmError as e:  # the job ends at its time limit, or at a restart
                log.warning("session %s: could not cancel Slurm job %s: %s", record.id, job_id, e)
        elif stop:
            lifetime.stop(self._folder(record))
        else:
            lifetime.reap_strays(self._folder(record))

    @staticmethod
    def _cancel(live: Live) -> bool:
        """Tell a launch in progress to give up; return whether one is in progress."""
        with live.lock:
            live.cancelled.set()
            return live.launching

    @staticmethod
    def _jupyter_status(record: Record) -> dict[str, object] | None:
        node = record.node_address()
        if node is not None:
            return slurm.jupyter_status(*node, f"/s/{record.id}/", record.token or "")
        if record.socket:
            return sandbox.jupyter_status(
                Path(record.socket), f"/s/{record.id}/", record.token or ""
            )
        url = f"http://127.0.0.1:{record.port}/s/{record.id}/api/status"
        request = urllib.request.Request(url, headers={"Authorization": f"token {record.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                data = json.loads(response.read())
                return data if isinstance(data, dict) else None
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    async def _cull_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.cull_interval)
            try:
                await loop.run_in_executor(None, self.cull)
            except Exception:
                log.exception("culling failed")

    def _over_disk(self, record: Record) -> bool:
        """Stop a session whose files outgrew its disk limit (single files are held to
        it by RLIMIT_FSIZE as they are written; the sum is checked here)."""
        limit = self.isolation.limits.disk
        used = sandbox.disk_usage(Path(record.work_dir)) if record.work_dir else 0
        if used <= limit:
            return False
        self._stop(
            record,
            f"its files outgrew the disk limit of {limit // 1024**2} MiB ({used // 1024**2} MiB)",
        )
        self.store.add_to("sessions_over_limit")
        return True

    def _note_limits(self, record: Record) -> None:
        """Say on the session's page when a limit stopped one of its processes (a kernel
        killed for memory only says it died; a refused fork says little more)."""
        handle = lifetime.load(self._folder(record))
        live = self.live.get(record.id)
        if handle is None or not handle.cgroups or live is None:
            return
        cgroups = sandbox.Cgroups(tuple(Path(d) for d in handle.cgroups))
        limits = self.isolation.limits
        kills, refused = cgroups.oom_kills(), cgroups.tasks_refused()
        if kills > live.oom_kills:
            live.oom_kills = kills
            self._tell(
                record,
                "sessions_memory_limit_hit",
                f"a process of this session needed more than its memory limit of "
                f"{limits.memory // 1024**2} MiB and was stopped",
            )
        if refused > live.tasks_refused:
            live.tasks_refused = refused
            self._tell(
                record,
                "sessions_task_limit_hit",
                f"this session reached its limit of {limits.processes} processes "
                "and threads; starting more failed",
            )

    def _tell(self, record: Record, counter: str, message: str) -> None:
        self.store.update(record.id, message=message)
        self.store.add_to(counter)

    def cull(self) -> None:
        """Stop sessions that are idle, too old, or whose server died, and launches that
        take too long; remove folders no session owns."""
        now = time.time()
        for record in self.store.with_status("pending"):
            if now - record.created > self.max_pending:
                self.store.add_to("sessions_culled")
                self._stop(record, f"the launch took longer than {self.max_pending:.0f} s")
        self._remove_strays()
        for record in self.store.with_status("running"):
            self._cull_running(record, now)

    def _cull_running(self, record: Record, now: float) -> None:
        """Stop a running session that exited, outgrew its disk, is too old, idle, or
        has not answered for longer than the idle timeout (a Jupyter that hangs, or
        was stopped, is culled by the same bounds as one that answers)."""
        status = self._jupyter_status(record)
        if status is None and record.job_id is not None:
            try:
                job = slurm.state(record.job_id)
            except slurm.SlurmError as e:  # the controller is away: judged next time
                log.warning("session %s: %s", record.id, e)
                return
            if job.ended:
                self._stop(record, f"its Slurm job ended: {job.why()}")
                return
        elif status is None and not lifetime.alive(self._folder(record)):
            self._stop(record, "the notebook server exited")
            return
        if self._over_disk(record):
            return
        self._note_limits(record)
        live = self.live.get(record.id)
        if status is not None and live is not None:
            live.last_answer = now
        answered = max(live.last_answer if live else 0.0, record.ready or 0.0)
        last = max(
            _timestamp(status.get("last_activity")) if status else 0.0,
            record.last_activity or 0.0,
            record.ready or 0.0,
            live.last_proxy_activity if live else 0.0,
        )
        self.store.update(record.id, last_activity=last)
        if now - record.created > self.limits.max_age:
            reason = f"reached the maximum age of {self.limits.max_age:.0f} s"
        elif now - answered > self.limits.idle_timeout:
            reason = f"its notebook server did not answer for {now - answered:.0f} s"
        elif now - last > self.limits.idle_timeout:
            reason = f"idle for more than {self.limits.idle_timeout:.0f} s"
        else:
            return
        # Counted first: the count is never behind the page that says the session ended.
        self.store.add_to("sessions_culled")
        self._stop(record, reason)

    def _remove_strays(self) -> None:
        """Folders of sessions that ended while the service was not there to tidy up."""
        folders = self.state_dir / "sessions"
        if not folders.is_dir():
            return
        active = {r.id for r in self.store.with_status("pending", "running")}
        for folder in folders.iterdir():
            live = self.live.get(folder.name)
            if folder.name not in active and not (live is not None and live.launching):
                _remove_tree(folder)


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _remove_tree(folder: Path) -> None:
    """Remove `folder`, also where a session left read-only directories behind."""

    def writable_and_retry(function: object, path: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                shutil.rmtree(path)
            else:
                os.unlink(path)

    if folder.exists():
        shutil.rmtree(folder, onerror=writable_and_retry)
    if folder.exists():
        log.warning("could not remove all of %s", folder)
