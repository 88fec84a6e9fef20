"""Drawn faces whose labels are visible, for the demo dataset and tests.

Each face is a shaded cartoon that OpenCV's bundled frontal-face Haar cascade
detects, and whose pixels carry its labels, so a model trained on them must
learn to read them:

* expression: the mouth and brow shapes (one distinct shape per class);
* valence: the skin tint (cool for -1, warm for +1);
* arousal: how open the eyes are;
* action units: AU ``k`` on draws mark ``k`` on a ring around the face.

Example:
    frame = render_frame(240, 320, [FaceSpec(cx=160, cy=120, size=150, expression=4)])
    write_video("/tmp/happy.avi", [frame] * 30, fps=30)
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

_MOUTH = (60, 50, 120)  # BGR, dark red.
_BROW = (40, 40, 60)


@dataclasses.dataclass(frozen=True)
class FaceSpec:
    """One face to draw.

    Attributes:
        cx: Centre x in pixels.
        cy: Centre y in pixels.
        size: Face height in pixels (the width is ~0.77 of it).
        expression: Class index 0..7 (Neutral, Anger, Disgust, Fear, Happiness,
            Sadness, Surprise, Other); -1 draws a neutral face.
        valence: In [-1, 1]; skin tint.
        arousal: In [-1, 1]; eye openness.
        action_units: 0/1 per AU; AU k draws mark k.
    """

    cx: float
    cy: float
    size: float
    expression: int = 0
    valence: float = 0.0
    arousal: float = 0.0
    action_units: Sequence[int] = ()


def _pt(cx, cy, s, dx, dy):
    return (int(round(cx + dx * s)), int(round(cy + dy * s)))


def _draw_face(img: np.ndarray, face: FaceSpec) -> None:
    s = face.size / 136.0  # The geometry below is laid out for a 136-pixel-high face.
    cx, cy = face.cx, face.cy
    v = float(np.clip(face.valence, -1, 1))
    skin = (int(150 - 30 * v), 175, int(215 + 30 * min(v, 0.0) + 10 * max(v, 0.0)))
    skin = (skin[0], skin[1] - int(15 * abs(v)), min(255, skin[2]))
    cv2.ellipse(img, _pt(cx, cy, s, 0, 0), (int(52 * s), int(68 * s)), 0, 0, 360, skin, -1)
    e = face.expression
    eye_h = 4 + 3 * (float(np.clip(face.arousal, -1, 1)) + 1)  # 4..10 pixels.
    if e in (3, 6):
        eye_h += 2
    brow_lift = {3: -6, 5: -3, 6: -8}.get(e, 0)
    for side in (-1, 1):
        ex = 22 * side
        cv2.ellipse(img, _pt(cx, cy, s, ex, -18), (int(11 * s), max(1, int(eye_h * s))), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, _pt(cx, cy, s, ex, -18), max(1, int(5 * s)), (40, 30, 20), -1)
        inner, outer = _pt(cx, cy, s, ex - 10 * side, -34 + brow_lift), _pt(cx, cy, s, ex + 14 * side, -34 + brow_lift)
        if e == 1:  # Anger: inner ends down.
            inner = _pt(cx, cy, s, ex - 10 * side, -28)
        elif e == 5:  # Sadness: inner ends up.
            inner = _pt(cx, cy, s, ex - 10 * side, -40)
        cv2.line(img, inner, outer, _BROW, max(1, int(5 * s)))
    cv2.line(img, _pt(cx, cy, s, 0, -10), _pt(cx, cy, s, -6, 14), (110, 130, 170), max(1, int(3 * s)))
    thick = max(1, int(4 * s))
    if e == 4:  # Happiness: smile.
        cv2.ellipse(img, _pt(cx, cy, s, 0, 28), (int(24 * s), int(14 * s)), 0, 0, 180, _MOUTH, thick)
    elif e == 5:  # Sadness: frown.
        cv2.ellipse(img, _pt(cx, cy, s, 0, 44), (int(22 * s), int(11 * s)), 0, 180, 360, _MOUTH, thick)
    elif e == 6:  # Surprise: big open mouth.
        cv2.ellipse(img, _pt(cx, cy, s, 0, 38), (int(9 * s), int(12 * s)), 0, 0, 360, (70, 60, 130), -1)
    elif e == 3:  # Fear: small open mouth, stretched.
        cv2.ellipse(img, _pt(cx, cy, s, 0, 38), (int(18 * s), int(6 * s)), 0, 0, 360, (40, 30, 80), -1)
    elif e == 2:  # Disgust: one corner up, nose wrinkle.
        cv2.line(img, _pt(cx, cy, s, -20, 40), _pt(cx, cy, s, 20, 28), _MOUTH, thick)
        cv2.line(img, _pt(cx, cy, s, -8, 4), _pt(cx, cy, s, 8, 4), (100, 120, 160), max(1, int(2 * s)))
    elif e == 1:  # Anger: pressed lips.
        cv2.line(img, _pt(cx, cy, s, -16, 36), _pt(cx, cy, s, 16, 36), _MOUTH, thick + max(1, int(2 * s)))
    elif e == 7:  # Other: wavy mouth.
        pts = np.array([_pt(cx, cy, s, x, 36 + 5 * math.sin(x / 4.0)) for x in range(-20, 21, 4)], np.int32)
        cv2.polylines(img, [pts], False, _MOUTH, thick)
    else:  # Neutral.
        cv2.line(img, _pt(cx, cy, s, -20, 36), _pt(cx, cy, s, 20, 36), _MOUTH, thick)
    for k, on in enumerate(face.action_units):
        if on:
            angle = math.pi * (0.1 + 0.8 * k / max(1, len(face.action_units) - 1))  # Along the lower rim.
            center = _pt(cx, cy, s, 46 * math.cos(angle), 56 * math.sin(angle) + 4)
            cv2.circle(img, center, max(1, int(3 * s)), (200, 60, 60), -1)


def render_frame(
    height: int,
    width: int,
    faces: Iterable[FaceSpec],
    background: tuple[int, int, int] = (90, 120, 80),
    noise_seed: int | None = None,
) -> np.ndarray:
    """Draws faces on a plain background; returns a BGR uint8 frame ``[height, width, 3]``.

    Args:
        height: Frame height in pixels.
        width: Frame width in pixels.
        faces: Faces to draw.
        background: BGR background colour.
        noise_seed: When set, adds mild deterministic sensor noise.
    """
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    for face in faces:
        _draw_face(img, face)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    if noise_seed is not None:
        noise = np.random.default_rng(noise_seed).integers(-6, 7, img.shape, dtype=np.int16)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return img


# Containers and codecs that the opencv-python-headless wheel can both write and read.
VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v"}


def write_video(path: str, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes BGR frames to ``path`` (``.avi`` → MJPG, ``.mp4`` → MPEG-4 part 2); returns the frame count.

    Frames are consumed one at a time, so a long video never sits in memory.

    Raises:
        ValueError: for another extension (valid: .avi, .mp4).
        OSError: when OpenCV cannot open the writer.
    """
    ext = path[path.rfind("."):].lower()
    if ext not in VIDEO_CODECS:
        raise ValueError(f"unsupported video extension {ext!r}; valid: {sorted(VIDEO_CODECS)}")
    writer = None
    count = 0
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext]), fps, (w, h))
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write {path}")
            writer.write(frame)
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def corrupt_mjpeg_frames(path, indices: Sequence[int]) -> pathlib.Path:
    """Overwrites with zeros the JPEG bytes of the given 1-based frames of an MJPG ``.avi``.

    The AVI chunk headers stay intact, so the demuxer still delivers the packet and only
    the decoder fails (FFmpeg: "No JPEG data found in image"). A JPEG marker byte pair
    cannot occur inside entropy-coded data (0xFF is stuffed), so SOI/EOI find each frame.
    """
    path = pathlib.Path(path)
    data = bytearray(path.read_bytes())
    starts, at = [], data.find(b"\xff\xd8\xff")
    while at >= 0:
        starts.append(at)
        at = data.find(b"\xff\xd8\xff", at + 3)
    for index in indices:
        start = starts[index - 1]
        end = data.find(b"\xff\xd9", start) + 2
        data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))
    return path
