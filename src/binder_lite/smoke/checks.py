"""What `binder-lite smoke` checks on a binder-lite machine (pytest runs this file;
fixtures come from binder_lite.smoke.runner.SmokePlugin)."""

from __future__ import annotations

import html
import json
import shlex
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from binder_lite.kernel import run_cell
from binder_lite.render import issue_text
from binder_lite.smoke.fixtures import answers
from binder_lite.smoke.runner import SmokeContext
from binder_lite.smoke.shepherd import AsRoot, ShepherdService
from binder_lite.smoke.systemd import SystemdService, service_on, status_command, uses_systemd
from binder_lite.vm import ssh


def test_sshd_answers_and_refuses_passwords(smoke: SmokeContext, machine: Any) -> None:
    assert machine.run("true").rc == 0
    methods = ssh.allowed_auth_methods(smoke.target, smoke.host_keys)
    assert "publickey" in methods
    if not smoke.site.ssh.password_authentication:
        assert "password" not in methods, f"sshd offers {methods}"


def test_binder_lite_service_is_running(machine: Any, as_root: AsRoot, web: str) -> None:
    service = service_on(machine, "binder-lite", as_root)
    status = service.status()
    assert status.running, f"{status_command(service)}:\n{status.output}"


def test_page_shows_the_sites_branding(smoke: SmokeContext, web: str) -> None:
    with urllib.request.urlopen(f"{web}/", timeout=30) as response:
        page = response.read().decode("utf-8")
    assert html.escape(smoke.site.site.name, quote=False) in page
    if smoke.site.site.tagline:
        assert html.escape(smoke.site.site.tagline, quote=False) in page
    with urllib.request.urlopen(f"{web}/theme.css", timeout=30) as response:
        assert smoke.site.site.primary_color in response.read().decode()


def test_issue_hostname_and_time_zone(smoke: SmokeContext, machine: Any) -> None:
    if uses_systemd(machine):
        pytest.skip("a server binder-lite was installed on keeps its own /etc/issue, name and zone")
    assert machine.file("/etc/issue").content_string == issue_text(smoke.site)
    assert machine.check_output("hostname") == smoke.site.host.hostname
    zone = machine.run("readlink -f /etc/localtime").stdout.strip()
    named = machine.run("cat /etc/timezone").stdout.strip()
    assert zone.endswith("/" + smoke.site.host.timezone) or named == smoke.site.host.timezone


def test_a_notebook_runs_a_cell(smoke: SmokeContext, machine: Any, web: str) -> None:
    repo = smoke.repo or _make_repository(machine)
    path = f"/build/git/{urllib.parse.quote(repo, safe='')}/HEAD"
    with urllib.request.urlopen(f"{web}{path}", timeout=900) as response:
        events = [
            json.loads(line[6:])
            for line in response.read().decode().splitlines()
            if line.startswith("data: ")
        ]
    assert events and events[-1]["phase"] == "ready", events[-1:]
    session = str(events[-1]["url"]).split("/s/", 1)[1].strip("/")
    result = run_cell(f"{web}/s/{session}/", str(events[-1]["token"]), "6 * 7")
    assert result == "42"


def test_no_secret_is_in_the_store(smoke: SmokeContext, machine: Any, as_root: AsRoot) -> None:
    secret_files = [
        f
        for f in (smoke.site.binder.auth.client_secret_file, smoke.site.binder.push_credential_file)
        if f
    ]
    if not secret_files:
        pytest.skip("the site names no secret files")
    if not machine.file("/gnu/store").is_directory:
        pytest.skip("no /gnu/store on this target")
    checked = 0
    for path in secret_files:
        read = machine.run(as_root("cat %s"), path)
        if read.rc != 0 or not read.stdout.strip():
            continue
        secret = read.stdout.strip()
        found = machine.run(as_root("grep -rlF -e %s /gnu/store"), secret)
        assert found.stdout.strip() == "", f"{path}'s content is in {found.stdout.split()[:3]}"
        checked += 1
    if checked == 0:
        pytest.skip(f"none of {secret_files} exists on the target yet")


def test_service_comes_back_after_kill_9(
    smoke: SmokeContext, machine: Any, as_root: AsRoot, web: str
) -> None:
    service = service_on(machine, "binder-lite", as_root)
    shown = status_command(service)
    before = service.status()
    assert before.running and before.pid, f"{shown}:\n{before.output}"
    assert machine.run(as_root("kill -9 %s"), str(before.pid)).rc == 0
    # The service manager's part (the Shepherd's or systemd's): a new process within
    # respawn_within.  The new process's own
    # start-up (Python, the database) is bounded like the first one after a boot: on a
    # slow or busy machine it alone can take longer than the respawn.
    respawned = _poll(smoke.respawn_within, lambda: _respawned(service, before.pid))
    assert respawned, (
        f"{service.manager} did not restart binder-lite within {smoke.respawn_within:g} s; "
        f"{shown}:\n{service.status().output}"
    )
    assert _poll(smoke.service_timeout, lambda: answers(web)), (
        f"binder-lite, restarted, did not answer within {smoke.service_timeout:g} s; "
        f"{shown}:\n{service.status().output}"
    )


def _respawned(service: ShepherdService | SystemdService, old_pid: int | None) -> bool:
    now = service.status()
    return now.running and now.pid not in (None, old_pid)


def _poll(seconds: float, done: Callable[[], bool]) -> bool:
    """True as soon as `done()` is; False if it is not within `seconds`."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def _make_repository(machine: Any) -> str:
    """A one-notebook repository on the target (the service must admit file://)."""
    notebook = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    directory = machine.check_output("mktemp -d /tmp/binder-lite-smoke-XXXXXX")
    script = " && ".join(
        [
            f"cd {shlex.quote(directory)}",
            "git init -q",
            f"printf %s {shlex.quote(notebook)} > index.ipynb",
            "git add index.ipynb",
            "git -c user.name=smoke -c user.email=smoke@localhost commit -q -m smoke",
            f"chmod -R a+rX {shlex.quote(directory)}",
        ]
    )
    assert machine.run(script).rc == 0
    return f"file://{directory}"
