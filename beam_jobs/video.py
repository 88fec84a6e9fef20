"""Streaming frame reading with OpenCV: frame ``i`` (1-based) is annotation line ``i``.

Frames are decoded one at a time, so a video of any length needs the memory of a
frame. Remote media (``gs://``, ``s3://``, anything Beam's ``FileSystems`` reads)
is first copied to a local temporary file in chunks, since OpenCV reads local files.
Timestamps are ``(i - 1) / fps`` in microseconds (fps from the container, 30 when
the container does not say), so they are the same on every run.

Example:
    with VideoReader("clip.mp4") as video:
        for index, timestamp_us, frame in video.frames(limit=100):
            ...
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from typing import Iterator

import cv2
import numpy as np

DEFAULT_FPS = 30.0
# Containers FFmpeg (OpenCV's decoder) opens; matched in any letter case by every adapter.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_CHUNK = 8 << 20


class VideoError(Exception):
    """The media cannot be opened or decoded (zero-byte, corrupt, unsupported codec)."""


def is_remote(path: str) -> bool:
    """Whether a path is a URL (``gs://``, ``s3://``, ...) rather than a local path."""
    return "://" in path


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """Yields a local path for ``path``; remote files are copied to a temp file in 8 MiB chunks."""
    if not is_remote(path):
        yield path
        return
    from apache_beam.io.filesystems import FileSystems  # Only remote media needs Beam's file systems.

    suffix = os.path.splitext(path)[1]
    fd, local = tempfile.mkstemp(suffix=suffix, prefix="affectstream-")
    try:
        with os.fdopen(fd, "wb") as out, FileSystems.open(path) as src:
            shutil.copyfileobj(src, out, _CHUNK)
        yield local
    finally:
        with contextlib.suppress(OSError):
            os.remove(local)


def frame_timestamp_us(index: int, fps: float) -> int:
    """Microseconds of 1-based frame ``index`` from the start of the video."""
    return int(round((index - 1) * 1_000_000 / fps))


class VideoReader:
    """Reads the frames of one video in order.

    Args:
        path: Local path or URL of the video.

    Raises:
        VideoError: on entering, when the file is empty, cannot be opened or its
            first frame does not decode.
    """

    def __init__(self, path: str):
        self.path = path
        self.fps = DEFAULT_FPS
        self.width = 0
        self.height = 0
        self._stack: contextlib.ExitStack | None = None
        self._cap = None
        self._first: np.ndarray | None = None
        self.frames_read = 0

    def __enter__(self) -> "VideoReader":
        self._stack = contextlib.ExitStack()
        try:
            local = self._stack.enter_context(local_copy(self.path))
            if not os.path.exists(local):
                raise VideoError(f"{self.path}: file not found")
            if os.path.getsize(local) == 0:
                raise VideoError(f"{self.path}: zero-byte file")
            cap = cv2.VideoCapture(local)
            self._stack.callback(cap.release)
            if not cap.isOpened():
                raise VideoError(f"{self.path}: OpenCV cannot open it (corrupt file or unsupported container/codec)")
            ok, first = cap.read()
            if not ok or first is None:
                raise VideoError(f"{self.path}: no frame decodes (corrupt file or unsupported codec)")
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
            self.height, self.width = first.shape[:2]
            self._cap, self._first = cap, first
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
        self._cap = None

    def read(self) -> np.ndarray | None:
        """Decodes the next frame (BGR uint8); None at the end of the decodable frames."""
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                return None
        self.frames_read += 1
        return frame

    def skip(self) -> bool:
        """Advances one frame without decoding it to pixels; False at the end."""
        if self._first is not None:
            self._first = None
        elif not self._cap.grab():
            return False
        self.frames_read += 1
        return True

    def frames(self, limit: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yields ``(index, timestamp_us, frame)`` with 1-based indices, at most ``limit`` frames."""
        while limit is None or self.frames_read < limit:
            frame = self.read()
            if frame is None:
                return
            yield self.frames_read, frame_timestamp_us(self.frames_read, self.fps), frame


def probe_fps(path: str | None) -> float:
    """Frame rate of a video, or :data:`DEFAULT_FPS` when it cannot be read."""
    if not path:
        return DEFAULT_FPS
    try:
        with VideoReader(path) as video:
            return video.fps
    except (VideoError, OSError):
        return DEFAULT_FPS
