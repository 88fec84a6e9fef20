"""Rebalancing: bucket sampling weights and per-class loss weights from `dataset_info.json`.

The converter writes the train split as one shard set per rebalancing bucket (the clip's dominant
expression class, or a valence-arousal grid cell). The input pipeline reads each bucket as its own
repeated stream and mixes them with `tf.data.Dataset.sample_from_datasets` using the weights computed
here. Weights come from the clip counts of the buckets, i.e. what the train shards actually hold.

Sampling modes (probability that the next clip comes from bucket ``b`` with ``n_b`` clips):

* ``natural``: ``n_b / sum(n)`` -- the data as it is;
* ``balanced``: ``1 / B`` -- uniform over the non-empty buckets;
* ``sqrt``: ``sqrt(n_b) / sum(sqrt(n))`` -- every clip drawn with probability proportional to the
  inverse square root of its bucket's frequency; halfway (in log ratio) between natural and balanced;
* ``downsample``: the paper's way -- an epoch of :func:`clips_per_epoch` = ``min(n) * B`` clips holds
  exactly ``min(n)`` clips of every bucket. Realised with streams: the input pipeline picks the bucket of
  each clip from a shuffled sequence holding every bucket ``min(n)`` times per epoch
  (``choose_from_datasets``), and each bucket stream is a shuffled repeat of its clips, so the majority
  buckets give a different random subset every epoch and the minority bucket all its clips once per
  epoch -- dropping majority clips at random each epoch, without materialising anything. Its bucket
  weights are uniform. The exact per-epoch counts hold for one input pipeline whose epochs are
  ``steps_per_epoch x batch_size == clips_per_epoch`` clips (the trainer warns otherwise). Approximations:

  - multi-worker: each of ``W`` input pipelines reads its own share of every bucket's shard files and
    draws ``ceil(min(n) / W)`` clips of every bucket per block, so a global epoch holds
    ``W * ceil(min(n) / W)`` (>= ``min(n)``) clips of every bucket, and a worker's minority share repeats
    its own files (which may hold more or fewer than ``min(n) / W`` clips) rather than the whole bucket;
  - resume: the tf.data iterator is not checkpointed; a resumed run reseeds the stream with
    ``seed + step`` and starts a new block at the resume step, so the epoch interrupted by the kill holds
    the minority count per bucket only approximately (blocks line up with epochs again only when the
    kill fell on an epoch boundary).

Buckets without the bucketing label: the converter puts clips with no valid expression (``--bucket_by
expression``) or no valid valence/arousal (``va_grid``) in one more bucket (``no_expression`` / ``no_va``:
any bucket name that is not an expression class / a grid cell). When the task is exactly the bucketing
task (``expr`` over expression buckets, ``va`` over VA-grid buckets) those clips carry no target at all, so
that bucket is left out of the mix (pass ``task``); for other tasks (e.g. ``multi``) it is one more bucket.

Loss weightings (per expression class ``c`` with ``f_c`` valid train frames), normalised so that the
mean weight over the valid train frames is 1: ``none`` (all 1), ``inverse`` (``∝ 1 / f_c``), ``sqrt``
(``∝ 1 / sqrt(f_c)``). Classes with no train frames get weight 0 (they cannot occur in a target).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from tfrecords_schema import SPLIT_TRAIN, TASK_EXPRESSION, DatasetInfo, DatasetInfoError, buckets

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("natural", "balanced", "sqrt", "downsample")
LOSS_WEIGHTINGS = ("none", "inverse", "sqrt")

# Name used for the single stream of a train split written without buckets (``--bucket_by none``).
UNBUCKETED = "(all)"


def check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    """Returns ``value`` or raises ValueError listing the valid values."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")
    return value


def bucket_clip_counts(info: DatasetInfo) -> dict[str, int]:
    """``{bucket: clips}`` of the train split, counted from its shards (empty buckets included as 0).

    Buckets are listed in ``info.bucket_names`` order; shards without a bucket (an unbucketed train
    split) are reported under :data:`UNBUCKETED`.

    Raises:
        DatasetInfoError: the data has no train split.
    """
    if SPLIT_TRAIN not in info.splits:
        raise DatasetInfoError(
            f"the data has no {SPLIT_TRAIN!r} split (it has {sorted(info.splits)}); convert training data first"
        )
    split = info.splits[SPLIT_TRAIN]
    counts: dict[str, int] = {}
    for name in list(info.bucket_names) + list(split.bucket_clips):
        counts.setdefault(name, 0)
    for shard in split.shards:
        key = UNBUCKETED if shard.bucket is None else shard.bucket
        counts[key] = counts.get(key, 0) + shard.num_records
    if any(s.bucket is None for s in split.shards):
        # An unbucketed split: names listed in bucket_names have no shard sets of their own.
        counts = {k: v for k, v in counts.items() if k == UNBUCKETED or v > 0}
    return counts


def unlabelled_buckets(info: DatasetInfo) -> set[str]:
    """Buckets of clips without the bucketing label (``no_expression`` / ``no_va`` in converter outputs)."""
    unlabelled = buckets.UNLABELLED_BUCKET.get(info.bucket_by)
    return {unlabelled} & set(info.bucket_names) if unlabelled else set()


def sampled_bucket_counts(info: DatasetInfo, task: str | None = None) -> dict[str, int]:
    """``{bucket: clips}`` of the non-empty train buckets that ``task`` samples from (all when None)."""
    counts = {b: n for b, n in bucket_clip_counts(info).items() if n > 0}
    if task is not None and task == buckets.BUCKETING_TASK.get(info.bucket_by):
        dropped = sorted(unlabelled_buckets(info) & set(counts))
        if dropped:
            logger.info("task %s: buckets %s hold clips without %s labels and are not sampled",
                        task, dropped, task)
        counts = {b: n for b, n in counts.items() if b not in dropped}
    if not counts:
        raise ValueError(f"every train bucket is empty ({bucket_clip_counts(info)})"
                         + (f" or without {task} labels" if task else "") + ": there is nothing to train on")
    return counts


def bucket_weights(info: DatasetInfo, mode: str, task: str | None = None) -> dict[str, float]:
    """Sampling probability of every sampled train bucket for ``mode`` (sums to 1).

    Args:
        info: The dataset info.
        mode: One of :data:`SAMPLING_MODES`.
        task: The training task (``expr``, ``va``, ``au``, ``multi``); leaves out the bucket of clips
            without the bucketing label when the task is the bucketing task. None keeps every bucket.

    Raises:
        ValueError: unknown mode, or no bucket to sample from.
    """
    check_choice(mode, SAMPLING_MODES, "sampling mode")
    counts = sampled_bucket_counts(info, task)
    if mode == "natural":
        raw = {b: float(n) for b, n in counts.items()}
    elif mode == "sqrt":
        raw = {b: math.sqrt(n) for b, n in counts.items()}
    else:  # balanced, downsample
        raw = {b: 1.0 for b in counts}
    total = sum(raw.values())
    return {b: w / total for b, w in raw.items()}


def clips_per_epoch(info: DatasetInfo, mode: str, task: str | None = None) -> int | None:
    """Clips in one epoch for ``downsample`` (minority count x sampled buckets); None for other modes."""
    check_choice(mode, SAMPLING_MODES, "sampling mode")
    if mode != "downsample":
        return None
    counts = list(sampled_bucket_counts(info, task).values())
    return min(counts) * len(counts)


def _expression_frames(info: DatasetInfo) -> np.ndarray:
    names = info.expression_names
    if not names:
        raise ValueError(f"the data has no expression labels (tasks: {info.tasks}); use --loss_weighting none")
    split = info.splits.get(SPLIT_TRAIN)
    if split is None:
        raise DatasetInfoError(f"the data has no {SPLIT_TRAIN!r} split (it has {sorted(info.splits)})")
    frames = split.class_frames.get(TASK_EXPRESSION, split.class_frames.get("expression"))
    if frames is None:
        raise DatasetInfoError(
            f"dataset_info.json has no expression class histogram for the train split "
            f"(class_frames keys: {sorted(split.class_frames)})"
        )
    return np.array([float(frames.get(name, 0)) for name in names], np.float64)


def class_loss_weights(info: DatasetInfo, task_head: str, mode: str) -> np.ndarray:
    """Per-class loss weights of the expression head, float32 ``[num classes]``, mean 1 over train frames.

    Args:
        info: The dataset info (its train split's expression histogram is used).
        task_head: The head to weight; only ``"expression"`` has classes.
        mode: One of :data:`LOSS_WEIGHTINGS`; ``"none"`` gives ones.

    Raises:
        ValueError: unknown mode or head, or no expression labels in the data.
    """
    check_choice(mode, LOSS_WEIGHTINGS, "loss weighting")
    check_choice(task_head, ("expression",), "loss-weighted head")
    frames = _expression_frames(info)
    if mode == "none":
        return np.ones(len(frames), np.float32)
    present = frames > 0
    if not present.any():
        raise ValueError("the train split has no valid expression frames: cannot weight the classes")
    raw = np.zeros_like(frames)
    power = 1.0 if mode == "inverse" else 0.5
    raw[present] = frames[present] ** -power
    mean_over_frames = float((raw * frames).sum() / frames.sum())
    return (raw / mean_over_frames).astype(np.float32)
