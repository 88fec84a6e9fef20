"""Folder listing for an adapter's scan: each real folder listed once, every problem reported.

A scan that follows symbolic links blindly multiplies files (``ln -s . loop`` finds every video once
per loop level) or never ends (two loops). Here a local folder is known by the ``(device, inode)`` of
its target: a link back to a folder being listed (``symlink_loop``) or a second path to a folder
already listed (``repeated_folder``) gives one dead letter and is not followed. URLs (``gs://``,
``s3://``) have no links and are known by their path. A folder that cannot be listed (permissions, a
broken link, an object-store error) gives a ``unlisted_folder`` dead letter and is recorded in
``unlisted_folders``, so the conversion can refuse to go on with part of its input missing.

Listing goes through ``tf.io.gfile`` (local paths and URLs alike). No Beam import.

Example::

    scan = FolderScan(file_suffixes=(".txt", ".mp4"))
    stack = [(root, ())]
    while stack:
        folder, parents = stack.pop()
        listing = scan.list(folder, parents)
        if listing is not None:
            stack.extend((sub, listing.chain) for sub in reversed(listing.subdirs))
"""

from __future__ import annotations

import dataclasses
import errno
import os
import posixpath

from beam_jobs.media.video import VIDEO_EXTENSIONS
from beam_jobs.sources import base
from tfrecords_schema.filesystems import register_filesystems
from tfrecords_schema.prediction_files import LEDGER_FILENAME, rendered_videos


def path_identity(path: str) -> object:
    """What a path leads to: ``(device, inode)`` of a local target (links followed), else the path.

    Raises:
        OSError: a local path whose target cannot be reached (broken link, link loop, no permission).
    """
    if "://" in path:
        return path.rstrip("/")
    info = os.stat(path)
    return info.st_dev, info.st_ino


def file_identity(path: str) -> object:
    """:func:`path_identity`, or the path itself where the target cannot be reached (a broken link counts alone)."""
    try:
        return path_identity(path)
    except OSError:
        return path


def _is_broken_link(path: str) -> bool:
    return "://" not in path and os.path.islink(path) and not os.path.exists(path)


@dataclasses.dataclass(frozen=True)
class Listing:
    """One folder's entries (full paths, sorted).

    Attributes:
        folder: The folder listed.
        subdirs: Its subfolders (and broken links whose name has no known file suffix: they may be
            missing folders, and listing them reports them).
        files: Its files.
        chain: Identities of this folder and of those above it in the walk: pass it as ``parents``
            when listing a subfolder, so that a link back up is known as a loop.
    """

    folder: str
    subdirs: list[str]
    files: list[str]
    chain: tuple


class FolderScan:
    """Lists the folders of one walk, each real folder once, and collects what went wrong.

    Args:
        file_suffixes: Names ending so (any case) are taken as files without asking the file system (saves a
            request per entry on ``gs://``), but for a local video-like name: a stat tells a folder so named.

    Attributes:
        dead_letters: ``SCAN_*`` dead letters, one per loop, repeated folder or unlisted folder.
        unlisted_folders: Folders that could not be listed, in the order met.
        notes: What was left out on purpose, one line each: the videos ``affectstream predict --render`` wrote (its
            folder's file list names them, :mod:`tfrecords_schema.prediction_files`): copies of source videos with
            the predictions drawn on, which would otherwise be taken for more videos (a stem met twice is
            ``ambiguous_media``, and its track is dropped).
    """

    def __init__(self, file_suffixes: tuple[str, ...] = ()):
        self.file_suffixes = tuple(s.lower() for s in file_suffixes)
        self.dead_letters: list[base.DeadLetter] = []
        self.unlisted_folders: list[str] = []
        self.notes: list[str] = []
        self._listed: dict[object, str] = {}

    def list(self, folder: str, parents: tuple = ()) -> Listing | None:
        """The folder's entries, or None when it is not listed (a loop, a repeat or an error; reported).

        Args:
            folder: The folder.
            parents: ``Listing.chain`` of the folder above it in the walk (``()`` for a root).
        """
        try:
            identity = path_identity(folder)
        except OSError as e:
            if e.errno == errno.ELOOP:  # Links that lead only to each other: nothing behind them.
                self._report(folder, base.SCAN_SYMLINK_LOOP, f"{folder} is a symbolic-link loop: not followed")
            else:
                self.unlisted(folder, self._os_error(folder, e))
            return None
        if identity in parents or identity in self._listed:
            first = self._listed.get(identity, folder)
            if identity in parents:
                self._report(folder, base.SCAN_SYMLINK_LOOP,
                             f"{folder} leads back to {first} (a symbolic-link loop): not followed")
            else:
                self._report(folder, base.SCAN_REPEATED_FOLDER,
                             f"{folder} is the folder already listed as {first}: not listed twice")
            return None
        self._listed[identity] = folder
        import tensorflow as tf  # Late import: importing the adapters must not load TensorFlow.

        register_filesystems(folder)  # (Workers list folders too: each process registers s3:// itself.)
        try:
            entries = tf.io.gfile.listdir(folder)
        except tf.errors.OpError as e:
            self.unlisted(folder, e.message)
            return None
        return self._classify(folder, entries, parents + (identity,))

    def unlisted(self, path: str, detail: str) -> None:
        """Records a folder (or a file listing others) that could not be read."""
        if path in self.unlisted_folders:
            return
        self.unlisted_folders.append(path)
        self._report(path, base.SCAN_UNLISTED_FOLDER,
                     f"cannot list {path}: {detail}; whatever it holds is missing from this run")

    def _classify(self, folder: str, entries: list[str], chain: tuple) -> Listing:
        import tensorflow as tf

        subdirs, files = [], []
        for entry in sorted(entries):
            is_dir = entry.endswith("/")  # Object stores mark folders so.
            entry = entry.rstrip("/")
            path = tf.io.gfile.join(folder, entry)
            if not is_dir and not entry.lower().endswith(self.file_suffixes):
                is_dir = tf.io.gfile.isdir(path) or _is_broken_link(path)
            elif not is_dir and "://" not in path and entry.lower().endswith(VIDEO_EXTENSIONS):
                # A local folder may be named like a video ("session1.mp4/"): a stat tells. Object stores mark
                # their folders with the "/" above; other suffixes (crops, annotations: many files) are not asked.
                is_dir = os.path.isdir(path)
            (subdirs if is_dir else files).append(path)
        if LEDGER_FILENAME in entries:
            files = self._without_renders(folder, files)
        return Listing(folder, subdirs, files, chain)

    def _without_renders(self, folder: str, files: list[str]) -> list[str]:
        names = {posixpath.basename(p.replace("\\", "/")): p for p in files}
        renders, note = rendered_videos(folder, names, VIDEO_EXTENSIONS)
        if note:
            self.notes.append(note)
        return [p for p in files if p not in {names[name] for name in renders}]

    @staticmethod
    def _os_error(path: str, error: OSError) -> str:
        if _is_broken_link(path):
            return f"broken symbolic link to {os.readlink(path)!r}"
        return error.strerror or str(error)

    def _report(self, source: str, reason: str, message: str) -> None:
        self.dead_letters.append(base.DeadLetter(source=source, reason=reason, message=message))
