"""Per-job lock files: two sweeps on one results folder never compute the same job twice.

The lock is created atomically (O_CREAT | O_EXCL) and holds the owner's PID, host and start time; while the job
runs, a heartbeat thread touches it every HEARTBEAT_S seconds. A lock is stale, and taken over, when its PID is dead
on this host (a killed sweep) or when its heartbeat stopped for STALE_AFTER_S (a killed SLURM job on another node,
whose PID cannot be checked from here; also a reused PID). Two sweeps that find the same stale lock in the same
instant can both take it over; that needs two restarts within microseconds of each other.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mustafar.procs import pid_alive

LOCK_NAME = "job.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # twenty missed heartbeats: the owner is gone (or stuck beyond use)


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since}"


def read_owner(path: Path) -> LockOwner | None:
    """The lock's owner, or None when the file is missing or not (yet) a whole record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockOwner(int(data["pid"]), str(data["host"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_owner(path: Path) -> LockOwner | None:
    """The owner of a lock that is held now; None for no lock or a stale one."""
    try:
        beat = path.stat().st_mtime
    except FileNotFoundError:
        return None
    if time.time() - beat > STALE_AFTER_S:
        return None
    owner = read_owner(path)
    if owner is None:  # being written this instant
        return LockOwner(-1, "unknown", beat)
    if owner.host == platform.node() and not pid_alive(owner.pid):
        return None
    return owner


class JobLock:
    """Held while a job computes: `acquire()` returns False when a live process elsewhere holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False
        self._stop = threading.Event()

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if live_owner(self.path) is not None:
                    return False
                self.path.unlink(missing_ok=True)  # stale: its owner died without releasing it
                continue
            record = {"pid": os.getpid(), "host": platform.node(), "started": time.time()}
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.held = True
            self._stop.clear()
            threading.Thread(target=self._heartbeat, name="mustafar-lock-heartbeat", daemon=True).start()
            return True
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def owner(self) -> LockOwner | None:
        return live_owner(self.path)

    def holder(self) -> str:
        """Who holds the lock and where it lies, for a "running elsewhere" line."""
        owner = self.owner()
        return f"{owner.describe() if owner else 'another process'}; lock {self.path}"

    def release(self) -> None:
        if self.held:
            self._stop.set()
            self.path.unlink(missing_ok=True)
            self.held = False
