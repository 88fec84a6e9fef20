"""File helpers of the conversion job, through Beam's ``FileSystems`` (local paths, ``gs://``, ``s3://``).

The job reads and writes only through Beam's file systems, so the credentials and endpoints given
as pipeline options (``--s3_endpoint_url``, GCS project, ...) serve the driver and every worker.
TensorFlow's file systems cannot take those options, and tensorflow-io's S3 file system aborts the
process at exit (see ``tfrecords_schema/filesystems.py``), so the schema's one temp-then-rename helper
(:func:`tfrecords_schema.atomic.incomplete_file`) runs here on Beam's file systems (:class:`BeamFiles`).

Example:
    write_atomically(join_path(output, "dataset_info.json"), text.encode("utf-8"))
    delete_tree(join_path(output, ".tmp-convert"))
"""

from __future__ import annotations

import glob
import os
import shutil

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.media.video import is_remote
from tfrecords_schema import join_path
from tfrecords_schema.atomic import incomplete_file


def ensure_dir(path: str) -> None:
    """Creates a local folder and its parents (object stores have no folders: nothing to do)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def ensure_parent(path: str) -> None:
    """Creates the local folder a file will be written in."""
    if not is_remote(path):
        ensure_dir(os.path.dirname(path) or ".")


def create(path: str):
    """Opens a new file for writing (its local folder created), uncompressed whatever its name."""
    ensure_parent(path)
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file."""
    with create(path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    """Reads a whole file."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


class BeamFiles:
    """Beam's ``FileSystems`` in the shape :func:`tfrecords_schema.atomic.incomplete_file` takes."""

    @staticmethod
    def makedirs(path: str) -> None:
        ensure_dir(path)

    @staticmethod
    def rename(src: str, dst: str) -> None:
        FileSystems.rename([src], [dst])  # Locally os.rename (replaces atomically); on object stores copy + delete.

    @staticmethod
    def exists(path: str) -> bool:
        return FileSystems.exists(path)

    @staticmethod
    def remove(path: str) -> None:
        if is_remote(path):
            FileSystems.delete([path])
        else:
            os.remove(path)  # Beam's local delete takes its path for a pattern (see delete_tree).


def write_atomically(path: str, data: bytes) -> str:
    """Writes ``data`` under a temporary name next to ``path``, then renames it to ``path``; returns ``path``.

    The project's one temp-then-rename helper (:func:`tfrecords_schema.atomic.incomplete_file`) on Beam's
    file systems. An existing ``path`` is replaced.
    """
    with incomplete_file(path, fs=BeamFiles) as tmp:
        write_bytes(tmp, data)
    return path


def literal_pattern(path: str) -> str:
    """``path`` with the pattern characters of ``FileSystems.match`` (``*?[``) quoted, for a pattern under it.

    ``FileSystems.match`` and Beam's deletes take every path for a pattern: an output named ``run [v2]`` matched
    nothing, and a run into it failed on its first shard.
    """
    return glob.escape(path)


def list_files(folder: str, suffix: str) -> list[str]:
    """The files directly in ``folder`` whose names end in ``suffix`` (none when it does not exist)."""
    if is_remote(folder):
        return [m.path for m in FileSystems.match([join_path(literal_pattern(folder), "*" + suffix)])[0].metadata_list]
    if not os.path.isdir(folder):
        return []
    return sorted(e.path for e in os.scandir(folder) if e.name.endswith(suffix) and e.is_file())


def file_size(path: str) -> int:
    """The size of the file ``path`` in bytes (its name taken as it is, never as a pattern)."""
    return FileSystems.get_filesystem(path).size(path)


def delete_tree(path: str) -> None:
    """Deletes a folder and everything under it (a prefix on object stores)."""
    if is_remote(path):
        FileSystems.delete([path.rstrip("/") + "/"])
    else:
        shutil.rmtree(path)  # What Beam's local delete does, without taking the path for a pattern.
