"""Face detection, box hold/smoothing, the square face crop and JPEG encoding.

No Apache Beam import: the conversion job and inference on new video both use
this module, so the crop a model is trained on is the crop it is served
(:func:`square_crop` is the one crop function of the project).

Example:
    cropper = FaceCropper(make_detector("haar"), crop_size=112, detect_every=5)
    for frame in frames:                       # BGR uint8 frames, in time order
        face = cropper.process(frame)
        jpeg = encode_jpeg(face.crop)          # face.bbox is None when no face is held
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import cv2
import numpy as np

# A box in pixels of the frame it was found in: (x, y, width, height).
Box = tuple[float, float, float, float]

SIDES = ("left", "right")
_NEAR_FACE_PIXELS = 48.0  # Face size in the local search window around a held box (Haar's window is 24).


class Detector(abc.ABC):
    """Finds faces in one grayscale image."""

    name: str = ""

    @abc.abstractmethod
    def detect(self, gray: np.ndarray, min_size: int | None = None, max_size: int | None = None) -> list[Box]:
        """Returns face boxes ``(x, y, w, h)`` in the pixels of ``gray``, in any order.

        Args:
            gray: uint8 ``[H, W]`` image.
            min_size: Smallest face side to look for (None: the detector's default).
            max_size: Largest face side to look for (None: no limit).
        """


class HaarDetector(Detector):
    """OpenCV's bundled frontal-face Haar cascade (ships with opencv-python, no download).

    Args:
        scale_factor: Pyramid step of ``detectMultiScale`` (> 1).
        min_neighbors: Detections needed to keep a box (>= 0).
        min_size: Smallest face side in pixels of the detection image.
    """

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 4, min_size: int = 24):
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if min_neighbors < 0:
            raise ValueError(f"min_neighbors must be >= 0, got {min_neighbors}")
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise OSError(f"cannot load the Haar cascade {path}")
        self._scale_factor = scale_factor
        self._min_neighbors = min_neighbors
        self._min_size = (int(min_size), int(min_size))

    def detect(self, gray: np.ndarray, min_size: int | None = None, max_size: int | None = None) -> list[Box]:
        """Face boxes ``(x, y, w, h)`` in a grayscale image, optionally limited to a size range in pixels."""
        low = self._min_size if min_size is None else (max(self._min_size[0], int(min_size)),) * 2
        high = (0, 0) if max_size is None else (int(max_size), int(max_size))
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=self._scale_factor, minNeighbors=self._min_neighbors, minSize=low, maxSize=high
        )
        return [tuple(float(v) for v in box) for box in found]


# Registry of detectors by command-line name.
DETECTORS: dict[str, Callable[[], Detector]] = {"haar": HaarDetector}


def make_detector(name: str) -> Detector:
    """Builds a detector by its registered name.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid detectors: {sorted(DETECTORS)}")
    return DETECTORS[name]()


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


def _iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class BoxTracker:
    """Holds and smooths the face box between detections.

    A detection that overlaps the held box (IoU >= ``min_iou``) is blended into it
    (exponential smoothing with weight ``smoothing`` for the new box); one that
    does not replaces it. Frames where no detection runs keep the box. A missed
    detection keeps the held box for at most ``max_hold`` frames (counting the
    missed frame), after which there is no face until the next detection.

    Args:
        smoothing: Weight of a new detection in (0, 1]; 1 disables smoothing.
        max_hold: Frames a box is held after a missed detection (0: drop it at once).
        min_iou: Overlap under which a detection counts as a jump, not a move.
    """

    def __init__(self, smoothing: float = 0.6, max_hold: int = 15, min_iou: float = 0.3):
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if max_hold < 0:
            raise ValueError(f"max_hold must be >= 0, got {max_hold}")
        self._smoothing = smoothing
        self._max_hold = max_hold
        self._min_iou = min_iou
        self.reset()

    def reset(self) -> None:
        """Forgets the held box (e.g. after a gap in the frames)."""
        self._box: Box | None = None
        self._missing = False  # A detection missed and no detection has succeeded since.
        self._missed = 0  # Frames held since that miss.
        self.last_box: Box | None = None  # The last box ever held, even expired.

    def observe(self, box: Box | None) -> Box | None:
        """Feeds the result of a detection (None = miss); returns the box for this frame."""
        if box is None:
            if self._box is None:
                return None
            return self._age_one()
        if self._box is not None and _iou(self._box, box) >= self._min_iou:
            w = self._smoothing
            box = tuple(w * n + (1 - w) * o for n, o in zip(box, self._box))
        self._box = box
        self.last_box = box
        self._missed = 0
        self._missing = False
        return box

    @property
    def current(self) -> Box | None:
        """The held box while detections succeed (None when none is held or one was missed)."""
        return None if self._missing else self._box

    def hold(self) -> Box | None:
        """Advances one frame without running detection; returns the held box or None."""
        if self._box is None:
            return None
        if not self._missing:
            return self._box
        return self._age_one()

    def _age_one(self) -> Box | None:
        self._missing = True
        self._missed += 1
        if self._missed > self._max_hold:
            self._box = None
            self._missed = 0
            self._missing = False
            return None
        return self._box


def square_crop(image: np.ndarray, box: Box | None, crop_size: int, margin: float = 1.25) -> np.ndarray:
    """The square face crop: centred on ``box``, side ``margin * max(w, h)``, resized to ``crop_size``.

    Parts of the square outside the image are filled with black, so the face keeps
    its place and scale near the border. ``box=None`` crops the largest centred square.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` uint8.
        box: ``(x, y, w, h)`` in pixels of ``image``, or None.
        crop_size: Output side in pixels.
        margin: Square side relative to the larger box side.

    Returns:
        ``[crop_size, crop_size(, C)]`` uint8.
    """
    if crop_size <= 0:
        raise ValueError(f"crop_size must be > 0, got {crop_size}")
    h, w = image.shape[:2]
    if box is None:
        side = float(min(h, w))
        cx, cy = w / 2.0, h / 2.0
    else:
        side = max(box[2], box[3]) * margin
        cx, cy = box[0] + box[2] / 2.0, box[1] + box[3] / 2.0
    side = max(side, 1.0)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    x1, y1 = x0 + s, y0 + s
    pad = [max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w)]
    crop = image[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=0)
    if s <= crop_size:
        return cv2.resize(crop, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)
    factor = s // crop_size
    if factor > 1:
        # Area-averaging by a whole factor first takes OpenCV's fast path (half the time of one
        # fractional INTER_AREA resize, and within half a grey level of it); the last step is small.
        crop = cv2.resize(crop, (s // factor, s // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(crop, (crop_size, crop_size), interpolation=cv2.INTER_AREA)


def blank_crop(crop_size: int, channels: int = 3) -> np.ndarray:
    """A black crop for frames where no face was ever seen."""
    return np.zeros((crop_size, crop_size, channels), np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG-encodes a BGR (or gray) uint8 image; deterministic for the same pixels."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray | None:
    """Decodes image bytes to BGR uint8; None when they are not a readable image."""
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@dataclasses.dataclass
class Face:
    """The face of one frame.

    Attributes:
        crop: ``[crop_size, crop_size, 3]`` BGR uint8 crop.
        bbox: ``(ymin, xmin, ymax, xmax)`` normalised to the frame, or None when no face is held.
    """

    crop: np.ndarray
    bbox: tuple[float, float, float, float] | None


def normalise_box(box: Box, height: int, width: int) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` pixels → ``(ymin, xmin, ymax, xmax)`` in [0, 1]."""
    x, y, bw, bh = box
    clip = lambda v: float(min(1.0, max(0.0, v)))  # noqa: E731
    return (clip(y / height), clip(x / width), clip((y + bh) / height), clip((x + bw) / width))


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


@dataclasses.dataclass(frozen=True)
class FaceStageConfig:
    """Everything that shapes a face crop: the one description of the face stage.

    The conversion records these values in ``dataset_info.json`` (``options``), the trainer
    copies them into ``model_info.json`` (``face_stage``) and prediction on new video rebuilds
    the same stage from there, so training and serving crops cannot drift apart. Command-line
    defaults come from here.

    Attributes:
        detector: Registered detector name (:data:`DETECTORS`).
        detect_every: Detect on every N-th frame, hold the box in between.
        detect_width: Width of the downscaled detection image.
        max_hold: Frames a box is held after a missed detection (None: ``2 * detect_every``).
        crop_size: Side of the square crops in pixels.
        jpeg_quality: JPEG quality of the stored crops.
    """

    detector: str = "haar"
    detect_every: int = 5
    detect_width: int = 320
    max_hold: int | None = None
    crop_size: int = 112
    jpeg_quality: int = 90

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FaceStageConfig":
        """The config from a dict holding (at least) some of its fields; other keys are ignored.

        Fields missing from ``values`` keep their defaults, so the options block of an older
        ``dataset_info.json`` still describes its stage.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None or k == "max_hold"})


class FaceCropper:
    """Turns the frames of one subject track, in time order, into face crops.

    Detection runs every ``detect_every`` frames on a grayscale copy downscaled to
    at most ``detect_width`` pixels wide; the :class:`BoxTracker` holds and smooths
    the box in between and over short misses. While a box is held, detection first
    looks only near it (a window of ``3 x`` the face, faces of 0.6–1.7 x its size,
    scaled so the face is ~48 pixels): much cheaper than a full-frame search, and it
    stays on the same person. The full (downscaled) frame is searched when nothing is
    held or the local search misses.

    Args:
        detector: A :class:`Detector`.
        crop_size: Side of the square crops.
        detect_every: Detect on every N-th frame (>= 1).
        detect_width: Width of the detection image (frames wider are downscaled).
        side: ``"left"``/``"right"`` for a two-person video, else None.
        max_hold: Frames a box is held after the last detection (default ``2 * detect_every``).
        smoothing: Weight of a new detection in the box smoothing.
    """

    def __init__(
        self,
        detector: Detector,
        crop_size: int = 112,
        detect_every: int = 5,
        detect_width: int = 320,
        side: str | None = None,
        max_hold: int | None = None,
        smoothing: float = 0.6,
    ):
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if detect_width < 32:
            raise ValueError(f"detect_width must be >= 32, got {detect_width}")
        if side not in (None, *SIDES):
            raise ValueError(f"side must be one of {SIDES} or None, got {side!r}")
        self._detector = detector
        self._crop_size = crop_size
        self._detect_every = detect_every
        self._detect_width = detect_width
        self._side = side
        hold = 2 * detect_every if max_hold is None else max_hold
        self._tracker = BoxTracker(smoothing=smoothing, max_hold=hold)
        self._count = 0

    @classmethod
    def from_config(cls, config: FaceStageConfig, side: str | None = None,
                    detector: Detector | None = None) -> "FaceCropper":
        """The face stage described by ``config`` for one subject (``side`` of a shared video).

        Args:
            config: The face stage.
            side: ``"left"``/``"right"`` for a two-person video, else None.
            detector: A ready detector to reuse (default: a new one of ``config.detector``).
        """
        return cls(detector or make_detector(config.detector), crop_size=config.crop_size,
                   detect_every=config.detect_every, detect_width=config.detect_width, side=side,
                   max_hold=config.max_hold)

    def reset(self) -> None:
        """Starts over (after a gap in the frames)."""
        self._tracker.reset()
        self._count = 0

    def _detect(self, frame: np.ndarray) -> Box | None:
        held = self._tracker.current
        if held is not None:
            box = self._detect_near(frame, held)  # Only the window around the held box is converted to gray.
            if box is not None:
                return box
        return self._detect_full(_gray(frame))

    def _detect_full(self, gray: np.ndarray) -> Box | None:
        h, w = gray.shape[:2]
        scale = 1.0
        if w > self._detect_width:
            scale = self._detect_width / w
            gray = cv2.resize(gray, (self._detect_width, max(1, int(round(h * scale)))), interpolation=cv2.INTER_AREA)
        box = choose_face(self._detector.detect(gray), self._side, gray.shape[1])
        if box is None:
            return None
        return tuple(v / scale for v in box)

    def _detect_near(self, frame: np.ndarray, held: Box) -> Box | None:
        h, w = frame.shape[:2]
        size = max(held[2], held[3])
        cx, cy = held[0] + held[2] / 2, held[1] + held[3] / 2
        x0, y0 = max(0, int(cx - 1.5 * size)), max(0, int(cy - 1.5 * size))
        x1, y1 = min(w, int(cx + 1.5 * size)), min(h, int(cy + 1.5 * size))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        roi = _gray(frame[y0:y1, x0:x1])
        scale = min(1.0, _NEAR_FACE_PIXELS / size)
        if scale < 1.0:
            roi = cv2.resize(roi, (max(1, int(round((x1 - x0) * scale))), max(1, int(round((y1 - y0) * scale)))),
                             interpolation=cv2.INTER_AREA)
        found = self._detector.detect(roi, min_size=int(0.6 * size * scale), max_size=int(1.7 * size * scale) + 1)
        if not found:
            return None
        near = [(x / scale + x0, y / scale + y0, bw / scale, bh / scale) for x, y, bw, bh in found]
        return max(near, key=lambda b: (_iou(b, held), -b[0], -b[1]))

    def process(self, frame: np.ndarray) -> Face:
        """Crops the next frame of the track."""
        if self._count % self._detect_every == 0:
            box = self._tracker.observe(self._detect(frame))
        else:
            box = self._tracker.hold()
        self._count += 1
        h, w = frame.shape[:2]
        if box is not None:
            return Face(square_crop(frame, box, self._crop_size), normalise_box(box, h, w))
        if self._tracker.last_box is not None:  # Keep the last place of the face: time is not shifted.
            return Face(square_crop(frame, self._tracker.last_box, self._crop_size), None)
        return Face(blank_crop(self._crop_size), None)
