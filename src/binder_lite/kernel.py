"""Running a cell on a Jupyter server over its kernel websocket (used by the smoke
tests, and by binder-lite's own tests)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def run_cell(
    base: str, token: str, code: str, headers: dict[str, str] | None = None, timeout: float = 120.0
) -> str:
    """Start a kernel on the server at `base` (…/ with a trailing slash), run `code`
    there, return its text/plain result (its first value shown); raise AssertionError on
    a kernel error."""
    extra = {"Authorization": f"token {token}", **(headers or {})}
    request = urllib.request.Request(
        f"{base}api/kernels",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", **extra},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        kernel = json.loads(response.read())["id"]
    url = re.sub(r"^http", "ws", base) + f"api/kernels/{kernel}/channels"
    if "Origin" not in extra:
        extra["Origin"] = re.sub(r"^(https?://[^/]+).*", r"\1", base)
    return asyncio.run(_execute(url, extra, code, timeout))


def execute_request(code: str) -> tuple[str, dict[str, object]]:
    """A Jupyter messaging execute_request for `code`: (its id, the message)."""
    msg_id = uuid.uuid4().hex
    return msg_id, {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "binder-lite",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
    }


async def _execute(url: str, headers: dict[str, str], code: str, timeout: float) -> str:
    conn = await asyncio.wait_for(websocket_connect(HTTPRequest(url, headers=headers)), timeout)
    msg_id, message = execute_request(code)
    conn.write_message(json.dumps(message))
    try:
        while True:
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            if raw is None:
                raise AssertionError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            # IRkernel shows a value as display_data, where IPython has an execute_result.
            if msg["msg_type"] in ("execute_result", "display_data"):
                return str(msg["content"]["data"]["text/plain"])
            if msg["msg_type"] == "error":
                raise AssertionError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
    finally:
        conn.close()
