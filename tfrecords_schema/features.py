"""Per-frame feature records of the two-stage trainer (``--stage sequence``), and their index file.

The sequence stage runs a frozen per-frame CNN once over every clip and stores, per clip, one
``tf.train.SequenceExample``: the clip's ids and bucket as context, and per frame the CNN feature vector,
the frame number, whether a face was found, and the labels (the clip record's own label keys and
invalid markers, :mod:`tfrecords_schema.keys`). The recurrent stack then trains on these records instead of
decoding JPEGs and running the CNN at every step.

Feature shards mirror the clip shards one to one (same relative path, same records in the same order), so
the index file, ``features_info.json``, holds a :class:`tfrecords_schema.DatasetInfo` whose shards are the
feature shards: the trainer's shard checks, bucket streams and rebalancing read it unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from tfrecords_schema import keys
from tfrecords_schema.dataset_info import DatasetInfo, DatasetInfoError, join_path

if TYPE_CHECKING:
    import tensorflow as tf

FEATURE_SCHEMA_VERSION = 1
FEATURES_INFO_FILENAME = "features_info.json"

# --- Context features: one value per clip (besides keys.EXAMPLE_ID, MEDIA_ID, CLIP_LABEL_INDEX). --------
FEATURE_DIM = "features/dim"  # int64: size D of every frame's feature vector.
FEATURE_VERSION = "features/schema_version"  # int64: FEATURE_SCHEMA_VERSION.

# --- Feature lists: one entry per frame (besides keys.IMAGE_FRAME_INDEX and the keys.LABEL_* lists). ----
FEATURE_VECTOR = "features/embedding"  # D floats: the frozen CNN's output for the frame's crop.
FEATURE_HAS_FACE = "features/has_face"  # int64: 1 when the converter found a face for the frame, else 0.


@dataclasses.dataclass
class FeatureClip:
    """The features and labels of one clip of ``T`` frames.

    Attributes:
        example_id: The clip record's id.
        media_id: Its subject track.
        bucket_index: Index of its shard's bucket in ``bucket_names`` (-1: unbucketed shard).
        features: float32 ``[T, D]``.
        frame_index: int64 ``[T]`` (1-based frame numbers).
        has_face: bool ``[T]``.
        expression: int64 ``[T]`` (``keys.EXPRESSION_INVALID`` where unlabelled).
        valence_arousal: float32 ``[T, 2]`` (``keys.VA_INVALID`` where unlabelled).
        action_units: int64 ``[T, K]`` (``keys.AU_INVALID`` where unlabelled; K may be 0).
    """

    example_id: str
    media_id: str
    bucket_index: int
    features: np.ndarray
    frame_index: np.ndarray
    has_face: np.ndarray
    expression: np.ndarray
    valence_arousal: np.ndarray
    action_units: np.ndarray

    def __post_init__(self):
        self.features = np.asarray(self.features, np.float32)
        n = self.features.shape[0]
        if self.features.ndim != 2 or n == 0:
            raise ValueError(f"feature clip {self.example_id!r}: features must be [T>0, D], got {self.features.shape}")
        self.frame_index = np.asarray(self.frame_index, np.int64).reshape(n)
        self.has_face = np.asarray(self.has_face, bool).reshape(n)
        self.expression = np.asarray(self.expression, np.int64).reshape(n)
        self.valence_arousal = np.asarray(self.valence_arousal, np.float32).reshape(n, 2)
        self.action_units = np.asarray(self.action_units, np.int64).reshape(n, -1)


# TensorFlow is imported inside the functions that use it: `import tfrecords_schema` stays light for the CLI.


def _feature(kind: str, values) -> tf.train.Feature:
    import tensorflow as tf

    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_feature_clip(clip: FeatureClip) -> bytes:
    """Serialises a :class:`FeatureClip` (deterministic bytes)."""
    import tensorflow as tf

    context = {
        keys.EXAMPLE_ID: _feature("bytes", [clip.example_id.encode("utf-8")]),
        keys.MEDIA_ID: _feature("bytes", [clip.media_id.encode("utf-8")]),
        keys.CLIP_LABEL_INDEX: _feature("int", [int(clip.bucket_index)]),
        FEATURE_DIM: _feature("int", [clip.features.shape[1]]),
        FEATURE_VERSION: _feature("int", [FEATURE_SCHEMA_VERSION]),
    }
    lists = {
        FEATURE_VECTOR: [_feature("float", row) for row in clip.features.tolist()],
        keys.IMAGE_FRAME_INDEX: [_feature("int", [v]) for v in clip.frame_index.tolist()],
        FEATURE_HAS_FACE: [_feature("int", [int(v)]) for v in clip.has_face.tolist()],
        keys.LABEL_EXPRESSION: [_feature("int", [v]) for v in clip.expression.tolist()],
        keys.LABEL_VALENCE_AROUSAL: [_feature("float", row) for row in clip.valence_arousal.tolist()],
        keys.LABEL_ACTION_UNITS: [_feature("int", row) for row in clip.action_units.tolist()],
    }
    example = tf.train.SequenceExample(
        context=tf.train.Features(feature=context),
        feature_lists=tf.train.FeatureLists(feature_list={k: tf.train.FeatureList(feature=v) for k, v in lists.items()}),
    )
    return example.SerializeToString(deterministic=True)


def decode_feature_clip(serialized: bytes) -> FeatureClip:
    """Parses bytes written by :func:`encode_feature_clip` back into a :class:`FeatureClip` (NumPy).

    Raises:
        ValueError: not a feature record of this version.
    """
    import tensorflow as tf

    example = tf.train.SequenceExample.FromString(serialized)
    ctx = example.context.feature
    version = list(ctx[FEATURE_VERSION].int64_list.value) if FEATURE_VERSION in ctx else []
    if version != [FEATURE_SCHEMA_VERSION]:
        raise ValueError(f"feature record version {version or None} != supported {FEATURE_SCHEMA_VERSION}")
    fl = example.feature_lists.feature_list

    def column(key: str, kind: str) -> list[list]:
        return [list(getattr(f, kind).value) for f in fl[key].feature]

    aus = column(keys.LABEL_ACTION_UNITS, "int64_list")
    n = len(fl[FEATURE_VECTOR].feature)
    return FeatureClip(
        example_id=ctx[keys.EXAMPLE_ID].bytes_list.value[0].decode("utf-8"),
        media_id=ctx[keys.MEDIA_ID].bytes_list.value[0].decode("utf-8"),
        bucket_index=int(ctx[keys.CLIP_LABEL_INDEX].int64_list.value[0]),
        features=column(FEATURE_VECTOR, "float_list"),
        frame_index=[v[0] for v in column(keys.IMAGE_FRAME_INDEX, "int64_list")],
        has_face=[v[0] for v in column(FEATURE_HAS_FACE, "int64_list")],
        expression=[v[0] for v in column(keys.LABEL_EXPRESSION, "int64_list")],
        valence_arousal=column(keys.LABEL_VALENCE_AROUSAL, "float_list"),
        action_units=np.asarray(aus, np.int64).reshape(n, len(aus[0]) if aus else 0),
    )


def make_feature_parser(feature_dim: int, num_action_units: int) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """A tf.data function parsing one feature record.

    The result: ``example_id``, ``media_id`` string ``[]``, ``bucket`` int64 ``[]``; ``features`` float32
    ``[T, D]``, ``frame_index`` int64 ``[T]``, ``has_face`` bool ``[T]``, ``expression`` int64 ``[T]``,
    ``valence_arousal`` float32 ``[T, 2]``, ``action_units`` int64 ``[T, K]``. A record whose feature size
    or version differs fails the parse (an assertion naming both).
    """
    import tensorflow as tf

    if feature_dim < 1 or num_action_units < 0:
        raise ValueError(f"need feature_dim >= 1 and num_action_units >= 0, got {feature_dim}, {num_action_units}")
    context_spec = {
        keys.EXAMPLE_ID: tf.io.FixedLenFeature([], tf.string),
        keys.MEDIA_ID: tf.io.FixedLenFeature([], tf.string),
        keys.CLIP_LABEL_INDEX: tf.io.FixedLenFeature([], tf.int64),
        FEATURE_DIM: tf.io.FixedLenFeature([], tf.int64),
        FEATURE_VERSION: tf.io.FixedLenFeature([], tf.int64),
    }
    sequence_spec = {
        FEATURE_VECTOR: tf.io.FixedLenSequenceFeature([feature_dim], tf.float32),
        keys.IMAGE_FRAME_INDEX: tf.io.FixedLenSequenceFeature([], tf.int64),
        FEATURE_HAS_FACE: tf.io.FixedLenSequenceFeature([], tf.int64),
        keys.LABEL_EXPRESSION: tf.io.FixedLenSequenceFeature([], tf.int64),
        keys.LABEL_VALENCE_AROUSAL: tf.io.FixedLenSequenceFeature([2], tf.float32),
    }
    if num_action_units:
        sequence_spec[keys.LABEL_ACTION_UNITS] = tf.io.FixedLenSequenceFeature([num_action_units], tf.int64)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        context, sequence = tf.io.parse_single_sequence_example(
            serialized, context_features=context_spec, sequence_features=sequence_spec)
        tf.debugging.assert_equal(context[FEATURE_VERSION], tf.constant(FEATURE_SCHEMA_VERSION, tf.int64),
                                  message="feature record version does not match this reader")
        tf.debugging.assert_equal(context[FEATURE_DIM], tf.constant(feature_dim, tf.int64),
                                  message=f"feature record size differs from the expected {feature_dim}")
        n = tf.shape(sequence[FEATURE_VECTOR])[0]
        aus = sequence[keys.LABEL_ACTION_UNITS] if num_action_units else tf.zeros([n, 0], tf.int64)
        return {
            "example_id": context[keys.EXAMPLE_ID],
            "media_id": context[keys.MEDIA_ID],
            "bucket": context[keys.CLIP_LABEL_INDEX],
            "features": sequence[FEATURE_VECTOR],
            "frame_index": sequence[keys.IMAGE_FRAME_INDEX],
            "has_face": sequence[FEATURE_HAS_FACE] > 0,
            "expression": sequence[keys.LABEL_EXPRESSION],
            "valence_arousal": sequence[keys.LABEL_VALENCE_AROUSAL],
            "action_units": aus,
        }

    return parse


@dataclasses.dataclass
class FeaturesInfo:
    """The contents of ``features_info.json``: what a feature folder holds and what made it.

    Attributes:
        feature_dim: Size of every frame's feature vector.
        dataset_fingerprint: Fingerprint of the clip data the features came from.
        backbone_sha256: SHA-256 of the ``model.keras`` whose CNN made them.
        init_from: The job (or export) folder of that model.
        splits: Splits with features.
        dataset: The clip data's dataset info with the feature shards in place of the clip shards.
        schema_version: :data:`FEATURE_SCHEMA_VERSION`.
    """

    feature_dim: int
    dataset_fingerprint: str
    backbone_sha256: str
    init_from: str
    splits: list[str]
    dataset: DatasetInfo
    schema_version: int = FEATURE_SCHEMA_VERSION

    def to_json(self) -> str:
        raw: dict[str, Any] = dataclasses.asdict(self)
        raw["dataset"] = json.loads(self.dataset.to_json())
        return json.dumps(raw, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> FeaturesInfo:
        """Parses ``features_info.json`` text; DatasetInfoError names ``source`` when it is malformed."""
        try:
            raw = json.loads(text)
            if raw.get("schema_version") != FEATURE_SCHEMA_VERSION:
                raise DatasetInfoError(f"{source} has feature schema version {raw.get('schema_version')!r}, this "
                                       f"reader reads {FEATURE_SCHEMA_VERSION}")
            dataset = DatasetInfo.from_json(json.dumps(raw.pop("dataset")), source=f"{source} (dataset)")
            return cls(**raw, dataset=dataset)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise DatasetInfoError(f"{source} is not a valid features index: {type(e).__name__}: {e}") from e


def read_features_info(features_dir: str) -> FeaturesInfo | None:
    """The index of a feature folder; None when it has none (never written, or its writing was cut short)."""
    import tensorflow as tf

    path = join_path(features_dir, FEATURES_INFO_FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return FeaturesInfo.from_json(f.read(), source=path)


def write_features_info(info: FeaturesInfo, features_dir: str) -> str:
    """Writes the index atomically (last, so a folder with an index holds every listed shard); returns its path."""
    from tfrecords_schema.atomic import write_atomically

    return write_atomically(join_path(features_dir, FEATURES_INFO_FILENAME), info.to_json())
