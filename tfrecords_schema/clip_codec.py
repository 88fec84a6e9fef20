"""Encode and decode one clip record: NumPy side for Beam, tf.data side for the trainer.

A clip is a run of consecutive frames of one subject track. The Beam job builds
a :class:`ClipRecord` from NumPy arrays and serialises it with
:func:`encode_clip`; the trainer parses the bytes inside a tf.data pipeline
with the function returned by :func:`make_clip_parser`; tools and tests read
them back into NumPy with :func:`decode_clip`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import numpy as np

from tfrecords_schema import keys
from tfrecords_schema.image_codec import CODEC_JPEG, check_codec
from tfrecords_schema.version import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION

if typing.TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass
class ClipRecord:
    """One clip of ``T`` consecutive frames of one subject track.

    Attributes:
        example_id: Unique id, ``"<split>/<media_id>/<first frame:06d>"``.
        dataset_name: Adapter name, e.g. ``"abaw"``.
        media_id: Annotation (subject track) name, e.g. ``"10-60-1280x720_right"``.
        data_path: Media path relative to the input root.
        frame_rate: Frames per second of the source.
        bucket_index: Rebalancing bucket of the clip (index into the bucket names).
        images: ``T`` face crops, encoded as ``image_format`` says.
        frame_index: int64 ``[T]``, 1-based frame numbers (= annotation line numbers).
        timestamp_us: int64 ``[T]``, frame times in microseconds.
        bbox: float32 ``[T, 4]`` (ymin, xmin, ymax, xmax) normalised to the frame;
            rows of NaN where no face was found.
        expression: int64 ``[T]``; ``keys.EXPRESSION_INVALID`` where unlabelled.
        valence_arousal: float32 ``[T, 2]``; ``keys.VA_INVALID`` where unlabelled.
        action_units: int64 ``[T, K]``; ``keys.AU_INVALID`` where unlabelled.
        keypoints: float32 ``[T, P, 2]``: ``P`` face keypoints ``(x, y)`` normalised to the frame, in
            the detector's order; rows of NaN where a frame has no keypoints (no face, a detector
            without keypoints, or a version-1 record). None (the default) means ``[T, 0, 2]``.
        image_format: How ``images`` are stored (:mod:`tfrecords_schema.image_codec`): ``"jpeg"`` (the default, and
            what records of versions 1-3 hold) or ``"raw"`` (uint8 RGB ``[S, S, 3]`` bytes).
    """

    example_id: str
    dataset_name: str
    media_id: str
    data_path: str
    frame_rate: float
    bucket_index: int
    images: list[bytes]
    frame_index: np.ndarray
    timestamp_us: np.ndarray
    bbox: np.ndarray
    expression: np.ndarray
    valence_arousal: np.ndarray
    action_units: np.ndarray
    keypoints: np.ndarray | None = None
    image_format: str = CODEC_JPEG

    def __post_init__(self):
        check_codec(self.image_format)
        n = len(self.images)
        self.frame_index = np.asarray(self.frame_index, np.int64).reshape(n)
        self.timestamp_us = np.asarray(self.timestamp_us, np.int64).reshape(n)
        self.bbox = np.asarray(self.bbox, np.float32).reshape(n, 4)
        self.expression = np.asarray(self.expression, np.int64).reshape(n)
        self.valence_arousal = np.asarray(self.valence_arousal, np.float32).reshape(n, 2)
        self.action_units = np.asarray(self.action_units, np.int64).reshape(n, -1)
        points = np.zeros((n, 0, 2)) if self.keypoints is None else self.keypoints
        self.keypoints = np.asarray(points, np.float32).reshape(n, -1, 2)
        if n == 0:
            raise ValueError(f"clip {self.example_id!r} has no frames")

    @property
    def num_frames(self) -> int:
        return len(self.images)

    @property
    def has_face(self) -> np.ndarray:
        """bool ``[T]``: whether a face box was found for each frame."""
        return ~np.isnan(self.bbox).any(axis=1)

    @property
    def has_keypoints(self) -> np.ndarray:
        """bool ``[T]``: whether a frame has a face with keypoints (stored as non-empty point lists)."""
        if self.keypoints.shape[1] == 0:
            return np.zeros(len(self.images), bool)
        return self.has_face & np.isfinite(self.keypoints).all(axis=(1, 2))


# TensorFlow is imported inside the functions that use it, never at the top: `import tfrecords_schema` (keys,
# dataset info, ClipRecord) must stay light for `affectstream COMMAND --help` and the tools.


def encode_clip(clip: ClipRecord) -> bytes:
    """Serialises a clip to a `tf.train.SequenceExample` in the AffectStream schema.

    The message is filled in place (``add()`` and ``extend``) rather than from ``tf.train.Feature`` objects built
    one by one and copied in: the same message and the same bytes (deterministic serialisation), at about half
    the CPU time, which the conversion pays for every frame (~2,000 features a clip of 64).
    """
    import tensorflow as tf

    example = tf.train.SequenceExample()
    context = example.context.feature
    for key, text in ((keys.EXAMPLE_ID, clip.example_id), (keys.DATASET_NAME, clip.dataset_name),
                      (keys.MEDIA_ID, clip.media_id), (keys.DATA_PATH, clip.data_path)):
        context[key].bytes_list.value.append(text.encode("utf-8"))
    context[keys.FRAME_RATE].float_list.value.append(float(clip.frame_rate))
    context[keys.CLIP_LABEL_INDEX].int64_list.value.append(int(clip.bucket_index))
    context[keys.SCHEMA_VERSION].int64_list.value.append(SCHEMA_VERSION)
    context[keys.IMAGE_FORMAT].bytes_list.value.append(clip.image_format.encode("utf-8"))
    lists = example.feature_lists.feature_list
    # Per frame, one feature per key; a frame without a face (or keypoints) gets an empty list.
    _fill(lists[keys.IMAGE_ENCODED], "bytes_list", ([image] for image in clip.images))
    _fill(lists[keys.IMAGE_FRAME_INDEX], "int64_list", ([v] for v in clip.frame_index.tolist()))
    _fill(lists[keys.IMAGE_TIMESTAMP], "int64_list", ([v] for v in clip.timestamp_us.tolist()))
    has_face = clip.has_face.tolist()
    for col, key in enumerate(keys.BBOX_KEYS):
        _fill(lists[key], "float_list",
              ([v] if face else () for v, face in zip(clip.bbox[:, col].tolist(), has_face)))
    has_points = clip.has_keypoints.tolist()
    for axis, key in enumerate(keys.POINT_KEYS):
        _fill(lists[key], "float_list",
              (points if ok else () for points, ok in zip(clip.keypoints[:, :, axis].tolist(), has_points)))
    _fill(lists[keys.LABEL_EXPRESSION], "int64_list", ([v] for v in clip.expression.tolist()))
    _fill(lists[keys.LABEL_VALENCE_AROUSAL], "float_list", clip.valence_arousal.tolist())
    _fill(lists[keys.LABEL_ACTION_UNITS], "int64_list", clip.action_units.tolist())
    return example.SerializeToString(deterministic=True)


def _fill(feature_list, kind: str, rows) -> None:
    """Appends one feature of ``kind`` (``bytes_list``, ``float_list``, ``int64_list``) per row of values."""
    add = feature_list.feature.add
    for values in rows:
        kind_list = getattr(add(), kind)
        if values:
            kind_list.value.extend(values)
        else:
            kind_list.SetInParent()  # An empty list of this kind, as the reader expects: not an unset feature.


def _scalar(feature: tf.train.Feature):
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value
    if len(values) != 1:
        raise ValueError(f"expected one value, got {len(values)}")
    return values[0]


def decode_clip(serialized: bytes) -> ClipRecord:
    """Parses serialised bytes back into a :class:`ClipRecord` (NumPy, no graph).

    Reads every version in :data:`READABLE_SCHEMA_VERSIONS`; a version-1 clip has no keypoints
    (``keypoints`` ``[T, 0, 2]``), a clip of versions 1-3 holds JPEG crops.

    Raises:
        ValueError: if the bytes are not a clip of a readable schema version, or its keypoint lists
            do not hold the same number of points on every frame that has any.
    """
    import tensorflow as tf

    example = tf.train.SequenceExample.FromString(serialized)
    ctx = example.context.feature
    version = int(_scalar(ctx[keys.SCHEMA_VERSION])) if keys.SCHEMA_VERSION in ctx else None
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"clip schema version {version} is not one this reader supports {READABLE_SCHEMA_VERSIONS}")
    fl = example.feature_lists.feature_list

    def column(key, kind):
        return [list(getattr(f, kind).value) for f in fl[key].feature] if key in fl else []

    n = len(fl[keys.IMAGE_ENCODED].feature)
    boxes = np.full((n, 4), np.nan, np.float32)
    for col, key in enumerate(keys.BBOX_KEYS):
        for row, value in enumerate(column(key, "float_list")):
            if value:
                boxes[row, col] = value[0]
    aus = column(keys.LABEL_ACTION_UNITS, "int64_list")
    return ClipRecord(
        keypoints=_keypoints(column(keys.POINT_X, "float_list"), column(keys.POINT_Y, "float_list"), n),
        example_id=_scalar(ctx[keys.EXAMPLE_ID]).decode("utf-8"),
        dataset_name=_scalar(ctx[keys.DATASET_NAME]).decode("utf-8"),
        media_id=_scalar(ctx[keys.MEDIA_ID]).decode("utf-8"),
        data_path=_scalar(ctx[keys.DATA_PATH]).decode("utf-8"),
        frame_rate=float(_scalar(ctx[keys.FRAME_RATE])),
        bucket_index=int(_scalar(ctx[keys.CLIP_LABEL_INDEX])),
        images=[v[0] for v in column(keys.IMAGE_ENCODED, "bytes_list")],
        frame_index=[v[0] for v in column(keys.IMAGE_FRAME_INDEX, "int64_list")],
        timestamp_us=[v[0] for v in column(keys.IMAGE_TIMESTAMP, "int64_list")],
        bbox=boxes,
        expression=[v[0] for v in column(keys.LABEL_EXPRESSION, "int64_list")],
        valence_arousal=column(keys.LABEL_VALENCE_AROUSAL, "float_list"),
        action_units=np.asarray(aus, np.int64).reshape(n, len(aus[0]) if aus else 0),
        image_format=_scalar(ctx[keys.IMAGE_FORMAT]).decode("utf-8") if keys.IMAGE_FORMAT in ctx else CODEC_JPEG,
    )


def _keypoints(xs: list[list[float]], ys: list[list[float]], n: int) -> np.ndarray:
    """``[n, P, 2]`` from per-frame x and y lists (empty lists, or no lists at all: NaN rows)."""
    sizes = {len(x) for x in xs if x} | {len(y) for y in ys if y}
    if len(sizes) > 1 or any(len(x) != len(y) for x, y in zip(xs, ys)) or (xs and len(xs) != n):
        raise ValueError(f"keypoint lists of different lengths in one clip: {sorted(sizes)}")
    points = np.full((n, sizes.pop() if sizes else 0, 2), np.nan, np.float32)
    for row, (x, y) in enumerate(zip(xs, ys)):
        if x:
            points[row, :, 0], points[row, :, 1] = x, y
    return points


def make_clip_parser(num_action_units: int, num_keypoints: int = 0,
                     image_format: str = CODEC_JPEG) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Returns a tf.data-friendly function parsing one serialised clip.

    The returned function maps a scalar string tensor to a dict of tensors (``T``
    is the clip length, images stay encoded so decoding can follow a shuffle):

    * ``example_id`` string ``[]``, ``media_id`` string ``[]``, ``bucket`` int64 ``[]``,
      ``frame_rate`` float32 ``[]``;
    * ``image`` string ``[T]``, ``frame_index`` int64 ``[T]``, ``timestamp_us`` int64 ``[T]``;
    * ``bbox`` float32 ``[T, 4]`` (zeros where no face), ``has_face`` bool ``[T]``;
    * ``expression`` int64 ``[T]``, ``valence_arousal`` float32 ``[T, 2]``,
      ``action_units`` int64 ``[T, num_action_units]``;
    * with ``num_keypoints`` > 0: ``keypoints`` float32 ``[T, num_keypoints, 2]`` (x, y), NaN where a frame
      has none (no face, or a version-1 clip); a frame with more points keeps the first ``num_keypoints``.

    The readable schema versions (:data:`READABLE_SCHEMA_VERSIONS`) parse; any other fails the parse, and so does
    a clip whose ``image/format`` is not ``image_format`` (a record without one is JPEG).

    Args:
        num_action_units: AUs per frame, from ``DatasetInfo.label_names``.
        num_keypoints: Keypoints per frame to return (0: no ``keypoints`` tensor).
        image_format: The codec of the crops (``DatasetInfo.codec``), which the reader decodes them by.
    """
    import tensorflow as tf

    if num_action_units < 0:
        raise ValueError(f"num_action_units must be >= 0, got {num_action_units}")
    if num_keypoints < 0:
        raise ValueError(f"num_keypoints must be >= 0, got {num_keypoints}")
    context_spec = {
        keys.EXAMPLE_ID: tf.io.FixedLenFeature([], tf.string),
        keys.MEDIA_ID: tf.io.FixedLenFeature([], tf.string),
        keys.FRAME_RATE: tf.io.FixedLenFeature([], tf.float32),
        keys.CLIP_LABEL_INDEX: tf.io.FixedLenFeature([], tf.int64),
        keys.SCHEMA_VERSION: tf.io.FixedLenFeature([], tf.int64),
        keys.IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=CODEC_JPEG),
    }
    check_codec(image_format)
    sequence_spec = {
        keys.IMAGE_ENCODED: tf.io.FixedLenSequenceFeature([], tf.string),
        keys.IMAGE_FRAME_INDEX: tf.io.FixedLenSequenceFeature([], tf.int64),
        keys.IMAGE_TIMESTAMP: tf.io.FixedLenSequenceFeature([], tf.int64),
        keys.LABEL_EXPRESSION: tf.io.FixedLenSequenceFeature([], tf.int64),
        keys.LABEL_VALENCE_AROUSAL: tf.io.FixedLenSequenceFeature([2], tf.float32),
        **{key: tf.io.RaggedFeature(tf.float32) for key in keys.BBOX_KEYS},
    }
    if num_action_units:
        sequence_spec[keys.LABEL_ACTION_UNITS] = tf.io.FixedLenSequenceFeature([num_action_units], tf.int64)
    if num_keypoints:
        sequence_spec.update({key: tf.io.RaggedFeature(tf.float32) for key in keys.POINT_KEYS})
    readable = tf.constant(READABLE_SCHEMA_VERSIONS, tf.int64)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        context, sequence = tf.io.parse_single_sequence_example(
            serialized, context_features=context_spec, sequence_features=sequence_spec
        )
        tf.debugging.Assert(
            tf.reduce_any(tf.equal(context[keys.SCHEMA_VERSION], readable)),
            ["clip schema version is not one this reader supports:", context[keys.SCHEMA_VERSION]],
        )
        tf.debugging.Assert(tf.equal(context[keys.IMAGE_FORMAT], image_format),
                            [f"clip crops are not stored as {image_format} (dataset_info.json's codec):",
                             context[keys.IMAGE_FORMAT]])
        num_frames = tf.shape(sequence[keys.IMAGE_ENCODED])[0]
        has_face = sequence[keys.BBOX_YMIN].row_lengths() > 0
        bbox = tf.stack(
            [sequence[key].to_tensor(default_value=0.0, shape=[num_frames, 1])[:, 0] for key in keys.BBOX_KEYS],
            axis=-1,
        )
        if num_action_units:
            action_units = sequence[keys.LABEL_ACTION_UNITS]
        else:
            action_units = tf.zeros([num_frames, 0], tf.int64)
        extra = {}
        if num_keypoints:
            # A version-1 clip has no point lists at all: to_tensor pads its [0, None] to NaN rows.
            extra["keypoints"] = tf.stack([
                sequence[key].to_tensor(default_value=float("nan"), shape=[num_frames, num_keypoints])
                for key in keys.POINT_KEYS], axis=-1)
        return {
            "example_id": context[keys.EXAMPLE_ID],
            "media_id": context[keys.MEDIA_ID],
            "bucket": context[keys.CLIP_LABEL_INDEX],
            "frame_rate": context[keys.FRAME_RATE],
            "image": sequence[keys.IMAGE_ENCODED],
            "frame_index": sequence[keys.IMAGE_FRAME_INDEX],
            "timestamp_us": sequence[keys.IMAGE_TIMESTAMP],
            "bbox": bbox,
            "has_face": has_face,
            "expression": sequence[keys.LABEL_EXPRESSION],
            "valence_arousal": sequence[keys.LABEL_VALENCE_AROUSAL],
            "action_units": action_units,
            **extra,
        }

    return parse
