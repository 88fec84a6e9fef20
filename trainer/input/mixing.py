"""What the training stream holds: its bucket mix, its frame class mix, and the weights that balance frames.

These measure the stream :func:`trainer.input.pipeline.make_train_dataset` builds with the same arguments (one
pipeline, no input context), reading only labels and bucket indices: no JPEG is decoded.

* :func:`empirical_bucket_mix` -- the share of each bucket among the first clips (logged at start-up next
  to the requested weights);
* :func:`empirical_frame_mix` / :func:`frame_mix_report` -- the expression class mix of the frames the loss
  sees in the first batches, next to the mix the buckets are sampled at (:func:`frame_mix_targets`);
* :func:`balanced_frame_weights` -- per-class weights that give the training frames that mix
  (``--balance_frames``): a clip's bucket is its majority class, so its other frames skew the mix.

Example::

    from trainer.input import mixing as stream_mix
    weights = stream_mix.balanced_frame_weights("/tmp/converted", info, task="expr", seq_len=16,
                                                sampling="balanced")
"""

from __future__ import annotations

import logging

import numpy as np

from tfrecords_schema import HEAD_EXPRESSION, SPLIT_TRAIN, TASK_EXPRESSION, DatasetInfo, buckets, make_clip_parser
from trainer.common.filesystems import register_filesystems
from trainer.input import pipeline as trainer_input
from trainer.input import records
from trainer.input import sampling as sampling_lib

logger = logging.getLogger(__name__)

# Clips of the training stream that estimate its frame class mix for balanced_frame_weights.
BALANCE_FRAMES_CLIPS = 2048


def empirical_bucket_mix(data_dir: str, info: DatasetInfo, *, task: str, sampling: str = "balanced",
                         num_clips: int, seed: int = 0,
                         skipped: records.SkippedRecords | None = None) -> dict[str, float]:
    """Share of each sampled bucket among the first ``num_clips`` clips of the training stream.

    The stream is the one :func:`trainer.input.pipeline.make_train_dataset` batches with the same ``seed`` (a single pipeline, no
    input context): the first ``num_clips`` clips are its first ``num_clips // batch_size`` batches. Only
    the bucket index of each serialized clip is parsed (no image is decoded).

    Args:
        data_dir: Conversion output.
        info: Its dataset info.
        task: The training task (decides which buckets are sampled, see :mod:`trainer.input.sampling`).
        sampling: One of :data:`trainer.input.sampling.SAMPLING_MODES`.
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
    shard_sets = records.train_shard_sets(data_dir, info, weights, None, skipped)
    clips = records.explicitly_seeded(lambda worker: records.mixed_train_records(
        shard_sets, weights, counts, sampling_mode, seed=seed, input_context=None, skipped=skipped, worker=worker))
    parse = make_clip_parser(info.num_action_units)
    indices = clips.take(num_clips).map(lambda serialized: parse(serialized)["bucket"], num_parallel_calls=trainer_input.AUTOTUNE)
    seen = np.zeros(len(info.bucket_names), np.int64)
    for batch in indices.batch(1024).with_options(trainer_input.dataset_options(None)):
        seen += np.bincount(batch.numpy(), minlength=len(seen))[: len(seen)]
    return {b: float(seen[info.bucket_names.index(b)]) / num_clips for b in names}


def _class_frames_by_bucket(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, batch_size: int,
                            num_batches: int, sampling: str, class_weights: np.ndarray | None, seed: int,
                            skipped: records.SkippedRecords | None) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, clips)`` of the first ``num_batches`` training batches, per bucket.

    ``frames[b, c]``: loss weight of the expression frames of class ``c`` in the clips of bucket ``b``;
    ``clips[b]``: clips of bucket ``b``. The stream is :func:`trainer.input.pipeline.make_train_dataset`'s with the same
    arguments (one pipeline), labels only: no JPEG is decoded.
    """
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    heads = trainer_input.check_heads_and_sizes(info, task, seq_len, batch_size)
    if HEAD_EXPRESSION not in heads:
        raise ValueError(f"task {task!r} has no expression head: there is no frame class mix to measure")
    register_filesystems(data_dir)
    records.split_info(info, SPLIT_TRAIN)
    weights = sampling_lib.bucket_weights(info, sampling_mode, task)
    bucket_mix = (weights, sampling_lib.bucket_clip_counts(info))
    shard_sets = records.train_shard_sets(data_dir, info, weights, None, skipped)
    class_weights = trainer_input.expression_weights(info, heads, "none", class_weights)
    labels = records.explicitly_seeded(lambda worker: trainer_input.train_batches(
        info, shard_sets, heads=heads, seq_len=seq_len, batch_size=batch_size, bucket_mix=bucket_mix,
        sampling_mode=sampling_mode, class_weights=class_weights, seed=seed, augment=False, xla_augment=False,
        decode=False, input_context=None, skipped=skipped, worker=worker))
    num_classes, num_buckets = len(info.expression_names), len(info.bucket_names) or 1
    frames, clips = np.zeros((num_buckets, num_classes)), np.zeros(num_buckets)
    for targets, weights_, bucket in labels.take(num_batches).with_options(trainer_input.dataset_options(None)):
        index = np.repeat(bucket.numpy(), seq_len) * num_classes + targets[HEAD_EXPRESSION].numpy().ravel()
        frames += np.bincount(index, weights=weights_[HEAD_EXPRESSION].numpy().ravel(),
                              minlength=frames.size).reshape(frames.shape)
        clips += np.bincount(bucket.numpy(), minlength=num_buckets)
    return frames, clips


def empirical_frame_mix(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, batch_size: int,
                        num_batches: int, sampling: str = "balanced", class_weights: np.ndarray | None = None,
                        seed: int = 0, skipped: records.SkippedRecords | None = None) -> dict[str, float]:
    """Expression class mix of the training frames in the first ``num_batches`` batches of the training stream.

    Counts what the loss sees: every frame with a non-zero expression weight, weighted by that weight
    (with ``class_weights`` the shares are the weighted ones). The stream is :func:`trainer.input.pipeline.make_train_dataset`'s
    with the same arguments (one pipeline); no JPEG is decoded.

    Returns:
        ``{class name: share}`` over every expression class (sums to 1; all 0 if no frame is weighted).

    Raises:
        ValueError: the task has no expression head, or any :func:`trainer.input.pipeline.make_train_dataset` error.
    """
    frames, _ = _class_frames_by_bucket(data_dir, info, task=task, seq_len=seq_len, batch_size=batch_size,
                                        num_batches=num_batches, sampling=sampling, class_weights=class_weights,
                                        seed=seed, skipped=skipped)
    totals = frames.sum(axis=0)
    shares = totals / totals.sum() if totals.sum() > 0 else totals
    return {name: float(share) for name, share in zip(info.expression_names, shares)}


def frame_mix_targets(info: DatasetInfo, sampling: str, task: str) -> dict[str, float]:
    """The frame class mix that clip-bucket sampling aims at: each expression class's bucket weight.

    Defined for expression-bucketed data (``bucket_by expression``): class ``c`` should make up the share
    of the training frames that its bucket has among the sampled clips. Classes without a sampled bucket
    get target 0 here (:func:`balanced_frame_weights` leaves their frames as they come).

    Raises:
        ValueError: the data is not bucketed by expression.
    """
    if buckets.BUCKETING_TASK.get(info.bucket_by) != TASK_EXPRESSION:
        raise ValueError(f"balancing the frame class mix needs expression buckets (bucket_by expression); "
                         f"this data is bucketed by {info.bucket_by!r}")
    requested = sampling_lib.bucket_weights(info, sampling, task)
    classes = {name: requested.get(name, 0.0) for name in info.expression_names}
    total = sum(classes.values())
    return {name: w / total for name, w in classes.items()} if total > 0 else classes


def balanced_frame_weights(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, sampling: str,
                           seed: int = 0, num_clips: int = BALANCE_FRAMES_CLIPS,
                           skipped: records.SkippedRecords | None = None) -> np.ndarray:
    """Per-class expression weights that give the training frames the class mix their buckets are sampled at.

    A clip's bucket is its *majority* class, so a bucket's clips also hold frames of other classes, and
    sampling buckets at ``w_b`` (e.g. 1/8 each under ``balanced``) gives a frame class mix ``q_c`` that
    differs from it. The weight ``w_c / q_c`` per class makes the loss see the requested mix; ``q_c`` is
    estimated from the first ``num_clips`` clips of the training stream (labels only, deterministic for the
    seed): each bucket's class frames per clip, mixed at the buckets' requested weights. Classes with frames but no sampled bucket keep weight 1 (their share is left as it comes; the
    bucketed classes share the rest); a bucketed class not seen in the sample gets 1, with a warning. The
    weights average to 1 over the measured frames, so the loss keeps its scale.

    Returns:
        float32 ``[classes]``.

    Raises:
        ValueError: not expression-bucketed data, or a task without the expression head.
    """
    targets = frame_mix_targets(info, sampling, task)
    batch = 64
    frames, clips = _class_frames_by_bucket(data_dir, info, task=task, seq_len=seq_len, batch_size=batch,
                                            num_batches=max(1, num_clips // batch), sampling=sampling,
                                            class_weights=None, seed=seed, skipped=skipped)
    # The expected mix: each bucket's mean frames per clip at its requested weight (not at the count the
    # sample happened to draw, which would add the draws' noise to the weights).
    requested = sampling_lib.bucket_weights(info, sampling, task)
    per_clip = frames / np.maximum(clips, 1)[:, None]
    expected = sum(w * per_clip[info.bucket_names.index(b) if info.bucket_names else 0] for b, w in requested.items())
    names = info.expression_names
    q = expected / expected.sum() if expected.sum() > 0 else expected
    goal = np.array([targets[n] for n in names], np.float64)
    unbucketed = (goal == 0) & (q > 0)
    goal[~unbucketed] *= 1.0 - q[unbucketed].sum()  # the unbucketed classes keep their own share
    goal[unbucketed] = q[unbucketed]
    weights = np.ones(len(names), np.float64)
    seen = q > 0
    weights[seen] = goal[seen] / q[seen]
    missing = [n for n, g, s in zip(names, goal, seen) if g > 0 and not s]
    if missing:
        logger.warning("balance_frames: classes %s not seen in %d clips of the stream: weight 1", missing, num_clips)
    weights /= float((weights * q).sum()) if seen.any() else 1.0
    logger.info("balance_frames: measured frame class mix %s -> class weights %s",
                {n: round(float(v), 4) for n, v in zip(names, q)},
                {n: round(float(v), 4) for n, v in zip(names, weights)})
    return weights.astype(np.float32)


def frame_mix_report(data_dir: str, info: DatasetInfo, *, task: str, sampling: str, seq_len: int, batch_size: int,
                     num_batches: int, seed: int, class_weights: np.ndarray | None = None,
                     skipped: records.SkippedRecords | None = None) -> dict:
    """The frame class mix of the first training batches next to the mix their buckets are sampled at.

    Returns:
        ``{"batches": n, "empirical": {class: share}}`` (:func:`empirical_frame_mix`, weighted by
        ``class_weights``), plus for expression-bucketed data ``"requested"`` (:func:`frame_mix_targets`),
        ``"max_abs_deviation"`` and ``"max_deviation_class"``.
    """
    empirical = empirical_frame_mix(data_dir, info, task=task, seq_len=seq_len, batch_size=batch_size,
                                    num_batches=num_batches, sampling=sampling, class_weights=class_weights,
                                    seed=seed, skipped=skipped)
    report = {"batches": num_batches, "empirical": {c: round(v, 4) for c, v in empirical.items()}}
    if buckets.BUCKETING_TASK.get(info.bucket_by) == TASK_EXPRESSION:
        requested = frame_mix_targets(info, sampling, task)
        worst = max(requested, key=lambda c: abs(empirical[c] - requested[c]))
        report.update({"requested": {c: round(v, 4) for c, v in requested.items()},
                       "max_abs_deviation": round(abs(empirical[worst] - requested[worst]), 4),
                       "max_deviation_class": worst})
    return report
