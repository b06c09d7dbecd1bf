"""The smoke checks' fixtures (a pytest plugin loaded by the runner)."""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest

from binder_lite.smoke.forward import forward
from binder_lite.smoke.readiness import ServiceWait
from binder_lite.smoke.runner import CONTEXT, SmokeContext
from binder_lite.smoke.shepherd import AsRoot, as_root_on
from binder_lite.smoke.systemd import service_on, status_command
from binder_lite.vm import ssh


@pytest.fixture(scope="session")
def smoke(request: pytest.FixtureRequest) -> SmokeContext:
    return request.config.stash[CONTEXT]


@pytest.fixture(scope="session")
def ssh_client(smoke: SmokeContext) -> Iterator[paramiko.SSHClient]:
    client = ssh.connect(smoke.target, smoke.host_keys, smoke.identity)
    yield client
    client.close()


@pytest.fixture(scope="session")
def machine(smoke: SmokeContext, ssh_client: paramiko.SSHClient) -> Any:
    """testinfra's Host for the target, over our connection (testinfra's own would
    accept an unknown host key)."""
    import testinfra
    from testinfra.backend.paramiko import ParamikoBackend

    t = smoke.target
    backend = ParamikoBackend(f"paramiko://{t.user}@{t.host}:{t.port}")
    backend.__dict__["client"] = ssh_client
    return testinfra.host.Host(backend)


@pytest.fixture(scope="session")
def as_root(machine: Any) -> AsRoot:
    return as_root_on(machine)


@pytest.fixture(scope="session")
def tunnel(smoke: SmokeContext, ssh_client: paramiko.SSHClient) -> Iterator[str]:
    """binder-lite's address, reached through the SSH connection (answering or not)."""
    transport = ssh_client.get_transport()
    assert transport is not None
    with forward(transport, smoke.site.binder.port) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def service(smoke: SmokeContext, tunnel: str, machine: Any, as_root: AsRoot) -> ServiceWait:
    def diagnose() -> str:
        on_target = service_on(machine, "binder-lite", as_root)
        return f"{status_command(on_target)}:\n{on_target.status().output}"

    return ServiceWait(
        functools.partial(answers, tunnel),
        smoke.service_timeout,
        f"binder-lite on port {smoke.site.binder.port}",
        diagnose,
    )


@pytest.fixture
def web(service: ServiceWait, tunnel: str) -> str:
    """binder-lite's address once it answers (the wait is shared by all checks)."""
    service.require()
    return tunnel


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
