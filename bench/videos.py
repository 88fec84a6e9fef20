"""Long 720p benchmark videos with real faces, built from material that ships with our dependencies.

There is no long real face video we may ship, so the benchmarks build theirs:

* ``megamind``: the real movie-trailer excerpt ``Megamind.avi`` (Debian ``opencv-doc``, 270 frames of
  720x528 at 23.976 fps, cuts and real faces in most frames; see :mod:`affectstream.real_videos`),
  scaled to 982x720, pillarboxed to 1280x720 and looped (a hard cut at each loop point, every 11.3 s);
* ``megamind_native``: the same trailer at its native 720x528, looped: footage that is cheap to decode, so the
  face stage (and, for ``predict``, the model) dominates;
* ``astronaut``: the public-domain NASA portrait ``skimage.data.astronaut()`` (a real face), its
  head and shoulders (230x260 px) scaled to 1.2-2x and moving over ``skimage.data.coffee()``
  stretched to 1280x720 at 30 fps, with a 2-second cut to the coffee scene alone every 12 seconds.

All three are written with OpenCV's MPEG-4 Part 2 encoder (``mp4v``, the only common codec the bundled
FFmpeg writes) into ``.mp4``. Writing is streamed frame by frame. :func:`make_videos` writes one long
video and its first ``short`` seconds as a second file in the same pass, and caches both.

Example::

    long_path, short_path = make_videos("megamind", long_seconds=180, short_seconds=60, cache_dir="/tmp/c")
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterator

import cv2
import numpy as np

MATERIALS = ("megamind", "megamind_native", "astronaut")
WIDTH, HEIGHT = 1280, 720
NATIVE_WIDTH, NATIVE_HEIGHT = 720, 528  # Megamind.avi's own size
ASTRONAUT_FPS = 30.0


def describe(material: str) -> str:
    """One line saying exactly what the material is."""
    if material == "megamind":
        return ("Megamind.avi (real trailer excerpt, Debian opencv-doc, MPEG-4 720x528 23.976 fps, 270 frames) "
                "scaled to 982x720, pillarboxed to 1280x720, looped, re-encoded as MPEG-4 Part 2 (mp4v)")
    if material == "megamind_native":
        return ("Megamind.avi (real trailer excerpt, Debian opencv-doc, MPEG-4 720x528 23.976 fps, 270 frames) at its "
                "native 720x528, looped, re-encoded as MPEG-4 Part 2 (mp4v)")
    if material == "astronaut":
        return ("skimage.data.astronaut() head (real face, public-domain NASA portrait) scaled 1.2-2x moving over "
                "skimage.data.coffee() at 1280x720 30 fps, 2 s face-less cut every 12 s, MPEG-4 Part 2 (mp4v)")
    raise ValueError(f"unknown material {material!r}; valid: {MATERIALS}")


def _megamind_frames(native: bool = False) -> tuple[Iterator[np.ndarray], float]:
    from affectstream import real_videos

    source = real_videos.opencv_sample_videos()[0]
    cap = cv2.VideoCapture(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 24.0
    cap.release()

    def frames():
        while True:  # Loop the trailer; each pass reopens it so only one frame is held at a time.
            cap = cv2.VideoCapture(source)
            try:
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    if native:
                        yield cv2.resize(frame, (NATIVE_WIDTH, NATIVE_HEIGHT)) if frame.shape[:2] != (
                            NATIVE_HEIGHT, NATIVE_WIDTH) else frame
                        continue
                    h, w = frame.shape[:2]
                    scaled = cv2.resize(frame, (round(w * HEIGHT / h), HEIGHT), interpolation=cv2.INTER_LINEAR)
                    out = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
                    left = (WIDTH - scaled.shape[1]) // 2
                    out[:, left:left + scaled.shape[1]] = scaled
                    yield out
            finally:
                cap.release()

    return frames(), float(fps)


def _astronaut_frames() -> tuple[Iterator[np.ndarray], float]:
    from skimage import data

    head = np.ascontiguousarray(data.astronaut()[0:260, 110:340, ::-1])  # RGB → BGR; face: rows 66-161, cols 67-162.
    background = cv2.resize(np.ascontiguousarray(data.coffee()[:, :, ::-1]), (WIDTH, HEIGHT))
    fps = ASTRONAUT_FPS

    def frames():
        i = 0
        while True:
            t = i / fps
            frame = background.copy()
            if t % 12.0 < 10.0:  # Seconds 10-12 of every 12: a cut to the scene without a face.
                scale = 1.6 + 0.4 * math.sin(2 * math.pi * t / 7.0)
                patch = cv2.resize(head, (round(230 * scale), round(260 * scale)), interpolation=cv2.INTER_LINEAR)
                ph, pw = patch.shape[:2]
                x = round((WIDTH - pw) * (0.5 + 0.45 * math.sin(2 * math.pi * t / 9.0)))
                y = round((HEIGHT - ph) * (0.5 + 0.4 * math.sin(2 * math.pi * t / 5.0)))
                frame[y:y + ph, x:x + pw] = patch
            yield frame
            i += 1

    return frames(), fps


def _write(path: pathlib.Path, frames: Iterator[np.ndarray], fps: float, total: int, prefix: tuple | None,
           size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """Writes ``total`` frames to ``path`` and, with ``prefix`` (path, count), the first ``count`` of them to its path
    too."""
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    parts = {p: p.with_name(p.stem + ".part.mp4") for p in [path, *(prefix[:1] if prefix else [])]}
    writers = {p: cv2.VideoWriter(str(tmp), fourcc, fps, size) for p, tmp in parts.items()}
    try:
        if not all(w.isOpened() for w in writers.values()):
            raise OSError(f"OpenCV cannot write {path} with mp4v")
        for i in range(total):
            frame = next(frames)
            writers[path].write(frame)
            if prefix and i < prefix[1]:
                writers[prefix[0]].write(frame)
    finally:
        for w in writers.values():
            w.release()
    for p, tmp in parts.items():
        os.replace(tmp, p)


def size_label(material: str) -> str:
    """The frame size of ``material``'s videos in words (``720p``, or ``720x528`` for the trailer at its own size)."""
    return "720x528" if material == "megamind_native" else "720p"


def make_videos(material: str, long_seconds: float, short_seconds: float | None, cache_dir: str) -> tuple[str, str]:
    """Paths of a ``long_seconds`` video of ``material`` and of its first ``short_seconds`` (cached; with
    ``short_seconds`` None only the long one is made, and its path is returned twice)."""
    describe(material)  # Validates the name.
    cache = pathlib.Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    native = material == "megamind_native"
    label = size_label(material)
    long_path = cache / f"{material}-{label}-{long_seconds:g}s.mp4"
    short_path = (long_path if short_seconds is None
                  else cache / f"{material}-{label}-{long_seconds:g}s-first-{short_seconds:g}s.mp4")
    if not (long_path.exists() and short_path.exists()):
        frames, fps = _astronaut_frames() if material == "astronaut" else _megamind_frames(native)
        prefix = None if short_path == long_path else (short_path, round(short_seconds * fps))
        _write(long_path, frames, fps, round(long_seconds * fps), prefix,
               (NATIVE_WIDTH, NATIVE_HEIGHT) if native else (WIDTH, HEIGHT))
    return str(long_path), str(short_path)
