"""Process liveness and identity for lock and temp-file owners (Linux and macOS; identity needs procfs)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped, as under a container init that never reaps)
    counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    fields = _stat_fields(pid)
    return fields is None or fields[0] != "Z"  # no procfs: trust kill()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: the command name before them may hold spaces and parentheses.
    None without procfs or once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def pid_start(pid: int) -> int | None:
    """When `pid`'s process started, in clock ticks after boot (stat field 22): with the boot id, what tells a
    process from a later one that reuses its PID. None without procfs."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def pid_started_at(pid: int) -> float | None:
    """When `pid`'s process started, in wall-clock seconds; None without procfs."""
    ticks = pid_start(pid)
    if ticks is None:
        return None
    try:
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


def boot_id() -> str | None:
    """This boot's random id (Linux); None without procfs."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
