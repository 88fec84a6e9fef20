"""The face stage: detection every k frames, cut-aware box holding, the face crop and JPEG encoding.

No Apache Beam import: the conversion job and inference on new video both use this module,
so the crop a model is trained on is the crop it is served (:func:`face_crop` is the one crop
function of the project). The parts live in :mod:`beam_jobs.faces.detectors` (Haar, BlazeFace,
MTCNN), :mod:`beam_jobs.faces.align` (square and eye-aligned crops, JPEG) and
:mod:`beam_jobs.faces.tracking` (box holding, shot cuts); their public names are re-exported here.

Example:
    cropper = FaceCropper.from_config(FaceStageConfig(detector="blazeface", align=True))
    for frame in frames:                       # BGR uint8 frames, in time order
        face = cropper.process(frame)
        jpeg = encode_jpeg(face.crop)          # face.bbox is None when no face is held
        counts[face.status] += 1               # STATUS_DETECTED / _HELD / _LOST / _NONE
"""

from __future__ import annotations

import dataclasses
import math

# cv2 is imported in the functions that use it (a dict lookup once loaded): importing this module, as
# `affectstream convert --help` does, must not load OpenCV.
import numpy as np

from beam_jobs.faces.align import (  # noqa: F401 - re-exported: the face stage's public names.
    ALIGN_EYE_DISTANCE,
    ALIGN_EYE_Y,
    aligned_crop,
    alignment_matrix,
    blank_crop,
    decode_image,
    encode_crop,
    encode_jpeg,
    face_crop,
    shrink,
    square_crop,
)
from beam_jobs.faces.detectors import (  # noqa: F401
    DETECTORS,
    EYELESS_DETECTORS,
    NEAR_INPUT_DETECTORS,
    SHORT_RANGE_INPUT,
    WHOLE_FRAME_INPUT,
    BlazeFaceDetector,
    Box,
    Detection,
    Detector,
    HaarDetector,
    MtcnnDetector,
    make_detector,
)
from beam_jobs.faces.tracking import (
    SIDES,
    BoxTracker,
    ShotCutDetector,
    choose_face,
    iou,
    region_change,
    region_thumbnail,
)
from tfrecords_schema.image_codec import CODEC_JPEG, DEFAULT_CODEC

# What the face stage did on a frame (Face.status), declared once for the conversion's counters.
STATUS_DETECTED = "detected"  # A detection ran on this frame and found the face.
STATUS_HELD = "held"  # No detection ran on this frame; the box of the last one is kept.
STATUS_LOST = "lost"  # No face on this frame, after one was seen in the track (crop at its last place).
STATUS_NONE = "none"  # No face on this frame and none seen yet in the track (blank crop).
FACE_STATUSES = (STATUS_DETECTED, STATUS_HELD, STATUS_LOST, STATUS_NONE)

# Why a detection pass ran (FaceCropper.passes_by_reason), for cost accounting (bench/face_passes.py).
PASS_CUT = "cut"  # A shot cut on this frame.
PASS_CHANGE = "region_change"  # The held face's region changed by more than redetect_change.
PASS_SCHEDULE = "schedule"  # detect_every frames after the last pass (or the track's first frame).
PASS_REASONS = (PASS_CUT, PASS_CHANGE, PASS_SCHEDULE)

# A detection whose box is less than half inside the frame, or whose visible part is smaller
# than this fraction of the frame's short side (and 4 pixels), is not a face.
_MIN_VISIBLE_AREA = 0.5
_MIN_FACE_FRACTION = 0.02
# Frames after a detection before a change of the face region may bring the next one forward.
_MIN_REDETECT_GAP = 2


@dataclasses.dataclass
class Face:
    """The face of one frame.

    Attributes:
        crop: ``[crop_size, crop_size, 3]`` BGR uint8 crop (None when :meth:`FaceCropper.process` was asked for none).
        bbox: ``(ymin, xmin, ymax, xmax)`` normalised to the frame, or None when no face is held:
            always the box the crop was cut from, never empty.
        keypoints: float32 ``[K, 2]`` ``(x, y)`` normalised to the frame (eyes first, see
            :mod:`beam_jobs.faces.detectors`), clipped to [0, 1]; None without a face or for Haar.
        status: One of :data:`FACE_STATUSES`.
    """

    crop: np.ndarray | None
    bbox: tuple[float, float, float, float] | None
    keypoints: np.ndarray | None = None
    status: str = STATUS_NONE


def normalise_box(box: Box, height: int, width: int) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` pixels → ``(ymin, xmin, ymax, xmax)`` in [0, 1]."""
    x, y, bw, bh = box
    def clip(v: float) -> float:
        return float(min(1.0, max(0.0, v)))

    return (clip(y / height), clip(x / width), clip((y + bh) / height), clip((x + bw) / width))


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


# FaceStageConfig fields whose None is a setting, and the values of later fields that describe the stage
# of conversions recorded before those fields existed (see FaceStageConfig.from_dict).
_NONE_IS_A_VALUE = ("max_hold", "redetect_change")
_BEFORE_THE_FIELD = {"align": False, "redetect_change": None, "near_input": SHORT_RANGE_INPUT}


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
        detect_width: Width of the downscaled image a whole frame is searched in (a model
            detector never gets more than its input size).
        max_hold: Frames a box is held after the detection that found it (None: until the next detection).
        crop_size: Side of the square crops in pixels.
        jpeg_quality: JPEG quality of the stored crops (``codec`` jpeg).
        codec: How a record stores a crop (:mod:`tfrecords_schema.image_codec`): ``jpeg`` or ``raw`` (its uint8
            RGB pixels); :meth:`encode` encodes a crop so.
        align: Eye-aligned crops (:func:`aligned_crop`) where the detector gives eyes; else square crops.
        redetect_change: Change of the held face's region (0-1) that brings the next detection
            forward (None: detection on the fixed ``detect_every`` schedule only).
        near_input: Input side, in pixels, of the short-range BlazeFace model on the passes near a held face (a
            positive multiple of 16, its coarsest stride); the window is ``near_input / 64`` face sides, the face
            kept at 64 pixels (:class:`BlazeFaceDetector`). The default is the model's own 128 (two face sides).
            96 (1.5 face sides) saves ~0.1 ms of CPU a frame on 720x528 cartoon footage, for eyes 1-7 % further from
            a pass on every frame and, on the demo's data, ~0.01 lower validation macro-F1 over three seeds: a speed
            option, not the default (``docs/convert_speed.md``). Only ``blazeface`` and ``blazeface_short`` use it
            (:data:`NEAR_INPUT_DETECTORS`); other detectors ignore it.
    """

    detector: str = "blazeface"
    detect_every: int = 20
    detect_width: int = 320
    max_hold: int | None = None
    crop_size: int = 112
    jpeg_quality: int = 90
    align: bool = True
    redetect_change: float | None = 0.08
    codec: str = DEFAULT_CODEC
    near_input: int = SHORT_RANGE_INPUT

    def encode(self, crop: np.ndarray) -> bytes:
        """A BGR crop as the records store it (:func:`beam_jobs.faces.align.encode_crop`)."""
        return encode_crop(crop, self.codec, self.jpeg_quality)

    def build_detector(self) -> Detector:
        """A new detector of this stage: ``detector`` (:func:`make_detector`), with ``near_input`` where it takes it
        (:data:`NEAR_INPUT_DETECTORS`)."""
        options = {"near_input": self.near_input} if self.detector in NEAR_INPUT_DETECTORS else {}
        return make_detector(self.detector, **options)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FaceStageConfig:
        """The config from a dict holding (at least) some of its fields; other keys are ignored.

        A field added after the first conversions (``align``, ``redetect_change``, ``near_input``) that is
        missing from ``values`` takes the value that reproduces the stage of those conversions (no
        alignment, fixed schedule, near passes at the model's 128 pixels), so the options block of an older
        ``dataset_info.json`` still describes its stage; other missing fields keep their defaults. ``None`` is a
        value for the fields where it means something (``max_hold``, ``redetect_change``).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in values.items() if k in names and (v is not None or k in _NONE_IS_A_VALUE)}
        return cls(**{**_BEFORE_THE_FIELD, **given})

    def crop_differences(self, other: FaceStageConfig) -> dict[str, tuple]:
        """The fields on which this stage and ``other`` cut or store other crops: ``{name: (this value, other's)}``.

        Two values of a field count only where the crops can tell them apart (:meth:`_in_effect`): ``evaluate`` warns
        of each difference, and a setting a stage does not use must not make it warn.
        """
        mine, theirs = self._in_effect(), other._in_effect()
        return {name: (getattr(self, name), getattr(other, name)) for name in mine
                if mine[name] != theirs[name] and getattr(self, name) != getattr(other, name)}

    def _in_effect(self) -> dict:
        """The fields as :class:`FaceCropper` acts on them, None where it does not use one (read there)."""
        values = self.to_dict()
        if self.detector not in NEAR_INPUT_DETECTORS:  # Only their passes near a held face take it.
            values["near_input"] = None
        if self.detector in EYELESS_DETECTORS:  # No eyes to align on: square crops either way.
            values["align"] = None
        if self.codec != CODEC_JPEG:
            values["jpeg_quality"] = None
        # A whole frame is shrunk to the smaller of detect_width and the detector's own input (_detect_full).
        values["detect_width"] = min(self.detect_width, WHOLE_FRAME_INPUT.get(self.detector, self.detect_width))
        # A box is held only between detections, at most detect_every - 1 frames: a longer hold never ends one.
        if self.max_hold is not None and self.max_hold >= self.detect_every - 1:
            values["max_hold"] = None
        # The change test runs from _MIN_REDETECT_GAP frames after a detection: the schedule detects by then anyway.
        if self.detect_every <= _MIN_REDETECT_GAP:
            values["redetect_change"] = None
        return values


class FaceCropper:
    """Turns the frames of one subject track, in time order, into face crops.

    Per frame:

    1. A shot-cut test (:class:`ShotCutDetector`, ~10 µs) runs on every frame. At a cut the
       held box is dropped (it shows the last shot) and detection runs on this frame, the
       detect-every schedule restarting from it.
    2. Detection runs every ``detect_every`` frames, and earlier (if ``redetect_change`` is
       set) when the held face's region has changed by more than ``redetect_change`` (mean absolute difference of 8x8 block
       means, 0-1, against the frame of the last detection; a few µs a frame), at least
       ``_MIN_REDETECT_GAP`` frames after the last detection: a face that moves, turns, is
       covered or leaves is looked at again at once, a still one every ``detect_every``
       frames. The schedule restarts from every detection. While a box is held it first looks near
       it only: a window of ``detector.near_window`` face sides, faces of 0.6-1.7 x its size,
       scaled so the face is ``detector.near_face_pixels`` (much cheaper than a whole frame,
       and it stays on the same person). When that fails, or nothing is held, the whole frame
       is searched, shrunk to ``detect_width`` (or the detector's input size). If that fails
       too the held box is dropped: the face is gone.
    3. A detection is a face only if it scores at least ``detector.min_confidence``, has a
       finite box of positive size at least half inside the frame, and its visible part is at
       least 2 % of the frame's short side (and 4 pixels): no empty or off-frame box is stored.
    4. Between detections the :class:`BoxTracker` holds the smoothed box and keypoints
       (up to ``max_hold`` frames). A detection is blended with the last one if that was at
       most ``3 x detect_every`` frames before (one or two missed detections are bridged).
    5. The crop (:func:`face_crop`, eye-aligned when ``align`` and the detector gives eyes)
       is cut from the box (and keypoints) returned in :class:`Face`. A frame without a face is
       cropped at the last place a face was held in the track (time is not shifted), or blank
       before any face, with ``bbox=None``.

    Args:
        detector: A :class:`Detector`.
        crop_size: Side of the square crops.
        detect_every: Detect on every N-th frame (>= 1).
        detect_width: Width a whole frame is shrunk to for detection (frames wider are shrunk).
        side: ``"left"``/``"right"`` for a two-person video, else None.
        max_hold: Frames a box is held after the detection that found it (None: until the next detection).
        smoothing: Weight of a new detection in the box smoothing.
        align: Eye-aligned crops when the detector gives keypoints.
        cut_threshold: Shot-cut threshold of the :class:`ShotCutDetector`.
        redetect_change: Change of the held face's region (0-1) that brings the next detection
            forward (None: a fixed schedule).
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
        align: bool = False,
        cut_threshold: float = 0.1,
        redetect_change: float | None = None,
    ):
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if detect_width < 32:
            raise ValueError(f"detect_width must be >= 32, got {detect_width}")
        if side not in (None, *SIDES):
            raise ValueError(f"side must be one of {SIDES} or None, got {side!r}")
        if crop_size <= 0:
            raise ValueError(f"crop_size must be > 0, got {crop_size}")
        self._detector = detector
        self._crop_size = crop_size
        self._detect_every = detect_every
        self._detect_width = detect_width
        self._side = side
        self._align = align
        self._tracker = BoxTracker(smoothing=smoothing, max_hold=max_hold, memory=3 * detect_every)
        self._cuts = ShotCutDetector(cut_threshold)
        self._redetect_change = redetect_change
        self._face_thumb: np.ndarray | None = None  # The held face's region at its detection.
        self._count = 0
        self.passes_by_reason = dict.fromkeys(PASS_REASONS, 0)  # Detection passes so far, by what brought them on.

    @property
    def detections_run(self) -> int:
        """Detection passes so far (found or not), for cost accounting."""
        return sum(self.passes_by_reason.values())

    @classmethod
    def from_config(cls, config: FaceStageConfig, side: str | None = None,
                    detector: Detector | None = None) -> FaceCropper:
        """The face stage described by ``config`` for one subject (``side`` of a shared video).

        Args:
            config: The face stage.
            side: ``"left"``/``"right"`` for a two-person video, else None.
            detector: A ready detector to reuse, built by :meth:`FaceStageConfig.build_detector` (default: a new one).
        """
        return cls(detector or config.build_detector(), crop_size=config.crop_size,
                   detect_every=config.detect_every, detect_width=config.detect_width, side=side,
                   max_hold=config.max_hold, align=config.align, redetect_change=config.redetect_change)

    def _accept(self, det: Detection, height: int, width: int) -> Detection | None:
        """The detection if it may be stored as a face (rule 3 of the class docstring), else None."""
        x, y, w, h = det.box
        if not det.confidence >= self._detector.min_confidence or not all(map(math.isfinite, det.box)):
            return None
        if w <= 0 or h <= 0:
            return None
        vis_w = min(width, x + w) - max(0.0, x)
        vis_h = min(height, y + h) - max(0.0, y)
        min_side = max(4.0, _MIN_FACE_FRACTION * min(height, width))
        if vis_w < min_side or vis_h < min_side or vis_w * vis_h < _MIN_VISIBLE_AREA * w * h:
            return None
        kps = det.keypoints
        if kps is not None and (not np.isfinite(kps).all() or len(kps) < 2 or np.hypot(*(kps[1] - kps[0])) < 1.0):
            det = Detection(det.box, det.confidence, None)  # Eyes unusable: the box alone (square crop).
        return det

    def _detect(self, frame: np.ndarray) -> Detection | None:
        held = self._tracker.current
        if held is not None:
            found = self._detect_near(frame, held)  # Only the window around the held box is converted.
            if found is not None:
                return found
        return self._detect_full(frame)

    def _detect_full(self, frame: np.ndarray) -> Detection | None:
        import cv2

        h, w = frame.shape[:2]
        det = self._detector
        scale = 1.0
        if det.wants_color:
            width = min(self._detect_width, det.input_size or self._detect_width)
            image = frame
            if w > width:
                scale = width / w
                image = shrink(frame, width, max(1, round(h * scale)))
        else:
            image = _gray(frame)
            if w > self._detect_width:
                scale = self._detect_width / w
                image = cv2.resize(image, (self._detect_width, max(1, round(h * scale))),
                                   interpolation=cv2.INTER_AREA)
        found = [d for d in det.detect_faces(image) if self._accept(d.moved(scale), h, w) is not None]
        box = choose_face([d.box for d in found], self._side, image.shape[1])
        if box is None:
            return None
        chosen = next(d for d in found if d.box == box)
        return self._accept(chosen.moved(scale), h, w)

    def _detect_near(self, frame: np.ndarray, held: Box) -> Detection | None:
        import cv2

        h, w = frame.shape[:2]
        det = self._detector
        size = max(held[2], held[3])
        half = det.near_window / 2 * size
        cx, cy = held[0] + held[2] / 2, held[1] + held[3] / 2
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(w, int(cx + half)), min(h, int(cy + half))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        roi = frame[y0:y1, x0:x1] if det.wants_color else _gray(frame[y0:y1, x0:x1])
        scale = min(1.0, det.near_face_pixels / size)
        if scale < 1.0:
            size_px = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
            roi = shrink(roi, *size_px) if det.wants_color else cv2.resize(roi, size_px, interpolation=cv2.INTER_AREA)
        found = det.detect_faces(roi, min_size=int(0.6 * size * scale), max_size=int(1.7 * size * scale) + 1)
        near = [a for a in (self._accept(d.moved(scale, x0, y0), h, w) for d in found) if a is not None]
        if not near:
            return None
        return max(near, key=lambda d: (iou(d.box, held), -d.box[0], -d.box[1]))

    def process(self, frame: np.ndarray, crop: bool = True) -> Face:
        """The face of the next frame of the track (see the class docstring for the rules).

        Args:
            frame: The next decoded frame, BGR uint8.
            crop: Cut the crop. With False the stage still follows the face (shot cuts, detections, the held box:
                the same state as with a crop) and returns ``crop=None``: the conversion passes every frame of a
                video through the stage, also those whose crop it does not store, so that a frame's crop depends on
                the video alone and ``affectstream predict`` cuts the same one.
        """
        reason = PASS_SCHEDULE
        if self._cuts.update(frame):
            self._tracker.cut()
            self._count = 0  # Detect on this frame; the schedule restarts from it.
            reason = PASS_CUT
        held = self._tracker.current
        if (held is not None and self._redetect_change is not None and self._count >= _MIN_REDETECT_GAP
                and region_change(self._face_thumb, region_thumbnail(frame, held)) > self._redetect_change):
            self._count = 0  # The face moved, turned, was covered or left: look again now.
            reason = PASS_CHANGE
        if self._count % self._detect_every == 0:
            self.passes_by_reason[reason] += 1
            found = self._detect(frame)
            box = self._tracker.observe(found.box, found.keypoints) if found else self._tracker.observe(None)
            self._count = 0
            self._face_thumb = None if box is None else region_thumbnail(frame, box)
            status = STATUS_DETECTED
        else:
            box = self._tracker.hold()
            status = STATUS_HELD
        self._count += 1
        h, w = frame.shape[:2]
        if box is not None:
            bbox = normalise_box(box, h, w)
            if bbox[2] > bbox[0] and bbox[3] > bbox[1]:  # Never an empty box (rule 3 makes it so already).
                kps = self._tracker.keypoints
                image = face_crop(frame, box, kps, self._crop_size, self._align) if crop else None
                # (np.minimum/np.maximum: np.clip's values, without its Python layers, on every frame.)
                norm = None if kps is None else np.minimum(np.maximum(kps / np.float32((w, h)), np.float32(0)),
                                                           np.float32(1)).astype(np.float32)
                return Face(image, bbox, norm, status)
        last = self._tracker.last_box
        if last is not None:  # Keep the last place of the face: time is not shifted.
            image = face_crop(frame, last, self._tracker.last_keypoints, self._crop_size, self._align) if crop else None
            return Face(image, None, None, STATUS_LOST)
        return Face(blank_crop(self._crop_size) if crop else None, None, None, STATUS_NONE)
