"""cellio.pid_alive: the one process-liveness check (the store lock and the trainer's checkpoint temporaries)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import cellio


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def test_a_running_process_is_alive_and_an_exited_unreaped_one_is_not():
    assert cellio.pid_alive(os.getpid())
    assert not cellio.pid_alive(0) and not cellio.pid_alive(-3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert cellio.pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z" and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
            time.sleep(0.01)
        assert _state(child.pid) == "Z" and not cellio.pid_alive(child.pid)
    finally:
        child.wait()
    assert not cellio.pid_alive(child.pid)  # reaped: gone
