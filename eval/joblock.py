"""Per-job lock files: two sweeps on one results folder never compute the same job twice.

The lock is created atomically (O_CREAT | O_EXCL) and holds the owner's PID, host, start time, a random token, the
kernel's boot id and the PID's process start (/proc/<pid>/stat field 22, clock ticks after boot); while the job
runs, a heartbeat thread touches it every HEARTBEAT_S seconds.

A lock is stale, and taken over, when on this host its PID is dead, belongs to another process than the one that
wrote it (a container restart reuses PIDs, its own PID included: the process start differs), or was written
before the last boot; or when its heartbeat stopped for STALE_AFTER_S (a killed SLURM job on another node, whose
PID cannot be checked from here). A lock written before locks carried the process start is stale when it was
written before the process now holding its PID started.

On this host a live owner (its PID runs and is the process that wrote the lock) holds the lock however old its
heartbeat (a stopped or suspended sweep still owns its job); the heartbeat age decides only for another host's
owner. A lock is written whole before it appears (a temporary file hard-linked into place), so an unreadable lock
is a writer that died mid-write (or one older format): stale after UNREADABLE_STALE_S.

Taking over a stale lock happens under a second, short-lived lock (``job.lock.takeover``, created exclusively):
its holder checks again that the lock is stale, removes it and creates its own, so two sweeps that find the same
stale lock at once cannot both take it over (the second one then finds the first one's live lock). A takeover
lock older than TAKEOVER_STALE_S (a takeover takes milliseconds) is a dead taker's and is removed. Release and
heartbeat touch the file only while its token is ours, so an owner whose lock was taken over (judged stale: its
heartbeat had stopped, on another host) never removes or refreshes its successor's.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.results import warn
from mustafar.procs import boot_id, pid_alive, pid_start, pid_started_at

LOCK_NAME = "job.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # twenty missed heartbeats: the owner is gone (or stuck beyond use)
# an old-format lock (no process start) written this long before its PID's process started is another process's;
# the slack covers a wall-clock step between writing the lock and reading it
CLOCK_SLACK_S = 60.0
UNREADABLE_STALE_S = 10.0  # an unreadable lock this old is a writer that died mid-write
TAKEOVER_STALE_S = 30.0


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float
    token: str | None = None  # None: written before locks carried one (as are the two below)
    boot_id: str | None = None
    pid_start: int | None = None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since}"


def _record() -> dict[str, Any]:
    """This process's lock record: the current format, read by read_owner."""
    pid = os.getpid()
    return {
        "pid": pid,
        "host": platform.node(),
        "started": time.time(),
        "token": secrets.token_hex(8),
        "boot_id": boot_id(),
        "pid_start": pid_start(pid),
    }


def read_owner(path: Path) -> LockOwner | None:
    """The lock's owner, or None when the file is missing or not (yet) a whole record; the fields added later are
    None in a lock written before them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pid_start = data.get("pid_start")
        return LockOwner(
            int(data["pid"]),
            str(data["host"]),
            float(data["started"]),
            data.get("token"),
            data.get("boot_id"),
            None if pid_start is None else int(pid_start),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _gone_here(owner: LockOwner) -> bool:
    """Whether the process that wrote `owner` (a lock of this host) no longer runs."""
    if not pid_alive(owner.pid):
        return True
    boot = boot_id()
    if owner.boot_id and boot and owner.boot_id != boot:
        return True
    if owner.pid_start is not None:
        now = pid_start(owner.pid)
        return now is not None and now != owner.pid_start
    started_at = pid_started_at(owner.pid)  # an old-format lock
    return started_at is not None and owner.started < started_at - CLOCK_SLACK_S


def live_owner(path: Path) -> LockOwner | None:
    """The owner of a lock that is held now; None for no lock or a stale one."""
    try:
        beat = path.stat().st_mtime
    except FileNotFoundError:
        return None
    age = time.time() - beat
    owner = read_owner(path)
    if owner is None:  # unreadable: being written now (an older writer's way), or its writer died mid-write
        return None if age > UNREADABLE_STALE_S else LockOwner(-1, "unknown", beat)
    if owner.host == platform.node():
        # the process is checked directly, whatever the heartbeat's age, where its start can be read (without
        # /proc a reused PID cannot be told apart, and the heartbeat decides as for another host)
        if owner.pid_start is not None or pid_start(os.getpid()) is not None:
            return None if _gone_here(owner) else owner
        if not pid_alive(owner.pid):
            return None
    return None if age > STALE_AFTER_S else owner


class JobLock:
    """Held while a job computes: `acquire()` returns False when a live process elsewhere holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False
        self.token: str | None = None
        self._stop = threading.Event()

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = _record()
        if not self._create(record):
            if live_owner(self.path) is not None or not self._take_over(record):
                return False
        self.held, self.token = True, record["token"]
        self._stop.clear()
        threading.Thread(target=self._heartbeat, name="mustafar-lock-heartbeat", daemon=True).start()
        return True

    def _create(self, record: dict[str, Any]) -> bool:
        """Put `record` in place as the lock, whole, unless a lock exists (a temporary file linked to the lock's
        name: never seen empty or half written)."""
        tmp = self.path.with_name(f"{LOCK_NAME}.{record['token']}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write (briefly empty)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, record: dict[str, Any]) -> bool:
        """Replace a stale lock under the takeover lock: False when another process holds either."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                guard.unlink(missing_ok=True)  # a taker that died mid-takeover
        except FileNotFoundError:
            pass
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False  # another process is taking it over this instant
        try:
            if live_owner(self.path) is not None:  # taken over (or released and retaken) since we looked
                return False
            stale = read_owner(self.path)
            present = self.path.exists()  # else released since we looked: nothing taken over
            self.path.unlink(missing_ok=True)
            if not self._create(record):
                return False
            if present:
                warn(
                    f"{self.path}: took over the stale lock of "
                    f"{stale.describe() if stale else 'a writer that died mid-write'}"
                )
            return True
        finally:
            guard.unlink(missing_ok=True)

    def _ours(self, owner: LockOwner | None) -> bool:
        return owner is not None and owner.token == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            # taken over: refreshing it would keep a dead successor's lock alive
            if not self._ours(read_owner(self.path)):
                return
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
        """Remove the lock if it is still ours (read, compare the token, unlink). Between the read and the unlink
        another process could take it over only by judging it stale, which a releasing owner's lock is not (its
        PID lives and its heartbeat beat less than HEARTBEAT_S ago)."""
        if not self.held:
            return
        self._stop.set()
        self.held = False
        owner = read_owner(self.path)
        if self._ours(owner):
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            warn(
                f"{self.path} was taken over by {owner.describe() if owner else 'another process'} (this process's "
                "heartbeat had stopped); left in place"
            )
