"""Waiting for the binder-lite service, once per smoke run.

A machine that has just booted may still be starting the service, so the checks that
need it give it time (bounded) and judge the service, not the boot's timing.  The wait
runs once: when it runs out, every later check that needs the service fails at once
with the same reason instead of waiting the whole time again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


class ServiceWait:
    def __init__(
        self,
        answers: Callable[[], bool],
        timeout: float,
        what: str,
        diagnose: Callable[[], str] = lambda: "",
        interval: float = 0.5,
    ) -> None:
        self.answers = answers
        self.timeout = timeout
        self.what = what  # "binder-lite on port 8080", for the message
        self.diagnose = diagnose  # evidence for the message (herd status), if it fails
        self.interval = interval
        self.failure: str | None = None
        self.waited = False

    def require(self) -> None:
        """Return once the service answers; fail the calling check if it never did."""
        if not self.waited:
            self.failure = self._wait()
            self.waited = True
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)

    def _wait(self) -> str | None:
        deadline = time.monotonic() + self.timeout
        while not self.answers():
            if time.monotonic() >= deadline:
                evidence = self.diagnose()
                return f"{self.what} did not answer within {self.timeout:g} s" + (
                    f"; {evidence}" if evidence else ""
                )
            time.sleep(self.interval)
        return None
