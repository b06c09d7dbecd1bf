"""Sessions of the web service: limits, launching in threads, culling, adoption."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from binder_lite.errors import BinderLiteError, LaunchError
from binder_lite.launch.session import (
    Event,
    Phase,
    Session,
    launch,
    normalise_open_path,
    process_alive,
    reap_strays,
    stop_process_group,
)
from binder_lite.site.model import Runtime
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


@dataclass
class Live:
    """What the service knows of a session beyond its record."""

    id: str
    events: list[Event] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    session: Session | None = None  # set when we started it (not adopted)
    last_proxy_activity: float = field(default_factory=time.time)


class SessionManager:
    def __init__(
        self, store: Store, state_dir: Path, runtime: Runtime, limits: Limits,
    ) -> None:  # fmt: skip
        self.store = store
        self.state_dir = state_dir
        self.runtime = runtime
        self.limits = limits
        self.live: dict[str, Live] = {}
        # Running sessions' records, for the proxy: one lookup per proxied request.
        self.running: dict[str, Record] = {}
        # Launches block (git, Guix, waiting for Jupyter): they run in threads.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, limits.max_sessions), thread_name_prefix="launch"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._culler: asyncio.Task[None] | None = None

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
        await asyncio.gather(*(loop.run_in_executor(None, self._stop, r, "the service stopped")
                               for r in running))  # fmt: skip
        self._pool.shutdown(wait=False, cancel_futures=True)

    def adopt(self) -> None:
        """After a restart: take running sessions back, or stop them; none is orphaned."""
        for record in self.store.with_status("pending", "running"):
            if record.status == "running" and self._answers(record):
                self.live[record.id] = live = Live(record.id)
                live.done.set()
                self.running[record.id] = record
                log.info("adopted session %s", record.id)
            else:
                self._stop(record, "lost while the service was not running")

    # -- launching ---------------------------------------------------------------

    def request(self, owner: str, repository: str, ref: str, open_path: str | None) -> str:
        """Reserve a slot and start launching; returns the session id at once."""
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
        session_id = secrets.token_hex(8)
        self.store.add(Record(id=session_id, owner=owner, repository=repository, ref=ref,
                              open_path=target, status="pending"))  # fmt: skip
        self.live[session_id] = Live(session_id)
        self.store.add_to("launches_requested")
        self._pool.submit(self._launch, session_id, repository, ref, target)
        return session_id

    def _launch(self, session_id: str, repository: str, ref: str, target: str | None) -> None:
        started = time.monotonic()
        live = self.live[session_id]
        try:
            session = launch(
                repository, None if ref in ("", "HEAD") else ref,
                runtime_kind=self.runtime, open_path=target, base_url=f"/s/{session_id}/",
                cache_dir=self.state_dir / "cache",
                session_dir=self.state_dir / "sessions" / session_id,
                on_event=lambda e: self._event(session_id, e),
            )  # fmt: skip
        except LaunchError as e:
            self.store.update(session_id, status="failed", message=str(e), stopped=time.time())
            self.store.add_to("launches_failed")
            return
        except Exception as e:  # a bug: record it, and keep serving the others
            log.exception("launch %s crashed", session_id)
            self.store.update(session_id, status="failed", message=f"internal error: {e}",
                              stopped=time.time())  # fmt: skip
            self._event(session_id, Event(Phase.FAILED, "internal error; see the service log"))
            return
        live.session = session
        view = session.url[len(session.base_url) :].split("?")[0]
        self.store.update(
            session_id, status="running", commit_sha=session.provenance.commit,
            port=session.port, pid=session.pid, token=session.token, view=view,
            work_dir=str(session.work_dir), session_dir=str(session.session_dir),
            provenance=json.dumps(asdict(session.provenance)), ready=time.time(),
            last_activity=time.time(),
        )  # fmt: skip
        record = self.store.get(session_id)
        if record is not None:
            self.running[session_id] = record
        self.store.add_to("launches_ready")
        self.store.add_to("launch_seconds_sum", time.monotonic() - started)
        # The ready event goes out after the record says "running".
        self._event(session_id, Event(Phase.READY, view), final=True)

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
        self.running.pop(record.id, None)
        live = self.live.get(record.id)
        if live is not None and live.session is not None:
            live.session.stop()
        elif record.pid:
            stop_process_group(record.pid, Path(record.session_dir or "/nonexistent"))
        elif record.session_dir or (self.state_dir / "sessions" / record.id).exists():
            reap_strays(Path(record.session_dir or self.state_dir / "sessions" / record.id))
        self.store.update(record.id, status="stopped", message=reason, stopped=time.time())
        log.info("session %s: %s", record.id, reason)

    def _answers(self, record: Record) -> bool:
        if not record.pid or not process_alive(record.pid):
            return False
        return self._jupyter_status(record) is not None

    @staticmethod
    def _jupyter_status(record: Record) -> dict[str, object] | None:
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

    def cull(self) -> None:
        """Stop sessions that are idle, too old, or whose server died."""
        now = time.time()
        for record in self.store.with_status("running"):
            status = self._jupyter_status(record)
            if status is None:
                if not record.pid or not process_alive(record.pid):
                    self._stop(record, "the notebook server exited")
                continue
            last = max(_timestamp(status.get("last_activity")), record.ready or 0.0,
                       self.live[record.id].last_proxy_activity if record.id in self.live
                       else 0.0)  # fmt: skip
            self.store.update(record.id, last_activity=last)
            if now - record.created > self.limits.max_age:
                self._stop(record, f"reached the maximum age of {self.limits.max_age:.0f} s")
                self.store.add_to("sessions_culled")
            elif now - last > self.limits.idle_timeout:
                self._stop(record, f"idle for more than {self.limits.idle_timeout:.0f} s")
                self.store.add_to("sessions_culled")


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
