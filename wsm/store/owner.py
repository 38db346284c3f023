"""Who wrote a hidden staging entry, and is that process gone? (Prompt cleanup of killed writers.)

Every hidden name a local writer creates (``.tmp-…`` staging dirs and temporary files, ``.trash-…``)
ends with the writer's :func:`marker`: ``-w<host><boot>p<pid>s<start>``, where ``host`` and
``boot`` are 6 hex digits of a hash of the host name with the pid namespace and of the kernel's
boot id, ``pid`` the
process id and ``start`` its start time in clock ticks since boot (``/proc/<pid>/stat``). That is
durable (it is in the name) and enough to tell, on the same host, whether the writer is still
alive: a pid that no longer exists or now belongs to a process started at another time is dead,
and so is every writer of an earlier boot. A marker of another host or pid namespace (another
container, or this container before a restart) is never judged: its leftovers wait for the
age-based sweep (wsm/store/maintenance.py, ``cleanup_stale``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from dataclasses import dataclass

_MARKER = re.compile(r"-w([0-9a-f]{6})([0-9a-f]{6})p(\d+)s(\d+)$")


def _hash6(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


@functools.lru_cache(maxsize=1)
def _host() -> str:
    # The pid namespace too: two containers may share a host name (host networking) but never
    # see each other's processes, so neither may judge the other's pids.
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return _hash6(f"{socket.gethostname()}|{pidns}")


@functools.lru_cache(maxsize=1)
def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return _hash6(f.read().strip())
    except OSError:
        return _hash6("")


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None if there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def _marker_of(pid: int) -> str:
    return f"-w{_host()}{_boot()}p{pid}s{start_time(pid) or 0}"


def marker() -> str:
    """This process's marker, to append to a hidden staging name."""
    return _marker_of(os.getpid())  # keyed by pid: a forked child gets its own


@dataclass(frozen=True)
class Owner:
    """The writer named by a marker."""

    host: str
    boot: str
    pid: int
    start: int

    def is_dead(self) -> bool | None:
        """True if the writer is certainly gone, False if it may be alive, None if it ran elsewhere."""
        if self.host != _host():
            return None
        if self.boot != _boot():
            return True  # written before this machine's last reboot
        if self.pid == os.getpid():
            return self.start != (start_time(self.pid) or 0)
        now = start_time(self.pid)
        if now is not None:
            return now != self.start  # a reused pid belongs to a process started later
        if os.path.isdir("/proc/self"):
            return True  # /proc has no such process
        try:  # no /proc: whether the pid exists is all we can tell
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def owner_of(name: str) -> Owner | None:
    """The writer of a hidden entry named ``name``; None for names without a marker (older writers)."""
    m = _MARKER.search(name)
    if m is None:
        return None
    return Owner(host=m.group(1), boot=m.group(2), pid=int(m.group(3)), start=int(m.group(4)))
