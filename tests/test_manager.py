"""The session manager's event stream, on its own (the web tests drive the rest)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from binder_lite.launch.session import Event, Phase
from binder_lite.site.model import Runtime
from binder_lite.web.manager import Limits, Live, SessionManager
from binder_lite.web.store import Store


def test_events_replay_then_heartbeat_then_end(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        manager = SessionManager(Store(tmp_path / "db.sqlite"), tmp_path, Runtime.LOCAL,
                                 Limits(2, 2, 60, 600, 60))  # fmt: skip
        manager._loop = asyncio.get_running_loop()
        manager.live["abc"] = Live("abc")
        manager._deliver("abc", Event(Phase.FETCHING, "one"))
        received: list[object] = []

        async def later() -> None:
            await asyncio.sleep(0.25)
            manager._deliver("abc", Event(Phase.READY, "notebooks/x.ipynb"))

        asyncio.get_running_loop().create_task(later())
        async for event in manager.events("abc", heartbeat=0.1):
            received.append(event.phase if event else None)
        return received

    received = asyncio.run(scenario())
    assert received[0] is Phase.FETCHING and received[-1] is Phase.READY
    assert None in received  # heartbeats while nothing happened
