"""The sequence stage's data: per-frame CNN features computed once, their tf.data pipelines, the joined export.

* :func:`extract_features` runs the frozen CNN of the ``--init_from`` model over every clip of the splits a
  job reads, once, and writes one feature record per clip (:mod:`tfrecords_schema.features`) into
  ``JOB/features/``: one feature shard per clip shard, same relative path, same bucket, same records in
  the same order, and last the index ``features_info.json``. A later run (a resume, a rerun) reuses the
  folder when its index names the same data and the same CNN (their fingerprints), else recomputes it.
  The features come from the crops exactly as evaluation feeds them (no augmentation), through the
  model's own input layers, so the CNN sees what it sees in the exported model.
* :func:`make_feature_train_dataset` is the training stream on features: the clip pipeline's bucket
  streams and rebalancing (:func:`trainer.records.mixed_train_records` over the feature shards, which
  keep their buckets), a random window of ``seq_len`` frames per clip (the same draw as
  :func:`trainer.frames.random_window`), targets and weights as in training
  (:func:`trainer.frames.targets_and_weights`). No augmentation: the features are fixed, the price of
  computing them once.
* :func:`make_feature_eval_dataset` cuts every clip into consecutive windows like the image evaluation, so
  the recurrent model scored on features gives the exported model's score on images.
* :func:`assemble_export` puts the CNN and the trained recurrent stack into one end-to-end model
  (:func:`trainer.model.build_model`), which is what the job exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, SPLIT_TRAIN, TASK_MULTI, keys
from tfrecords_schema.dataset_info import DatasetInfo, ShardInfo, join_path
from tfrecords_schema.features import (
    FeatureClip,
    FeaturesInfo,
    encode_feature_clip,
    make_feature_parser,
    read_features_info,
    write_features_info,
)
from trainer import frames as frames_lib
from trainer import records
from trainer import sampling as sampling_lib
from trainer.errors import TrainingError

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
            per-frame features ``[B, T, D]`` (the ``--init_from`` model cut after its CNN).
        features_dir: Where the feature shards and ``features_info.json`` go.
        dataset_fingerprint: Fingerprint of the clip data (:func:`trainer.fingerprint.dataset_fingerprint`).
        backbone_sha256: SHA-256 of the model file the extractor comes from.
        init_from: The ``--init_from`` folder (recorded in the index).
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
            self._function = tf.function(lambda x: self._extractor(x, training=False), input_signature=[spec])
        return self._function(images)


def _example_ids(path: str, skipped) -> list[bytes]:
    """The example ids of a clip shard, in order (only the context is parsed; no image is decoded)."""
    spec = {keys.EXAMPLE_ID: tf.io.FixedLenFeature([], tf.string)}
    records_ = tf.data.TFRecordDataset(path)
    if skipped is not None:  # the evaluation pipeline counts what a corrupt shard loses
        records_ = records_.ignore_errors()
    ids = records_.map(lambda r: tf.io.parse_single_sequence_example(r, context_features=spec)[0][keys.EXAMPLE_ID],
                       num_parallel_calls=AUTOTUNE)
    return [i for batch in ids.batch(1024) for i in batch.numpy().tolist()]


def _extract_split(data_dir: str, info: DatasetInfo, split: str, predict, features_dir: str,
                   skipped) -> list[ShardInfo]:
    """Writes the feature shards of one split (each atomically); returns their ShardInfos in the split's order.

    One evaluation pipeline reads the whole split (it interleaves the shards, keeping each shard's record
    order); each clip goes to the feature shard of the clip shard that holds its id.
    """
    from tfrecords_schema.atomic import incomplete_file
    from trainer.input import heads_for_task, make_eval_dataset

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


def _gather(clip: dict, indices: tf.Tensor, n: tf.Tensor) -> dict:
    """The frames at ``indices`` (any shape) of a parsed feature clip; indices past its end are padding."""
    valid = indices < n
    safe = tf.minimum(indices, n - 1)
    window = {
        "features": tf.where(valid[..., None], tf.gather(clip["features"], safe), 0.0),
        "valid": valid,
        "frame_index": tf.where(valid, tf.gather(clip["frame_index"], safe), -1),
        "has_face": tf.logical_and(valid, tf.gather(clip["has_face"], safe)),
        "expression": tf.gather(clip["expression"], safe),
        "valence_arousal": tf.gather(clip["valence_arousal"], safe),
    }
    if clip["action_units"].shape[-1]:
        window["action_units"] = tf.gather(clip["action_units"], safe)
    return window


def _labelled(window: dict) -> dict:
    """The window as :func:`trainer.frames.targets_and_weights` takes it (valid frames counted per window)."""
    return {**window, "num_valid": tf.reduce_sum(tf.cast(window["valid"], tf.int32), axis=-1)}


def random_feature_window(clip: dict, seed: tf.Tensor, seq_len: int) -> dict:
    """``seq_len`` frames of a feature clip, drawn as :func:`trainer.frames.random_window` draws them."""
    n = tf.shape(clip["features"])[0]
    return _gather(clip, frames_lib.random_window_indices(n, seed, seq_len), n)


def _options(input_context) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if input_context is not None:  # files are sharded per input pipeline already
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def make_feature_train_dataset(features_dir: str, index: FeaturesInfo, *, task: str, seq_len: int, batch_size: int,
                               sampling: str = "balanced", loss_weighting: str = "none", seed: int = 0,
                               input_context=None, skipped: records.SkippedRecords | None = None) -> tf.data.Dataset:
    """The infinite, rebalanced training stream of ``(features [B, T, D], targets, weights)`` batches.

    Same bucket mix, sampling modes, loss weighting and seeding rules as
    :func:`trainer.input.make_train_dataset`, on the feature shards.
    """
    from trainer.input import heads_for_task

    info = index.dataset
    heads = heads_for_task(info, task)
    records.split_info(info, SPLIT_TRAIN)
    weights = sampling_lib.bucket_weights(info, sampling, task)
    counts = sampling_lib.bucket_clip_counts(info)
    expression_weights = None
    if loss_weighting != "none" and HEAD_EXPRESSION in heads:
        expression_weights = sampling_lib.class_loss_weights(info, HEAD_EXPRESSION, loss_weighting)
    shard_sets = records.train_shard_sets(features_dir, info, weights, input_context, skipped)  # checked now
    parse = make_feature_parser(index.feature_dim, info.num_action_units)
    num_classes = len(info.expression_names)
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id

    def to_window(serialized, clip_seed):
        window = random_feature_window(parse(serialized), clip_seed, seq_len)
        targets, frame_weights = frames_lib.targets_and_weights(_labelled(window), heads, num_classes,
                                                                expression_weights, require_face=True)
        return window["features"], targets, frame_weights

    def stream(worker):  # built without the global seed, as the clip stream (records.explicitly_seeded)
        clips = records.mixed_train_records(shard_sets, weights, counts, sampling, seed=seed,
                                            input_context=input_context, skipped=skipped, worker=worker)
        clip_seeds = tf.data.Dataset.random(seed=records.stream_seed(seed, worker, "clips", pipeline_id)).batch(2)
        windows = tf.data.Dataset.zip((clips, clip_seeds)).map(to_window, num_parallel_calls=AUTOTUNE)
        return windows.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    dataset = records.explicitly_seeded(stream)
    return dataset.prefetch(AUTOTUNE).with_options(_options(input_context))


def make_feature_eval_dataset(features_dir: str, index: FeaturesInfo, *, split: str, task: str, seq_len: int,
                              batch_size: int, skipped: records.SkippedRecords | None = None) -> tf.data.Dataset:
    """Every frame of ``split`` once, as ``(features, targets, weights, ids)`` in consecutive windows.

    The same windows, weights and ``ids`` as :func:`trainer.input.make_eval_dataset` gives for the
    clips (frames without a face scored, padding weighs 0).
    """
    from trainer.input import heads_for_task

    info = index.dataset
    heads = heads_for_task(info, task)
    split_info = records.split_info(info, split)
    paths, counts = records.shard_files(features_dir, split_info.shards, f"feature split {split!r}", None, skipped)
    if not paths:
        raise ValueError(f"feature split {split!r} has no shard holding records: nothing to evaluate")
    parse = make_feature_parser(index.feature_dim, info.num_action_units)
    num_classes = len(info.expression_names)

    def to_windows(serialized):
        clip = parse(serialized)
        n = tf.shape(clip["features"])[0]
        num_windows = (n + seq_len - 1) // seq_len
        windows = _gather(clip, tf.reshape(tf.range(num_windows * seq_len), [num_windows, seq_len]), n)
        windows["example_id"] = tf.fill([num_windows], clip["example_id"])
        windows["media_id"] = tf.fill([num_windows], clip["media_id"])
        return windows

    def to_example(window):
        targets, weights = frames_lib.targets_and_weights(_labelled(window), heads, num_classes, None,
                                                          require_face=False)
        ids = {k: window[k] for k in ("example_id", "media_id", "frame_index", "has_face")}
        return window["features"], targets, weights, ids

    dataset = records.read_records(paths, counts, skipped=skipped, shuffle_seed=None)
    dataset = dataset.map(to_windows, num_parallel_calls=AUTOTUNE).unbatch()
    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return dataset.prefetch(AUTOTUNE).with_options(_options(None))


# --------------------------------------------------------------------------------------------------
# The joined export.


def assemble_export(sequence_model, backbone, spec):
    """The end-to-end model of ``spec`` holding ``backbone``'s CNN weights and ``sequence_model``'s recurrent stack.

    Args:
        sequence_model: The trained :func:`trainer.model.build_sequence_model` model.
        backbone: The CNN (the ``--init_from`` model's per-frame CNN).
        spec: The end-to-end :class:`trainer.model.ModelSpec` (backbone options of ``--init_from``).

    Raises:
        TrainingError: a weighted layer of the end-to-end model got no weights (a bug, never expected).
    """
    from trainer.model import PER_FRAME_LAYER, build_model

    model = build_model(dataclasses.replace(spec, backbone_weights=None))
    model.get_layer(PER_FRAME_LAYER).layer.set_weights(backbone.get_weights())
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
