"""The smoke checks' fixtures (a pytest plugin loaded by the runner)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest

from binder_lite.smoke.forward import forward
from binder_lite.smoke.runner import CONTEXT, SmokeContext
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
def web(smoke: SmokeContext, ssh_client: paramiko.SSHClient) -> Iterator[str]:
    """binder-lite's address, reached through the SSH connection."""
    transport = ssh_client.get_transport()
    assert transport is not None
    with forward(transport, smoke.site.binder.port) as port:
        url = f"http://127.0.0.1:{port}"
        # A machine that just booted may still be starting the service: give it time
        # (bounded), so that the checks judge the service, not the boot's timing.
        deadline = time.monotonic() + smoke.service_timeout
        while not answers(url):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"binder-lite did not answer on port {smoke.site.binder.port} "
                    f"within {smoke.service_timeout:.0f} s",
                    pytrace=False,
                )
            time.sleep(0.5)
        yield url


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
