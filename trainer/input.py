"""The trainer's tf.data input pipeline: rebalanced training clips and whole-split evaluation windows.

One linear function per mode, both reading the shards listed in ``dataset_info.json``
(:mod:`trainer.records`) with the schema's parser (:func:`tfrecords_schema.make_clip_parser`):

* :func:`make_train_dataset` -- per bucket shard set: shuffle files, interleave parallel reads, shuffle
  the *serialized* records (never decoded ones), repeat; mix the buckets with
  ``tf.data.Dataset.sample_from_datasets`` by :func:`trainer.sampling.bucket_weights` (``downsample``:
  ``choose_from_datasets`` with exactly the minority count per bucket in every epoch); parse, pick a
  random sub-clip of ``seq_len`` frames (random offset, stride 1 or 2 when the clip is long enough, padding
  when it is short), decode the picked JPEGs only, draw the clip's augmentation (flip, brightness/contrast,
  crop jitter; the same for every frame of a clip), build targets and weights, batch, then augment and scale
  the batch to float32 in one XLA-compiled function (:mod:`trainer.augment`), prefetch. Infinite, fixed
  shapes.
* :func:`make_eval_dataset` -- every shard of the split in a fixed order, every clip cut into consecutive
  windows of ``seq_len`` frames (the last padded with weight 0): every frame of the split exactly once.

Training elements are ``(images, targets, weights)``; evaluation elements add ``ids``. ``images`` is
float32 ``[B, T, S, S, 3]`` in [0, 1]; ``targets`` and ``weights`` are dicts keyed by the task's heads
(:data:`tfrecords_schema.HEADS`). Weights: :func:`trainer.frames.targets_and_weights` -- training weighs
invalid labels, padding and frames without a face 0; evaluation weighs only invalid labels and padding 0,
so every labelled frame is scored.

Empty shard files are skipped; under multi-worker training the non-empty files of every shard set are dealt
round-robin over the input pipelines; bad shards fail naming the file, or with a
:class:`trainer.records.SkippedRecords` counter are skipped and counted (see :mod:`trainer.records`).

Randomness is seeded (``seed``): two pipelines built with the same arguments yield the same elements.

Example::

    from tfrecords_schema import read_dataset_info
    from trainer import input as trainer_input
    info = read_dataset_info("/tmp/converted")
    ds = trainer_input.make_train_dataset("/tmp/converted", info, task="expr", seq_len=16, batch_size=8)
    images, targets, weights = next(iter(ds))
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfrecords_schema import (
    HEAD_EXPRESSION,
    HEAD_OF_TASK,
    SPLIT_TRAIN,
    SPLIT_VALIDATION,
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_MULTI,
    TASKS,
    DatasetInfo,
    make_clip_parser,
)
from trainer import augment as augment_lib
from trainer import frames as frames_lib
from trainer import records
from trainer import sampling as sampling_lib
from trainer.filesystems import register_filesystems

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
TASK_CHOICES = (*TASKS, TASK_MULTI)


# --------------------------------------------------------------------------------------------------
# Tasks and heads.


def heads_for_task(info: DatasetInfo, task: str) -> tuple[str, ...]:
    """The heads trained for ``task`` (``expr``, ``va``, ``au``, or ``multi`` = every task of the data).

    Raises:
        ValueError: unknown task, or the data has no labels for it (the message lists what it has).
    """
    sampling_lib.check_choice(task, TASK_CHOICES, "task")
    available = [t for t in TASKS if _has_labels(info, t)]
    if task == TASK_MULTI:
        if not available:
            raise ValueError(f"the data has labels for no task (tasks in dataset_info.json: {info.tasks})")
        return tuple(HEAD_OF_TASK[t] for t in available)
    if task not in available:
        raise ValueError(
            f"the data has no labels for task {task!r}; it has labels for: {', '.join(available) or 'nothing'}"
        )
    return (HEAD_OF_TASK[task],)


def _has_labels(info: DatasetInfo, task: str) -> bool:
    if task not in info.tasks:
        return False
    if task == TASK_EXPRESSION:
        return bool(info.expression_names)
    if task == TASK_ACTION_UNITS:
        return info.num_action_units > 0
    return True


def _check_common(info: DatasetInfo, task: str, seq_len: int, batch_size: int) -> tuple[str, ...]:
    heads = heads_for_task(info, task)
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    return heads


def _options(input_context) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if input_context is not None:
        # Files are already sharded per input pipeline here; no second (DATA) sharding.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _train_bucket_mix(info: DatasetInfo, sampling_mode: str, task: str) -> tuple[dict[str, float], dict[str, int]]:
    """``(weights, counts)`` of the train buckets, logged (empty buckets with a warning)."""
    counts = sampling_lib.bucket_clip_counts(info)
    for bucket, n in counts.items():
        if n == 0:
            logger.warning("train bucket %r has no clips: skipped", bucket)
    weights = sampling_lib.bucket_weights(info, sampling_mode, task)  # raises if no bucket is left
    logger.info("sampling %s: requested bucket weights %s (clips per bucket %s)%s", sampling_mode,
                {b: round(w, 4) for b, w in weights.items()}, {b: counts[b] for b in weights},
                f"; {sampling_lib.clips_per_epoch(info, sampling_mode, task)} clips per epoch"
                if sampling_mode == "downsample" else "")
    return weights, counts


def _expression_loss_weights(info: DatasetInfo, heads: tuple[str, ...], loss_weighting: str) -> np.ndarray | None:
    if loss_weighting == "none" or HEAD_EXPRESSION not in heads:
        return None
    weights = sampling_lib.class_loss_weights(info, HEAD_EXPRESSION, loss_weighting)
    logger.info("expression loss weights (%s): %s", loss_weighting,
                {n: round(float(w), 4) for n, w in zip(info.expression_names, weights)})
    return weights


# --------------------------------------------------------------------------------------------------
# The two pipelines.


def make_train_dataset(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, batch_size: int,
                       sampling: str = "balanced", loss_weighting: str = "none", seed: int = 0,
                       augment: bool = True, xla_augment: bool = True,
                       input_context: tf.distribute.InputContext | None = None,
                       skipped: records.SkippedRecords | None = None) -> tf.data.Dataset:
    """The infinite, rebalanced training stream of ``(images, targets, weights)`` batches.

    Args:
        data_dir: Conversion output (local, ``gs://`` or ``s3://``).
        info: Its dataset info.
        task: ``expr``, ``va``, ``au`` or ``multi`` (the heads: :func:`heads_for_task`).
        seq_len: Frames per sequence ``T``.
        batch_size: Sequences per element of *this* dataset. Under
            ``distribute_datasets_from_function`` pass ``input_context.get_per_replica_batch_size(global)``.
        sampling: Bucket mix, one of :data:`trainer.sampling.SAMPLING_MODES`. For ``downsample`` every
            block of ``trainer.sampling.clips_per_epoch(info, "downsample", task)`` clips (one epoch: the
            caller's steps per epoch x batch size) holds exactly the minority count from every bucket. With
            ``task`` equal to the bucketing task (``expr`` over expression buckets), the bucket of clips
            without that label is not sampled (see :mod:`trainer.sampling`).
        loss_weighting: Expression class weights in ``weights``, one of :data:`trainer.sampling.LOSS_WEIGHTINGS`.
        seed: Seed of file/record shuffles, bucket draws, frame picks and augmentation.
        augment: Apply flip / brightness / contrast / crop jitter.
        xla_augment: XLA-compile the batch augmentation (:func:`trainer.augment.batch_augmenter`).
        input_context: Multi-worker input context: this pipeline reads its share of every bucket's files.
        skipped: Skip corrupt records and count them in this counter (None: a corrupt shard fails).

    Raises:
        ValueError: unknown option (the message lists the valid values), task without labels, every bucket
            empty, fewer shards than input pipelines.
        DatasetInfoError: no train split.
        CorruptShardError: a listed shard is missing or of the wrong size (unless ``skipped`` is given).
    """
    # 1. Options, heads, bucket mix and loss weights.
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    sampling_lib.check_choice(loss_weighting, sampling_lib.LOSS_WEIGHTINGS, "loss weighting")
    heads = _check_common(info, task, seq_len, batch_size)
    register_filesystems(data_dir)
    records.split_info(info, SPLIT_TRAIN)
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id
    weights, counts = _train_bucket_mix(info, sampling_mode, task)
    expression_weights = _expression_loss_weights(info, heads, loss_weighting)

    # 2. Serialized clips, buckets mixed.
    clips = records.mixed_train_records(data_dir, info, weights, counts, sampling_mode, seed=seed,
                                        input_context=input_context, skipped=skipped)

    # 3. Per clip: parse, pick frames, decode (uint8 until batched), draw its augmentation, label.
    parse = make_clip_parser(info.num_action_units)
    num_classes = len(info.expression_names)
    crop_size = info.crop_size
    clip_seeds = tf.data.Dataset.random(seed=records.sub_seed(seed, "clips", pipeline_id)).batch(2)

    def to_clip(serialized, clip_seed):
        window_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(clip_seed, 2))
        window = frames_lib.random_window(parse(serialized), window_seed, seq_len)
        frames = frames_lib.decode_frames(window, crop_size, seq_len)
        targets, weights_ = frames_lib.targets_and_weights(window, heads, num_classes, expression_weights,
                                                           require_face=True)
        return frames, window["num_valid"], augment_lib.augment_params(augment_seed, crop_size), targets, weights_

    # 4. Per batch: augment and scale to float32.
    augment_batch = augment_lib.batch_augmenter(xla_augment) if augment else None

    def to_float_batch(frames, num_valid, augment_params, targets, weights_):
        images = augment_batch(frames, num_valid, augment_params) if augment else augment_lib.to_float(frames)
        return images, targets, weights_

    dataset = tf.data.Dataset.zip((clips, clip_seeds))
    dataset = dataset.map(to_clip, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(to_float_batch, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(_options(input_context))


def make_eval_dataset(data_dir: str, info: DatasetInfo, *, split: str = SPLIT_VALIDATION, task: str,
                      seq_len: int, batch_size: int, input_context=None,
                      skipped: records.SkippedRecords | None = None) -> tf.data.Dataset:
    """The finite evaluation stream: every frame of every clip of ``split`` exactly once, in a fixed order.

    Each clip is cut into consecutive windows of ``seq_len`` frames (the last padded, weight 0); the last
    batch may be smaller. No augmentation, no loss weighting; frames without a face keep their weight (see
    :func:`trainer.frames.targets_and_weights`).

    Returns:
        Elements ``(images, targets, weights, ids)``; ``ids`` is ``{"example_id": string [B], "media_id":
        string [B], "frame_index": int64 [B, T] (-1 on padding), "has_face": bool [B, T]}``, so predictions
        can be traced back to videos, clips and frames.

    Raises:
        DatasetInfoError: the split does not exist.
        ValueError: unknown task / task without labels, fewer shards than input pipelines, no records.
        CorruptShardError: a listed shard is missing or of the wrong size (unless ``skipped`` is given).
    """
    # 1. Options, heads, this pipeline's shard files.
    heads = _check_common(info, task, seq_len, batch_size)
    register_filesystems(data_dir)
    split_info = records.split_info(info, split)
    paths, counts = records.shard_files(data_dir, split_info.shards, f"split {split!r}", input_context, skipped)
    if not paths:
        raise ValueError(f"split {split!r} has no shard holding records: nothing to evaluate")
    parse = make_clip_parser(info.num_action_units)
    num_classes = len(info.expression_names)
    crop_size = info.crop_size

    # 2. Per window: decode (uint8 until batched), label, keep the ids.
    def to_example(window):
        frames = frames_lib.decode_frames(window, crop_size, seq_len)
        targets, weights = frames_lib.targets_and_weights(window, heads, num_classes, None, require_face=False)
        ids = {"example_id": window["example_id"], "media_id": window["media_id"],
               "frame_index": window["frame_index"], "has_face": window["has_face"]}
        return frames, targets, weights, ids

    def to_float_batch(frames, targets, weights, ids):
        return augment_lib.to_float(frames), targets, weights, ids

    # 3. Records in shard order -> windows -> batches.
    dataset = records.read_records(paths, counts, skipped=skipped, shuffle_seed=None)
    dataset = dataset.map(lambda serialized: frames_lib.eval_windows(parse(serialized), seq_len),
                          num_parallel_calls=AUTOTUNE)
    dataset = dataset.unbatch()
    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(to_float_batch, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(_options(input_context))


def empirical_bucket_mix(data_dir: str, info: DatasetInfo, *, task: str, sampling: str = "balanced",
                         num_clips: int, seed: int = 0,
                         skipped: records.SkippedRecords | None = None) -> dict[str, float]:
    """Share of each sampled bucket among the first ``num_clips`` clips of the training stream.

    The stream is the one :func:`make_train_dataset` batches with the same ``seed`` (a single pipeline, no
    input context): the first ``num_clips`` clips are its first ``num_clips // batch_size`` batches. Only
    the bucket index of each serialized clip is parsed (no image is decoded).

    Args:
        data_dir: Conversion output.
        info: Its dataset info.
        task: The training task (decides which buckets are sampled, see :mod:`trainer.sampling`).
        sampling: One of :data:`trainer.sampling.SAMPLING_MODES`.
        num_clips: Clips to count (>= 1).
        seed: The training stream's seed.
        skipped: Skip corrupt records and count them in this counter (None: fail on them).

    Returns:
        ``{bucket: fraction of the clips}`` for every sampled bucket (the requested weights' keys).

    Raises:
        ValueError: unknown sampling mode, ``num_clips < 1``, no bucket to sample.
    """
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    register_filesystems(data_dir)
    records.split_info(info, SPLIT_TRAIN)
    counts = sampling_lib.bucket_clip_counts(info)
    weights = sampling_lib.bucket_weights(info, sampling_mode, task)
    names = list(weights)
    if len(names) == 1:
        return {names[0]: 1.0}
    clips = records.mixed_train_records(data_dir, info, weights, counts, sampling_mode, seed=seed, input_context=None,
                                        skipped=skipped)
    parse = make_clip_parser(info.num_action_units)
    indices = clips.take(num_clips).map(lambda serialized: parse(serialized)["bucket"], num_parallel_calls=AUTOTUNE)
    seen = np.zeros(len(info.bucket_names), np.int64)
    for batch in indices.batch(1024).with_options(_options(None)):
        seen += np.bincount(batch.numpy(), minlength=len(seen))[: len(seen)]
    return {b: float(seen[info.bucket_names.index(b)]) / num_clips for b in names}
