"""The sequence stage's data: per-frame CNN features computed once, and the joined export.

* :func:`extract_features` runs the frozen per-frame network of the ``--features_from`` export over every clip
  of the splits a job reads, once, and writes one feature record per clip (:mod:`tfrecords_schema.features`) into
  ``JOB/features/``: one feature shard per clip shard, same relative path, same bucket, same records in
  the same order, and last the index ``features_info.json``. A later run (a resume, a rerun) reuses the
  folder when its index names the same data and the same CNN (their fingerprints), else recomputes it.
  The features come from the crops exactly as evaluation feeds them (no augmentation), through the
  model's own input layers, so the CNN sees what it sees in the exported model.
* the tf.data pipelines over these shards (training windows, evaluation windows) are the input stream's:
  :mod:`trainer.input.features`;
* :func:`assemble_export` puts the per-frame network and the trained temporal head into one end-to-end model
  (:func:`trainer.model.build.build_model`), which is what the job exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, TASK_MULTI, keys
from tfrecords_schema.dataset_info import DatasetInfo, ShardInfo, join_path
from tfrecords_schema.features import (
    FeatureClip,
    FeaturesInfo,
    encode_feature_clip,
    read_features_info,
    write_features_info,
)
from trainer.common.errors import TrainingError
from trainer.input import records

log = logging.getLogger("trainer.train")

FEATURES_DIRNAME = "features"
# Frames per feature-extraction batch (clips of clip_length frames are batched up to this many frames).
EXTRACT_FRAMES_PER_BATCH = 512
AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------------------------------
# Features, computed once.


def extract_features(data_dir: str, info: DatasetInfo, splits, extractor, features_dir: str, *,
                     dataset_fingerprint: str, backbone_sha256: str, init_from: str,
                     skipped: records.SkippedRecords | None = None) -> FeaturesInfo:
    """Writes (or reuses) the feature shards of ``splits`` under ``features_dir``; returns their index.

    Args:
        data_dir: The clip data.
        info: Its dataset info.
        splits: The splits the job reads (train and its evaluation splits).
        extractor: A Keras model mapping the evaluation pipeline's images ``[B, T, S, S, 3]`` to the
            per-frame features ``[B, T, D]`` (the ``--features_from`` export's per-frame network).
        features_dir: Where the feature shards and ``features_info.json`` go.
        dataset_fingerprint: Fingerprint of the clip data (:func:`trainer.training.fingerprint.dataset_fingerprint`).
        backbone_sha256: SHA-256 of the model file the extractor comes from.
        init_from: The ``--features_from`` folder (recorded in the index).
        skipped: Skip and count corrupt clip records (None: fail on them).

    Raises:
        TrainingError: a shard's features do not add up to its clips or frames.
    """
    splits = sorted(set(splits))
    existing = read_features_info(features_dir)
    if (existing is not None and existing.dataset_fingerprint == dataset_fingerprint
            and existing.backbone_sha256 == backbone_sha256 and set(splits) <= set(existing.splits)):
        log.info("per-frame features of %s: reusing %s (same data and CNN)", ", ".join(splits), features_dir)
        return existing
    if existing is not None:
        log.info("per-frame features in %s were made from other data or another CNN: computing them again",
                 features_dir)
    predict = _Predictor(extractor)
    feature_dim = int(extractor.output.shape[-1])
    new_splits = {}
    for split in splits:
        shards = _extract_split(data_dir, info, split, predict, features_dir, skipped)
        new_splits[split] = dataclasses.replace(info.splits[split], shards=shards)
        log.info("per-frame features of split %s: %d clips, %d frames in %d shards", split,
                 sum(s.num_records for s in shards), sum(s.num_frames for s in shards), len(shards))
    index = FeaturesInfo(feature_dim=feature_dim, dataset_fingerprint=dataset_fingerprint,
                         backbone_sha256=backbone_sha256, init_from=init_from, splits=splits,
                         dataset=dataclasses.replace(info, splits=new_splits))
    write_features_info(index, features_dir)
    return index


class _Predictor:
    """``extractor(images, training=False)`` as one tf.function, traced once for any batch size.

    A signature with a free batch axis (taken from the first batch) keeps the last, smaller batch of a
    split from re-tracing the model.
    """

    def __init__(self, extractor):
        self._extractor = extractor
        self._function = None

    def __call__(self, images):
        if self._function is None:
            spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
            self._function = tf.function(lambda x: self._extractor(x, training=False), input_signature=[spec],
                                         autograph=False)
        return self._function(images)


def _example_ids(path: str, skipped) -> list[bytes]:
    """The example ids of a clip shard, in order (only the context is parsed; no image is decoded)."""
    spec = {keys.EXAMPLE_ID: tf.io.FixedLenFeature([], tf.string)}
    records_ = tf.data.TFRecordDataset(path)
    if skipped is not None:  # the evaluation pipeline counts what a corrupt shard loses
        records_ = records_.ignore_errors()
    ids = records_.map(tf.autograph.experimental.do_not_convert(
        lambda r: tf.io.parse_single_sequence_example(r, context_features=spec)[0][keys.EXAMPLE_ID]),
        num_parallel_calls=AUTOTUNE)
    return [i for batch in ids.batch(1024) for i in batch.numpy().tolist()]


def _extract_split(data_dir: str, info: DatasetInfo, split: str, predict, features_dir: str,
                   skipped) -> list[ShardInfo]:
    """Writes the feature shards of one split (each atomically); returns their ShardInfos in the split's order.

    One evaluation pipeline reads the whole split (it interleaves the shards, keeping each shard's record
    order); each clip goes to the feature shard of the clip shard that holds its id.
    """
    from tfrecords_schema.atomic import incomplete_file
    from trainer.input.pipeline import heads_for_task, make_eval_dataset

    shards = records.split_info(info, split).shards
    owner = {example_id: i for i, shard in enumerate(shards) if shard.num_records
             for example_id in _example_ids(join_path(data_dir, shard.path), skipped)}
    paths = [join_path(features_dir, shard.path) for shard in shards]
    buckets = [info.bucket_names.index(s.bucket) if s.bucket in info.bucket_names else -1 for s in shards]
    counts = [[0, 0] for _ in shards]  # clips, frames written per shard
    heads = heads_for_task(info, TASK_MULTI)
    with contextlib.ExitStack() as stack:
        writers = []
        for path in paths:  # each writer closes before its temporary file is renamed (ExitStack unwinds)
            writers.append(stack.enter_context(tf.io.TFRecordWriter(stack.enter_context(incomplete_file(path)))))
        if owner:
            dataset = make_eval_dataset(data_dir, info, split=split, task=TASK_MULTI, seq_len=info.clip_length,
                                        batch_size=max(1, EXTRACT_FRAMES_PER_BATCH // info.clip_length),
                                        skipped=skipped)
            for clip in _feature_clips(dataset, predict, heads, info.num_action_units):
                i = owner[clip.example_id.encode("utf-8")]
                clip.bucket_index = buckets[i]
                writers[i].write(encode_feature_clip(clip))
                counts[i][0] += 1
                counts[i][1] += clip.features.shape[0]
    result = []
    for shard, path, (clips, frames) in zip(shards, paths, counts):
        if (clips, frames) != (shard.num_records, shard.num_frames) and skipped is None:
            raise TrainingError(f"features of shard {shard.path}: {clips} clips, {frames} frames, but "
                                f"dataset_info.json lists {shard.num_records} clips, {shard.num_frames} frames")
        result.append(ShardInfo(path=shard.path, bucket=shard.bucket, num_records=clips, num_frames=frames,
                                num_bytes=tf.io.gfile.stat(path).length))
    return result


def _feature_clips(dataset, predict, heads, num_action_units: int):
    """Yields one :class:`FeatureClip` per clip of an evaluation dataset (windows of one clip joined)."""
    pending: list[dict] = []
    for images, targets, weights, ids in dataset:
        features = predict(images).numpy()
        batch = {"features": features, "frame_index": ids["frame_index"].numpy(), "has_face": ids["has_face"].numpy(),
                 "example_id": ids["example_id"].numpy(), "media_id": ids["media_id"].numpy(),
                 **{f"target/{h}": targets[h].numpy() for h in heads},
                 **{f"weight/{h}": weights[h].numpy() for h in heads}}
        for b in range(features.shape[0]):
            window = {k: v[b] for k, v in batch.items()}
            if pending and window["example_id"] != pending[0]["example_id"]:
                yield _join_windows(pending, heads, num_action_units)
                pending = []
            pending.append(window)
    if pending:
        yield _join_windows(pending, heads, num_action_units)


def _join_windows(windows: list[dict], heads, num_action_units: int) -> FeatureClip:
    """One clip from its consecutive evaluation windows: padding dropped, labels back to the schema's markers."""
    cat = {k: np.concatenate([w[k] for w in windows]) for k in windows[0] if k not in ("example_id", "media_id")}
    keep = cat["frame_index"] >= 0  # padding frames carry -1
    n = int(keep.sum())

    def labels(head: str, invalid, shape):
        if head not in heads:
            return np.full(shape, invalid)
        valid = cat[f"weight/{head}"][keep] > 0  # evaluation weights: 1 exactly where the label is valid
        target = cat[f"target/{head}"][keep]
        return np.where(valid.reshape((n,) + (1,) * (len(shape) - 1)), target, invalid)

    return FeatureClip(
        example_id=windows[0]["example_id"].decode("utf-8"),
        media_id=windows[0]["media_id"].decode("utf-8"),
        bucket_index=-1,  # set by the caller from the clip's shard
        features=cat["features"][keep],
        frame_index=cat["frame_index"][keep],
        has_face=cat["has_face"][keep],
        expression=labels(HEAD_EXPRESSION, keys.EXPRESSION_INVALID, (n,)),
        valence_arousal=labels(HEAD_VALENCE_AROUSAL, keys.VA_INVALID, (n, 2)),
        action_units=labels(HEAD_ACTION_UNITS, keys.AU_INVALID, (n, num_action_units)).astype(np.int64),
    )


# --------------------------------------------------------------------------------------------------
# Windows of feature clips.


# --------------------------------------------------------------------------------------------------
# The joined export.


def assemble_export(sequence_model, backbone, spec):
    """The end-to-end model of ``spec``: the ``backbone`` network itself, then ``sequence_model``'s temporal head.

    Args:
        sequence_model: The trained :func:`trainer.model.build.build_sequence_model` model.
        backbone: The per-frame network the features were made with (``--features_from``'s, perhaps cut).
        spec: The end-to-end :class:`trainer.model.spec.ModelSpec`.

    Raises:
        TrainingError: a weighted layer of the end-to-end model got no weights (a bug, never expected).
    """
    from trainer.model.build import build_model
    from trainer.model.spec import PER_FRAME_LAYER

    model = build_model(dataclasses.replace(spec, backbone_weights=None), cnn=backbone)
    copied = set()
    for layer in sequence_model.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied.add(layer.name)
    expected = {layer.name for layer in model.layers if layer.weights and layer.name != PER_FRAME_LAYER}
    if copied != expected:
        raise TrainingError(f"the exported model's layers {sorted(expected)} do not match the sequence model's "
                            f"{sorted(copied)}")
    return model
