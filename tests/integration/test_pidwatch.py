"""guestfail.system.processes.PidWatch with real processes (pidfds)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from guestfail.system.processes import PidWatch


def test_a_new_process_under_a_name_replaces_the_old_one() -> None:
    """teamd restarted under the same master: the old process's exit is no
    event any more (it said "teamd exited" for the running one), the new
    one's is."""

    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        exited: list[str] = []
        gone = asyncio.Event()

        def on_exit(name: str) -> None:
            exited.append(name)
            gone.set()

        watch = PidWatch(loop, on_exit)
        old = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        new = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            assert watch.watch("team0", old.pid)
            assert watch.watch("team0", new.pid)
            assert old.stdin is not None and new.stdin is not None
            old.stdin.close()
            old.wait(10)
            new.stdin.close()  # its exit is the only event
            new.wait(10)
            await asyncio.wait_for(gone.wait(), 10)
            await asyncio.sleep(0)  # a stale reader would fire in this turn of the loop
            return exited
        finally:
            watch.close()
            for p in (old, new):
                if p.poll() is None:
                    p.kill()
                    p.wait()

    assert asyncio.run(go()) == ["team0"]
