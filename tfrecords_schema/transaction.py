"""Transactional output folders: build the new output where it can be renamed into place, swap only after success.

Example:
    with output_transaction("/data/out", replace=True) as staging:
        run_the_job(output=staging)  # writes only under `staging`
    # /data/out now holds the new output. On an exception, a typo found late or a kill, /data/out is as it was.

Local folders: everything happens **inside** ``OUT``, so each rename stays on the output's own file system and
``OUT`` may be a mount point (a Docker volume, a data disk: it cannot itself be renamed) or sit on another file
system than its parent, whose space is never used:

* ``OUT/.OUT.incomplete-<id>/``: the staging folder. Its first file is :data:`MARKER_FILENAME` (JSON: tool,
  target, id, host, pid, started, process, command, state), which is what makes it ours: :func:`remove_leftovers`
  never touches a folder without it, whatever its name.
* ``OUT/.OUT.replaced-<id>/``: the previous output's entries during the swap, removed right after it.

The swap goes entry by entry:

1. ``OUT`` is checked again (the job may have run for hours): entries that appeared meanwhile and are not the
   output's own (``check_swap``, or any entry without ``replace``) stop it. The new output is then kept beside the
   previous one as ``OUT/OUT.new-<id>/`` (its marker removed, so no later run removes it) and
   :class:`SwapRefused` names both. Nothing is deleted.
2. The marker's state becomes ``swapping`` and lists the previous and the new entries. From here on the new output
   is complete: a kill is finished by the next run (:func:`remove_leftovers` rolls forward).
3. The previous entries move into the backup (the ``finish_with`` files first: readers take an output without
   ``dataset_info.json`` as incomplete), then the new ones into ``OUT`` (``finish_with`` last).
4. The backup and the staging folder are removed, each with its marker last.

Object stores (``gs://``, ``s3://``) have no folder rename: a "rename" copies every object. There the staging folder
is ``.OUT.incomplete-<id>`` beside ``OUT``; the swap marks it ``committing``, deletes the old ``OUT``, copies the
staging objects into ``OUT`` (the ``finish_with`` files last) and deletes the staging folder. Until that copy ends
a reader can see a partial ``OUT``; a kill during it leaves a ``committing`` staging folder from which
:func:`remove_leftovers` finishes the copy. A failure before the swap leaves ``OUT`` untouched, as locally.

Disk full: an ``ENOSPC`` anywhere in the block (also wrapped in another exception, such as a Beam pipeline
failure) removes the staging folder and raises :class:`DiskFullError`, one line naming the folder and the free
space of its file system (:mod:`tfrecords_schema.disk_space`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import posixpath
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence

from tfrecords_schema import storage
from tfrecords_schema.atomic import INCOMPLETE_MARK
from tfrecords_schema.cli import first_of
from tfrecords_schema.disk_space import DiskFullError, describe_disk_full, is_disk_full  # noqa: F401 (re-exported)
from tfrecords_schema.locks import LOCK_FILENAME, TAKEOVER_SUFFIX, holder_alive, process_identity
from tfrecords_schema.output_layout import DATASET_INFO_FILENAME
from tfrecords_schema.storage import is_url as _is_url

MARKER_FILENAME = ".affectstream-transaction.json"
REPLACED_MARK = ".replaced-"  # Backup of the previous output during a swap: ".<name>" + REPLACED_MARK + id.
KEPT_MARK = ".new-"  # A complete new output that could not be swapped in: "<name>" + KEPT_MARK + id.
TOOL = "affectstream"
STATE_WRITING = "writing"
STATE_SWAPPING = "swapping"  # Local: the staging folder is complete and its entries are being moved into OUT.
STATE_COMMITTING = "committing"  # Object stores: the staging folder is complete and being copied into OUT.
DEFAULT_FINISH_WITH = (DATASET_INFO_FILENAME,)  # Readers treat an output without it as incomplete: it goes in last.
_LOCK_NAMES = (LOCK_FILENAME, LOCK_FILENAME + TAKEOVER_SUFFIX)  # The output's own lock lives inside it locally.
FILE_SYSTEM_ENTRIES = ("lost+found",)  # What mkfs (ext2/3/4) puts at a file system's root, for fsck.


class TransactionError(RuntimeError):
    """The output cannot be replaced (exists without ``replace``, is a file, a swap that failed midway...)."""


class SwapRefused(TransactionError):
    """The output changed during the run: the new output is kept beside the previous one, nothing is deleted.

    Attributes:
        kept: Where the new output is.
    """

    def __init__(self, message: str, kept: str):
        super().__init__(message)
        self.kept = kept


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A transaction folder inside (locally) or beside (object stores) an output, left by a run that did not finish.

    Attributes:
        path: The leftover folder.
        kind: ``"staging"`` or ``"backup"``.
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
def _split(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    return posixpath.split(path) if _is_url(path) else os.path.split(os.path.abspath(path))


def _join(folder: str, *names: str) -> str:
    return posixpath.join(folder, *names) if _is_url(folder) else os.path.join(folder, *names)


def _exists(path: str) -> bool:
    return storage.gfile(path).exists(path) if _is_url(path) else os.path.lexists(path)


def _isdir(path: str) -> bool:
    return storage.gfile(path).isdir(path) if _is_url(path) else os.path.isdir(path) and not os.path.islink(path)


def _listdir(path: str) -> list[str]:
    if _is_url(path):
        return [n.rstrip("/") for n in storage.gfile(path).listdir(path)] if storage.gfile(path).isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def _write_text(path: str, text: str) -> None:
    if _is_url(path):
        with storage.gfile(path).GFile(path, "w") as f:
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


def _write_marker(folder: str, marker: dict) -> None:
    _write_text(_join(folder, MARKER_FILENAME), json.dumps(marker, indent=1) + "\n")


def _remove_any(path: str) -> None:
    """Removes the file or folder ``path`` (only ever called on what this module wrote)."""
    if _is_url(path):
        gfile = storage.gfile(path)
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
        gfile = storage.gfile(folder)
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
            if not storage.gfile(path).exists(path):
                return None
            with storage.gfile(path).GFile(path, "r") as f:
                text = f.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        marker = json.loads(text)
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == TOOL and "id" in marker else None


def _alive(marker: dict) -> bool:
    return marker.get("host") == socket.gethostname() and holder_alive(int(marker.get("pid", 0)),
                                                                        str(marker.get("process", "")))


# ----------------------------------------------------------------------------------------------- transaction
def _names(path: str, txn_id: str) -> tuple[str, str, str]:
    """(folder holding the transaction folders, staging folder, backup folder) of ``path``."""
    parent, name = _split(path)
    home = parent if _is_url(path) else os.path.abspath(path)  # Locally inside OUT: one file system (see above).
    return home, _join(home, f".{name}{INCOMPLETE_MARK}{txn_id}"), _join(home, f".{name}{REPLACED_MARK}{txn_id}")


def _transaction_folder(path: str, entry: str) -> tuple[str, dict] | None:
    """``(kind, marker)`` when ``entry`` (a name in the transaction home of ``path``) is one of our folders."""
    name = _split(path)[1]
    home = _names(path, "")[0]
    for mark, kind in ((INCOMPLETE_MARK, "staging"), (REPLACED_MARK, "backup")):
        prefix = f".{name}{mark}"
        if entry.startswith(prefix):
            folder = _join(home, entry)
            marker = read_marker(folder) if _isdir(folder) else None
            if marker is not None and marker.get("target") == name and marker["id"] == entry[len(prefix):]:
                return kind, marker
    return None


def own_entries(path: str) -> list[str]:
    """Names directly under a local output ``path`` that belong to its lock and transactions, not to the output.

    Also, at the root of a mount point, the file system's own folder (:data:`FILE_SYSTEM_ENTRIES`): never moved or
    removed, and not a user's entry either (a freshly made ext4 data disk given as ``--output`` was refused, with and
    without ``--overwrite``). Everything else under ``path`` is the output (or foreign to it). Object stores keep none
    inside.
    """
    if _is_url(path):
        return []
    names = _listdir(path)
    system = FILE_SYSTEM_ENTRIES if os.path.ismount(path) else ()
    return sorted(n for n in names if n in _LOCK_NAMES or n == MARKER_FILENAME or n in system
                  or _transaction_folder(path, n))


def output_entries(path: str) -> list[str]:
    """The entries of ``path`` that are the output itself (none of :func:`own_entries`)."""
    own = set(own_entries(path))
    return sorted(n for n in _listdir(path) if n not in own and n != MARKER_FILENAME)


def describe_foreign(foreign: Sequence[str], writer: str = "this tool", shown: int = 8) -> str | None:
    """``it holds 2 entries this tool did not write: a, b`` (the first ``shown``), or None when there is none."""
    if not foreign:
        return None
    listed = ", ".join(foreign[:shown]) + (f", ... ({len(foreign)} in all)" if len(foreign) > shown else "")
    return f"it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} {writer} did not write: {listed}"


def _check_target(path: str, replace: bool) -> bool:
    """Whether ``path`` holds a previous output to replace; raises when it may not be replaced."""
    if _exists(path) and not _isdir(path):
        raise TransactionError(f"output {path} exists and is not a folder")
    if output_entries(path) and not replace:
        raise TransactionError(f"output {path} already exists and is not empty; pass --overwrite to replace it")
    return bool(output_entries(path)) if not _is_url(path) else _exists(path)


@contextlib.contextmanager
def output_transaction(path: str, replace: bool = False, command: str | None = None,
                       finish_with: Sequence[str] = DEFAULT_FINISH_WITH,
                       check_swap: Callable[[str], str | None] | None = None) -> Iterator[str]:
    """Yields a staging folder; on success its content becomes ``path``, on failure it is removed.

    Args:
        path: The output folder (local path, ``gs://`` or ``s3://``).
        replace: Allow replacing a non-empty existing ``path`` (checked before anything is written).
        command: Recorded in the marker (default: this process's command line).
        finish_with: Top-level files that mark a complete output: moved out first and in last (copied last on
            object stores), so that ``path`` looks complete only when it is.
        check_swap: Called on ``path`` right before the swap when it holds anything: the reason it may not be
            replaced (entries this tool did not write, appeared during the run), or None.

    Raises:
        TransactionError: ``path`` exists and may not be replaced, or a swap failed midway (the next run finishes it).
        SwapRefused: ``path`` changed during the run; the new output is kept beside it (see the module docstring).
        DiskFullError: the disk filled up (the staging folder is removed first).
    """
    _check_target(path, replace)
    txn_id = uuid.uuid4().hex[:16]
    home, staging, backup = _names(path, txn_id)
    created = not _is_url(path) and not os.path.isdir(path)
    marker = {"tool": TOOL, "target": _split(path)[1], "id": txn_id, "host": socket.gethostname(),
              "pid": os.getpid(), "command": " ".join(sys.argv) if command is None else command,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "process": process_identity(os.getpid()), "state": STATE_WRITING}
    try:
        if _is_url(staging):
            storage.gfile(staging).makedirs(staging)
        else:
            os.makedirs(home, exist_ok=True)
            os.mkdir(staging)
        _write_marker(staging, marker)
        yield staging
        if _is_url(path):
            _swap_by_copy(staging, path, marker, replace, finish_with, check_swap)
        else:
            _swap_local(path, staging, backup, marker, replace, finish_with, check_swap)
    except BaseException as e:
        ours = read_marker(staging) if _exists(staging) else None
        if ours is not None and ours.get("id") == txn_id:
            if ours.get("state") in (STATE_COMMITTING, STATE_SWAPPING):
                # The staging folder is the only complete copy of the new output now: never removed here.
                raise TransactionError(f"moving the new output {staging} into {path} failed ({type(e).__name__}: "
                                       f"{e}); it is kept, and the next run into {path} finishes the swap") from e
            _remove_tree_marker_last(staging)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # Only when empty: a folder this run made and nothing else wrote into.
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(describe_disk_full(path)) from e  # Measured now that the staging folder is gone.
        raise


def _keep_beside(path: str, staging: str, txn_id: str, problem: str) -> None:
    """The new output stays next to the previous one, under a visible name and no longer marked ours; raises."""
    parent, name = _split(path)
    if _is_url(path):
        kept = staging
        _remove_any(_join(staging, MARKER_FILENAME))
    else:
        kept = os.path.join(path, f"{name}{KEPT_MARK}{txn_id}")
        os.rename(staging, kept)
        os.unlink(os.path.join(kept, MARKER_FILENAME))
    raise SwapRefused(f"{path} changed during the run: {problem}. Nothing was deleted: {path} holds what it held "
                      f"and the new output is in {kept}; move your entries elsewhere and the new output into place, "
                      f"or remove {kept} and run again (a later run takes it, no longer marked, for an entry of "
                      f"yours)", kept)


def _swap_local(path: str, staging: str, backup: str, marker: dict, replace: bool, finish_with: Sequence[str],
                check_swap: Callable[[str], str | None] | None) -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        raise TransactionError(f"output {path} is no longer a folder")
    previous = output_entries(path)  # Again: the job may have run for hours.
    problem = None
    if previous and not replace:
        problem = f"{len(previous)} entr{'y' if len(previous) == 1 else 'ies'} appeared in it: {first_of(previous, 8)}"
    elif previous and check_swap is not None:
        problem = check_swap(path)
    if problem:
        _keep_beside(path, staging, marker["id"], problem)
    new = sorted(n for n in os.listdir(staging) if n != MARKER_FILENAME)
    swapping = {**marker, "state": STATE_SWAPPING, "previous": previous, "new": new,
                "finish_with": list(finish_with)}
    _write_marker(staging, swapping)
    _roll_forward(path, staging, backup, swapping)


def _roll_forward(path: str, staging: str, backup: str, marker: dict) -> None:
    """Moves the previous entries into ``backup`` and the staged ones into ``path``, then removes both folders.

    Safe to run again after a kill at any point: an entry named in ``new`` that is no longer in ``staging`` has
    been moved in already, so the entry of that name in ``path`` is the new one.
    """
    last = set(marker.get("finish_with", DEFAULT_FINISH_WITH))
    if not os.path.isdir(backup):
        os.mkdir(backup)
        _write_marker(backup, marker)  # Marked ours before anything moves into it.
    staged = set(os.listdir(staging)) - {MARKER_FILENAME}
    for name in sorted(marker["previous"], key=lambda n: (n not in last, n)):
        if name in marker["new"] and name not in staged:
            continue  # Already the new one.
        if os.path.lexists(os.path.join(path, name)):
            os.rename(os.path.join(path, name), os.path.join(backup, name))
    for name in sorted(marker["new"], key=lambda n: (n in last, n)):
        if name in staged:
            os.rename(os.path.join(staging, name), os.path.join(path, name))
    _remove_tree_marker_last(backup)
    _remove_tree_marker_last(staging)


def _copy_tree(src: str, dst: str, finish_with: Sequence[str]) -> None:
    """Copies every file under ``src`` (but the marker) to ``dst``, the top-level ``finish_with`` files last."""
    gfile = storage.gfile(src)  # an object store's staging folder
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


def _swap_by_copy(staging: str, path: str, marker: dict, replace: bool, finish_with: Sequence[str],
                  check_swap: Callable[[str], str | None] | None) -> None:
    had_previous = _check_target(path, replace)
    problem = check_swap(path) if had_previous and check_swap is not None else None
    if problem:
        _keep_beside(path, staging, marker["id"], problem)
    _write_marker(staging, {**marker, "state": STATE_COMMITTING})
    if had_previous:
        storage.gfile(path).rmtree(path)
    _copy_tree(staging, path, finish_with)
    _remove_tree_marker_last(staging)


# ------------------------------------------------------------------------------------------------- leftovers
def find_leftovers(path: str) -> list[Leftover]:
    """Leftovers of killed runs inside ``path`` (beside it on object stores); only what carries our marker."""
    home = _names(path, "")[0]
    found = []
    for entry in sorted(_listdir(home)):
        own = _transaction_folder(path, entry)
        if own is not None:
            found.append(_classify(path, _join(home, entry), *own))
    return found


def _classify(path: str, folder: str, kind: str, marker: dict) -> Leftover:
    alive = _alive(marker)
    if alive:
        action = f"left alone: its run (pid {marker.get('pid')}) is still going on"
    elif kind == "staging" and marker.get("state") == STATE_COMMITTING:
        action = f"finish copying it into {path}, then remove it"
    elif kind == "staging" and marker.get("state") == STATE_SWAPPING:
        action = f"finish moving it into {path} (the previous output's entries go), then remove it"
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
        if not _exists(item.path):
            continue  # A backup already removed with its staging folder's swap.
        state = item.info.get("state")
        if item.kind == "staging" and state == STATE_COMMITTING:
            if _exists(path):
                _remove_any(path)  # A partial copy of our own complete staging folder.
            _copy_tree(item.path, path, finish_with)
            _remove_tree_marker_last(item.path)
        elif item.kind == "staging" and state == STATE_SWAPPING:
            _roll_forward(path, item.path, _names(path, item.info["id"])[2], item.info)
        else:
            _remove_tree_marker_last(item.path)
        done.append(f"{item.describe()}: done")
    return done
