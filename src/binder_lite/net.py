"""Small network helpers shared by the launcher, the VM runner and the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nothing listens on now on 127.0.0.1 (whoever asked binds it next).
    Raises OSError when none can be had."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
