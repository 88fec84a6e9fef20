"""Transactional output folders: build the new output beside the old one, swap only after success.

Example:
    with output_transaction("/data/out", replace=True) as staging:
        run_the_job(output=staging)  # writes only under `staging`
    # /data/out now holds the new output. On an exception, a typo found late or a kill, /data/out is untouched.

Beside ``OUT`` (same parent folder, so a local rename stays on one file system):

* ``.OUT.incomplete-<id>/``: the staging folder. Its first file is :data:`MARKER_FILENAME` (JSON: tool, target,
  id, host, pid, started, command, state), which is what makes it ours: :func:`remove_leftovers` never touches a
  folder without it, whatever its name.
* ``.OUT.replaced-<id>/``: the previous ``OUT`` during a local swap, removed right after it.

Local swap: rename ``OUT`` to the backup, rename the staging folder to ``OUT``, move the marker from ``OUT`` into
the backup, remove the backup (its marker last). A kill at any step leaves a state that :func:`find_leftovers`
recognises and :func:`remove_leftovers` repairs: it restores the previous output when the kill fell between the
two renames, and otherwise removes what is left.

Object stores (``gs://``, ``s3://``) have no folder rename: a "rename" copies every object. There the swap
marks the staging folder ``committing``, deletes the old ``OUT``, copies the staging objects into ``OUT`` (files
named in ``finish_with``, by default ``dataset_info.json``, last) and deletes the staging folder. Until that copy
ends a reader can see a partial ``OUT``; a kill during it leaves a ``committing`` staging folder from which
:func:`remove_leftovers` finishes the copy. A failure before the swap leaves ``OUT`` untouched, as locally.

Disk full: an ``ENOSPC`` anywhere in the block (also wrapped in another exception, such as a Beam pipeline
failure) removes the staging folder and raises :class:`DiskFullError`, one line naming the folder and the free
space (:func:`describe_disk_full`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import posixpath
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator, Sequence

from tfrecords_schema.atomic import INCOMPLETE_MARK
from tfrecords_schema.dataset_info import DATASET_INFO_FILENAME

MARKER_FILENAME = ".affectstream-transaction.json"
REPLACED_MARK = ".replaced-"  # Backup of the previous output during a swap: ".<name>" + REPLACED_MARK + id.
TOOL = "affectstream"
STATE_WRITING = "writing"
STATE_COMMITTING = "committing"  # Object stores: the staging folder is complete and being copied into OUT.
DEFAULT_FINISH_WITH = (DATASET_INFO_FILENAME,)  # Readers treat an output without it as incomplete: copy it last.
_DISK_FULL_TEXT = "no space left on device"


class TransactionError(RuntimeError):
    """The output cannot be replaced (exists without ``replace``, is a file, changed during the run...)."""


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; the message is one line naming the folder and free space."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A folder beside (or marker inside) an output, left by a run that did not finish.

    Attributes:
        path: The leftover folder (or, for ``kind == "marker"``, the output holding a stray marker).
        kind: ``"staging"``, ``"backup"`` or ``"marker"``.
        info: The marker's JSON (who wrote it, when, which command).
        alive: The writing process still runs on this host: not a leftover yet, never removed.
        action: What :func:`remove_leftovers` does with it, in words.
    """

    path: str
    kind: str
    info: dict
    alive: bool
    action: str

    def describe(self) -> str:
        who = f"pid {self.info.get('pid')} on {self.info.get('host')}, started {self.info.get('started')}"
        return f"{self.kind} {self.path} ({who}): {self.action}"


# ------------------------------------------------------------------------------------------------ file helpers
def _is_url(path: str) -> bool:
    return "://" in path


def _split(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    return posixpath.split(path) if _is_url(path) else os.path.split(os.path.abspath(path))


def _join(folder: str, *names: str) -> str:
    return posixpath.join(folder, *names) if _is_url(folder) else os.path.join(folder, *names)


def _gfile():
    import tensorflow as tf  # Late import: only object-store paths need TensorFlow's file systems.

    return tf.io.gfile


def _exists(path: str) -> bool:
    return _gfile().exists(path) if _is_url(path) else os.path.lexists(path)


def _isdir(path: str) -> bool:
    return _gfile().isdir(path) if _is_url(path) else os.path.isdir(path) and not os.path.islink(path)


def _listdir(path: str) -> list[str]:
    if _is_url(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)] if _gfile().isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def _write_text(path: str, text: str) -> None:
    if _is_url(path):
        with _gfile().GFile(path, "w") as f:
            f.write(text)
        return
    tmp = f"{path}{INCOMPLETE_MARK}{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # Atomic: a reader sees the old marker or the new one.
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_any(path: str) -> None:
    """Removes the file or folder ``path`` (only ever called on what this module wrote)."""
    if _is_url(path):
        gfile = _gfile()
        if gfile.isdir(path):
            gfile.rmtree(path)
        else:
            gfile.remove(path)
    elif os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _remove_tree_marker_last(folder: str) -> None:
    """Removes ``folder`` (ours: it holds our marker), the marker last, so that a kill midway leaves it ours."""
    if _is_url(folder):
        gfile = _gfile()
        for name in _listdir(folder):
            if name != MARKER_FILENAME:
                _remove_any(_join(folder, name))
        if gfile.exists(folder):
            gfile.rmtree(folder)
        return
    for entry in os.scandir(folder):
        if entry.name == MARKER_FILENAME:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, MARKER_FILENAME))
    os.rmdir(folder)


def read_marker(folder: str) -> dict | None:
    """The transaction marker inside ``folder``, or None when there is none (or it is not ours)."""
    path = _join(folder, MARKER_FILENAME)
    try:
        if _is_url(path):
            if not _gfile().exists(path):
                return None
            with _gfile().GFile(path, "r") as f:
                text = f.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        marker = json.loads(text)
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == TOOL and "id" in marker else None


def _alive(marker: dict) -> bool:
    from tfrecords_schema.locks import pid_alive

    return marker.get("host") == socket.gethostname() and pid_alive(int(marker.get("pid", 0)))


# ----------------------------------------------------------------------------------------------- disk full
def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or anything in its cause/context chain is a disk-full error (``ENOSPC``).

    Beam and TensorFlow re-raise worker errors as their own types, keeping only the text: it is matched too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _DISK_FULL_TEXT in str(exc).lower() or "disk quota exceeded" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def describe_disk_full(path: str, needed_bytes: int | None = None) -> str:
    """One line: the disk holding ``path`` is full, how much is free, and (if known) how much is needed."""
    needed = f"; about {_size(needed_bytes)} needed" if needed_bytes else ""
    if _is_url(path):
        return f"storage full or over quota while writing {path}{needed}"
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    usage = shutil.disk_usage(probe)
    return (f"disk full while writing {path}: {_size(usage.free)} free of {_size(usage.total)} on its file system"
            f"{needed}; free space and run again (a conversion needs about 2x its output size while it runs)")


# ----------------------------------------------------------------------------------------------- transaction
def _names(path: str, txn_id: str) -> tuple[str, str, str]:
    parent, name = _split(path)
    return (parent, _join(parent, f".{name}{INCOMPLETE_MARK}{txn_id}"), _join(parent, f".{name}{REPLACED_MARK}{txn_id}"))


def _check_target(path: str, replace: bool) -> bool:
    """Whether ``path`` holds a previous output to replace; raises when it may not be replaced."""
    if _exists(path) and not _isdir(path):
        raise TransactionError(f"output {path} exists and is not a folder")
    entries = [n for n in _listdir(path) if n != MARKER_FILENAME]
    if entries and not replace:
        raise TransactionError(f"output {path} already exists and is not empty; pass --overwrite to replace it")
    return _exists(path)


@contextlib.contextmanager
def output_transaction(path: str, replace: bool = False, command: str | None = None,
                       finish_with: Sequence[str] = DEFAULT_FINISH_WITH) -> Iterator[str]:
    """Yields a staging folder beside ``path``; on success it becomes ``path``, on failure it is removed.

    Args:
        path: The output folder (local path, ``gs://`` or ``s3://``).
        replace: Allow replacing a non-empty existing ``path`` (checked before anything is written).
        command: Recorded in the marker (default: this process's command line).
        finish_with: Object stores only: top-level files copied last, so that ``path`` looks complete only when
            it is (see the module docstring).

    Raises:
        TransactionError: ``path`` exists and may not be replaced, or changed during the run.
        DiskFullError: the disk filled up (the staging folder is removed first).
    """
    _check_target(path, replace)
    txn_id = uuid.uuid4().hex[:16]
    parent, staging, backup = _names(path, txn_id)
    marker = {"tool": TOOL, "target": _split(path)[1], "id": txn_id, "host": socket.gethostname(),
              "pid": os.getpid(), "command": " ".join(sys.argv) if command is None else command,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "state": STATE_WRITING}
    try:
        if _is_url(staging):
            _gfile().makedirs(staging)
        else:
            os.makedirs(parent, exist_ok=True)
            os.mkdir(staging)
        _write_text(_join(staging, MARKER_FILENAME), json.dumps(marker, indent=1) + "\n")
        yield staging
        if _is_url(path):
            _swap_by_copy(staging, path, marker, replace, finish_with)
        else:
            _swap_local(staging, path, backup, replace)
    except BaseException as e:
        if not _is_url(path) and _isdir(backup) and not _exists(path):
            os.rename(backup, path)  # Interrupted between the two renames of the swap: put the previous one back.
        ours = read_marker(staging) if _exists(staging) else None
        if ours is not None and ours.get("id") == txn_id:
            if ours.get("state") == STATE_COMMITTING:
                # Object store, copy into OUT interrupted: the staging folder is the only complete copy now.
                raise TransactionError(f"copying the new output {staging} into {path} failed ({type(e).__name__}: "
                                       f"{e}); it is kept, and the next run into {path} finishes the copy") from e
            _remove_tree_marker_last(staging)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(describe_disk_full(parent)) from e
        raise


def _swap_local(staging: str, path: str, backup: str, replace: bool) -> None:
    had_previous = _check_target(path, replace)  # Again: the job may have run for hours.
    if had_previous:
        os.rename(path, backup)  # From here to the next rename a kill leaves no OUT: recovery restores it.
    try:
        os.rename(staging, path)
    except OSError as e:
        if had_previous:
            os.rename(backup, path)
        raise TransactionError(f"could not move the new output {staging} to {path}: {e}") from e
    moved_marker = os.path.join(path, MARKER_FILENAME)
    if had_previous:
        os.rename(moved_marker, os.path.join(backup, MARKER_FILENAME))  # The backup is now marked ours.
        _remove_tree_marker_last(backup)
    else:
        os.unlink(moved_marker)


def _copy_tree(src: str, dst: str, finish_with: Sequence[str]) -> None:
    """Copies every file under ``src`` (but the marker) to ``dst``, the top-level ``finish_with`` files last."""
    gfile = _gfile()
    last = []
    for folder, _, files in gfile.walk(src):
        rel = folder[len(src.rstrip("/")):].strip("/")
        for name in files:
            if not rel and name == MARKER_FILENAME:
                continue
            pair = (_join(folder, name), _join(dst, rel, name) if rel else _join(dst, name))
            if not rel and name in finish_with:
                last.append(pair)
                continue
            gfile.makedirs(posixpath.dirname(pair[1]))
            gfile.copy(pair[0], pair[1], overwrite=True)
    for a, b in last:
        gfile.copy(a, b, overwrite=True)


def _swap_by_copy(staging: str, path: str, marker: dict, replace: bool, finish_with: Sequence[str]) -> None:
    had_previous = _check_target(path, replace)
    _write_text(_join(staging, MARKER_FILENAME), json.dumps({**marker, "state": STATE_COMMITTING}, indent=1) + "\n")
    if had_previous:
        _gfile().rmtree(path)
    _copy_tree(staging, path, finish_with)
    _remove_tree_marker_last(staging)


# ------------------------------------------------------------------------------------------------- leftovers
def find_leftovers(path: str) -> list[Leftover]:
    """Leftovers of killed runs beside ``path`` (and a stray marker inside it); only what carries our marker."""
    parent, name = _split(path)
    found = []
    for entry in sorted(_listdir(parent)):
        for mark, kind in ((INCOMPLETE_MARK, "staging"), (REPLACED_MARK, "backup")):
            prefix = f".{name}{mark}"
            if not entry.startswith(prefix):
                continue
            folder = _join(parent, entry)
            marker = read_marker(folder) if _isdir(folder) else None
            if marker is None or marker.get("target") != name or marker["id"] != entry[len(prefix):]:
                continue  # Not written by this tool for this output: never touched.
            found.append(_classify(path, folder, kind, marker))
    marker = read_marker(path) if _isdir(path) else None
    if marker is not None and marker.get("target") == name:
        found.append(_classify(path, path, "marker", marker))
    return found


def _classify(path: str, folder: str, kind: str, marker: dict) -> Leftover:
    _, _, backup = _names(path, marker["id"])
    alive = _alive(marker)
    if alive:
        action = f"left alone: its run (pid {marker.get('pid')}) is still going on"
    elif kind == "staging" and marker.get("state") == STATE_COMMITTING:
        action = f"finish copying it into {path}, then remove it"
    elif kind == "staging" and not _exists(path) and _isdir(backup):
        action = f"restore the previous output from {backup} to {path}, then remove it"
    elif kind == "marker":
        action = (f"remove the previous output {backup} and the stray marker" if _isdir(backup)
                  else "remove the stray marker")
    else:
        action = "remove it"
    return Leftover(path=folder, kind=kind, info=marker, alive=alive, action=action)


def remove_leftovers(path: str, finish_with: Sequence[str] = DEFAULT_FINISH_WITH) -> list[str]:
    """Repairs/removes what :func:`find_leftovers` lists (never a live run's folder); returns what it did.

    Call it while holding the output's lock (:func:`tfrecords_schema.locks.lock_output`), before a new run.
    """
    done = []
    for item in find_leftovers(path):
        if item.alive:
            done.append(item.describe())
            continue
        _, _, backup = _names(path, item.info["id"])
        if item.kind == "staging" and item.info.get("state") == STATE_COMMITTING:
            if _exists(path):
                _remove_any(path)  # A partial copy of our own complete staging folder.
            _copy_tree(item.path, path, finish_with)
        elif item.kind == "staging" and not _exists(path) and _isdir(backup):
            os.rename(backup, path)  # Local only: object stores never move OUT aside.
        if item.kind == "marker":
            if _isdir(backup):
                # The swap had finished its renames: this unmarked backup is the replaced output, named by our id.
                _remove_any(backup)
            _remove_any(_join(path, MARKER_FILENAME))
        else:
            _remove_tree_marker_last(item.path)
        done.append(f"{item.describe()}: done")
    return done
