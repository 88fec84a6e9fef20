"""Rebalancing: which bucket each training clip comes from, and the per-class and per-AU loss weights.

The converter writes the train split as one shard set per bucket, and every bucket stands for a class of one or
more tasks (:func:`tfrecords_schema.buckets.bucket_classes`): by default the *composite* bucket of the clip's
class for every task (``Neutral|v2_a3|au``: expression class, valence-arousal grid cell, AU labels or not).
The input pipeline reads each bucket as its own repeated stream and mixes them with
``tf.data.Dataset.sample_from_datasets`` at the weights computed here, from the clip counts of the buckets.

**Per-task draw.** For the trained task ``t``, a clip's class is its bucket's class for ``t``; ``n_c`` is the
clips of class ``c`` (its buckets' clips summed). The target mix over the task's present classes
(:func:`class_targets`), by sampling mode:

* ``natural``: ``n_c / sum(n)`` -- the data as it is;
* ``balanced``: uniform over the classes with clips;
* ``sqrt``: ``sqrt(n_c) / sum(sqrt(n))`` -- halfway (in log ratio) between natural and balanced;
* ``downsample``: the paper's way -- every epoch holds the minority count ``min(n_c)`` of every class
  (:class:`BucketDraw` epoch groups; realised with streams by :func:`trainer.input.records.mixed_train_records`).

A bucket ``b`` of class ``c`` then gets ``target(c) * n_b / n_c`` (natural inside a class), and a bucket without
the task's label (``no_expression``, ``no_va``, ``no_au``) gets 0: it is not read at all. So every record read
is a clip with the task's labels, and nothing is read to be thrown away. Action units are many labels per
frame: their class is only ``au`` (clips with AU labels) against ``no_au``, and rare AUs are helped in the loss
instead (:func:`au_positive_weights`).

**Multi-task** (``--task multi``): each clip's task is drawn uniformly among the data's tasks, then its bucket
by that task's weights, i.e. the bucket weights are the mean of the per-task weights; under ``downsample`` each
task's own draw keeps its minority count per class in every one of its epochs. Each head's loss sees the clips that carry
its labels: those drawn for its task (balanced for it) and those drawn for another task that carry its labels
too (natural for it), so a head's class mix lies between the two; ``JOB/input_mix.json`` reports it.

**Older outputs.** Buckets that do not name a task's class (``expression`` buckets for ``va`` or ``au``, a
version 1-2 conversion's default) cannot balance it: that task falls back to the buckets themselves, each a
class of its own (the old behaviour: ``balanced`` is uniform over every non-empty bucket), and the trainer warns
once, naming the tasks (:func:`unbalanced_tasks`).

Loss weightings (per expression class ``c`` with ``f_c`` valid train frames), normalised so that the
mean weight over the valid train frames is 1: ``none`` (all 1), ``inverse`` (``∝ 1 / f_c``), ``sqrt``
(``∝ 1 / sqrt(f_c)``). Classes with no train frames get weight 0 (they cannot occur in a target).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

import numpy as np

from tfrecords_schema import (
    SPLIT_TRAIN,
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_MULTI,
    TASKS,
    DatasetInfo,
    DatasetInfoError,
    buckets,
)

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("natural", "balanced", "sqrt", "downsample")
LOSS_WEIGHTINGS = ("none", "inverse", "sqrt")
# Per-AU weights of the positive frames in the AU loss (--au_positive_weight): none, or from the train split's
# negatives per positive of each AU (its square root, or itself), clipped to [1, AU_POSITIVE_WEIGHT_MAX].
AU_POSITIVE_WEIGHTINGS = ("none", "sqrt", "inverse")
AU_POSITIVE_WEIGHT_MAX = 10.0

# Name used for the single stream of a train split written without buckets (``--bucket_by none``).
UNBUCKETED = "(all)"


def check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    """Returns ``value`` or raises ValueError listing the valid values."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")
    return value


def labelled_tasks(info: DatasetInfo) -> list[str]:
    """The tasks the data has labels for (``--task multi`` trains them all), in :data:`TASKS` order."""
    def has_labels(task):
        if task not in info.tasks:
            return False
        if task == TASK_EXPRESSION:
            return bool(info.expression_names)
        if task == TASK_ACTION_UNITS:
            return info.num_action_units > 0
        return True

    return [t for t in TASKS if has_labels(t)]


def trained_tasks(info: DatasetInfo, task: str) -> list[str]:
    """The tasks ``task`` trains: itself, or every labelled task for ``multi``."""
    return labelled_tasks(info) if task == TASK_MULTI else [task]


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


def _nonempty_counts(info: DatasetInfo) -> dict[str, int]:
    counts = {b: n for b, n in bucket_clip_counts(info).items() if n > 0}
    if not counts:
        raise ValueError(f"every train bucket is empty ({bucket_clip_counts(info)}): there is nothing to train on")
    return counts


def bucket_task_classes(info: DatasetInfo) -> dict[str, dict[str, str]]:
    """``{bucket: {task: class}}`` of every non-empty train bucket (:func:`tfrecords_schema.buckets.bucket_classes`)."""
    return {b: {} if b == UNBUCKETED else buckets.bucket_classes(info.bucket_by, b, info.tasks)
            for b in _nonempty_counts(info)}


def balanced_tasks(info: DatasetInfo) -> list[str]:
    """The data's tasks whose class every non-empty train bucket names: the draw can balance them."""
    classes = bucket_task_classes(info).values()
    return [t for t in info.tasks if all(t in c for c in classes)]


def unbalanced_tasks(info: DatasetInfo, task: str) -> list[str]:
    """The tasks ``task`` trains that the data's buckets cannot balance (e.g. ``va`` over expression buckets)."""
    balanced = balanced_tasks(info)
    return [t for t in trained_tasks(info, task) if t not in balanced]


def _labelled_class_counts(info: DatasetInfo, task: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    unlabelled = buckets.UNLABELLED_CLASS[task]
    classes = bucket_task_classes(info)
    for bucket, n in _nonempty_counts(info).items():
        if classes[bucket][task] != unlabelled:
            counts[classes[bucket][task]] = counts.get(classes[bucket][task], 0) + n
    return counts


def class_clip_counts(info: DatasetInfo, task: str) -> dict[str, int]:
    """``{class: train clips}`` of ``task``'s classes that have clips (the unlabelled class left out).

    Raises:
        ValueError: the buckets do not name ``task``'s class, or no clip carries its labels.
    """
    if task not in balanced_tasks(info):
        raise ValueError(f"the train buckets (bucket_by {info.bucket_by!r}) do not name the {task} class of their "
                         "clips; convert with --bucket_by tasks")
    counts = _labelled_class_counts(info, task)
    if not counts:
        raise ValueError(f"no train clip carries {task} labels (buckets {sorted(_nonempty_counts(info))}): there is "
                         f"nothing to train {task} on")
    return counts


def _mode_weights(counts: Mapping[str, int], mode: str) -> dict[str, float]:
    """``natural`` ∝ n, ``sqrt`` ∝ sqrt(n), ``balanced`` / ``downsample`` uniform; normalised to 1."""
    raw = {k: float(n) if mode == "natural" else math.sqrt(n) if mode == "sqrt" else 1.0 for k, n in counts.items()}
    total = sum(raw.values())
    return {k: w / total for k, w in raw.items()}


def class_targets(info: DatasetInfo, mode: str, task: str) -> dict[str, float]:
    """The target share of each of ``task``'s classes among the drawn clips, for ``mode`` (sums to 1)."""
    check_choice(mode, SAMPLING_MODES, "sampling mode")
    return _mode_weights(class_clip_counts(info, task), mode)


@dataclasses.dataclass(frozen=True)
class Stream:
    """One stream of the training mix: the union of some buckets' shard files, drawn at a weight.

    Reading the union natural-ly (every record once per pass) draws its buckets in proportion to their clips:
    the natural mix inside a class.

    Attributes:
        name: How messages name it, e.g. ``"va class 'v2_a3'"`` or ``"bucket 'Fear'"``.
        weight: Probability that a clip comes from it.
        buckets: Its buckets.
        task: The task it draws for (``""``: none, every bucket a class of its own).
        per_epoch: ``downsample`` only: clips it gives in every epoch of its task (0 for the other modes).
    """

    name: str
    weight: float
    buckets: tuple[str, ...]
    task: str = ""
    per_epoch: int = 0


@dataclasses.dataclass(frozen=True)
class BucketDraw:
    """How the training stream picks each clip: from one of :attr:`streams`, at its weight.

    Attributes:
        streams: The streams read (buckets left out of every stream are not read at all). Two tasks' streams may
            read the same buckets (``multi``): each clip read is still delivered once.
        weights: ``{bucket: probability}`` of every bucket read (sums to 1): what the streams give each bucket.
    """

    streams: tuple[Stream, ...]
    weights: dict[str, float]

    @property
    def tasks(self) -> list[str]:
        """The tasks the streams draw for, in order."""
        return list(dict.fromkeys(s.task for s in self.streams))

    @property
    def clips_per_epoch(self) -> int | None:
        """Clips of one ``downsample`` epoch (None for the other modes): a task's minority count of every class;
        for several tasks (drawn in turn), as many clips as the largest task's epoch for every task."""
        totals = [sum(s.per_epoch for s in self.streams if s.task == t) for t in self.tasks]
        if not any(totals):
            return None
        return max(totals) * len(totals)


def _task_streams(info: DatasetInfo, mode: str, task: str | None, share: float) -> list[Stream]:
    """The streams of one task at ``share`` of the draw: one per class of the task (the union of its buckets), or
    one per bucket when the buckets cannot balance the task (``task`` None: every bucket its own class)."""
    counts = _nonempty_counts(info)
    downsample = mode == "downsample"
    if task is None or task not in balanced_tasks(info):
        targets, minority = _mode_weights(counts, mode), min(counts.values())
        return [Stream(f"bucket {b!r}", share * targets[b], (b,), task or "", minority if downsample else 0)
                for b in counts]
    classes, per_class = bucket_task_classes(info), class_clip_counts(info, task)
    targets, minority = _mode_weights(per_class, mode), min(per_class.values())
    left_out = sorted(b for b in counts if classes[b][task] not in per_class)
    if left_out:
        logger.debug("task %s: buckets %s hold clips without %s labels and are not read", task, left_out, task)
    return [Stream(f"{task} class {c!r}", share * targets[c], tuple(b for b in counts if classes[b][task] == c),
                   task, minority if downsample else 0) for c in per_class]


def bucket_draw(info: DatasetInfo, mode: str, task: str | None = None) -> BucketDraw:
    """The draw of ``task`` (``expr``, ``va``, ``au``, ``multi``) under ``mode`` (see the module docstring).

    Per trained task, a stream per class (the union of the class's buckets, natural inside it) at the class's
    target; ``multi`` puts every task's streams side by side at ``1 / tasks`` of the draw (each clip's task drawn
    uniformly). ``downsample``: each task's streams give its minority count per class in every epoch of that
    task. ``task`` None: every bucket is a class of its own.

    Raises:
        ValueError: unknown mode, or no bucket to sample from (every bucket empty, or none with the task's labels).
    """
    check_choice(mode, SAMPLING_MODES, "sampling mode")
    counts = _nonempty_counts(info)
    tasks = trained_tasks(info, task) if task is not None else [None]
    if task == TASK_MULTI:  # a task labelled only outside the train split (e.g. VA in validation) draws nothing
        balanced = balanced_tasks(info)
        tasks = [t for t in tasks if t not in balanced or _labelled_class_counts(info, t)] or tasks
    streams = [s for t in tasks for s in _task_streams(info, mode, t, 1.0 / len(tasks)) if s.weight > 0]
    if not streams:
        raise ValueError(f"no train bucket holds clips with {task} labels: there is nothing to train on")
    if mode == "downsample":  # inside a task, its streams at their shares of the task's epoch
        totals: dict[str, int] = {}
        for s in streams:
            totals[s.task] = totals.get(s.task, 0) + s.per_epoch
        streams = [dataclasses.replace(s, weight=s.per_epoch / totals[s.task] / len(totals)) for s in streams]
    weights: dict[str, float] = {}
    for stream in streams:
        clips = sum(counts[b] for b in stream.buckets)
        for b in stream.buckets:
            weights[b] = weights.get(b, 0.0) + stream.weight * counts[b] / clips
    return BucketDraw(tuple(streams), weights)


def bucket_weights(info: DatasetInfo, mode: str, task: str | None = None) -> dict[str, float]:
    """Sampling probability of every bucket read for ``task`` under ``mode`` (:func:`bucket_draw`; sums to 1)."""
    return bucket_draw(info, mode, task).weights


def clips_per_epoch(info: DatasetInfo, mode: str, task: str | None = None) -> int | None:
    """Clips in one epoch for ``downsample`` (the minority count of every class, summed); None for other modes."""
    return bucket_draw(info, mode, task).clips_per_epoch


def expected_class_mix(info: DatasetInfo, weights: Mapping[str, float], task: str) -> dict[str, float] | None:
    """The share of each of ``task``'s classes among the drawn clips that carry its labels, at ``weights``.

    For the trained task of a single-task draw this is :func:`class_targets`; for another task, or for
    ``multi``, it is the mix the draw gives that task. None when the buckets do not name ``task``'s class.
    """
    if task not in balanced_tasks(info):
        return None
    classes, unlabelled = bucket_task_classes(info), buckets.UNLABELLED_CLASS[task]
    mix: dict[str, float] = {}
    for bucket, w in weights.items():
        if classes[bucket][task] != unlabelled:
            mix[classes[bucket][task]] = mix.get(classes[bucket][task], 0.0) + w
    total = sum(mix.values())
    return {c: v / total for c, v in mix.items()} if total > 0 else {}


def _train_split(info: DatasetInfo):
    split = info.splits.get(SPLIT_TRAIN)
    if split is None:
        raise DatasetInfoError(f"the data has no {SPLIT_TRAIN!r} split (it has {sorted(info.splits)})")
    return split


def _expression_frames(info: DatasetInfo) -> np.ndarray:
    names = info.expression_names
    if not names:
        raise ValueError(f"the data has no expression labels (tasks: {info.tasks}); use --loss_weighting none")
    split = _train_split(info)
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


def au_positive_rates(info: DatasetInfo) -> dict[str, float] | None:
    """Each AU's positive share of the AU-labelled train frames; None without the counts (a version 1-2 output)."""
    split = _train_split(info)
    labelled = split.task_frames.get(TASK_ACTION_UNITS, 0)
    positives = split.class_frames.get(TASK_ACTION_UNITS)
    if not labelled or positives is None:
        return None
    return {name: positives.get(name, 0) / labelled for name in info.action_unit_names}


def au_positive_weights(info: DatasetInfo, mode: str) -> np.ndarray | None:
    """Per-AU weights of the positive frames in the AU loss, float32 ``[num AUs]``, or None (``none``).

    With ``p_k`` the AU's positive share of the AU-labelled train frames (:func:`au_positive_rates`), the
    weight is ``(1 - p_k) / p_k`` (``inverse``: positives and negatives weigh the same in all) or its square root
    (``sqrt``), clipped to ``[1, AU_POSITIVE_WEIGHT_MAX]``: a rare AU's positives count more, a common AU is left
    as it is, and an AU without a positive gets the cap. None, with a warning, for data without the counts.

    Raises:
        ValueError: unknown mode.
    """
    check_choice(mode, AU_POSITIVE_WEIGHTINGS, "AU positive weighting")
    if mode == "none":
        return None
    rates = au_positive_rates(info)
    if rates is None:
        logger.warning("--au_positive_weight %s needs the AU-labelled frame counts of a version-3 conversion "
                       "(task_frames); this data has none: AU positives are not weighted", mode)
        return None
    p = np.array(list(rates.values()), np.float64)
    never = [name for name, rate in rates.items() if rate <= 0]
    if never:
        logger.warning("AU(s) %s are never positive on the train split: their heads cannot learn to fire, and their "
                       "F1 is 0 wherever they are positive", ", ".join(never))
    ratio = (1.0 - p) / np.maximum(p, 1e-12)
    weights = np.where(p > 0, ratio if mode == "inverse" else np.sqrt(ratio), AU_POSITIVE_WEIGHT_MAX)
    return np.clip(weights, 1.0, AU_POSITIVE_WEIGHT_MAX).astype(np.float32)

