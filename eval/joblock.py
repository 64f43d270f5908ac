"""Per-job lock files: two sweeps on one results folder never compute the same job twice.

The lock is created atomically (O_CREAT | O_EXCL) and holds the owner's PID, host and start time. A lock whose PID
is dead on this host is stale (its sweep was killed) and is taken over; a lock from another host is trusted, since
its PID cannot be checked from here (delete the file by hand if that host is gone). Two sweeps that find the same
stale lock in the same instant can both take it over; that needs two restarts within microseconds of each other.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from mustafar.procs import pid_alive

LOCK_NAME = "job.lock"
UNREADABLE_GRACE_S = 60.0  # a lock file the owner has not finished writing yet is young; an old one is debris


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
    owner = read_owner(path)
    if owner is None:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return LockOwner(-1, "unknown", mtime) if time.time() - mtime < UNREADABLE_GRACE_S else None
    if owner.host == platform.node() and not pid_alive(owner.pid):
        return None
    return owner


class JobLock:
    """Held while a job computes: `acquire()` returns False when a live process elsewhere holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

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
            return True
        return False

    def owner(self) -> LockOwner | None:
        return live_owner(self.path)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
