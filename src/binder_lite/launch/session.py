"""`launch()`: repository → running Jupyter, reported as phases (lifetime.py ends it)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import html
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

from binder_lite import guix, net
from binder_lite.errors import (
    EnvironmentSpecError,
    GuixError,
    JupyterError,
    LaunchError,
    ToolNotFoundError,
)
from binder_lite.launch import (
    apps,
    detect,
    lifetime,
    pluto,
    postbuild,
    runtime,
    sandbox,
    scripts,
    sources,
)
from binder_lite.launch.repofiles import RepoTree
from binder_lite.run import spawn
from binder_lite.site.model import Runtime, SessionLimits, SessionNetwork

if TYPE_CHECKING:
    from subprocess import Popen


class Phase(enum.StrEnum):
    """The steps of a launch, in order (the web service maps them to BinderHub's)."""

    FETCHING = "fetching"
    RESOLVING = "resolving"
    BUILDING = "building"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class Event:
    phase: Phase
    message: str


@dataclass(frozen=True)
class Provenance:
    """What a result was computed with, so that it can be computed again."""

    repository: str
    ref: str
    commit: str
    environment: str  # how it was found: manifest, requirements, ..., default
    manifest: str  # the manifest text the session runs with
    channels: str | None  # the channels file's text, when pinned
    guix_version: str | None  # None for the local runtime
    runtime: str
    launched_at: float


@dataclass
class Session:
    """A running notebook server; `stop()` ends it and everything it started."""

    id: str
    url: str  # the notebook view, with the token
    base_url: str  # http://127.0.0.1:PORT/BASE/
    token: str
    port: int | None  # where a browser on this machine reaches it (None: only the socket)
    pid: int
    work_dir: Path  # the session's clone of the repository
    session_dir: Path
    provenance: Provenance
    process: Popen[bytes] = field(repr=False)
    handle: sandbox.Handle = field(repr=False)  # its processes (also in session_dir)
    log_file: Path = field(repr=False)
    socket: Path | None = None  # where a sandboxed Jupyter listens, on the host
    forwarder: sandbox.Forwarder | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """End the server and everything it started (see `lifetime.stop`)."""
        if self.forwarder is not None:
            self.forwarder.close()
        lifetime.stop(self.session_dir, handle=self.handle, process=self.process, grace=grace)

    def open_file(self) -> Path:
        return self.session_dir / "open.html"


Report = Callable[[Event], None]

# How long Jupyter may take to answer.  Locally it is seconds on a quiet machine, but a
# guest under emulation (TCG) or a host at full load has taken over two minutes; a hung
# server is still caught, and a person waiting can stop the launch.
DEFAULT_TIMEOUT = {Runtime.LOCAL: 300.0, Runtime.GUIX: 3600.0}


@dataclass(frozen=True)
class Fetch:
    """How the repository is fetched (the web service's bounds; see sources.py)."""

    pin: sources.Pin | None = None  # the addresses the policy checked
    limits: sources.FetchLimits | None = None
    cancel: threading.Event | None = None  # set: stop fetching, or waiting, at once


@dataclass(frozen=True)
class Prepared:
    """What a Slurm job's service has made already (launch/node.py), so that the job
    does not make it again: the checkout, moved into the session's folder rather than
    cloned (sources.take_checkout), and the manifest made from it, whose generated
    package names the service had Guix check (`guix package -A` loads every package
    module: seconds, more over a store on NFS)."""

    checkout: Path
    manifest: str = ""  # empty: the names are checked here


@dataclass(frozen=True)
class Isolation:
    """How a session is kept from the host (sandbox.py)."""

    sandboxed: bool = True  # False only for development: Jupyter runs as the caller
    network: SessionNetwork = SessionNetwork.OUTBOUND
    limits: SessionLimits = SessionLimits()
    # A TCP port on 127.0.0.1 relayed to the session's socket, for a browser on this
    # machine (the launcher); the web service's front connects to the socket itself.
    forward: bool = True


@dataclass(frozen=True)
class _Plan:
    """What one launch() call asked for, and where its files go."""

    source: str
    ref: str | None
    kind: Runtime
    cache: Path
    session_dir: Path
    session_id: str
    isolation: Isolation
    fetch: Fetch
    prepared: Prepared | None = None
    # What only a launch (not a prepare) asks for.
    open_path: str | None = None
    kernel: str | None = None
    port: int | None = None
    base_url: str = "/"
    timeout: float | None = None

    @classmethod
    def new(
        cls,
        source: str,
        ref: str | None,
        kind: Runtime,
        cache_dir: Path | None,
        session_dir: Path | None,
        isolation: Isolation | None,
        fetch: Fetch | None,
    ) -> _Plan:
        """A plan with a new session id; what is None is the default."""
        session_id = secrets.token_hex(8)
        cache = cache_dir or default_cache_dir()
        return cls(
            source,
            ref,
            kind,
            cache,
            session_dir or cache / "sessions" / session_id,
            session_id,
            isolation or Isolation(),
            fetch or Fetch(),
        )


def launch(
    source: str,
    ref: str | None = None,
    *,
    runtime_kind: Runtime = Runtime.GUIX,
    open_path: str | None = None,
    kernel: str | None = None,
    port: int | None = None,
    base_url: str = "/",
    cache_dir: Path | None = None,
    session_dir: Path | None = None,
    timeout: float | None = None,
    on_event: Report | None = None,
    isolation: Isolation | None = None,
    fetch: Fetch | None = None,
    prepared: Prepared | None = None,
) -> Session:
    """Fetch `source` at `ref`, work out its environment, start Jupyter, wait until it
    answers with its token.  Raises a `LaunchError` saying what went wrong.

    Jupyter runs sandboxed (see sandbox.py) unless `isolation.sandboxed` is false."""
    report = _Reporter(on_event or (lambda event: None))
    plan = dataclasses.replace(
        _Plan.new(source, ref, runtime_kind, cache_dir, session_dir, isolation, fetch),
        prepared=prepared,
        open_path=open_path,
        kernel=kernel,
        port=port,
        base_url=base_url,
        timeout=timeout,
    )
    with report.failed_on_error():
        return _launch(plan, report)


def prepare(
    source: str,
    ref: str | None = None,
    *,
    runtime_kind: Runtime = Runtime.GUIX,
    cache_dir: Path | None = None,
    session_dir: Path | None = None,
    on_event: Report | None = None,
    isolation: Isolation | None = None,
    fetch: Fetch | None = None,
) -> Provenance:
    """What `launch` does before it starts Jupyter: fetch `source` at `ref`, work out its
    environment and, for the Guix runtime, have Guix check it.  Nothing is started
    (BinderHub's build_only); the last event is ready.  Raises a `LaunchError`."""
    report = _Reporter(on_event or (lambda event: None))
    plan = _Plan.new(source, ref, runtime_kind, cache_dir, session_dir, isolation, fetch)
    with report.failed_on_error():
        plan.session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        checkout, env, provenance = _prepare(plan, report)
        _scripts(checkout.path)  # refused ones fail here too
        if plan.kind is Runtime.GUIX:
            box, spec = _box_and_spec(plan, checkout)
            boxed = plan.isolation.sandboxed
            manifest = plan.session_dir / "manifest.scm"
            argv = _guix_command(spec, box, manifest, env.channels, boxed)
            _check_with_guix(
                _guix_check_command(spec, box, manifest, env.channels, boxed, argv),
                report,
                sandbox.guix_environment({}) if boxed else None,
            )
    report.last(Event(Phase.READY, f"environment ready: {provenance.commit}"))
    return provenance


class _Reporter:
    """Passes events on, from the launching thread and the log reader, until the last
    one (ready or failed): nothing is reported after it."""

    def __init__(self, deliver: Report) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            if not self._closed:
                self._deliver(event)

    def last(self, event: Event) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._deliver(event)

    @contextlib.contextmanager
    def failed_on_error(self) -> Iterator[None]:
        """A LaunchError inside is the last event (failed), then raised on."""
        try:
            yield
        except LaunchError as e:
            self.last(Event(Phase.FAILED, str(e)))
            raise


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "binder-lite"


def _launch(plan: _Plan, report: _Reporter) -> Session:
    target = normalise_open_path(plan.open_path)
    # The session's files include Jupyter's log, which names the token: owner only.
    plan.session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    checkout, env, provenance = _prepare(plan, report)
    boxed = plan.isolation.sandboxed
    local = plan.kind is Runtime.LOCAL
    # Apps are served by the web service's front, which connects to the sandbox's run
    # directory; the launcher relays Jupyter's socket alone.
    fronted = boxed and not plan.isolation.forward
    kernel, app, target = apps.for_launch(
        checkout.path, env, target, local, fronted, lambda m: report(Event(Phase.RESOLVING, m))
    )
    served = apps.served_pluto(
        env.pluto, target, local, fronted, lambda m: report(Event(Phase.RESOLVING, m))
    )
    env = dataclasses.replace(env, shiny=app, pluto=served)
    plan = dataclasses.replace(plan, kernel=plan.kernel or kernel)
    box, spec = _box_and_spec(plan, checkout)
    found = _scripts(checkout.path)
    if plan.port is not None:
        _check_port_free(plan.port)
    token = secrets.token_hex(24)
    started = _start(plan, spec, box, env, token, report, found, provenance)
    forwarder = None
    port = spec.port
    if boxed and plan.isolation.forward:
        forwarder = _forward(plan.port, box.socket, plan.session_dir, started)
        port = forwarder.port
    origin = f"http://127.0.0.1:{port}{spec.base_url}" if port else spec.origin
    session = Session(
        id=plan.session_id,
        url=f"{origin}{_view_path(checkout.path, target)}?token={token}",
        base_url=origin,
        token=token,
        port=port,
        pid=started.process.pid,
        work_dir=checkout.path,
        session_dir=plan.session_dir,
        provenance=provenance,
        process=started.process,
        handle=started.handle,
        log_file=started.log_file,
        socket=box.socket if boxed else None,
        forwarder=forwarder,
    )
    _write_open_file(session)
    report.last(Event(Phase.READY, session.url))
    return session


def _box_and_spec(
    plan: _Plan, checkout: sources.Checkout
) -> tuple[sandbox.Sandbox, runtime.ServerSpec]:
    """The session's sandbox, and how its Jupyter is to be started."""
    boxed = plan.isolation.sandboxed
    box = sandbox.Sandbox(
        plan.session_id,
        plan.session_dir,
        checkout.path,
        plan.isolation.network,
        plan.isolation.limits,
    )
    spec = runtime.ServerSpec(
        port=None if boxed else plan.port or free_port(),
        base_url=_base_url(plan.base_url),
        kernel=plan.kernel or ("guix" if plan.kind is Runtime.GUIX else "python3"),
        root_dir=(
            runtime.CONTAINER_WORK_DIR if plan.kind is Runtime.GUIX or boxed else str(checkout.path)
        ),
        socket=box.inner_socket if boxed else None,
    )
    return box, spec


def _forward(
    port: int | None, path: Path, session_dir: Path, started: _Started
) -> sandbox.Forwarder:
    try:
        return sandbox.Forwarder(port or 0, path)
    except OSError as e:
        lifetime.stop(session_dir, handle=started.handle, process=started.process, grace=5.0)
        raise LaunchError(f"cannot listen on 127.0.0.1:{port or 0}: {e.strerror}") from None


def _prepare(
    plan: _Plan, report: Report
) -> tuple[sources.Checkout, detect.Environment, Provenance]:
    """Check the repository out, find its environment, and write down its provenance."""
    url = sources.normalise_source(plan.source)
    report(Event(Phase.FETCHING, f"repository {url}, ref {plan.ref or 'HEAD'}"))

    def log(line: str) -> None:
        report(Event(Phase.FETCHING, line))

    made, dest = plan.prepared, plan.session_dir / "repo"
    taken = sources.take_checkout(made.checkout, url, plan.ref or "", dest) if made else None
    if taken is not None:
        log(f"took the checkout of {taken.commit[:12]} made by the service")
    checkout = taken or sources.check_out(
        url,
        plan.ref,
        plan.cache,
        dest,
        log,
        pin=plan.fetch.pin,
        limits=plan.fetch.limits,
        cancel=plan.fetch.cancel,
    )
    report(Event(Phase.RESOLVING, f"resolved {checkout.ref} to {checkout.commit}"))
    checked = made.manifest if made else ""
    env = _environment(checkout.path, plan.kind, report, checked)
    (plan.session_dir / "manifest.scm").write_text(env.manifest, encoding="utf-8")
    provenance = Provenance(
        repository=url,
        ref=checkout.ref,
        commit=checkout.commit,
        environment=env.kind,
        manifest=env.manifest,
        channels=env.channels_text,  # read inside the checkout only (detect, repofiles)
        guix_version=guix.version() if plan.kind is Runtime.GUIX else None,
        runtime=str(plan.kind),
        launched_at=time.time(),
    )
    (plan.session_dir / "provenance.json").write_text(json.dumps(asdict(provenance), indent=2))
    return checkout, env, provenance


@dataclass(frozen=True)
class _Started:
    process: Popen[bytes]
    log_file: Path
    handle: sandbox.Handle


def _start(
    plan: _Plan,
    spec: runtime.ServerSpec,
    box: sandbox.Sandbox,
    env: detect.Environment,
    token: str,
    report: Report,
    found: scripts.Scripts,
    provenance: Provenance,
) -> _Started:
    """Start Jupyter (in a Guix container, for that runtime), behind the repository's
    start script, after its postBuild, and wait until it answers."""
    guix_runtime = plan.kind is Runtime.GUIX
    manifest = plan.session_dir / "manifest.scm"
    boxed = plan.isolation.sandboxed
    before = [*_start_prefix(plan, box, found.start), *apps.app_prefix(env.shiny)]
    if env.pluto is not None:  # served: the guix runtime, sandboxed (apps.served_pluto)
        before += pluto.server_prefix()
    if guix_runtime:
        argv = _guix_command(spec, box, manifest, env.channels, boxed, before)
        _check_with_guix(
            _guix_check_command(spec, box, manifest, env.channels, boxed, argv),
            report,
            sandbox.guix_environment({}) if boxed else None,
        )
        if env.pluto is not None:
            depot = _julia_depot(plan, spec, box, env, provenance, report)
            argv = _guix_command(spec, box, manifest, env.channels, boxed, before, depot=depot)
    else:
        argv = [*before, *runtime.local_argv(spec)]
    # Read once: the call rewrites the checkout's alternates for the sandbox's paths.
    borrowed = _borrowed_objects(box.repo) if boxed and not guix_runtime else []
    if found.postbuild is not None:
        _postbuild(plan, spec, box, env, found.postbuild, provenance, borrowed, report)
    if found.start is not None:
        where = "in the sandbox" if boxed else "without a sandbox"
        report(Event(Phase.STARTING, f"{found.start.name}: run {where}, before Jupyter"))
    where = " in a Guix container" if guix_runtime else (" in a sandbox" if boxed else "")
    report(Event(Phase.BUILDING if guix_runtime else Phase.STARTING, f"starting Jupyter{where}"))
    if boxed:
        box.run_dir.mkdir(mode=0o700, exist_ok=True)
        if not guix_runtime:  # the guix runtime's command has its sandbox already
            readonly = [*_jupyter_files(plan.session_dir), *borrowed]
            argv = sandbox.bwrap_argv(box, argv, readonly)
    deadline = time.monotonic() + (plan.timeout or DEFAULT_TIMEOUT[plan.kind])
    for attempt in range(1, SETUP_ATTEMPTS + 1):
        try:
            return _start_once(plan, spec, box, argv, token, deadline, report)
        except JupyterError as e:
            if attempt == SETUP_ATTEMPTS or not _transient_setup_failure(str(e)):
                raise _behind_start(e, found.start) from None
            report(Event(Phase.STARTING, "the sandbox's setup failed for a moment; again"))
    raise AssertionError("unreachable")


# bubblewrap's loopback setup in a new network namespace sometimes fails with ECHILD
# from netlink when the machine is loaded (seen under gVisor); nothing of the session
# ran yet, so starting again is safe.
SETUP_ATTEMPTS = 3
_TRANSIENT = ("bwrap: loopback: Failed RTM_NEWADDR",)


def _transient_setup_failure(message: str) -> bool:
    return "before it was ready" in message and any(t in message for t in _TRANSIENT)


def _start_once(
    plan: _Plan,
    spec: runtime.ServerSpec,
    box: sandbox.Sandbox,
    argv: list[str],
    token: str,
    deadline: float,
    report: Report,
) -> _Started:
    boxed = plan.isolation.sandboxed
    cgroups = None
    if boxed:
        cgroups = sandbox.make_cgroups(box.session_id, box.limits)
        argv = sandbox.limited(argv, cgroups, box.limits)
    process, log_file = _spawn(argv, token, plan.session_dir, box.repo, plan.kind, boxed, report)
    handle = None
    try:
        handle = lifetime.track(plan.session_dir, process, cgroups)
        if boxed and box.network is SessionNetwork.OUTBOUND:
            handle = _attach_network(box, process, handle, report)
        _wait_ready(
            spec,
            box.socket if boxed else None,
            token,
            process,
            log_file,
            deadline,
            plan.fetch.cancel,
        )
    except BaseException:
        lifetime.stop(plan.session_dir, handle=handle, process=process, grace=5.0)
        raise
    return _Started(process, log_file, lifetime.settled(plan.session_dir, handle))


def _scripts(repo: Path) -> scripts.Scripts:
    """The repository's postBuild and start; one that is refused fails the launch."""
    tree = RepoTree(repo)
    return scripts.find(tree, detect.find_config_dir(tree))


def _start_prefix(plan: _Plan, box: sandbox.Sandbox, start: scripts.Script | None) -> list[str]:
    """The start script, in front of Jupyter's command (which it gets as arguments)."""
    if start is None:
        return []
    if plan.kind is Runtime.GUIX:
        return scripts.guix_command(start, runtime.CONTAINER_WORK_DIR)
    return start.command(sandbox.WORK_DIR if plan.isolation.sandboxed else str(box.repo))


def _behind_start(error: JupyterError, start: scripts.Script | None) -> JupyterError:
    if start is None:
        return error
    return JupyterError(
        f'{error}\n{start.name} runs in front of Jupyter: it must end with exec "$@", '
        "which starts Jupyter with the environment it set"
    )


def _postbuild(
    plan: _Plan,
    spec: runtime.ServerSpec,
    box: sandbox.Sandbox,
    env: detect.Environment,
    script: scripts.Script,
    provenance: Provenance,
    borrowed: list[tuple[Path, str]],
    report: Report,
) -> None:
    """Run the repository's postBuild where Jupyter will run (see postbuild.py), or
    restore what it made for this commit and environment."""
    boxed = plan.isolation.sandboxed
    environment = dict(os.environ)  # unsandboxed: as the person running it
    if plan.kind is Runtime.GUIX:
        command = scripts.guix_command(script, runtime.CONTAINER_WORK_DIR)
        manifest = plan.session_dir / "manifest.scm"
        argv = _guix_command(spec, box, manifest, env.channels, boxed, command=command)
        environment = sandbox.guix_environment({}) if boxed else environment
    elif boxed:
        inner = script.command(sandbox.WORK_DIR)
        argv = sandbox.bwrap_argv(box, inner, borrowed, share_run=False)
        environment = sandbox.session_environment({})
    else:
        argv = [str(box.repo / script.real)]
    cgroups = None
    if boxed:
        cgroups = sandbox.make_cgroups(f"{box.session_id}-postbuild", box.limits)
        argv = sandbox.limited(argv, cgroups, box.limits)
    limit = postbuild.TIME_LIMIT
    if plan.kind is Runtime.GUIX:  # Guix builds the environment first, in the same command
        limit += plan.timeout or DEFAULT_TIMEOUT[plan.kind]
    job = postbuild.Job(script, argv, environment, box, boxed, cgroups, limit, plan.fetch.cancel)
    # Unsandboxed, nothing is kept: the result is restored only in a sandbox.
    fields = ("repository", "commit", "manifest", "channels", "guix_version", "runtime")
    identity = {k: getattr(provenance, k) for k in fields}
    kept = plan.cache / "postbuild" / postbuild.cache_key(script, identity) if boxed else None
    postbuild.ensure(job, kept, lambda line: report(Event(Phase.BUILDING, line)))


def _guix_command(
    spec: runtime.ServerSpec,
    box: sandbox.Sandbox,
    manifest: Path,
    channels: Path | None,
    boxed: bool,
    before: list[str] | None = None,
    command: list[str] | None = None,
    depot: tuple[Path, bool] | None = None,
) -> list[str]:
    """`guix shell --container …`; sandboxed, inside bubblewrap, so that Guix evaluates
    the repository's manifest and channels where they can reach nothing of the host.
    `before`: what starts ahead of Jupyter in the container (apps.app_prefix, a start
    script); `command`: what runs instead of Jupyter (a postBuild); `depot`: a Julia
    depot for Pluto (pluto.py), and whether the command may write it (sandboxed only)."""
    if not boxed:
        paths = runtime.GuixPaths(box.repo, manifest, channels, None, network=True)
        return runtime.guix_argv(spec, paths, before=before or (), command=command)
    outbound = box.network is SessionNetwork.OUTBOUND
    paths = sandbox.guix_stage(box, channels is not None, outbound)
    if command is not None:  # not Jupyter: the socket's folder is not shared with it
        paths = dataclasses.replace(paths, run_dir=None)
    program = sandbox.guix_program_inside()
    options = pluto.guix_options(depot[1]) if depot is not None else []
    inner = runtime.guix_argv(spec, paths, program, before or (), command, options)
    # A repository's own manifest is loaded by its path, which differs in the sandbox.
    text = manifest.read_text(encoding="utf-8")
    inside = box.session_dir / "manifest-sandbox.scm"
    inside.write_text(text.replace(f"{box.repo.resolve()}/", f"{paths.repo}/"), encoding="utf-8")
    binds = pluto.bwrap_binds(*depot) if depot is not None else []
    return sandbox.guix_bwrap_argv(box, inner, inside, channels, binds)


def _julia_depot(
    plan: _Plan,
    spec: runtime.ServerSpec,
    box: sandbox.Sandbox,
    env: detect.Environment,
    provenance: Provenance,
    report: Report,
) -> tuple[Path, bool]:
    """The Julia depot a Pluto session reads (pluto.py): kept for this commit and
    environment, or built now, with Julia's Pkg, where the session will run."""
    assert env.pluto is not None
    project = env.pluto.project
    kept = pluto.depot_dir(plan.cache, dataclasses.asdict(provenance))
    manifest = plan.session_dir / "manifest.scm"
    command = pluto.build_command(project)

    def build(depot: Path) -> None:
        if box.network is SessionNetwork.NONE:
            raise EnvironmentSpecError(pluto.NO_NETWORK)
        argv = _guix_command(
            spec, box, manifest, env.channels, True, command=command, depot=(depot, True)
        )
        cgroups = sandbox.make_cgroups(f"{box.session_id}-julia", box.limits)
        argv = sandbox.limited(argv, cgroups, box.limits)
        limit = postbuild.TIME_LIMIT + (plan.timeout or DEFAULT_TIMEOUT[plan.kind])
        environment = sandbox.guix_environment({})
        job = postbuild.Job(
            pluto.BUILD_STEP,
            argv,
            environment,
            box,
            True,
            cgroups,
            limit,
            plan.fetch.cancel,
            writes=(depot,),
            log_name=pluto.BUILD_LOG,
        )
        postbuild.run(job, lambda line: report(Event(Phase.BUILDING, line)))

    pluto.ensure(kept, build, lambda line: report(Event(Phase.BUILDING, line)))
    return kept, False


def _guix_check_command(
    spec: runtime.ServerSpec,
    box: sandbox.Sandbox,
    manifest: Path,
    channels: Path | None,
    boxed: bool,
    argv: list[str],
) -> list[str]:
    """The command whose dry run checks the environment: the session's own, offline
    (no user-mode network is attached to a check; pinned channels are fetched, with the
    session's network, when it starts)."""
    if not boxed or box.network is SessionNetwork.NONE:
        return argv
    offline = dataclasses.replace(box, network=SessionNetwork.NONE)
    return _guix_command(spec, offline, manifest, channels, boxed)


def _attach_network(
    box: sandbox.Sandbox,
    process: Popen[bytes],
    handle: sandbox.Handle,
    report: Report,
) -> sandbox.Handle:
    """Outbound network for the session; without it the session still runs, offline
    (failing closed), and says so."""
    try:
        slirp = sandbox.attach_network(box, process)
    except sandbox.SandboxError as e:
        report(Event(Phase.STARTING, f"no outbound network for this session: {e}"))
        return handle
    return lifetime.with_helper(box.session_dir, handle, slirp)


BORROWED_INSIDE = "/run/binder-lite-objects"


def _borrowed_objects(repo: Path) -> list[tuple[Path, str]]:
    """The cache's objects a checkout borrows (git clone --shared), read-only in the
    sandbox under a path of its own (the cache's path would show the state directory),
    so that git works inside the session."""
    alternates = repo / ".git" / "objects" / "info" / "alternates"
    try:
        lines = [Path(line) for line in alternates.read_text().split()]
    except OSError:
        return []
    borrowed = [(p, f"{BORROWED_INSIDE}/{i}") for i, p in enumerate(lines) if p.is_dir()]
    alternates.write_text("".join(f"{inside}\n" for _, inside in borrowed))
    return borrowed


def _jupyter_files(session_dir: Path) -> list[tuple[Path, str]]:
    """The session's Jupyter configuration, read-only inside the sandbox."""
    return [
        (session_dir / "jupyter-config", JUPYTER_CONFIG_INSIDE),
        (session_dir / "lab-settings", LAB_SETTINGS_INSIDE),
    ]


def _environment(
    repo: Path, kind: Runtime, report: Report, checked: str = ""
) -> detect.Environment:
    """The environment `repo` asks for.  `checked`: the manifest the service made from
    the same commit, its generated names checked by Guix already (Prepared)."""
    env = detect.detect(repo)
    where = env.config_dir.relative_to(repo) if env.config_dir != repo else Path(".")
    report(Event(Phase.RESOLVING, f"environment: {env.kind} (from {where}/)"))
    if kind is Runtime.GUIX and checked and env.kind != "manifest":
        report(Event(Phase.RESOLVING, "package names as the service's Guix checked them"))
        return dataclasses.replace(env, manifest=checked)
    if kind is Runtime.GUIX and runtime.guix_available():
        env = detect.with_checked_names(env, lambda names: guix.available_packages(names))
    for r in env.unavailable:
        report(Event(Phase.RESOLVING, f"skipped {r.source}: {r.note}"))
    for s in env.skipped:  # by file and line: the line's text is never repeated
        report(Event(Phase.RESOLVING, f"skipped {s.where}: {s.reason}"))
    return env


def _check_with_guix(argv: list[str], report: Report, env: dict[str, str] | None) -> None:
    """Have Guix evaluate the manifest first: a bad one fails here with Guix's own words,
    not somewhere in a container's log."""
    report(Event(Phase.BUILDING, "checking the environment with Guix"))
    try:
        summary = guix.dry_run_shell(argv, env)
    except GuixError as e:
        raise EnvironmentSpecError(
            f"Guix rejected the repository's environment:\n{e.output.strip()}"
        ) from None
    for line in summary.splitlines()[:50]:
        report(Event(Phase.BUILDING, line))


def normalise_open_path(path: str | None) -> str | None:
    """A notebook path inside the repository: relative, without `..`."""
    if not path:
        return None
    if path.startswith("/"):  # a page (BinderHub's urlpath), not a file: see apps.py
        return apps.normalise_view(path)
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path or "\x00" in path:
        raise LaunchError(f"{path!r}: the file to open must be a path inside the repository")
    return str(pure)


def _view_path(repo: Path, target: str | None) -> str:
    """The URL path of the page to show: the notebook asked for, index.ipynb, or the tree."""
    if apps.is_view(target):
        return apps.view_path(str(target))
    if target is None:
        if (repo / "index.ipynb").is_file():
            target = "index.ipynb"
        else:
            found = sorted(p.name for p in repo.glob("*.ipynb"))
            target = found[0] if found else None
    if target is None:
        return "tree"
    if target.endswith(".ipynb"):
        return "notebooks/" + quote(target)
    return ("tree/" if (repo / target).is_dir() else "edit/") + quote(target)


def _base_url(base: str) -> str:
    return "/" + base.strip("/") + "/" if base.strip("/") else "/"


def free_port() -> int:
    """A port nothing listens on now (the server binds it right after)."""
    try:
        return net.free_port()
    except OSError as e:
        raise LaunchError(f"no free port on 127.0.0.1: {e.strerror}") from None


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise LaunchError(f"port {port} is already in use; choose another") from None


JUPYTER_CONFIG_INSIDE = "/run/binder-lite-config/jupyter"
LAB_SETTINGS_INSIDE = "/run/binder-lite-config/lab"


def _spawn(
    argv: list[str],
    token: str,
    session_dir: Path,
    repo: Path,
    kind: Runtime,
    boxed: bool,
    report: Report,
) -> tuple[Popen[bytes], Path]:
    config = session_dir / "jupyter-config"
    config.mkdir(exist_ok=True)
    settings = _lab_settings(session_dir)
    if boxed and kind is Runtime.GUIX:
        env = sandbox.guix_environment({"JUPYTER_TOKEN": token})
    elif boxed:
        # Nothing of the service's environment reaches the session: it can name secrets.
        env = sandbox.session_environment(
            {
                "JUPYTER_TOKEN": token,
                "JUPYTER_CONFIG_DIR": JUPYTER_CONFIG_INSIDE,
                "JUPYTERLAB_SETTINGS_DIR": LAB_SETTINGS_INSIDE,
                "JUPYTER_RUNTIME_DIR": f"{sandbox.HOME}/.local/share/jupyter/runtime",
            }
        )
    else:
        env = dict(os.environ)
        env["JUPYTER_TOKEN"] = token
        # The session's own Jupyter directories: a user's ~/.jupyter config (a password,
        # another default kernel) must not change what the launcher promises.
        env["JUPYTER_CONFIG_DIR"] = str(config)
        env["JUPYTER_RUNTIME_DIR"] = str(session_dir / "runtime")
        env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    log_file = session_dir / "jupyter.log"
    log = open(log_file, "wb")  # noqa: SIM115 (handed to the reader thread)
    try:
        process = spawn(
            argv,
            cwd=repo,
            env=env,
            inherit_env=False,  # `env` is the whole of it (see above)
            fixed_locale=False,  # a user's own locale reaches their notebooks
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            new_session=True,
        )
    except ToolNotFoundError:
        log.close()
        raise JupyterError(f"{argv[0]} not found") from None
    phase = Phase.BUILDING if kind is Runtime.GUIX else Phase.STARTING
    threading.Thread(target=_pump, args=(process, log, phase, report), daemon=True).start()
    return process, log_file


def _lab_settings(session_dir: Path) -> Path:
    """Settings for Notebook 7 (a JupyterLab): start the preselected kernel instead of
    asking, for notebooks that do not name one."""
    settings = session_dir / "lab-settings"
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    return settings


def _pump(process: Popen[bytes], log: BinaryIO, phase: Phase, report: Report) -> None:
    """Copy the server's output to its log file and, as events, to the reporter."""
    assert process.stdout is not None
    with log:
        for raw in process.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", "replace").rstrip()
            if "Jupyter" in line or "NotebookApp" in line or "ServerApp" in line:
                phase = Phase.STARTING
            if line and "token=" not in line:  # tokens are never passed on
                report(Event(phase, line))


def _wait_ready(
    spec: runtime.ServerSpec,
    socket_path: Path | None,
    token: str,
    process: Popen[bytes],
    log_file: Path,
    deadline: float,
    cancel: threading.Event | None = None,
) -> None:
    where = f"{spec.origin}api/status" if socket_path is None else f"the socket {socket_path}"
    delay = 0.02
    while True:
        if cancel is not None and cancel.is_set():
            raise LaunchError("stopped while Jupyter was starting")
        if process.poll() is not None:
            raise JupyterError(
                f"Jupyter exited with status {process.returncode} before it was ready; "
                f"the end of its log ({log_file}):\n{_tail(log_file)}"
            )
        if _answers(spec, socket_path, token):
            return
        if time.monotonic() > deadline:
            raise JupyterError(
                f"Jupyter did not answer at {where} in time; the end of its log "
                f"({log_file}):\n{_tail(log_file)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _answers(spec: runtime.ServerSpec, socket_path: Path | None, token: str) -> bool:
    if socket_path is not None:
        return sandbox.jupyter_status(socket_path, spec.base_url, token, timeout=2) is not None
    status = f"{spec.origin}api/status"
    request = urllib.request.Request(status, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if "token=" not in line]
    return "\n".join(kept[-lines:]) or "(empty log)"


def _write_open_file(session: Session) -> None:
    """A page that forwards to the notebook, for browsers opened on a file (0600: it
    holds the token)."""
    path = session.open_file()
    target = html.escape(session.url, quote=True)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="1;url={target}"><title>Opening notebook</title>'
        f'</head><body><p>Opening <a href="{target}">the notebook</a>…</p></body></html>\n'
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
