"""The one temp-then-rename helper: every file a run finalises appears whole or not at all.

Locally the rename is atomic (a reader sees the old file or the new one, never a partial
one); on object stores (``gs://``, ``s3://``) an object appears whole once its upload
completes, so the temporary name only keeps a failed write from leaving a truncated
object under the final name. Uses ``tf.io.gfile`` for URLs (``gs://`` and, with tensorflow-io,
``s3://``) and the standard library for local paths (:mod:`tfrecords_schema.storage`).

Example:
    with incomplete_file("OUT/dataset_info.json") as tmp:
        with storage.gfile(tmp).GFile(tmp, "w") as f:
            f.write(text)
    # OUT/dataset_info.json now holds ``text``; on an exception the temp file is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator

from tfrecords_schema import storage

INCOMPLETE_MARK = ".incomplete-"  # Part of every temporary name; a leftover one is recognisable.
NAME_MAX = 255  # Bytes a file name may have (ext4, XFS, APFS and most others).


def _split(path: str) -> tuple[str, str]:
    return posixpath.split(path.rstrip("/")) if storage.is_url(path) else os.path.split(path)


def temporary_name(path: str) -> str:
    """A fresh temporary path next to ``path`` (same folder, so the rename stays on one file system).

    A name too long to take the temporary marks within :data:`NAME_MAX` bytes is cut (a whole UTF-8 character at a
    time) in the temporary name: before, a legal name near the limit (a prediction file named after a long video name)
    could not be written at all. (Such a leftover is not recognised by its name's start, as a shorter one is.)
    """
    folder, name = _split(path)
    marks = f"{INCOMPLETE_MARK}{uuid.uuid4().hex}"
    room = NAME_MAX - 1 - len(marks)  # (The leading dot; the marks are ASCII.)
    # Bytes as the file system has them (os.fsencode): a name that is not UTF-8 (a video named in Latin-1, read back
    # with surrogate escapes) cannot be encoded strictly, and such a name was written before.
    while len(os.fsencode(name)) > room:  # (A whole character at a time.)
        name = name[:-1]
    tmp = f".{name}{marks}"
    return posixpath.join(folder, tmp) if storage.is_url(path) else os.path.join(folder, tmp)


class _GFile:
    """The default file system of :func:`incomplete_file`: ``tf.io.gfile`` for URLs (``gs://``, tfio's ``s3://``), the
    standard library for local paths (:func:`tfrecords_schema.storage.gfile`)."""

    def makedirs(self, path: str) -> None:
        storage.gfile(path).makedirs(path)

    def rename(self, src: str, dst: str) -> None:
        storage.gfile(dst).rename(src, dst, overwrite=True)

    def exists(self, path: str) -> bool:
        return storage.gfile(path).exists(path)

    def remove(self, path: str) -> None:
        storage.gfile(path).remove(path)


@contextlib.contextmanager
def incomplete_file(path: str, fs=None) -> Iterator[str]:
    """Yields a temporary path to write; renames it to ``path`` on success, removes it on failure.

    The parent folder is created when missing. An existing ``path`` is replaced.

    Args:
        path: The final path.
        fs: The file system: an object with ``makedirs(path)``, ``rename(src, dst)`` (replacing ``dst``),
            ``exists(path)`` and ``remove(path)``. Default: :func:`tfrecords_schema.storage.gfile`'s. The Beam job
            passes one backed by Beam's ``FileSystems``, whose pipeline options (S3 endpoint, GCS project) TensorFlow
            lacks.
    """
    fs = fs or _GFile()
    folder, _ = _split(path)
    if folder:
        fs.makedirs(folder)
    tmp = temporary_name(path)
    try:
        yield tmp
        fs.rename(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.remove(tmp)


def write_atomically(path: str, data: bytes | str) -> str:
    """Writes ``data`` (bytes or text) to ``path`` through :func:`incomplete_file`; returns ``path``."""
    with incomplete_file(path) as tmp, storage.gfile(tmp).GFile(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_json(path: str, payload) -> str:
    """Writes deterministic JSON (sorted keys) to a local path or URL, atomically; returns the path."""
    return write_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
