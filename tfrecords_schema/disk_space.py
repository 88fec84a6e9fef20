"""Where an output can be written: a full disk in one line, and the checks a run makes before any work.

* :class:`DiskFullError` / :func:`is_disk_full` / :func:`describe_disk_full`: an ``ENOSPC`` (or a quota) anywhere in
  an exception chain, also when another layer kept only its text (a Beam pipeline error), becomes one line naming
  the folder and the free space *of the file system that holds it* (measured when the line is made, so callers make
  it after removing what the failed run wrote).
* :func:`check_output_place`: before a run writes anything into a local output folder (which may be a mount point,
  or sit on another file system than its parent): the nearest existing folder is writable, every entry that the
  swap will move is on the output's own file system (an entry that is itself a mount point cannot be renamed) and,
  when a folder, writable, and how much space is free against an estimate. It returns an :class:`OutputPlace` whose
  ``problem`` is one line.

Example:
    place = check_output_place("/mnt/data/out", needed_bytes=2 * previous_size)
    if place.problem:
        raise SystemExit(place.problem)
    print(place.describe())   # "on /dev/sdb1 ..., 12.3 GiB free, about 200.0 MiB needed"
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
from collections.abc import Iterable

_DISK_FULL_TEXT = "no space left on device"


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; the message is one line naming the folder and free space."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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


def format_size(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``12.3 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def existing_folder(path: str) -> str:
    """``path`` or its nearest existing ancestor (where a folder to be created would live)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return probe


def describe_disk_full(path: str, needed_bytes: int | None = None) -> str:
    """One line: the disk holding ``path`` is full, how much is free on it now, and (if known) how much is needed."""
    needed = f"; about {format_size(needed_bytes)} needed" if needed_bytes else ""
    if "://" in path:
        return f"storage full or over quota while writing {path}{needed}"
    usage = shutil.disk_usage(existing_folder(path))
    return (f"disk full while writing {path}: {format_size(usage.free)} free of {format_size(usage.total)} on its "
            f"file system{needed}; free space and run again (a conversion needs about 2x its output size while it "
            "runs)")


@dataclasses.dataclass(frozen=True)
class OutputPlace:
    """What :func:`check_output_place` found.

    Attributes:
        path: The output folder.
        folder: The folder checked (``path``, or its nearest existing ancestor when ``path`` does not exist yet).
        free_bytes: Free space on its file system.
        needed_bytes: The caller's estimate of the space the run needs (None: unknown).
        mount_point: ``path`` is a mount point (a volume or disk of its own).
        problem: Why the run cannot write or swap there (one line), else None.
    """

    path: str
    folder: str
    free_bytes: int
    needed_bytes: int | None
    mount_point: bool
    problem: str | None = None

    @property
    def short_of_space(self) -> bool:
        return self.needed_bytes is not None and self.free_bytes < self.needed_bytes

    def describe(self) -> str:
        """``a mount point, staged inside it; 12.3 GiB free, about 10.0 MiB needed``."""
        where = "a mount point, " if self.mount_point else ""
        needed = f", about {format_size(self.needed_bytes)} needed" if self.needed_bytes is not None else ""
        return f"{where}staged inside it (one file system); {format_size(self.free_bytes)} free{needed}"


def check_output_place(path: str, moved: Iterable[str] = (), needed_bytes: int | None = None) -> OutputPlace:
    """Checks a local output folder before any work (see the module docstring); nothing is written.

    Args:
        path: The output folder (need not exist yet).
        moved: Names of the entries directly under ``path`` that the swap will move (the previous output's).
        needed_bytes: An estimate of the space the run needs, or None.
    """
    path = os.path.abspath(path)
    folder = existing_folder(path)
    free = shutil.disk_usage(folder).free
    mount_point = os.path.ismount(path)
    place = OutputPlace(path, folder, free, needed_bytes, mount_point)
    if not os.path.isdir(folder):
        return dataclasses.replace(place, problem=f"{folder} is not a folder")
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return dataclasses.replace(place, problem=f"{folder} is on a read-only file system")
    if not os.access(folder, os.W_OK | os.X_OK):
        return dataclasses.replace(place, problem=f"{folder} is not writable by this user")
    if os.path.isdir(path):
        device = os.stat(path).st_dev
        for name in sorted(moved):
            entry = os.path.join(path, name)
            if os.path.lexists(entry) and os.lstat(entry).st_dev != device:
                return dataclasses.replace(place, problem=(
                    f"{entry} is on another file system (a mount point) than {path}: the swap cannot move it; "
                    f"unmount it or choose another output"))
            # Moving a folder to another parent rewrites its "..", and removing its files writes it: found only in
            # the swap, such a folder stopped it halfway, the previous dataset_info.json already moved aside.
            if os.path.isdir(entry) and not os.path.islink(entry) and not os.access(entry, os.W_OK | os.X_OK):
                return dataclasses.replace(place, problem=(
                    f"{entry} is a folder this user cannot write: the swap cannot move it or remove the previous "
                    f"files in it; make it writable or choose another output"))
    return place
