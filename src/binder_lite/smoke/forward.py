"""A local port forwarded through an SSH connection (like `ssh -L`), so the smoke
tests reach the target's binder-lite wherever it runs."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

import paramiko


@contextlib.contextmanager
def forward(transport: paramiko.Transport, remote_port: int) -> Iterator[int]:
    """Yield a local port whose connections reach 127.0.0.1:`remote_port` on the target."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, peer = listener.accept()
            except OSError:
                return
            try:
                channel = transport.open_channel("direct-tcpip", ("127.0.0.1", remote_port), peer)
            except paramiko.SSHException:
                client.close()
                continue
            threading.Thread(target=_pipe, args=(client, channel, stop), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()


def _pipe(client: socket.socket, channel: paramiko.Channel, stop: threading.Event) -> None:
    with client, channel:
        while not stop.is_set():
            ready, _, _ = select.select([client, channel], [], [], 0.5)
            if client in ready:
                data = client.recv(65536)
                if not data:
                    return
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    return
                client.sendall(data)
