"""What a long run (`encode_dataset`, `train`) does when the world goes wrong: another run in
its output folder, a folder it cannot write, a full disk, Ctrl-C.

    with FolderLock(out):                  # refuses a folder another live run holds
        with stop_requests(console) as stop:
            for batch in batches:
                ...
                if stop.requested:          # the first Ctrl-C, seen at a batch boundary
                    raise Interrupted("...how to go on...")

A lock is a file `.diffae.lock` in the output folder holding the pid and host of the run that
owns it. A lock whose process is gone (same host, that pid no longer alive: a killed run) is
stale and taken over; a lock from another host cannot be checked and is refused, naming it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import ArgumentError, Console

LOCK_NAME = ".diffae.lock"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_held: dict[Path, int] = {}
"""Locks this process holds (resolved folder -> depth): a library call inside a command that
already holds the folder's lock takes it again without refusing itself."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C honoured at a batch boundary; the message says what was kept and how to go on."""


def disk_full(error: BaseException) -> bool:
    """Whether `error` is a write refused for lack of space (or quota): the OS's OSError, or
    pyarrow's and safetensors' errors, which carry the OS's message only."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def disk_full_error(
    out: Path, kept: str, then: str = "run again with the same arguments to finish"
) -> ArgumentError:
    """The one line for a full disk under `out`: what was kept, how to go on."""
    return ArgumentError(
        "out",
        f" {out}: no space left on the device ({kept}; nothing half-written is left): "
        f"free some space and {then}",
    )


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def writable_folder(out: Path) -> Path:
    """`out` checked, before any work and without writing anything: a folder (or to be created
    in a folder that exists) this process may write in; an ArgumentError naming `out` else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError("out", f": expected a folder (created if missing), got the file {out}")
    parent = out.absolute().parent
    if not out.exists() and not parent.is_dir():
        raise ArgumentError("out", f" {out}: its parent folder {parent} does not exist")
    where = out if out.exists() else parent
    if not os.access(where, os.W_OK | os.X_OK):  # a read-only mount refuses root too
        read_only = os.statvfs(where).f_flag & os.ST_RDONLY
        reason = "Read-only file system" if read_only else "Permission denied"
        raise ArgumentError("out", f" {out}: cannot write there ({reason})")
    return out


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, since {self.started}"


def read_lock(path: Path) -> LockOwner | None:
    """The owner a lock file names; None when it vanished or is unreadable (a run killed while
    writing it)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return LockOwner(int(data["pid"]), str(data["host"]), str(data.get("started", "?")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockOwner(-1, "?", "?")


class FolderLock:
    """Holds `out/.diffae.lock` for one run: refuses a folder a live run holds (naming it),
    takes over a stale lock, removes the lock on exit (any exit but a kill)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.key = self.out.absolute()

    def __enter__(self) -> FolderLock:
        if _held.get(self.key):
            _held[self.key] += 1
            return self
        writable_folder(self.out)
        try:
            self.out.mkdir(exist_ok=True)
        except OSError as error:
            raise ArgumentError(
                "out", f" {self.out}: cannot write there ({error.strerror or error})"
            ) from None
        owner = LockOwner(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        text = json.dumps({"pid": owner.pid, "host": owner.host, "started": owner.started})
        for _ in range(3):  # a stale lock removed, then created again by us (or a rival)
            try:
                with self.path.open("x", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is None:
                    continue
                if holder.host == owner.host and holder.pid > 0 and not pid_alive(holder.pid):
                    self.path.unlink(missing_ok=True)  # a killed run's lock: ours now
                    continue
                raise ArgumentError(
                    "out",
                    f" {self.out}: in use by another run ({holder.describe()}; lock file "
                    f"{self.path}): wait for it to finish, or delete the lock file if that run "
                    "is gone",
                ) from None
            except OSError as error:
                if disk_full(error):
                    raise disk_full_error(self.out, "nothing written yet") from None
                raise ArgumentError(
                    "out", f" {self.out}: cannot write there ({error.strerror or error})"
                ) from None
            _held[self.key] = 1
            return self
        raise ArgumentError("out", f" {self.out}: could not take {self.path}; try again")

    def __exit__(self, *exc_info: object) -> None:
        _held[self.key] -= 1
        if not _held[self.key]:
            del _held[self.key]
            self.path.unlink(missing_ok=True)


@dataclass
class StopRequest:
    """Set by the first Ctrl-C (SIGINT); the loop stops at its next batch boundary."""

    requested: bool = False


def ignore_interrupts(_worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: Ctrl-C in a terminal reaches every process of the group,
    and a worker that died of it would fail the batch the main process finishes first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def stop_requests(console: Console, enabled: bool = True) -> Iterator[StopRequest]:
    """While inside: the first SIGINT sets `requested` (and says so), a second one stops at
    once (KeyboardInterrupt). Off outside the main thread and when not `enabled` (under
    torchrun, where torchrun itself stops every process)."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_interrupt(_signal: int, _frame: object) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        console.problem("stopping at the end of this batch (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
