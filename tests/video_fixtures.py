"""Tiny real videos of drawn faces (``affectstream.synthetic_faces``) for the conversion tests.

Example::

    import video_fixtures as vf   # tests/ is on sys.path under pytest

    vf.write_face_video(tmp_path / "videos" / "vid1.avi", [0, 4, 4, 1])   # one face per frame, that expression
    vf.write_two_face_video(tmp_path / "videos" / "duo.avi", 6)           # left face Happiness, right Sadness
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from affectstream.synthetic_faces import (  # noqa: F401 (corrupt_mjpeg_frames: the tests' too)
    FaceSpec,
    corrupt_mjpeg_frames,
    render_frame,
    write_video,
)

HEIGHT, WIDTH = 120, 160
FPS = 10.0
LEFT_EXPRESSION, RIGHT_EXPRESSION = 4, 5


def face_frame(expression: int | None, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """One frame with a centred face of that expression, or an empty background for None."""
    faces = [] if expression is None else [FaceSpec(cx=width / 2, cy=height / 2, size=0.75 * height,
                                                    expression=max(0, int(expression)))]
    return render_frame(height, width, faces, noise_seed=seed)


def write_face_video(path, expressions: Sequence[int | None], fps: float = FPS,
                     height: int = HEIGHT, width: int = WIDTH) -> pathlib.Path:
    """Writes one frame per entry (None = no face in that frame); returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = (face_frame(e, height, width, seed=i) for i, e in enumerate(expressions))
    write_video(str(path), frames, fps)
    return path


def write_two_face_video(path, num_frames: int, fps: float = FPS, height: int = 120, width: int = 240) -> pathlib.Path:
    """Two people side by side: left face LEFT_EXPRESSION, right face RIGHT_EXPRESSION."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0.75 * height
    faces = [FaceSpec(cx=width / 4, cy=height / 2, size=size, expression=LEFT_EXPRESSION),
             FaceSpec(cx=3 * width / 4, cy=height / 2, size=size, expression=RIGHT_EXPRESSION)]
    write_video(str(path), (render_frame(height, width, faces, noise_seed=i) for i in range(num_frames)), fps)
    return path


def truncate_file(path, keep_fraction: float) -> pathlib.Path:
    """Cuts a file to a fraction of its bytes (a truncated download)."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


# A fourcc the bundled FFmpeg writes into each container (checked by tests/test_video.py); FFmpeg may
# log that it stores the codec under another tag, which is harmless.
CONTAINER_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mov": "mp4v", ".mkv": "MJPG", ".webm": "VP80",
                    ".m4v": "mp4v", ".mpg": "MPG2", ".mpeg": "MPG2", ".wmv": "WMV2", ".flv": "FLV1", ".3gp": "mp4v",
                    ".mts": "mp4v", ".m2ts": "mp4v"}  # (MPEG-TS takes MPEG-4 under its own tag.)


def level_frame(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A flat grey frame whose level tells its 1-based index back after lossy coding (index * 12)."""
    return np.full((height, width, 3), 12 * index, np.uint8)


def level_index(frame: np.ndarray) -> int:
    """The index :func:`level_frame` drew into a decoded frame."""
    return round(float(frame.mean()) / 12)


def write_container_video(path, frames: Sequence[np.ndarray], fps: float = FPS) -> pathlib.Path:
    """Writes frames with the fourcc of :data:`CONTAINER_FOURCC` for the file's extension (any case)."""
    import cv2

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    fourcc = CONTAINER_FOURCC[path.suffix.lower()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path} with {fourcc}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


