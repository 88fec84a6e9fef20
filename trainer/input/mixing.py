"""What the training stream's frames hold, and the weights that balance their expression classes.

These measure the stream :func:`trainer.input.pipeline.make_train_dataset` builds with the same arguments (one
pipeline, no input context), reading only labels and bucket indices: no JPEG is decoded. (What the first
batches hold for every head, written to ``JOB/input_mix.json``: :mod:`trainer.input.input_mix`.)

* :func:`empirical_frame_mix` / :func:`frame_mix_report` -- the expression class mix of the frames the loss
  sees in the first batches, next to the clip class mix the draw aims at (:func:`frame_mix_targets`);
* :func:`balanced_frame_weights` -- per-class weights that give the training frames that mix
  (``--balance_frames``): a clip's class is its majority class, so its other frames skew the mix.

Example::

    from trainer.input import mixing as stream_mix
    weights = stream_mix.balanced_frame_weights("/tmp/converted", info, task="expr", seq_len=16,
                                                sampling="balanced")
"""

from __future__ import annotations

import logging

import numpy as np

from tfrecords_schema import HEAD_EXPRESSION, SPLIT_TRAIN, TASK_EXPRESSION, DatasetInfo
from tfrecords_schema.filesystems import register_filesystems
from trainer.input import pipeline as trainer_input
from trainer.input import records
from trainer.input import sampling as sampling_lib

logger = logging.getLogger(__name__)

# Clips of the training stream that estimate its frame class mix for balanced_frame_weights.
BALANCE_FRAMES_CLIPS = 2048


def _class_frames_by_bucket(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, batch_size: int,
                            num_batches: int, sampling: str, class_weights: np.ndarray | None, seed: int,
                            skipped: records.SkippedRecords | None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(frames, clips, batches)`` of the first ``num_batches`` training batches, per bucket.

    ``frames[b, c]``: loss weight of the expression frames of class ``c`` in the clips of bucket ``b``;
    ``clips[b]``: clips of bucket ``b``; ``batches``: the batches read (fewer than ``num_batches`` when
    ``skipped`` records left too little to read). The stream is :func:`trainer.input.pipeline.make_train_dataset`'s with the same
    arguments (one pipeline), labels only: no JPEG is decoded.
    """
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    heads = trainer_input.check_heads_and_sizes(info, task, seq_len, batch_size)
    if HEAD_EXPRESSION not in heads:
        raise ValueError(f"task {task!r} has no expression head: there is no frame class mix to measure")
    register_filesystems(data_dir)
    records.split_info(info, SPLIT_TRAIN)
    draw = sampling_lib.bucket_draw(info, sampling_mode, task)
    shard_sets = records.train_shard_sets(data_dir, info, draw, None, skipped)
    class_weights = trainer_input.expression_weights(info, heads, "none", class_weights)
    labels = records.explicitly_seeded(lambda worker: trainer_input.train_batches(
        info, shard_sets, heads=heads, seq_len=seq_len, batch_size=batch_size, draw=draw,
        class_weights=class_weights, seed=seed, decode=False, input_context=None,
        skipped=skipped, worker=worker))
    num_classes, num_buckets = len(info.expression_names), len(info.bucket_names) or 1
    frames, clips, batches = np.zeros((num_buckets, num_classes)), np.zeros(num_buckets), 0
    for targets, weights_, window in labels.take(num_batches).with_options(trainer_input.dataset_options(None)):
        batches += 1
        bucket = window["bucket"]
        index = np.repeat(bucket.numpy(), seq_len) * num_classes + targets[HEAD_EXPRESSION].numpy().ravel()
        frames += np.bincount(index, weights=weights_[HEAD_EXPRESSION].numpy().ravel(),
                              minlength=frames.size).reshape(frames.shape)
        clips += np.bincount(bucket.numpy(), minlength=num_buckets)
    return frames, clips, batches


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
    return _measured_frame_mix(data_dir, info, task=task, seq_len=seq_len, batch_size=batch_size,
                               num_batches=num_batches, sampling=sampling, class_weights=class_weights, seed=seed,
                               skipped=skipped)[0]


def _measured_frame_mix(data_dir: str, info: DatasetInfo, **stream) -> tuple[dict[str, float], int]:
    """:func:`empirical_frame_mix` and the number of batches it read (``stream``: its keyword arguments)."""
    frames, _, batches = _class_frames_by_bucket(data_dir, info, **stream)
    totals = frames.sum(axis=0)
    shares = totals / totals.sum() if totals.sum() > 0 else totals
    return {name: float(share) for name, share in zip(info.expression_names, shares)}, batches


def frame_mix_targets(info: DatasetInfo, sampling: str, task: str) -> dict[str, float]:
    """The frame class mix that clip sampling aims at: each expression class's share of the drawn clips.

    Defined for data whose buckets name the expression class (``bucket_by tasks`` or ``expression``): class
    ``c`` should make up the share of the training frames that its clips have among the drawn clips carrying
    expression labels (:func:`trainer.input.sampling.expected_class_mix`). Classes without clips get 0 here
    (:func:`balanced_frame_weights` leaves their frames as they come).

    Raises:
        ValueError: the data has no expression labels, or its buckets do not name the expression class.
    """
    if TASK_EXPRESSION not in sampling_lib.labelled_tasks(info):
        raise ValueError("--balance_frames balances the expression classes of the training frames, and this data has "
                         "no expression labels: leave it out")
    mix = sampling_lib.expected_class_mix(info, sampling_lib.bucket_weights(info, sampling, task), TASK_EXPRESSION)
    if mix is None:
        raise ValueError(f"balancing the frame class mix needs buckets that name the expression class (bucket_by "
                         f"tasks or expression); this data is bucketed by {info.bucket_by!r}")
    return {name: mix.get(name, 0.0) for name in info.expression_names}


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
        ValueError: buckets that do not name the expression class, or a task without the expression head.
    """
    targets = frame_mix_targets(info, sampling, task)
    batch = 64
    frames, clips, _ = _class_frames_by_bucket(data_dir, info, task=task, seq_len=seq_len, batch_size=batch,
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
        ``class_weights``), plus for buckets that name the expression class ``"requested"`` (:func:`frame_mix_targets`),
        ``"max_abs_deviation"`` and ``"max_deviation_class"``.
    """
    empirical, batches = _measured_frame_mix(data_dir, info, task=task, seq_len=seq_len, batch_size=batch_size,
                                             num_batches=num_batches, sampling=sampling, class_weights=class_weights,
                                             seed=seed, skipped=skipped)
    # (The batches read: fewer than asked for when --skip_corrupt left too little to read.)
    report = {"batches": batches, "empirical": {c: round(v, 4) for c, v in empirical.items()}}
    if TASK_EXPRESSION in sampling_lib.balanced_tasks(info):
        requested = frame_mix_targets(info, sampling, task)
        worst = max(requested, key=lambda c: abs(empirical[c] - requested[c]))
        report.update({"requested": {c: round(v, 4) for c, v in requested.items()},
                       "max_abs_deviation": round(abs(empirical[worst] - requested[worst]), 4),
                       "max_deviation_class": worst})
    return report
