"""Streaming frame reading with OpenCV: frame ``i`` (1-based) is annotation line ``i``, upright, at its shown time.

Frames are decoded one at a time, so a video of any length needs the memory of a
frame. Remote media (``gs://``, ``s3://``, anything Beam's ``FileSystems`` reads)
is first copied to a local temporary file in chunks, since OpenCV reads local files.

Phone video: a container's display matrix (the 90/180/270 degree rotation phones write) is honoured, so frames
come out as a player shows them, and boxes and keypoints found on them are in the displayed frame's coordinates.
OpenCV 4.11 no longer does this by default (opencv/opencv#26795): the reader sets ``CAP_PROP_ORIENTATION_AUTO``
after opening and records the angle (:attr:`VideoReader.rotation`, clockwise).

Timestamps are the stream's presentation times (``CAP_PROP_POS_MSEC`` after each grab, from the first frame), in
microseconds, so a variable-frame-rate video (phones, screen recordings) gets the time each frame is shown, not
``(i - 1) / fps``: the container's frame rate of such a video is its frame count over its duration. A stream
whose frame intervals differ (by more than 1.5 ms, the rounding of millisecond containers) is
:attr:`VideoReader.variable_frame_rate`. A frame without a usable time (none, or not after the previous one)
gets the previous time plus one interval.

A frame that does not decode in the middle of a video must not shift the frames after
it (frame ``i`` stays annotation line ``i``), and must not end the video either.
OpenCV's ``grab()`` answers False both for such a frame and at the end, and goes on
with the next packet when called again. So :meth:`VideoReader.next_frame` grabs again
after a failure: when a later frame decodes, the failed ones were corrupt frames
(:attr:`FrameStatus.CORRUPT`, their times interpolated between their neighbours) and the decoded frame's place
comes from its timestamp while the stream is of constant rate (the count of failed grabs otherwise); when
``max_corrupt_run`` grabs in a row fail, the stream has ended (:attr:`FrameStatus.END`;
a grab at the end costs ~2 µs). Frames that fail at the very end cannot be told from the
end. A frame that FFmpeg decodes with errors concealed is returned as decoded: OpenCV
does not expose the decoder's error flags.

Truncated media: once the end is reached, :meth:`VideoReader.facts` compares the frames that decoded with the
frame count the container declares (a cut download or copy decodes fewer); the callers report it.

Example:
    with VideoReader("clip.mp4") as video:
        while (frame := video.next_frame()).status is not FrameStatus.END:
            if frame.status is FrameStatus.DECODED:
                use(frame.index, frame.timestamp_us, frame.image)
            else:                         # FrameStatus.CORRUPT: no image for this line
                count_decode_error(frame.index)
        facts = video.facts()             # variable frame rate, rotation, declared and decoded frames
"""

from __future__ import annotations

import array
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

from tfrecords_schema.storage import is_url as is_remote  # (this module's name for it, imported by others)

DEFAULT_FPS = 30.0
# Containers FFmpeg (OpenCV's decoder) opens; matched in any letter case by every adapter.
# (Not .ts, which names TypeScript sources as often as MPEG transport streams: give such a video by its own name.)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".mts",
                    ".m2ts")
# Failed grabs in a row after which the stream is taken to have ended (~33 s at 30 fps).
MAX_CORRUPT_RUN = 1000
# Spread of the frame intervals above which a stream is of variable frame rate: millisecond containers (mkv, webm)
# round 33.33 ms to 33 or 34 ms.
VFR_TOLERANCE_US = 1500
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
        timestamp_us: When the frame is shown, in microseconds from the first frame (see the module docstring).
        status: Decoded, corrupt, or the end of the stream.
        image: BGR uint8 ``[H, W, 3]`` for a decoded frame read with ``decode=True``; else None.
    """

    index: int
    timestamp_us: int
    status: FrameStatus
    image: np.ndarray | None = None


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


def stores_frame_count(local: str) -> bool:
    """Whether the container of local file ``local`` stores its video's frame count: ISO media (MP4, MOV, 3GP: the
    sample tables) and AVI (its header) do. For any other (Matroska, WebM, MPEG program and transport streams, FLV)
    OpenCV's frame count is the duration times a guessed frame rate, which a variable-rate stream (or a wrong
    duration) makes more or fewer than the frames that decode."""
    with open(local, "rb") as f:
        head = f.read(12)
    return head[4:8] in _ISO_MEDIA_BOXES or (head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"))


# The boxes an ISO base media file (MP4, MOV, 3GP) starts with.
_ISO_MEDIA_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def frame_timestamp_us(index: int, fps: float) -> int:
    """Microseconds of 1-based frame ``index`` at a constant ``fps`` (frames without a video of their own)."""
    return round((index - 1) * 1_000_000 / fps)


def interpolated_timestamps_us(before_us: int | None, after_us: int, count: int, fps: float) -> list[int]:
    """Times of ``count`` frames that did not decode between a frame shown at ``before_us`` and one at ``after_us``.

    Evenly spaced between the two; before the first decoded frame (``before_us`` None) one ``1 / fps`` apart, ending
    one interval before ``after_us`` (never below 0).
    """
    if before_us is None:
        step = 1_000_000 / fps
        return [max(0, round(after_us - (count - k) * step)) for k in range(count)]
    return [round(before_us + (after_us - before_us) * (k + 1) / (count + 1)) for k in range(count)]


@dataclasses.dataclass(frozen=True)
class StreamFacts:
    """What reading a video found out about its stream (:meth:`VideoReader.facts`).

    Attributes:
        rotation: Clockwise degrees of the container's display matrix (0, 90, 180, 270), applied to the frames.
        variable_frame_rate: The frame intervals differ (see the module docstring).
        declared_frames: The frame count the container declares (None when it gives none).
        decoded_frames: Frame indices read (decoded or corrupt) up to the end, or up to where the caller stopped.
        ended: The reader reached the end of the stream (only then is ``truncated`` known).
        truncated: The stream ended before the frames its container declares (fewer decode: a cut file).
    """

    rotation: int
    variable_frame_rate: bool
    declared_frames: int | None
    decoded_frames: int
    ended: bool
    truncated: bool

    def describe_truncation(self) -> str:
        """:func:`describe_truncation` of this stream (for warnings)."""
        return describe_truncation(self.declared_frames, self.decoded_frames)


def describe_truncation(declared_frames: int, decoded_frames: int) -> str:
    """``truncated? the container declares 30 frames, 14 decode (...)``: a cut file is the likely cause, but frames lost
    inside an AVI look the same (FFmpeg numbers the frames after the loss on, as if nothing were missing)."""
    return (f"truncated? the container declares {declared_frames} frames, {decoded_frames} decode (a cut file, or "
            "frames lost inside it: then the frames after the loss are numbered early)")


class VideoReader:
    """Reads the frames of one video in order, reporting per frame index whether it decoded.

    Args:
        path: Local path or URL of the video.
        max_corrupt_run: Failed grabs in a row taken as the end of the stream.
        threads: FFmpeg decoding threads (None: OpenCV's default, one per core). A conversion that runs one worker
            process per core asks for 1: frame-threaded decoding then only adds hand-over work (~0.1 ms a 720x528
            frame of CPU time) and takes cores the other workers need. The pixels are the same either way.

    Attributes:
        fps: The container's frame rate (or DEFAULT_FPS); for a variable-frame-rate stream an average only.
        width, height: Of the displayed (rotated) frames.
        rotation: Clockwise degrees of the container's display matrix (applied to the frames).
        declared_frames: The container's frame count, None when it gives none. Where the container stores no count
            (:func:`stores_frame_count`) it is OpenCV's estimate from the duration: good for telling a cut file,
            not for counting frames.
        counts_frames: Whether ``declared_frames`` is a count the container stores (MP4/MOV, AVI).
        frames_read: Index of the last frame returned (decoded or corrupt).
        decode_errors: Corrupt frames returned so far.

    Raises:
        VideoError: on entering, when the file is not a regular file, is empty, cannot be opened or no frame decodes.
    """

    def __init__(self, path: str, max_corrupt_run: int = MAX_CORRUPT_RUN, threads: int | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.path = path
        self.max_corrupt_run = max_corrupt_run
        self.threads = threads
        self.fps = DEFAULT_FPS
        self.width = 0
        self.height = 0
        self.rotation = 0
        self.declared_frames: int | None = None
        self.counts_frames = False
        self.frames_read = 0
        self.decode_errors = 0
        self._stack: contextlib.ExitStack | None = None
        self._cap = None
        self._ended = False
        # Corrupt (index, timestamp) before the grabbed frame.
        self._pending: collections.deque[tuple[int, int]] = collections.deque()
        self._grabbed: tuple[int, int] | None = None  # (index, timestamp) of the frame grabbed, not yet returned.
        self._image: np.ndarray | None = None  # Its pixels, when already retrieved (the first frame).
        self._pts_origin_ms: float | None = None
        self._last: tuple[int, int] | None = None  # (index, timestamp) of the last frame grabbed.
        self._intervals = (math.inf, 0.0)  # (shortest, longest) interval between consecutive frames, µs.
        self._legacy_stopped = False

    def __enter__(self) -> Self:
        import cv2

        self._stack = contextlib.ExitStack()
        try:
            local = self._stack.enter_context(local_copy(self.path))
            if not os.path.exists(local):
                raise VideoError(f"{self.path}: file not found")
            if not os.path.isfile(local):  # (A pipe would block the reads below; a device never ends.)
                raise VideoError(f"{self.path}: not a regular file")
            if os.path.getsize(local) == 0:
                raise VideoError(f"{self.path}: zero-byte file")
            cap = self._open(local)
            self._stack.callback(cap.release)
            if not cap.isOpened():
                raise VideoError(f"{self.path}: OpenCV cannot open it (corrupt file or unsupported container/codec)")
            cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # Phone video upright (off by default since OpenCV 4.11).
            self.rotation = int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META))) % 360
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.declared_frames = int(count) if math.isfinite(count) and count >= 1 else None
            self.counts_frames = self.declared_frames is not None and stores_frame_count(local)
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

    def _open(self, local: str):
        """The capture of ``local``, with :attr:`threads` decoding threads when set and the backend takes it."""
        import cv2

        if self.threads is not None:
            cap = cv2.VideoCapture(local, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, self.threads])
            if cap.isOpened():
                return cap
            cap.release()  # A backend without the setting: open it as OpenCV would by default.
        return cv2.VideoCapture(local)

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
        self._cap = None

    @property
    def variable_frame_rate(self) -> bool:
        """Whether the intervals between the frames read so far differ (see the module docstring)."""
        shortest, longest = self._intervals
        return longest - shortest > max(VFR_TOLERANCE_US, 0.01 * shortest)

    def _interval_us(self) -> float:
        """The last frame's interval: the longest seen in a constant-rate stream, else the container's."""
        return self._intervals[1] if self._intervals[1] > 0 and not self.variable_frame_rate else 1e6 / self.fps

    def facts(self) -> StreamFacts:
        """Rotation, variable frame rate, declared and decoded frames, truncation (see :class:`StreamFacts`)."""
        ended = self._ended and not self._pending and self._grabbed is None
        truncated = False
        if ended and self.declared_frames is not None and self.declared_frames > self.frames_read:
            # The decoded stream must also end before the declared duration: the frame count of an AVI with skipped
            # frames or of a Matroska file is not the frames that decode.
            shown_us = (self._last[1] if self._last else 0) + self._interval_us()
            truncated = shown_us + 0.5 * 1e6 / self.fps < self.declared_frames * 1e6 / self.fps
        return StreamFacts(rotation=self.rotation, variable_frame_rate=self.variable_frame_rate,
                           declared_frames=self.declared_frames, decoded_frames=self.frames_read, ended=ended,
                           truncated=truncated)

    def _timestamp_us(self, index: int) -> int:
        """The presentation time of the frame just grabbed as ``index`` (after ``self._last``)."""
        import cv2

        pts_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if self._pts_origin_ms is None:
            self._pts_origin_ms = pts_ms if index == 1 and math.isfinite(pts_ms) and pts_ms > 0 else 0.0
        before = self._last
        stamp = round((pts_ms - self._pts_origin_ms) * 1000) if math.isfinite(pts_ms) else -1
        if before is not None and stamp <= before[1]:  # No usable time: one interval after the previous frame.
            stamp = round(before[1] + (index - before[0]) * self._interval_us())
        stamp = max(stamp, 0)
        if before is not None and index == before[0] + 1:
            shortest, longest = self._intervals
            self._intervals = (min(shortest, stamp - before[1]), max(longest, stamp - before[1]))
        return stamp

    def _grab_next(self) -> None:
        """Grabs the next frame that decodes; queues the frames that failed before it, with their times."""
        expected = self.frames_read + 1  # Called only when nothing is queued.
        failures = 0
        while not self._cap.grab():
            failures += 1
            if failures >= self.max_corrupt_run:
                self._ended = True
                return
        index = self._index_after_failures(expected, failures) if failures else expected
        stamp = self._timestamp_us(index)
        if index > expected:
            before = self._last[1] if self._last is not None else None
            self._pending.extend(zip(range(expected, index), interpolated_timestamps_us(
                before, stamp, index - expected, self.fps)))
        self._grabbed = (index, stamp)
        self._last = self._grabbed

    def _index_after_failures(self, expected: int, failures: int) -> int:
        """Index of a frame grabbed after ``failures`` failed grabs: from its timestamp in a constant-rate stream.

        Decoders can lose more frames than grabs failed (a broken reference frame) or fewer (a failed
        packet that held no picture), so the timestamp decides while the frame rate is constant; OpenCV gives 0
        for a frame without one. In a variable-frame-rate stream a time says nothing of the frames lost.
        """
        import cv2

        pts_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if pts_ms > 0 and math.isfinite(pts_ms) and not self.variable_frame_rate:
            index = round((pts_ms - (self._pts_origin_ms or 0.0)) * self.fps / 1000.0) + 1
            if expected <= index <= expected + self.max_corrupt_run:
                return index
        return expected + failures

    def _end_timestamp_us(self) -> int:
        return round(self._last[1] + self._interval_us()) if self._last else 0

    def next_frame(self, decode: bool = True) -> VideoFrame:
        """The next frame index: decoded (with its image when ``decode``), corrupt, or the end.

        ``decode=False`` skips the colour conversion of a decoded frame (the decode itself always
        runs: later frames depend on it). After END every call returns END again.
        """
        if not self._pending and self._grabbed is None and not self._ended:
            self._grab_next()
        if self._pending:
            index, stamp = self._pending.popleft()
            self.frames_read = index
            self.decode_errors += 1
            return VideoFrame(index, stamp, FrameStatus.CORRUPT)
        if self._grabbed is None:
            return VideoFrame(self.frames_read + 1, self._end_timestamp_us(), FrameStatus.END)
        (index, stamp), image = self._grabbed, self._image
        self._grabbed, self._image = None, None
        self.frames_read = index
        if decode and image is None:
            ok, image = self._cap.retrieve()
            if not ok or image is None:  # Grabbed but not convertible: as good as corrupt.
                self.decode_errors += 1
                return VideoFrame(index, stamp, FrameStatus.CORRUPT)
        return VideoFrame(index, stamp, FrameStatus.DECODED, image if decode else None)

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
        fps: Frame rate (container's, or DEFAULT_FPS; an average for a variable-frame-rate stream).
        width, height: Frame size (displayed, after rotation).
        frames: Decodable length: the index of the last frame that decodes (corrupt frames before it included).
        decode_errors: Frames before that one that do not decode.
        timestamps_us: int64 ``[frames]``: when each frame is shown (``timestamps_us[i - 1]`` is frame ``i``'s).
        facts: Rotation, variable frame rate, declared frames, truncation.
    """

    fps: float
    width: int
    height: int
    frames: int
    decode_errors: int
    timestamps_us: np.ndarray
    facts: StreamFacts


def probe_video(path: str) -> VideoProbe:
    """Runs through a whole video (decoding, no colour conversion): its frames and when each is shown.

    Raises:
        VideoError: as :class:`VideoReader` does.
    """
    stamps = array.array("q")  # 8 bytes a frame: an hour at 60 fps holds 1.7 MB.
    with VideoReader(path) as video:
        while (frame := video.next_frame(decode=False)).status is not FrameStatus.END:
            stamps.append(frame.timestamp_us)
        return VideoProbe(video.fps, video.width, video.height, video.frames_read, video.decode_errors,
                          np.frombuffer(stamps, np.int64).copy(), video.facts())


def probe_fps(path: str | None) -> float:
    """Frame rate of a video, or :data:`DEFAULT_FPS` when it cannot be read."""
    if not path:
        return DEFAULT_FPS
    try:
        with VideoReader(path) as video:
            return video.fps
    except (VideoError, OSError):
        return DEFAULT_FPS
