"""The sequence stage's input: windows of precomputed per-frame features, one linear function per mode.

* :func:`make_feature_train_dataset` is the training stream on features: the clip pipeline's bucket
  streams and rebalancing (:func:`trainer.input.records.mixed_train_records` over the feature shards, which
  keep their buckets), a random window of ``seq_len`` frames per clip (the same draw as
  :func:`trainer.input.frames.random_window`), targets and weights as in training
  (:func:`trainer.input.frames.targets_and_weights`). No augmentation: the features are fixed, the price of
  computing them once.
* :func:`make_feature_eval_dataset` cuts every clip into consecutive windows like the image evaluation, so
  the recurrent model scored on features gives the exported model's score on images.

The features themselves are computed by :mod:`trainer.training.features`.
"""

from __future__ import annotations

import tensorflow as tf

from tfrecords_schema import HEAD_EXPRESSION, SPLIT_TRAIN
from tfrecords_schema.features import FeaturesInfo, make_feature_parser
from trainer.input import frames as frames_lib
from trainer.input import records
from trainer.input import sampling as sampling_lib

AUTOTUNE = tf.data.AUTOTUNE


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
    """The window as :func:`trainer.input.frames.targets_and_weights` takes it (valid frames counted per window)."""
    return {**window, "num_valid": tf.reduce_sum(tf.cast(window["valid"], tf.int32), axis=-1)}


def random_feature_window(clip: dict, seed: tf.Tensor, seq_len: int) -> dict:
    """``seq_len`` frames of a feature clip, drawn as :func:`trainer.input.frames.random_window` draws them."""
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
    :func:`trainer.input.pipeline.make_train_dataset`, on the feature shards.
    """
    from trainer.input.pipeline import heads_for_task

    info = index.dataset
    heads = heads_for_task(info, task)
    records.split_info(info, SPLIT_TRAIN)
    draw = sampling_lib.bucket_draw(info, sampling, task)
    expression_weights = None
    if loss_weighting != "none" and HEAD_EXPRESSION in heads:
        expression_weights = sampling_lib.class_loss_weights(info, HEAD_EXPRESSION, loss_weighting)
    shard_sets = records.train_shard_sets(features_dir, info, draw, input_context, skipped)  # checked now
    parse = make_feature_parser(index.feature_dim, info.num_action_units)
    num_classes = len(info.expression_names)
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id

    @tf.autograph.experimental.do_not_convert
    def to_window(serialized, clip_seed):
        window = random_feature_window(parse(serialized), clip_seed, seq_len)
        targets, frame_weights = frames_lib.targets_and_weights(_labelled(window), heads, num_classes,
                                                                expression_weights, require_face=True)
        return window["features"], targets, frame_weights

    def stream(worker):  # built without the global seed, as the clip stream (records.explicitly_seeded)
        clips = records.mixed_train_records(shard_sets, draw, seed=seed, input_context=input_context,
                                            skipped=skipped, worker=worker)
        clip_seeds = tf.data.Dataset.random(seed=records.stream_seed(seed, worker, "clips", pipeline_id)).batch(2)
        windows = tf.data.Dataset.zip((clips, clip_seeds)).map(to_window, num_parallel_calls=AUTOTUNE)
        return windows.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    dataset = records.explicitly_seeded(stream)
    return dataset.prefetch(AUTOTUNE).with_options(_options(input_context))


def make_feature_eval_dataset(features_dir: str, index: FeaturesInfo, *, split: str, task: str, seq_len: int,
                              batch_size: int, skipped: records.SkippedRecords | None = None) -> tf.data.Dataset:
    """Every frame of ``split`` once, as ``(features, targets, weights, ids)`` in consecutive windows.

    The same windows, weights and ``ids`` as :func:`trainer.input.pipeline.make_eval_dataset` gives for the
    clips (frames without a face scored, padding weighs 0).
    """
    from trainer.input.pipeline import heads_for_task

    info = index.dataset
    heads = heads_for_task(info, task)
    split_info = records.split_info(info, split)
    paths, counts = records.shard_files(features_dir, split_info.shards, f"feature split {split!r}", None, skipped)
    if not paths:
        raise ValueError(f"feature split {split!r} has no shard holding records: nothing to evaluate")
    parse = make_feature_parser(index.feature_dim, info.num_action_units)
    num_classes = len(info.expression_names)

    @tf.autograph.experimental.do_not_convert
    def to_windows(serialized):
        clip = parse(serialized)
        n = tf.shape(clip["features"])[0]
        num_windows = (n + seq_len - 1) // seq_len
        windows = _gather(clip, tf.reshape(tf.range(num_windows * seq_len), [num_windows, seq_len]), n)
        windows["example_id"] = tf.fill([num_windows], clip["example_id"])
        windows["media_id"] = tf.fill([num_windows], clip["media_id"])
        return windows

    @tf.autograph.experimental.do_not_convert
    def to_example(window):
        window = _labelled(window)
        targets, weights = frames_lib.targets_and_weights(window, heads, num_classes, None, require_face=False)
        ids = {k: window[k] for k in ("example_id", "media_id", "frame_index", "has_face")}
        ids["labelled"] = frames_lib.labelled_frames(window, num_classes)
        return window["features"], targets, weights, ids

    dataset = records.read_records(paths, counts, skipped=skipped, shuffle_seed=None)
    dataset = dataset.map(to_windows, num_parallel_calls=AUTOTUNE).unbatch()
    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return dataset.prefetch(AUTOTUNE).with_options(_options(None))
