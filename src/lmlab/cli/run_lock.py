"""One training at a time in a run directory: ``run.lock``, created atomically (``O_EXCL``) and held for the
whole fit, names its owner (pid, host, start, command).

A second training into the directory is refused in one line naming the owner. A lock whose process is gone
(killed by SIGKILL, or the machine rebooted) is stale and taken over with one line saying so; a lock of another
host cannot be checked from here and is refused, naming the file to delete if that run is gone. The lock is
released when the run ends, fails or is stopped by SIGTERM: outside Lightning's fit (which stops at a step
boundary by itself) SIGTERM ends the run as an exit with status 143 instead of killing it where it stands.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from lmlab.errors import InputError

log = logging.getLogger("lmlab")
LOCK_FILE = "run.lock"
FRESH_S = 10.0  # a lock file younger than this may still be being written by its owner


def boot_id() -> str | None:
    """This boot of this machine (Linux): a pid recorded before a reboot names no process now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux): tells a reused pid from its owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
            "process_start": process_start(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def read_owner(lock: Path) -> dict | None:
    """The lock's owner; {} for a lock that cannot be read (being written, or damaged); None: no lock."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else {}


def alive(owner: dict, lock: Path) -> bool:
    """Whether the owner may still run: its process exists on this host (the same process, not a reused pid), or
    it ran on another host (which cannot be checked from here). An unreadable lock counts only while fresh."""
    if not owner:
        try:
            return time.time() - lock.stat().st_mtime < FRESH_S
        except FileNotFoundError:
            return False
    if owner.get("host") != socket.gethostname():
        return True
    if owner.get("boot_id") and owner["boot_id"] != boot_id():
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return not owner.get("process_start") or owner["process_start"] == process_start(owner["pid"])


def describe(owner: dict) -> str:
    if not owner:
        return "a training whose lock is being written"
    return f"pid {owner['pid']}@{owner.get('host')} since {owner.get('since')} ({owner.get('command', '?')})"


def check_unlocked(run_dir: Path, where: str) -> None:
    """Refuse a directory another training holds (a read: nothing is written)."""
    lock = run_dir / LOCK_FILE
    owner = read_owner(lock)
    if owner is not None and alive(owner, lock):
        hint = "" if not owner or owner.get("host") == socket.gethostname() else \
            f"; if that run is gone, delete {lock}"
        raise InputError(f"{where} is in use by another training: {describe(owner)}; wait for it to end, or "
                         f"choose another directory{hint}")


class RunLock:
    """``with RunLock(run_dir, where):`` holds the directory's lock for the block (``where``: how messages name
    the directory). ``owner=False`` (the other ranks of a distributed run, which share rank 0's directory) holds
    nothing."""

    def __init__(self, run_dir: Path, where: str, owner: bool = True):
        self.lock, self.where, self.owner = run_dir / LOCK_FILE, where, owner
        self._previous_sigterm = None
        self.created = False  # whether taking the lock made the directory: a refused run then leaves none

    def __enter__(self) -> RunLock:
        if self.owner:
            self.acquire()
            self._exit_on_sigterm()
        return self

    def __exit__(self, *exc) -> None:
        if self.owner:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self.release()

    def acquire(self, tries: int = 3) -> None:
        """Create the lock, taking over a stale one; refuse a live owner. Every outcome is decided by an atomic
        create (``O_EXCL``) or rename, so two trainings racing for one directory never both win."""
        for _ in range(tries):
            check_unlocked(self.lock.parent, self.where)
            try:
                self.created = self.created or not self.lock.parent.exists()
                self.lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            except OSError as e:
                raise InputError(f"{self.where} cannot be written ({e.strerror}); choose a writable folder "
                                 "(hydra.run.dir=... or paths.log_dir=...)") from e
            with os.fdopen(fd, "w") as f:
                json.dump(this_owner(), f)
                f.flush()
                os.fsync(f.fileno())
            return
        check_unlocked(self.lock.parent, self.where)
        raise InputError(f"{self.where}: could not take {self.lock} (other trainings keep claiming it); retry")

    def _take_over_stale(self) -> None:
        """Move a stale lock aside (atomically: of two takers, one moves it) and say whose it was."""
        stale = read_owner(self.lock)
        if stale is None or alive(stale, self.lock):
            return  # gone already, or live: the next try decides
        aside = self.lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(self.lock, aside)
        except FileNotFoundError:
            return
        if read_owner(aside) != stale:  # another taker's fresh lock was moved: put it back
            try:
                os.link(aside, self.lock)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning("%s: taking over the lock of %s: that process is gone", self.where,
                    describe(stale) if stale else "a training that never finished writing it")

    def release(self) -> None:
        """Remove the lock if it is still this process's, and the directory if the lock made it and nothing else
        was written (a run refused before its first write)."""
        owner = read_owner(self.lock)
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            try:
                self.lock.unlink()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warning("%s: could not remove %s (%s)", self.where, self.lock, e.strerror)
            if self.created:
                try:
                    self.lock.parent.rmdir()
                except OSError:  # the run wrote into it: it stays
                    pass

    def _exit_on_sigterm(self) -> None:
        """SIGTERM outside the fit exits (status 143) through the ``with`` block, so the lock is released."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._previous_sigterm = signal.signal(signal.SIGTERM, exit_on_sigterm)


def exit_on_sigterm(signum, frame) -> None:
    """While Lightning fits, its SIGTERM handler calls this one too and stops the run at a step boundary itself:
    then this one does nothing (an exit mid-step would save a half-updated model)."""
    if signal.getsignal(signal.SIGTERM) is exit_on_sigterm:
        raise SystemExit(143)
