"""One file API: ``tf.io.gfile`` for URLs, the standard library for local paths (no TensorFlow import for local work).

``storage.gfile(path)`` returns ``tf.io.gfile`` for a URL (``gs://``, ``s3://`` with tensorflow-io, ...) and
:data:`LOCAL` for a local path: the same methods with the same meanings, so a call site reads
``storage.gfile(path).exists(path)`` whatever the path is. ``import tensorflow`` costs seconds of CPU
(:mod:`beam_jobs.faces.tflite`); ``predict`` on local files, which runs its models on TF Lite, never pays it.
"""

from __future__ import annotations

import os
import shutil


def is_url(path: str) -> bool:
    """Whether a path is a URL (``gs://``, ``s3://``, ...) rather than a local path."""
    return "://" in path


class LocalFiles:
    """The subset of ``tf.io.gfile`` this project uses, on local paths (same arguments, same results)."""

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.exists(path)

    @staticmethod
    def isdir(path: str) -> bool:
        return os.path.isdir(path)

    @staticmethod
    def listdir(path: str) -> list[str]:
        return os.listdir(path)

    @staticmethod
    def walk(top: str):
        return os.walk(top, followlinks=True)  # tf.io.gfile.walk enters linked folders too

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def remove(path: str) -> None:
        os.remove(path)

    @staticmethod
    def rmtree(path: str) -> None:
        shutil.rmtree(path)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(f"{dst} exists")
        os.replace(src, dst)

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(f"{dst} exists")
        shutil.copyfile(src, dst)

    @staticmethod
    def GFile(path: str, mode: str = "r"):  # noqa: N802 - tf.io.gfile's name
        # Text modes as tf.io.gfile's: UTF-8, no newline translation.
        return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8", newline="")


LOCAL = LocalFiles()


def gfile(path: str):
    """``tf.io.gfile`` for a URL, :data:`LOCAL` for a local path."""
    if is_url(path):
        import tensorflow as tf  # Late import: only URLs need TensorFlow's file systems.

        return tf.io.gfile
    return LOCAL


WRITE_PROBE_PREFIX = ".affectstream-write-probe-"  # the object url_write_problem writes and removes


def url_write_problem(url: str) -> str | None:
    """Why nothing can be written under the folder URL ``url`` (a bucket that does not exist, no permission, an
    unreachable endpoint), in the file system's words; None when a small probe object could be written there (it
    is removed at once: the tool's own). Local paths are :func:`tfrecords_schema.disk_space.check_output_place`'s."""
    import tensorflow as tf

    probe = f"{url.rstrip('/')}/{WRITE_PROBE_PREFIX}{os.getpid()}"
    try:
        with tf.io.gfile.GFile(probe, "wb") as f:
            f.write(b"probe")
    except tf.errors.OpError as e:
        return e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
    try:
        tf.io.gfile.remove(probe)
    except tf.errors.OpError:
        pass  # Written but not removed: a write-only place is still a place to write.
    return None
