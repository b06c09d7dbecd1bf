"""A bound for calls that, were the code under test wrong, would not return: a regular
expression that backtracks without end, an alias bomb expanded, a server nobody hangs
up on.  The call runs in a child process, so even pure-Python work holding the GIL
can be stopped, and the test fails after a generous time instead of hanging the suite.

The time bounds a hang; it measures nothing.  Speed is measured in benchmarks/."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HANG = 120.0  # seconds: far beyond any correct run, even on a loaded machine


def in_child(function: Callable[..., T], *args: object, timeout: float = HANG) -> T:
    """`function(*args)` in a fresh Python process: its result (which must pickle), or
    an AssertionError once `timeout` has passed (the child is then killed).

    `function` must be importable by name (defined at the top of a module)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pending = pool.apply_async(function, args)
        try:
            return pending.get(timeout)
        except multiprocessing.TimeoutError:
            raise AssertionError(
                f"{function.__name__} had not returned after {timeout:.0f} s"
            ) from None
