"""Streaming frame reading with OpenCV: frame ``i`` (1-based) is annotation line ``i``.

Frames are decoded one at a time, so a video of any length needs the memory of a
frame. Remote media (``gs://``, ``s3://``, anything Beam's ``FileSystems`` reads)
is first copied to a local temporary file in chunks, since OpenCV reads local files.
Timestamps are ``(i - 1) / fps`` in microseconds (fps from the container, 30 when
the container does not say), so they are the same on every run.

A frame that does not decode in the middle of a video must not shift the frames after
it (frame ``i`` stays annotation line ``i``), and must not end the video either.
OpenCV's ``grab()`` answers False both for such a frame and at the end, and goes on
with the next packet when called again. So :meth:`VideoReader.next_frame` grabs again
after a failure: when a later frame decodes, the failed ones were corrupt frames
(:attr:`FrameStatus.CORRUPT`) and the decoded frame's place comes from its container
timestamp (the count of failed grabs when the container gives none); when
``max_corrupt_run`` grabs in a row fail, the stream has ended (:attr:`FrameStatus.END`;
a grab at the end costs ~2 µs). Frames that fail at the very end cannot be told from the
end. A frame that FFmpeg decodes with errors concealed is returned as decoded: OpenCV
does not expose the decoder's error flags.

Example:
    with VideoReader("clip.mp4") as video:
        while (frame := video.next_frame()).status is not FrameStatus.END:
            if frame.status is FrameStatus.DECODED:
                use(frame.index, frame.timestamp_us, frame.image)
            else:                         # FrameStatus.CORRUPT: no image for this line
                count_decode_error(frame.index)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are not evaluated at run time (3.10 too).
    from typing import Self

# cv2 is imported in the functions that use it (a dict lookup once loaded): importing this module, as
# `affectstream convert --help` does, must not load OpenCV.
import numpy as np

DEFAULT_FPS = 30.0
# Containers FFmpeg (OpenCV's decoder) opens; matched in any letter case by every adapter.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
# Failed grabs in a row after which the stream is taken to have ended (~33 s at 30 fps).
MAX_CORRUPT_RUN = 1000
_CHUNK = 8 << 20


class VideoError(Exception):
    """The media cannot be opened or decoded (zero-byte, corrupt, unsupported codec)."""


class FrameStatus(enum.Enum):
    """What :meth:`VideoReader.next_frame` found at a frame index."""

    DECODED = "decoded"  # The frame decoded (``image`` set unless it was only skipped).
    CORRUPT = "corrupt"  # The frame did not decode, later frames did: no image for this index.
    END = "end"  # Past the last decodable frame.


@dataclasses.dataclass(frozen=True)
class VideoFrame:
    """One frame index of a video and what decoding it gave.

    Attributes:
        index: 1-based frame index (= annotation line).
        timestamp_us: ``(index - 1) / fps`` in microseconds.
        status: Decoded, corrupt, or the end of the stream.
        image: BGR uint8 ``[H, W, 3]`` for a decoded frame read with ``decode=True``; else None.
    """

    index: int
    timestamp_us: int
    status: FrameStatus
    image: np.ndarray | None = None


def is_remote(path: str) -> bool:
    """Whether a path is a URL (``gs://``, ``s3://``, ...) rather than a local path."""
    return "://" in path


def has_video_extension(path: str) -> bool:
    """Whether ``path`` ends with one of :data:`VIDEO_EXTENSIONS`, in any letter case."""
    return path.lower().endswith(VIDEO_EXTENSIONS)


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
    return round((index - 1) * 1_000_000 / fps)


class VideoReader:
    """Reads the frames of one video in order, reporting per frame index whether it decoded.

    Args:
        path: Local path or URL of the video.
        max_corrupt_run: Failed grabs in a row taken as the end of the stream.

    Attributes:
        fps, width, height: From the container and the first decoded frame.
        frames_read: Index of the last frame returned (decoded or corrupt).
        decode_errors: Corrupt frames returned so far.

    Raises:
        VideoError: on entering, when the file is empty, cannot be opened or no frame decodes.
    """

    def __init__(self, path: str, max_corrupt_run: int = MAX_CORRUPT_RUN):
        self.path = path
        self.max_corrupt_run = max_corrupt_run
        self.fps = DEFAULT_FPS
        self.width = 0
        self.height = 0
        self.frames_read = 0
        self.decode_errors = 0
        self._stack: contextlib.ExitStack | None = None
        self._cap = None
        self._ended = False
        self._pending: collections.deque[int] = collections.deque()  # Corrupt indices before the grabbed frame.
        self._grabbed: int | None = None  # Index of the frame grabbed but not yet returned.
        self._image: np.ndarray | None = None  # Its pixels, when already retrieved (the first frame).
        self._pts_origin_ms = 0.0
        self._legacy_stopped = False

    def __enter__(self) -> Self:
        import cv2

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
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
            self._cap = cap
            self._grab_next()
            ok, first = (False, None) if self._grabbed is None else cap.retrieve()
            if not ok or first is None:
                raise VideoError(f"{self.path}: no frame decodes (corrupt file or unsupported codec)")
            self.height, self.width = first.shape[:2]
            self._image = first
        except BaseException:
            self._stack.close()
            self._cap = None
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
        self._cap = None

    def _grab_next(self) -> None:
        """Grabs the next frame that decodes; queues the indices of the frames that failed before it."""
        import cv2

        expected = self.frames_read + 1  # Called only when nothing is queued.
        failures = 0
        while not self._cap.grab():
            failures += 1
            if failures >= self.max_corrupt_run:
                self._ended = True
                return
        index = expected
        if failures:
            index = self._index_from_timestamp(expected, failures)
            self._pending.extend(range(expected, index))
        elif expected == 1:
            self._pts_origin_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        self._grabbed = index

    def _index_from_timestamp(self, expected: int, failures: int) -> int:
        """Index of a frame grabbed after ``failures`` failed grabs: from its timestamp when it has a plausible one.

        Decoders can lose more frames than grabs failed (a broken reference frame) or fewer (a failed
        packet that held no picture), so the timestamp decides; OpenCV gives 0 for a frame without one.
        """
        import cv2

        pts_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if pts_ms > 0 and math.isfinite(pts_ms):
            index = round((pts_ms - self._pts_origin_ms) * self.fps / 1000.0) + 1
            if expected <= index <= expected + self.max_corrupt_run:
                return index
        return expected + failures

    def next_frame(self, decode: bool = True) -> VideoFrame:
        """The next frame index: decoded (with its image when ``decode``), corrupt, or the end.

        ``decode=False`` skips the colour conversion of a decoded frame (the decode itself always
        runs: later frames depend on it). After END every call returns END again.
        """
        if not self._pending and self._grabbed is None and not self._ended:
            self._grab_next()
        if self._pending:
            index = self._pending.popleft()
            self.frames_read = index
            self.decode_errors += 1
            return VideoFrame(index, frame_timestamp_us(index, self.fps), FrameStatus.CORRUPT)
        if self._grabbed is None:
            index = self.frames_read + 1
            return VideoFrame(index, frame_timestamp_us(index, self.fps), FrameStatus.END)
        index, image = self._grabbed, self._image
        self._grabbed, self._image = None, None
        self.frames_read = index
        if decode and image is None:
            ok, image = self._cap.retrieve()
            if not ok or image is None:  # Grabbed but not convertible: as good as corrupt.
                self.decode_errors += 1
                return VideoFrame(index, frame_timestamp_us(index, self.fps), FrameStatus.CORRUPT)
        return VideoFrame(index, frame_timestamp_us(index, self.fps), FrameStatus.DECODED, image if decode else None)

    # The calls below predate next_frame() and keep their meaning for existing callers.

    def read(self) -> np.ndarray | None:
        """Decodes the next frame (BGR uint8); None at the end, and from the first corrupt frame on.

        ``frames_read`` then counts the frames before the corrupt one, so a caller that stops at None
        accounts the rest as lost. Use :meth:`next_frame` to go on past a corrupt frame.
        """
        if self._legacy_stopped:
            return None
        frame = self.next_frame()
        if frame.status is FrameStatus.DECODED:
            return frame.image
        if frame.status is FrameStatus.CORRUPT:
            self._legacy_stopped = True
            self.frames_read = frame.index - 1
        return None

    def skip(self) -> bool:
        """Advances one frame without converting it to pixels; False at the end.

        A corrupt frame is skipped like any other (its index is kept), since a skipped frame's pixels are unused.
        """
        return not self._legacy_stopped and self.next_frame(decode=False).status is not FrameStatus.END

    def frames(self, limit: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yields ``(index, timestamp_us, frame)`` of the decoded frames among the first ``limit`` indices.

        Corrupt frames are left out; the indices of the others stay their true place in the video.
        """
        while limit is None or self.frames_read < limit:
            frame = self.next_frame()
            if frame.status is FrameStatus.END:
                return
            if frame.status is FrameStatus.DECODED:
                yield frame.index, frame.timestamp_us, frame.image


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    """What a full pass over a video found (see :func:`probe_video`).

    Attributes:
        fps: Frame rate (container's, or DEFAULT_FPS).
        width, height: Frame size.
        frames: Decodable length: the index of the last frame that decodes (corrupt frames before it included).
        decode_errors: Frames before that one that do not decode.
    """

    fps: float
    width: int
    height: int
    frames: int
    decode_errors: int


def probe_video(path: str) -> VideoProbe:
    """Runs through a whole video (decoding, no colour conversion) and counts its frames.

    Raises:
        VideoError: as :class:`VideoReader` does.
    """
    with VideoReader(path) as video:
        while video.next_frame(decode=False).status is not FrameStatus.END:
            pass
        return VideoProbe(video.fps, video.width, video.height, video.frames_read, video.decode_errors)


def probe_fps(path: str | None) -> float:
    """Frame rate of a video, or :data:`DEFAULT_FPS` when it cannot be read."""
    if not path:
        return DEFAULT_FPS
    try:
        with VideoReader(path) as video:
            return video.fps
    except (VideoError, OSError):
        return DEFAULT_FPS
