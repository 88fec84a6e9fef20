"""Which face is the subject's, holding its box between detections, and shot-cut detection.

No Apache Beam import (shared by the conversion and prediction on new video).

Example:
    tracker, cuts = BoxTracker(), ShotCutDetector()
    for frame in frames:
        if cuts.update(frame):
            tracker.cut()                       # the held face belongs to the last shot
        box = tracker.observe(detected_box) if detection_ran else tracker.hold()
"""

from __future__ import annotations

# cv2 is imported in the functions that use it (a dict lookup once loaded): importing this module, as
# `affectstream convert --help` does, must not load OpenCV.
import numpy as np

# A box in pixels of the frame it was found in: (x, y, width, height).
Box = tuple[float, float, float, float]

SIDES = ("left", "right")


def choose_face(boxes: list[Box], side: str | None, frame_width: float) -> Box | None:
    """Picks the subject's face among the detections.

    Args:
        boxes: Detections ``(x, y, w, h)``.
        side: ``"left"`` / ``"right"`` for a subject sharing the video with another
            (the face on that side of the frame), None for the largest face.
        frame_width: Width of the image the boxes are in.

    Returns:
        The chosen box, or None. A lone face whose centre lies on the other half of
        the frame is not taken for a ``left``/``right`` subject (it is the other person).
    """
    if not boxes:
        return None
    if side is None:
        return max(boxes, key=lambda b: (b[2] * b[3], -b[0], -b[1]))
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES} or None, got {side!r}")
    centres = sorted(boxes, key=lambda b: (b[0] + b[2] / 2, b[1]))
    box = centres[0] if side == "left" else centres[-1]
    centre = box[0] + box[2] / 2
    if len(boxes) == 1 and ((side == "left" and centre > frame_width / 2) or (side == "right" and centre < frame_width / 2)):
        return None
    return box


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when either is empty)."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class BoxTracker:
    """Holds and smooths the face box (and its keypoints) between detections; knows when it is gone.

    Rules:

    * :meth:`observe` takes the result of a detection. A found box overlapping the last found
      one (IoU >= ``min_iou``), if that was at most ``memory`` frames ago, is blended into it
      (weight ``smoothing`` for the new box, the keypoints alike); else it replaces it. A
      failed detection (None) drops the held box at once: the face is gone (occluded, turned
      away, out of the shot).
    * :meth:`hold` advances a frame without detection: the held box is kept until
      ``max_hold`` frames have passed since the detection that found it, then dropped.
    * :meth:`cut` (a shot cut) drops the held box and forgets it as a smoothing reference.
    * :attr:`last_box` / :attr:`last_keypoints` keep the last box ever held (for the crop of
      frames without a face) until :meth:`reset`.

    Args:
        smoothing: Weight of a new detection in (0, 1]; 1 disables smoothing.
        max_hold: Frames a box is held after the detection that found it (None: until the next detection).
        min_iou: Overlap under which a detection counts as a jump, not a move.
        memory: Frames after a detection during which the next one is still blended with it
            (bridging a missed detection or two; None: until a cut or reset).
    """

    def __init__(self, smoothing: float = 0.6, max_hold: int | None = None, min_iou: float = 0.3,
                 memory: int | None = None):
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if max_hold is not None and max_hold < 0:
            raise ValueError(f"max_hold must be >= 0 or None, got {max_hold}")
        self._smoothing = smoothing
        self._max_hold = max_hold
        self._min_iou = min_iou
        self._memory = memory
        self.reset()

    def reset(self) -> None:
        """Forgets everything (e.g. after a gap in the frames)."""
        self._box: Box | None = None
        self._keypoints: np.ndarray | None = None
        self._held = 0  # Frames held since the detection that found the box.
        self._ref: tuple[Box, np.ndarray | None] | None = None  # Last detection: the smoothing reference.
        self._since = 0  # Frames since that detection.
        self.last_box: Box | None = None
        self.last_keypoints: np.ndarray | None = None

    def observe(self, box: Box | None, keypoints: np.ndarray | None = None) -> Box | None:
        """Feeds the result of a detection (None: it failed); returns the box for this frame or None."""
        self._since += 1
        if box is None:
            self._box, self._keypoints = None, None
            return None
        recent = self._memory is None or self._since <= self._memory
        if self._ref is not None and recent and iou(self._ref[0], box) >= self._min_iou:
            w = self._smoothing
            ref_box, ref_kps = self._ref
            box = tuple(w * n + (1 - w) * o for n, o in zip(box, ref_box))
            if keypoints is not None and ref_kps is not None and ref_kps.shape == keypoints.shape:
                keypoints = (w * keypoints + (1 - w) * ref_kps).astype(np.float32)
        self._box, self._keypoints, self._held = box, keypoints, 0
        self._ref, self._since = (box, keypoints), 0
        self.last_box, self.last_keypoints = box, keypoints
        return box

    def hold(self) -> Box | None:
        """Advances one frame without detection; returns the held box or None."""
        self._since += 1
        if self._box is None:
            return None
        self._held += 1
        if self._max_hold is not None and self._held > self._max_hold:
            self._box, self._keypoints = None, None
        return self._box

    def cut(self) -> None:
        """A shot cut: the held box belongs to the previous shot; drop it and its smoothing reference."""
        self._box, self._keypoints, self._ref = None, None, None

    @property
    def current(self) -> Box | None:
        """The held box (None when none is held)."""
        return self._box

    @property
    def keypoints(self) -> np.ndarray | None:
        """Keypoints of the held box (pixels, ``[K, 2]``), or None."""
        return self._keypoints


class ShotCutDetector:
    """Flags the first frame of a new shot: a cheap test run on every frame (~10 µs on 720p).

    The thumbnail is the green channel (close to luma) sampled on a ~32x18 grid and
    area-averaged to 16x9 blocks; a cut is a mean absolute block difference from the
    previous frame's thumbnail above ``threshold`` (in [0, 1] of the 8-bit range). Block
    means barely change under camera motion, a talking face or noise, and jump when the
    scene changes. A frame of another size is a cut. A false cut only costs an early
    re-detection.

    Args:
        threshold: Mean absolute block difference (0-1) that makes a cut.
    """

    _GRID = (16, 9)
    _SAMPLES = (32, 18)

    def __init__(self, threshold: float = 0.1):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self._threshold = threshold * 255.0
        self.reset()

    def reset(self) -> None:
        """Forgets the previous frame."""
        self._previous: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self.last_score = 0.0  # Mean absolute block difference of the last frame (0-1).

    def thumbnail(self, frame: np.ndarray) -> np.ndarray:
        """The float32 16x9 block means of the frame's green (or only) channel."""
        import cv2

        h, w = frame.shape[:2]
        sample = frame[::max(1, h // self._SAMPLES[1]), ::max(1, w // self._SAMPLES[0])]
        if sample.ndim == 3:
            sample = sample[:, :, min(1, sample.shape[2] - 1)]
        return cv2.resize(np.ascontiguousarray(sample), self._GRID, interpolation=cv2.INTER_AREA).astype(np.float32)

    def update(self, frame: np.ndarray) -> bool:
        """Feeds the next frame; True when it starts a new shot (never for the first frame)."""
        thumb = self.thumbnail(frame)
        previous, shape = self._previous, self._shape
        self._previous, self._shape = thumb, frame.shape
        if previous is None:
            self.last_score = 0.0
            return False
        if shape != frame.shape:
            self.last_score = 1.0
            return True
        score = _mean_abs_difference(thumb, previous)
        self.last_score = score / 255.0
        return score > self._threshold


def region_thumbnail(frame: np.ndarray, box: Box) -> np.ndarray | None:
    """float32 8x8 block means of the green (or only) channel inside ``box`` (None if it is off the frame).

    Sampled on a ~16x16 grid of the box, so it costs a few microseconds whatever the face size.
    """
    import cv2

    h, w = frame.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(box[0] + box[2])), min(h, int(box[1] + box[3]))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    sample = frame[y0:y1:max(1, (y1 - y0) // 16), x0:x1:max(1, (x1 - x0) // 16)]
    if sample.ndim == 3:
        sample = sample[:, :, min(1, sample.shape[2] - 1)]
    return cv2.resize(np.ascontiguousarray(sample), (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32)


def region_change(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Mean absolute difference (0-1) of two :func:`region_thumbnail` results (1 when either is missing)."""
    if a is None or b is None:
        return 1.0
    return _mean_abs_difference(a, b) / 255.0


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``float(np.abs(a - b).mean())`` of two float32 thumbnails, bit for bit, without ``mean``'s Python layers.

    ``mean`` of float32 is NumPy's pairwise ``add.reduce`` in float32, divided by the count and rounded to float32;
    this runs on every frame (twice), where those layers cost more than the arithmetic.
    """
    difference = np.abs(a - b)
    return float(np.float32(np.add.reduce(difference, axis=None) / difference.size))

