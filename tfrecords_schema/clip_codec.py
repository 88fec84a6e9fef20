"""Encode and decode one clip record: NumPy side for Beam, tf.data side for the trainer.

A clip is a run of consecutive frames of one subject track. The Beam job builds
a :class:`ClipRecord` from NumPy arrays and serialises it with
:func:`encode_clip`; the trainer parses the bytes inside a tf.data pipeline
with the function returned by :func:`make_clip_parser`; tools and tests read
them back into NumPy with :func:`decode_clip`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from tfrecords_schema import keys
from tfrecords_schema.version import SCHEMA_VERSION


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
        images: ``T`` JPEG-encoded face crops.
        frame_index: int64 ``[T]``, 1-based frame numbers (= annotation line numbers).
        timestamp_us: int64 ``[T]``, frame times in microseconds.
        bbox: float32 ``[T, 4]`` (ymin, xmin, ymax, xmax) normalised to the frame;
            rows of NaN where no face was found.
        expression: int64 ``[T]``; ``keys.EXPRESSION_INVALID`` where unlabelled.
        valence_arousal: float32 ``[T, 2]``; ``keys.VA_INVALID`` where unlabelled.
        action_units: int64 ``[T, K]``; ``keys.AU_INVALID`` where unlabelled.
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

    def __post_init__(self):
        n = len(self.images)
        self.frame_index = np.asarray(self.frame_index, np.int64).reshape(n)
        self.timestamp_us = np.asarray(self.timestamp_us, np.int64).reshape(n)
        self.bbox = np.asarray(self.bbox, np.float32).reshape(n, 4)
        self.expression = np.asarray(self.expression, np.int64).reshape(n)
        self.valence_arousal = np.asarray(self.valence_arousal, np.float32).reshape(n, 2)
        self.action_units = np.asarray(self.action_units, np.int64).reshape(n, -1)
        if n == 0:
            raise ValueError(f"clip {self.example_id!r} has no frames")

    @property
    def num_frames(self) -> int:
        return len(self.images)

    @property
    def has_face(self) -> np.ndarray:
        """bool ``[T]``: whether a face box was found for each frame."""
        return ~np.isnan(self.bbox).any(axis=1)


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_clip(clip: ClipRecord) -> bytes:
    """Serialises a clip to a `tf.train.SequenceExample` in the AffectStream schema."""
    context = {
        keys.EXAMPLE_ID: _bytes([clip.example_id.encode("utf-8")]),
        keys.DATASET_NAME: _bytes([clip.dataset_name.encode("utf-8")]),
        keys.MEDIA_ID: _bytes([clip.media_id.encode("utf-8")]),
        keys.DATA_PATH: _bytes([clip.data_path.encode("utf-8")]),
        keys.FRAME_RATE: _floats([float(clip.frame_rate)]),
        keys.CLIP_LABEL_INDEX: _ints([int(clip.bucket_index)]),
        keys.SCHEMA_VERSION: _ints([SCHEMA_VERSION]),
    }
    has_face = clip.has_face
    bbox_lists = {
        key: [_floats([float(v)]) if face else _floats([]) for v, face in zip(clip.bbox[:, col], has_face)]
        for col, key in enumerate(keys.BBOX_KEYS)
    }
    feature_lists = {
        keys.IMAGE_ENCODED: [_bytes([image]) for image in clip.images],
        keys.IMAGE_FRAME_INDEX: [_ints([v]) for v in clip.frame_index.tolist()],
        keys.IMAGE_TIMESTAMP: [_ints([v]) for v in clip.timestamp_us.tolist()],
        **bbox_lists,
        keys.LABEL_EXPRESSION: [_ints([v]) for v in clip.expression.tolist()],
        keys.LABEL_VALENCE_AROUSAL: [_floats(row) for row in clip.valence_arousal.tolist()],
        keys.LABEL_ACTION_UNITS: [_ints(row) for row in clip.action_units.tolist()],
    }
    example = tf.train.SequenceExample(
        context=tf.train.Features(feature=context),
        feature_lists=tf.train.FeatureLists(
            feature_list={k: tf.train.FeatureList(feature=v) for k, v in feature_lists.items()}
        ),
    )
    return example.SerializeToString(deterministic=True)


def _scalar(feature: tf.train.Feature):
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value
    if len(values) != 1:
        raise ValueError(f"expected one value, got {len(values)}")
    return values[0]


def decode_clip(serialized: bytes) -> ClipRecord:
    """Parses serialised bytes back into a :class:`ClipRecord` (NumPy, no graph).

    Raises:
        ValueError: if the bytes are not a clip of this schema version.
    """
    example = tf.train.SequenceExample.FromString(serialized)
    ctx = example.context.feature
    version = int(_scalar(ctx[keys.SCHEMA_VERSION])) if keys.SCHEMA_VERSION in ctx else None
    if version != SCHEMA_VERSION:
        raise ValueError(f"clip schema version {version} != supported {SCHEMA_VERSION}")
    fl = example.feature_lists.feature_list

    def column(key, kind):
        return [list(getattr(f, kind).value) for f in fl[key].feature]

    n = len(fl[keys.IMAGE_ENCODED].feature)
    boxes = np.full((n, 4), np.nan, np.float32)
    for col, key in enumerate(keys.BBOX_KEYS):
        for row, value in enumerate(column(key, "float_list")):
            if value:
                boxes[row, col] = value[0]
    aus = column(keys.LABEL_ACTION_UNITS, "int64_list")
    return ClipRecord(
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
    )


def make_clip_parser(num_action_units: int) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Returns a tf.data-friendly function parsing one serialised clip.

    The returned function maps a scalar string tensor to a dict of tensors (``T``
    is the clip length, images stay JPEG-encoded so decoding can follow a shuffle):

    * ``example_id`` string ``[]``, ``media_id`` string ``[]``, ``bucket`` int64 ``[]``,
      ``frame_rate`` float32 ``[]``;
    * ``image`` string ``[T]``, ``frame_index`` int64 ``[T]``, ``timestamp_us`` int64 ``[T]``;
    * ``bbox`` float32 ``[T, 4]`` (zeros where no face), ``has_face`` bool ``[T]``;
    * ``expression`` int64 ``[T]``, ``valence_arousal`` float32 ``[T, 2]``,
      ``action_units`` int64 ``[T, num_action_units]``.

    Args:
        num_action_units: AUs per frame, from ``DatasetInfo.label_names``.
    """
    if num_action_units < 0:
        raise ValueError(f"num_action_units must be >= 0, got {num_action_units}")
    context_spec = {
        keys.EXAMPLE_ID: tf.io.FixedLenFeature([], tf.string),
        keys.MEDIA_ID: tf.io.FixedLenFeature([], tf.string),
        keys.FRAME_RATE: tf.io.FixedLenFeature([], tf.float32),
        keys.CLIP_LABEL_INDEX: tf.io.FixedLenFeature([], tf.int64),
        keys.SCHEMA_VERSION: tf.io.FixedLenFeature([], tf.int64),
    }
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

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        context, sequence = tf.io.parse_single_sequence_example(
            serialized, context_features=context_spec, sequence_features=sequence_spec
        )
        tf.debugging.assert_equal(
            context[keys.SCHEMA_VERSION],
            tf.constant(SCHEMA_VERSION, tf.int64),
            message="clip schema version does not match this reader",
        )
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
        }

    return parse
