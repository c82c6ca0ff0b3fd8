"""Stopping the servers and workers that tests start, each in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the whole group (celery's pool, weed's children) and wait; SIGKILL only if it hangs,
    so a test sees a clean shutdown where there is one and never leaves a process behind."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
