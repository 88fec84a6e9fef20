"""Exclusive run locks: one conversion per ``--output``, one training per ``--job_dir``.

A lock is a small JSON file ``{"host", "pid", "started", "command", "token", "process"}``:

* ``lock_folder(job_dir)`` puts it inside the folder (``JOB_DIR/.affectstream.lock``);
* ``lock_output(out)`` puts it inside a local output folder too (``OUT/.affectstream.lock``: a transactional output,
  :mod:`tfrecords_schema.transaction`, swaps the entries inside ``OUT`` and never the folder, which may be a mount
  point whose parent is not writable), and beside it on object stores (``PARENT/.OUT.affectstream.lock``), where the
  swap deletes and copies the whole folder.

Local disks: the file is created with ``O_CREAT | O_EXCL``, so exactly one of two racing runs gets it; the
other raises :class:`LockHeldError` naming the holder (host, pid, start time). A lock whose pid is dead on
this host (``os.kill(pid, 0)`` raises ``ProcessLookupError``) is stale: it is taken over, and the takeover is
logged and returned in :attr:`FolderLock.messages`. A lock from another host is never judged stale (its pid
means nothing here). Release removes the file only while it still holds this lock's token.

Object stores (``gs://``, ``s3://``) offer no create-if-absent through ``tf.io.gfile``: the lock is best
effort (refuse when a lock is visible, write ours, read it back and refuse if another run's token came back).
Two runs started within the same second can both pass; docs/dataflow.md says what holds there.

Example:
    with lock_folder("/jobs/run1", command="train ...") as lock:
        for m in lock.messages:
            print(m)
        ...  # a second `lock_folder("/jobs/run1")` anywhere on this machine raises LockHeldError
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import logging
import os
import posixpath
import socket
import sys
import time
import uuid
from typing import TYPE_CHECKING

from tfrecords_schema.storage import is_url as _is_url

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are not evaluated at run time (3.10 too).
    from typing import Self

LOCK_FILENAME = ".affectstream.lock"
LOCK_SUFFIX = ".affectstream.lock"  # Beside an output: ".<name>" + LOCK_SUFFIX.
TAKEOVER_SUFFIX = ".takeover"  # Guard so that only one run at a time replaces a stale lock.
_GUARD_WAIT_S = 5.0
_EMPTY_STALE_S = 10.0  # An empty lock file older than this was left by a run killed between create and write.

log = logging.getLogger(__name__)


class LockError(RuntimeError):
    """The lock cannot be taken or released (unreadable lock file, object-store failure...)."""


class EmptyLockError(LockError):
    """The lock file exists but is empty: a run between creating and writing it, or killed right there."""


class LockHeldError(LockError):
    """Another run holds the lock; :attr:`holder` says who."""

    def __init__(self, path: str, holder: LockInfo):
        self.path = path
        self.holder = holder
        super().__init__(
            f"{path} is held by pid {holder.pid} on host {holder.host} since {holder.started} "
            f"({holder.command or 'unknown command'}); wait for that run to end, or delete the lock file if no "
            "such run is going on"
        )


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """What a lock file holds."""

    host: str
    pid: int
    started: str  # ISO 8601, local time with offset.
    command: str
    token: str  # Random, per acquisition: release and takeover touch only the lock that holds it.
    process: str = ""  # process_identity(pid) of the holder ("" in locks of earlier versions).

    @classmethod
    def for_this_process(cls, command: str | None) -> LockInfo:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(host=socket.gethostname(), pid=os.getpid(), started=started,
                   command=" ".join(sys.argv) if command is None else command, token=uuid.uuid4().hex,
                   process=process_identity(os.getpid()))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str) -> LockInfo:
        try:
            d = json.loads(text)
            return cls(host=str(d["host"]), pid=int(d["pid"]), started=str(d["started"]),
                       command=str(d.get("command", "")), token=str(d["token"]), process=str(d.get("process", "")))
        except (ValueError, KeyError, TypeError) as e:
            raise LockError(f"lock file {path} is not an affectstream lock ({type(e).__name__}: {e}); "
                            "delete it if no run is going on") from e

    def is_dead_here(self) -> bool:
        """True when the holder ran on this host and its process no longer exists (a stale lock)."""
        return self.host == socket.gethostname() and not holder_alive(self.pid, self.process)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_identity(pid: int) -> str:
    """``"<boot id> <start time in clock ticks> <pid namespace>"`` of process ``pid`` (Linux ``/proc``; "" where
    unknown or not readable).

    A pid names one process only while it runs; with this the process that wrote a lock is told from a later one
    given the same pid, also across a wall-clock step.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()  # After the command name, which may hold spaces and ')'.
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")  # e.g. "pid:[4026531836]"
        return f"{boot} {int(fields[19])} {namespace}"  # Field 22: the start time, in clock ticks after boot.
    except (OSError, ValueError, IndexError):
        return ""


def holder_alive(pid: int, process: str = "") -> bool:
    """Whether the process that wrote a lock or marker on this host (``process``: its :func:`process_identity`)
    still runs.

    A live ``pid`` of another identity in the same pid namespace is a later process given the same number (a
    process restarted in the same container or host, the host rebooted): the dead run's lock read as held by the new
    run, even by the new run itself. A holder in another pid namespace (another container: containers sharing the
    host name and a volume see their own pids only) cannot be told from a live one, and counts as alive, as without
    an identity (a lock of an earlier version, a system without ``/proc``), where the pid alone decides.
    """
    if not pid_alive(pid):
        return False
    if not process:
        return True
    recorded, now = process.split(), process_identity(pid).split()
    if len(recorded) != 3 or len(now) != 3 or recorded[2] != now[2]:
        return True
    return recorded == now


def _age_s(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if _is_url(folder) else os.path.join(folder, name)


def lock_path_beside(path: str) -> str:
    """The lock file beside ``path`` (``PARENT/.NAME.affectstream.lock``), for outputs replaced whole."""
    stripped = path.rstrip("/")
    folder, name = posixpath.split(stripped) if _is_url(stripped) else os.path.split(os.path.abspath(stripped))
    return _join(folder, f".{name}{LOCK_SUFFIX}")


class FolderLock:
    """An exclusive lock held through the file ``lock_path``; use :func:`lock_folder` or :func:`lock_output`."""

    def __init__(self, lock_path: str, command: str | None = None):
        self.path = lock_path
        self.info = LockInfo.for_this_process(command)
        self.messages: list[str] = []  # What acquiring did besides taking the lock (a stale takeover).
        self._held = False

    # ----------------------------------------------------------------------------------------- public API
    def acquire(self) -> FolderLock:
        """Takes the lock or raises :class:`LockHeldError` (another live run) / :class:`LockError`."""
        if self._held:
            raise LockError(f"{self.path} is already held by this FolderLock")
        if _is_url(self.path):
            self._acquire_url()
        else:
            self._acquire_local()
        self._held = True
        return self

    def release(self) -> None:
        """Removes the lock file if it still holds this lock's token; never removes another run's lock."""
        if not self._held:
            return
        self._held = False
        try:
            current = read_lock_file(self.path)
        except LockError as e:  # Replaced by something that is not our lock: not ours to remove.
            log.warning("lock %s was no longer ours at release (%s); left as it is", self.path, e)
            return
        if current is None or current.token != self.info.token:
            log.warning("lock %s was no longer ours at release (now %s); left as it is", self.path, current)
            return
        if _is_url(self.path):
            import tensorflow as tf

            tf.io.gfile.remove(self.path)
        else:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ----------------------------------------------------------------------------------------- local disk
    def _create_local(self) -> bool:
        """O_CREAT|O_EXCL: True when this call created the lock file, False when it exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.info.to_json().encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)  # Ours (just created): a half-written lock must not block the next run.
            raise
        os.close(fd)
        return True

    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        deadline = time.monotonic() + _GUARD_WAIT_S
        while True:
            if self._create_local():
                return
            try:
                holder = read_lock_file(self.path)
            except EmptyLockError:
                # A run between its create and its write; one killed right there leaves an old empty file.
                if _age_s(self.path) < _EMPTY_STALE_S:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
                    continue
                stale = LockInfo(host="?", pid=0, started="?", command="(empty lock file)", token="")
            else:
                if holder is None:  # Released between our create and our read: try again.
                    continue
                if not holder.is_dead_here():
                    raise LockHeldError(self.path, holder)
                stale = holder
            if self._take_over_local(stale):
                return
            if time.monotonic() > deadline:
                raise LockError(f"could not take over the stale lock {self.path} within {_GUARD_WAIT_S:.0f} s "
                                f"(another run is taking it over?)")
            time.sleep(0.05)

    def _take_over_local(self, stale: LockInfo) -> bool:
        """Replaces ``stale`` under a guard file, so two runs never both remove a lock; False: retry."""
        guard = FolderLock(self.path + TAKEOVER_SUFFIX, command=f"takeover of {self.path}")
        try:
            guard.acquire()  # Itself stale-safe: a guard left by a killed run has a dead pid.
        except LockHeldError:
            return False
        try:
            if not self._still_stale(stale):
                return False  # Someone else replaced or released it meanwhile: go round the loop and look again.
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            if not self._create_local():
                return False
        finally:
            guard.release()
        gone = "an empty lock file (a run killed while starting)" if not stale.token else \
            f"pid {stale.pid} on {stale.host} (started {stale.started}; that process is gone)"
        message = f"took over the stale lock {self.path} of {gone}"
        log.warning("%s", message)
        self.messages.append(message)
        return True

    def _still_stale(self, stale: LockInfo) -> bool:
        """Under the guard: the lock file is still the stale one seen before (or gone)."""
        try:
            current = read_lock_file(self.path)
        except EmptyLockError:
            return not stale.token and _age_s(self.path) >= _EMPTY_STALE_S
        return current is None or current.token == stale.token

    # -------------------------------------------------------------------------------------- object stores
    def _acquire_url(self) -> None:
        """Best effort: no atomic create-if-absent through tf.io.gfile (see the module docstring)."""
        import tensorflow as tf

        try:
            holder = read_lock_file(self.path)
            if holder is not None:
                if not holder.is_dead_here():
                    raise LockHeldError(self.path, holder)
                message = (f"took over the stale lock {self.path} of pid {holder.pid} on {holder.host} "
                           f"(started {holder.started}; that process is gone)")
                log.warning("%s", message)
                self.messages.append(message)
            with tf.io.gfile.GFile(self.path, "w") as f:
                f.write(self.info.to_json())
            back = read_lock_file(self.path)
        except tf.errors.OpError as e:
            raise LockError(f"cannot take the lock {self.path}: {type(e).__name__}: {e}") from e
        if back is None or back.token != self.info.token:
            if back is None:
                raise LockError(f"lock {self.path} vanished right after it was written; another run is racing")
            raise LockHeldError(self.path, back)


def read_lock_file(path: str) -> LockInfo | None:
    """The lock held through the file ``path``, or None when there is no such file."""
    if _is_url(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path, "r") as f:
                text = f.read()
        except tf.errors.NotFoundError:
            return None
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EISDIR:
                raise LockError(f"lock path {path} is a folder; remove it if no run is going on") from e
            raise
    if not text.strip():
        raise EmptyLockError(f"lock file {path} is empty: another run is starting, or one was killed while "
                             "starting; try again, and delete the file if no run is going on")
    return LockInfo.from_json(text, path)


def lock_folder(folder: str, command: str | None = None) -> FolderLock:
    """A lock inside ``folder`` (created when missing): ``with lock_folder(job_dir): ...``."""
    if not _is_url(folder):
        os.makedirs(folder, exist_ok=True)
    return FolderLock(_join(folder, LOCK_FILENAME), command)


def output_lock_path(path: str) -> str:
    """The lock file of the output folder ``path``: inside it locally, beside it on object stores (see above)."""
    return lock_path_beside(path) if _is_url(path) else _join(os.path.abspath(path), LOCK_FILENAME)


def lock_output(path: str, command: str | None = None) -> FolderLock:
    """The lock of the output folder ``path`` (:func:`output_lock_path`; a local folder is created when missing)."""
    if not _is_url(path):
        os.makedirs(path, exist_ok=True)
    return FolderLock(output_lock_path(path), command)


def read_lock(folder: str) -> LockInfo | None:
    """Who holds the lock inside ``folder`` (``None``: nobody), for reports such as ``inspect``."""
    return read_lock_file(_join(folder, LOCK_FILENAME))
