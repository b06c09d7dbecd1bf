"""Sessions as Slurm jobs: `binder-lite serve --runtime slurm` against a real Slurm
(tests/slurmkit.py: munged, slurmctld, two slurmd in network namespaces of their own),
sessions sandboxed on the nodes and reached over the bridge between them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import slurmkit
from launchkit import execute, make_repo
from test_web import local_build_path
from webkit import Client, Server, wait_for

from binder_lite.launch import node, slurm
from binder_lite.launch.node import FORBIDDEN
from binder_lite.launch.session import Event
from binder_lite.site import load_site
from binder_lite.site.model import Runtime, SessionLimits, SessionNetwork, Slurm

WHY = slurmkit.available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")

SITE = """\
version: 1
site:
  name: Slurm Binder
  slug: slurm
binder:
  max_sessions: 6
  max_sessions_per_user: 6
  max_age: {max_age}
  session_network: none
  session_limits:
    memory: 512MiB
  slurm:
    partition: {partition}
    cpus: 1
    node_runtime: local
    time_limit: {time_limit}
"""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurmkit.Cluster]:
    with slurmkit.cluster(tmp_path_factory.mktemp("slurm")) as made:
        # binder-lite serve, sbatch and the tests' own squeue find the cluster here.
        before = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(made.conf)
        try:
            yield made
        finally:
            if before is None:
                del os.environ["SLURM_CONF"]
            else:
                os.environ["SLURM_CONF"] = before
    for n in made.nodes:
        assert slurmkit.in_namespace(n.netns) == []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def serve(tmp_path: Path, cluster: slurmkit.Cluster, time_limit: int = 0) -> Server:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(max_age=3600, partition=cluster.partition, time_limit=time_limit))
    args = ("--allow-local-repos", "--runtime", "slurm", "--cull-interval", "1")
    return Server(site, tmp_path / "state", args).start()


@pytest.fixture
def server(tmp_path: Path, cluster: slurmkit.Cluster) -> Iterator[Server]:
    srv = serve(tmp_path, cluster)
    yield srv
    srv.stop()
    wait_for(lambda: not cluster.jobs(), 60, "the service's jobs to end")


def launch_form(client: Client, repo: Path) -> str:
    """Launch through the form; the session's id, at once (its job may still wait)."""
    response = client.post("/launch", {"repo": f"file://{repo}", "ref": "main"})
    assert response.status == 303, response.text
    return response.headers["Location"].split("/")[2]


def ready_events(client: Client, sid: str) -> list[dict[str, object]]:
    events = client.events(f"/sessions/{sid}/events")
    assert events[-1]["phase"] == "ready", events
    return events


def job_of(server: Server, sid: str) -> str:
    return str(wait_for(lambda: server.session_field(sid, "job_id"), 60, "a job id"))


def messages(events: list[dict[str, object]]) -> str:
    return "".join(str(e.get("message", "")) for e in events)


def test_a_session_runs_as_a_job_on_a_node_and_a_cell_runs_through_the_proxy(
    server: Server, cluster: slurmkit.Cluster, repo: Path
) -> None:
    client = Client(server.url)
    events = client.events(local_build_path(repo))
    assert events[-1]["phase"] == "ready", events
    said = messages(events)
    assert "submitted to Slurm as job" in said
    node_names = {n.name for n in cluster.nodes}
    started = re.search(r"starting on (\S+)", said)
    assert started is not None and started.group(1) in node_names
    sid = re.search(r"/s/([0-9a-f]{16})/", str(events[-1]["url"]))
    assert sid is not None
    sid_ = sid.group(1)
    job = cluster.job(job_of(server, sid_))
    assert job["JobName"] == f"binder-lite-{sid_}" and job["JobState"] == "RUNNING"
    assert job["TimeLimit"] == "01:00:00"  # binder.max_age, 3600 s
    # The front reaches the session on its node's address, over the bridge.
    where = str(server.session_field(sid_, "node"))
    assert where.split(":")[0] in {n.address for n in cluster.nodes}
    assert server.session_field(sid_, "socket") is None
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.jar)
    headers = {"Origin": server.url, "Cookie": cookie}
    assert execute(f"{server.url}/s/{sid_}/", "unused", "6 * 7", headers=headers) == "42"
    assert client.get(f"/s/{sid_}/api/kernelspecs").status == 200
    token = str(events[-1]["token"])
    assert all(token not in json.dumps(e) for e in events[:-1])
    # The job took the checkout the service had made, rather than cloning again.
    folder = server.state_dir / "sessions" / sid_
    log = (folder / "job.log").read_text()
    assert "took the checkout of" in log
    # Each line of the job's log says when (to the millisecond), and none the token.
    stamped = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (\w+): ")
    phases = [m.group(1) for line in log.splitlines() if (m := stamped.match(line))]
    assert phases[0] == "fetching" and phases[-1] == "ready", log
    assert token not in log
    assert server.session_field(sid_, "work_dir") == str(folder / "node" / "repo")
    assert not (folder / "repo").exists() and not (folder / "node-cache").exists()


def test_the_node_s_relay_refuses_whoever_lacks_the_token(
    server: Server, cluster: slurmkit.Cluster, repo: Path
) -> None:
    client = Client(server.url)
    sid = launch_form(client, repo)
    ready_events(client, sid)
    host, port = str(server.session_field(sid, "node")).rsplit(":", 1)
    token = str(server.session_field(sid, "token"))
    wrong = token[:-1] + ("1" if token.endswith("0") else "0")
    for head in (
        f"GET /s/{sid}/api/status HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /s/{sid}/api/status HTTP/1.1\r\nAuthorization: token {wrong}\r\n\r\n",
        f"GET /s/{sid}/api/status HTTP/1.1\r\nX-A: Authorization: token {token}\r\n\r\n",
    ):
        assert _raw(host, int(port), head).startswith(b"HTTP/1.1 403 ")
    # A head too large to read is refused too (the refusal may reach the client as a
    # reset, since it is still sending): nothing of Jupyter's answers.
    huge = f"GET /s/{sid}/api/status HTTP/1.1\r\nX: {'a' * 70000}\r\n"
    assert _raw(host, int(port), huge + f"Authorization: token {token}\r\n\r\n") in (
        b"",
        FORBIDDEN,
    )
    good = f"GET /s/{sid}/api/status HTTP/1.1\r\nHost: localhost\r\n"
    good += f"Authorization: token {token}\r\nConnection: close\r\n\r\n"
    assert _raw(host, int(port), good).startswith(b"HTTP/1.1 200 ")


def _raw(host: str, port: int, head: str) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        with contextlib.suppress(OSError):  # refused before the whole head was sent
            s.sendall(head.encode())
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
        return data


def test_two_sessions_run_on_two_nodes_and_stop_cancels_the_job(
    server: Server, cluster: slurmkit.Cluster, repo: Path
) -> None:
    client = Client(server.url)
    sids = [launch_form(client, repo) for _ in range(2)]
    for sid in sids:
        ready_events(client, sid)
    jobs = [job_of(server, sid) for sid in sids]
    assert {cluster.job(j)["BatchHost"] for j in jobs} == {n.name for n in cluster.nodes}
    assert client.post(f"/sessions/{sids[0]}/stop").status == 303
    assert jobs[0] not in cluster.jobs() and jobs[1] in cluster.jobs()
    assert cluster.job(jobs[0])["JobState"] == "CANCELLED"
    assert client.get(f"/s/{sids[0]}/api/status").status == 404
    assert client.get(f"/s/{sids[1]}/api/status").status == 200


def test_a_full_cluster_queues_with_slurm_s_reason_and_starts_when_a_slot_frees(
    server: Server, cluster: slurmkit.Cluster, repo: Path
) -> None:
    client = Client(server.url)
    first = [launch_form(client, repo) for _ in range(2)]
    for sid in first:
        ready_events(client, sid)
    waiting = launch_form(client, repo)
    # The stream ends only once the session is ready or has ended: a failed check
    # below stops the session, so that the stream's thread ends too.
    pool = concurrent.futures.ThreadPoolExecutor(1)
    seen: list[dict[str, object]] = []
    stream = pool.submit(client.follow, f"/sessions/{waiting}/events", seen)
    try:
        job = job_of(server, waiting)
        wait_for(lambda: cluster.job(job).get("Reason") == "Resources", 60, "the job to wait")
        # The slot is freed only once the service has said why the job waits: freed at
        # once, the job may start before the service's next look at the queue.
        wait_for(lambda: "queued in Slurm: Resources" in messages(seen), 60, "the reason shown")
        assert cluster.jobs()[job] == "PENDING"
        assert server.session_field(waiting, "status") == "pending"
        assert client.post(f"/sessions/{first[0]}/stop").status == 303
        events = stream.result(timeout=300)
    finally:
        if not stream.done():
            client.post(f"/sessions/{waiting}/stop")
        pool.shutdown(wait=True)
    said = messages(events)
    assert "queued in Slurm: Resources, position 1 of 1" in said
    assert events[-1]["phase"] == "ready"
    assert said.index("queued in Slurm") < said.index("starting on")


def test_a_restarted_service_adopts_running_jobs_and_cancels_unknown_ones(
    tmp_path: Path, cluster: slurmkit.Cluster, repo: Path
) -> None:
    srv = serve(tmp_path, cluster)
    client = Client(srv.url)
    sid = launch_form(client, repo)
    ready_events(client, sid)
    job = job_of(srv, sid)
    # A job of the service that no record names (a crash between sbatch and the record).
    stray = cluster.run(
        "sbatch",
        "--parsable",
        f"--partition={cluster.partition}",
        f"--job-name=binder-lite-{'ab' * 8}",
        f"--output={tmp_path}/stray.out",
        "--wrap",
        "sleep 600",
    ).strip()
    srv.proc.kill()  # type: ignore[union-attr]
    srv.proc.wait(timeout=30)  # type: ignore[union-attr]
    srv.start()
    assert cluster.jobs().get(job) == "RUNNING"
    # Cancelled at the start; a stray that had started yet is COMPLETING for a moment.
    wait_for(lambda: stray not in cluster.jobs(), 60, "the stray job to end")
    assert cluster.job(stray)["JobState"] == "CANCELLED"
    assert srv.session_field(sid, "status") == "running"
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.jar)
    headers = {"Origin": srv.url, "Cookie": cookie}
    assert execute(f"{srv.url}/s/{sid}/", "unused", "6 * 7", headers=headers) == "42"
    srv.stop()
    wait_for(lambda: not cluster.jobs(), 60, "the service's jobs to end")


def test_a_job_slurm_ends_at_its_time_limit_ends_the_session_with_slurm_s_reason(
    tmp_path: Path, cluster: slurmkit.Cluster, repo: Path
) -> None:
    srv = serve(tmp_path, cluster, time_limit=1)  # a minute: Slurm's smallest limit
    try:
        client = Client(srv.url)
        sid = launch_form(client, repo)
        ready_events(client, sid)
        job = job_of(srv, sid)
        assert cluster.job(job)["TimeLimit"] == "00:01:00"
        # Slurm checks limits every half minute: the job ends within 90 s of its start.
        wait_for(lambda: srv.session_field(sid, "status") == "stopped", 180, "the end")
        message = str(srv.session_field(sid, "message"))
        assert message == "its Slurm job ended: TIMEOUT (TimeLimit)", message
        assert job not in cluster.jobs()
        assert client.get(f"/s/{sid}/api/status").status == 404
    finally:
        srv.stop()


def test_slurm_refusing_a_job_fails_the_launch_with_slurm_s_words(
    tmp_path: Path, cluster: slurmkit.Cluster, repo: Path
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(max_age=3600, partition="no-such-partition", time_limit=0))
    srv = Server(site, tmp_path / "state", ("--allow-local-repos", "--runtime", "slurm")).start()
    try:
        events = Client(srv.url).events(local_build_path(repo))
        assert events[-1]["phase"] == "failed"
        assert "Invalid partition name specified" in str(events[-1]["message"])
    finally:
        srv.stop()


# -- without a cluster: the job's command line, the report's signature ----------------


def test_sbatch_gets_the_settings_and_nothing_of_binder_lite_s_own_is_overridden(
    tmp_path: Path,
) -> None:
    settings = Slurm(
        partition="interactive",
        account="gn",
        qos="short",
        cpus=2,
        gres="gpu:1",
        extra_args=("--constraint=bigmem",),
    )
    argv = slurm.sbatch_argv(settings, "ab" * 8, tmp_path, 361, 2 * 1024**3)
    assert argv[:2] == ["sbatch", "--parsable"]
    for option in (
        f"--job-name=binder-lite-{'ab' * 8}",
        "--time=361",
        "--mem=2048M",
        "--cpus-per-task=2",
        "--partition=interactive",
        "--account=gn",
        "--qos=short",
        "--gres=gpu:1",
        "--no-requeue",
        "--constraint=bigmem",
    ):
        assert option in argv
    assert argv[-1] == str(tmp_path / slurm.SCRIPT)
    assert slurm.job_time(Slurm(), 3601) == 61 and slurm.job_time(Slurm(time_limit=5), 3600) == 5


@pytest.mark.parametrize(
    ("yaml", "problem"),
    [
        ("extra_args: [--time=99]", "binder.slurm.extra_args[0]: --time is set by binder-lite"),
        ("extra_args: [-x]", "is not a long sbatch option"),
        ("partition: 'a b'", "binder.slurm.partition: 'a b' is not a Slurm name"),
        ("gres: 'gpu;1'", "binder.slurm.gres: 'gpu;1' is not a --gres value"),
        ("node_runtime: docker", "binder.slurm.node_runtime: 'docker' is not one of"),
        ("cpus: 0", "binder.slurm.cpus"),
    ],
)
def test_slurm_settings_are_checked_where_they_are_written(
    tmp_path: Path, yaml: str, problem: str
) -> None:
    from binder_lite.errors import SiteError

    site = tmp_path / "site.yaml"
    site.write_text(
        "version: 1\nsite:\n  name: S\n  slug: s\nbinder:\n  runtime: slurm\n"
        f"  slurm:\n    {yaml}\n"
    )
    with pytest.raises(SiteError) as refused:
        load_site(site, for_service=True)
    assert problem in str(refused.value)
    assert f"{site}:8:" in str(refused.value)  # the line it is written on


def test_a_report_is_believed_only_with_the_session_s_signature() -> None:
    report = node.Report("7", "10.1.2.3", 4000, "t" * 48, "tree", "/w", "n1")
    signed = report.signed("secret")
    assert node.Report.verified(signed, "secret") == report
    assert node.Report.verified(signed, "other") is None
    assert node.Report.verified({**signed, "port": 4001}, "secret") is None
    assert node.Report.verified({**signed, "node": "n2"}, "secret") is None
    assert node.Report.verified({**signed, "mac": None}, "secret") is None
    assert node.Report.verified("nonsense", "secret") is None


def test_the_job_s_spec_carries_what_the_service_prepared() -> None:
    """The manifest the service made (its generated names checked with Guix) reaches
    the job whole, with the rest of the spec (session.Prepared)."""
    spec = node.Spec(
        session_id="ab" * 8,
        source="/state/cache/repos/x.git",
        commit="c" * 40,
        open_path="a b.ipynb",
        base_url=f"/s/{'ab' * 8}/",
        runtime=Runtime.GUIX,
        sandboxed=True,
        network=SessionNetwork.NONE,
        limits=SessionLimits(2 * 1024**3, 256, 10 * 1024**3),
        secret="s" * 64,
        manifest='(specifications->manifest (list "python" "python-numpy"))\n',
    )
    assert node.Spec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@contextlib.contextmanager
def stand_in_jupyter(token: str) -> Iterator[int]:
    """An HTTP server answering Jupyter's /s/x/api/status to the token; its port."""

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/s/x/api/status"
            ok = ok and self.headers["Authorization"] == f"token {token}"
            body = b'{"started": "now"}' if ok else b""
            self.send_response(200 if ok else 403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(timeout=10)


def stand_in_slurm(bin_dir: Path, answers: list[str], first: str = "") -> Path:
    """scontrol and squeue on PATH for job 42: scontrol's Nth call runs `first` (the
    first only) and prints answers[N] (the last one again after); the calls are counted
    in the file returned."""
    bin_dir.mkdir()
    calls = bin_dir / "calls"
    lines = ["#!/bin/sh", f"echo asked >> {calls}", f"n=$(wc -l < {calls})"]
    for i, answer in enumerate(answers, 1):
        test = f'[ "$n" -ge {i} ]' if i == len(answers) else f'[ "$n" -eq {i} ]'
        run_first = f"{first}; " if i == 1 and first else ""
        lines.append(f"if {test}; then {run_first}echo 'JobId=42 {answer}'; exit 0; fi")
    (bin_dir / "scontrol").write_text("\n".join(lines) + "\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 42\n")
    for tool in ("scontrol", "squeue"):
        (bin_dir / tool).chmod(0o755)
    return calls


def test_the_job_s_signed_report_ends_the_wait_before_slurm_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report is looked for between Slurm's looks, and believed once signed and its
    session answers: here Slurm, asked once, still says the job waits."""
    secret, token = "s" * 64, "t" * 48
    folder = tmp_path / "session"
    folder.mkdir()
    with stand_in_jupyter(token) as port:
        found = node.Report("42", "127.0.0.1", port, token, "tree", "/w", "n7")
        (tmp_path / "ready").write_text(json.dumps(found.signed(secret)))
        copy = f"cp {tmp_path / 'ready'} {folder / node.REPORT_FILE}"
        calls = stand_in_slurm(tmp_path / "bin", ["JobState=PENDING Reason=Priority"], copy)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        said: list[Event] = []
        submitted = slurm.Submitted("42", secret)
        deadline = time.monotonic() + 60
        got = slurm.wait_ready(submitted, folder, "/s/x/", said.append, threading.Event(), deadline)
    assert got == found
    assert [e.message for e in said] == [
        "queued in Slurm: Priority, position 1 of 1",
        "starting on n7",
    ]
    assert calls.read_text().count("asked") == 1


def test_a_report_signed_with_another_secret_is_not_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone else's report, of a session that answers, in the job's folder: the
    service waits on until Slurm says the job ended, and says Slurm's reason."""
    token = "t" * 48
    folder = tmp_path / "session"
    folder.mkdir()
    with stand_in_jupyter(token) as port:
        forged = node.Report("42", "127.0.0.1", port, token, "tree", "/w", "n7")
        (folder / node.REPORT_FILE).write_text(json.dumps(forged.signed("f" * 64)))
        answers = ["JobState=RUNNING Reason=None BatchHost=n7"] * 2
        calls = stand_in_slurm(tmp_path / "bin", [*answers, "JobState=FAILED Reason=Crash"])
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        said: list[Event] = []
        submitted = slurm.Submitted("42", "s" * 64)
        deadline = time.monotonic() + 60
        with pytest.raises(slurm.SlurmError) as ended:
            slurm.wait_ready(submitted, folder, "/s/x/", said.append, threading.Event(), deadline)
    assert "the Slurm job 42 ended: FAILED (Crash)" in str(ended.value)
    assert [e.message for e in said] == ["starting on n7"]
    assert calls.read_text().count("asked") == 3


@pytest.mark.guix
def test_the_guix_service_carries_the_slurm_settings_to_the_service(
    guix: str, cli: Any, tmp_path: Path
) -> None:
    """site file -> rendered system -> Guix's binder-lite-configuration -> the JSON
    `binder-lite serve` reads: the Slurm settings arrive as written."""
    from conftest import MINIMAL_SITE
    from test_guix import OS_CONFIG, service_json

    from binder_lite.scheme import scm_str

    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        MINIMAL_SITE
        + "binder:\n  runtime: slurm\n  slurm:\n    partition: interactive\n"
        + "    account: gn\n    time_limit: 90\n    memory: 3GiB\n    cpus: 4\n"
        + "    gres: gpu:1\n    extra_args: [--constraint=bigmem]\n    node_runtime: local\n"
    )
    assert cli("render", site_file, "-o", tmp_path / "out").code == 0
    system = scm_str(str(tmp_path / "out" / "system.scm"))
    written = service_json(guix, tmp_path, OS_CONFIG.format(system=system))
    served = load_site(written, for_service=True)
    site = load_site(site_file)
    assert served.binder.runtime == site.binder.runtime == "slurm"
    assert served.binder.slurm == site.binder.slurm
    assert served.binder.slurm.extra_args == ("--constraint=bigmem",)
