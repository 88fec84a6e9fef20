"""What the first training batches hold, per head: the report the job writes to ``JOB/input_mix.json``.

:func:`measure_input_mix` reads the first batches of the training stream :func:`trainer.input.pipeline.make_train_dataset`
builds with the same options (one pipeline, the job's seed), labels only: no JPEG is decoded. For every head of
the data (trained or not) it reports:

* ``target`` -- for expression and valence-arousal, the share of each class (expression class, grid cell)
  among the drawn clips that carry the head's labels, as the draw aims at it
  (:func:`trainer.input.sampling.expected_class_mix`): for the trained task of a single-task job the sampling
  mode's class mix (``balanced``: uniform over the present classes); for another head, or under ``multi``, the
  mix the draw gives it. For action units, the data's positive rate of each AU (positive share of the
  AU-labelled train frames);
* ``delivered`` -- the same measured on the batches: the share of the delivered clips (those carrying the head's
  labels) by their class, a clip's class being its bucket's (its majority over the whole clip, as the converter
  bucketed it); for action units, each AU's positive rate over the delivered AU-labelled frames;
* ``delivered_frames`` -- the class share of the delivered labelled *frames* (the frames the loss sees; a clip's
  other frames skew it: ``--balance_frames`` corrects it for expression);
* ``labelled_fraction`` -- the share of the delivered frames (padding left out) with a valid label of the head;
* ``max_abs_deviation`` -- the largest ``|delivered - target|``.

Heads whose class the buckets do not name (older expression-bucketed outputs for VA or AU) have no clip target:
``target`` and ``delivered`` are null and ``delivered_frames`` says what they got. ``reads_per_clip`` is the
records read per delivered clip that carries a label of a trained head: the stream never drops a record, so
every record read is delivered, and a read is wasted when its clip's window holds no label of the task.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    SPLIT_TRAIN,
    TASK_MULTI,
    TASK_OF_HEAD,
    DatasetInfo,
    buckets,
)
from tfrecords_schema.filesystems import register_filesystems
from trainer.input import frames as frames_lib
from trainer.input import pipeline as trainer_input
from trainer.input import records
from trainer.input import sampling as sampling_lib

INPUT_MIX_FILENAME = "input_mix.json"  # under the job directory
INPUT_MIX_BATCHES = 100  # training batches measured at start-up

MULTI_TASK_POLICY = ("each clip's task drawn uniformly among the data's tasks, then its class by that task's "
                     "sampling weights (bucket weights = the mean of the per-task weights)")


def _class_lookup(info: DatasetInfo, task: str) -> tuple[list[str], np.ndarray] | None:
    """``(classes, index)``: ``index[bucket index]`` is the bucket's class of ``task`` (-1: unlabelled), or None
    when the buckets do not name it."""
    if task not in sampling_lib.balanced_tasks(info):
        return None
    classes = buckets.task_classes(task, info.label_names)[:-1]
    position = {c: i for i, c in enumerate(classes)}
    index = np.full(max(1, len(info.bucket_names)), -1, np.int64)
    for b, name in enumerate(info.bucket_names):
        index[b] = position.get(buckets.bucket_classes(info.bucket_by, name, info.tasks)[task], -1)
    return classes, index


class _Tally:
    """Counts over the measured batches, per head."""

    def __init__(self, info: DatasetInfo, heads: tuple[str, ...]):
        self.heads = heads
        self.lookup = {h: _class_lookup(info, TASK_OF_HEAD[h]) for h in heads}
        self.clip_classes = {h: np.zeros(len(lk[0]), np.int64) for h, lk in self.lookup.items() if lk}
        self.frame_names = {HEAD_EXPRESSION: info.expression_names, HEAD_VALENCE_AROUSAL: buckets.va_cell_names(),
                            HEAD_ACTION_UNITS: info.action_unit_names}
        self.frame_classes = {h: np.zeros(len(self.frame_names[h]), np.int64) for h in heads}
        self.labelled = dict.fromkeys(heads, 0)
        self.frames = 0
        self.clips = 0
        self.useful_clips = 0

    def add(self, targets: dict, valid: dict, window: dict, trained: tuple[str, ...]) -> None:
        """One batch: ``valid[head]`` is ``[B, T]`` (a valid label on a frame that is not padding)."""
        bucket = window["bucket"]
        self.clips += len(bucket)
        self.frames += int(window["num_valid"].sum())
        self.useful_clips += int(np.any([valid[h].any(axis=1) for h in trained], axis=0).sum())
        for head in self.heads:
            ok = valid[head]
            self.labelled[head] += int(ok.sum())
            if head in self.clip_classes:
                cls = self.lookup[head][1][bucket]
                cls = cls[(cls >= 0) & ok.any(axis=1)]
                self.clip_classes[head] += np.bincount(cls, minlength=len(self.clip_classes[head]))
            if head == HEAD_EXPRESSION:
                self.frame_classes[head] += np.bincount(targets[head][ok], minlength=len(self.frame_names[head]))
            elif head == HEAD_VALENCE_AROUSAL:
                self.frame_classes[head] += np.bincount(buckets.va_cells(targets[head][ok]),
                                                        minlength=len(self.frame_names[head]))
            else:
                self.frame_classes[head] += (targets[head][ok] == 1).sum(axis=0).astype(np.int64)


def _shares(names, counts) -> dict[str, float]:
    total = counts.sum()
    return {n: round(float(c) / total, 4) if total else 0.0 for n, c in zip(names, counts)}


def _deviation(target: dict | None, delivered: dict | None) -> float | None:
    if not target or delivered is None:
        return None
    keys = set(target) | set(delivered)
    return round(max(abs(target.get(k, 0.0) - delivered.get(k, 0.0)) for k in keys), 4)


def measure_input_mix(data_dir: str, info: DatasetInfo, *, task: str, sampling: str, seq_len: int,
                      batch_size: int, num_batches: int = INPUT_MIX_BATCHES, seed: int = 0,
                      au_positive_weights: np.ndarray | None = None,
                      skipped: records.SkippedRecords | None = None) -> dict:
    """The input mix report of the first ``num_batches`` training batches (see the module docstring).

    Returns:
        ``{"task", "sampling", "batches", "batch_size", "seq_len", "clips", "reads_per_clip",
        "unbalanced_tasks", "heads": {head: {"trained", "target", "delivered", "delivered_frames",
        "labelled_fraction", "max_abs_deviation"[, "positive_weights"]}}}`` (plus ``"multi_task_policy"`` for
        ``multi``).

    Raises:
        ValueError: unknown option, no bucket to draw from, ``num_batches < 1``.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    trained = trainer_input.check_heads_and_sizes(info, task, seq_len, batch_size)
    heads = trainer_input.heads_for_task(info, TASK_MULTI)  # every head of the data, trained or not
    register_filesystems(data_dir)
    records.split_info(info, SPLIT_TRAIN)
    draw = sampling_lib.bucket_draw(info, sampling_mode, task)
    shard_sets = records.train_shard_sets(data_dir, info, draw, None, skipped)
    stream = records.explicitly_seeded(lambda worker: trainer_input.train_batches(
        info, shard_sets, heads=heads, seq_len=seq_len, batch_size=batch_size, draw=draw, class_weights=None,
        seed=seed, decode=False, input_context=None, skipped=skipped,
        worker=worker))
    num_classes = len(info.expression_names)

    @tf.autograph.experimental.do_not_convert
    def validity(targets, _, window):  # valid labels on real frames, with or without a face
        _, weights = frames_lib.targets_and_weights(window, heads, num_classes, None, require_face=False)
        return targets, {h: w > 0 for h, w in weights.items()}, window

    tally = _Tally(info, heads)
    measured = stream.take(num_batches).map(validity).with_options(trainer_input.dataset_options(None))
    batches = 0  # Those the stream gave: fewer than asked for when --skip_corrupt left too little to read.
    for targets, valid, window in measured.as_numpy_iterator():
        tally.add(targets, valid, window, trained)
        batches += 1

    report_heads = {}
    for head in heads:
        labelled = round(tally.labelled[head] / tally.frames, 4) if tally.frames else 0.0
        entry = {"trained": head in trained, "labelled_fraction": labelled}
        if head == HEAD_ACTION_UNITS:
            rates = sampling_lib.au_positive_rates(info)
            entry["target"] = {k: round(v, 4) for k, v in rates.items()} if rates is not None else None
            counts = tally.frame_classes[head]
            entry["delivered"] = {n: round(float(c) / tally.labelled[head], 4) if tally.labelled[head] else 0.0
                                  for n, c in zip(tally.frame_names[head], counts)}
            if au_positive_weights is not None:
                entry["positive_weights"] = {n: round(float(w), 4)
                                             for n, w in zip(info.action_unit_names, au_positive_weights)}
        else:
            mix = sampling_lib.expected_class_mix(info, draw.weights, TASK_OF_HEAD[head])
            entry["target"] = {c: round(v, 4) for c, v in mix.items()} if mix is not None else None
            entry["delivered"] = (_shares(tally.lookup[head][0], tally.clip_classes[head])
                                  if head in tally.clip_classes else None)
            entry["delivered_frames"] = _shares(tally.frame_names[head], tally.frame_classes[head])
        entry["max_abs_deviation"] = _deviation(entry["target"], entry["delivered"])
        report_heads[head] = entry
    report = {"task": task, "sampling": sampling_mode, "batches": batches, "batch_size": batch_size,
              "seq_len": seq_len, "clips": tally.clips,
              "reads_per_clip": round(tally.clips / tally.useful_clips, 4) if tally.useful_clips else None,
              "unbalanced_tasks": sampling_lib.unbalanced_tasks(info, task), "heads": report_heads}
    if task == TASK_MULTI:
        report["multi_task_policy"] = MULTI_TASK_POLICY
    return report


def summary_line(report: dict) -> str:
    """One line for the training log: reads per clip, and per head its labelled fraction and largest deviation."""
    parts = []
    for head, entry in report["heads"].items():
        text = f"{head}{'' if entry['trained'] else ' (not trained)'}: labelled {entry['labelled_fraction']:.2f}"
        if entry["max_abs_deviation"] is not None:
            what = "AU positive rates" if head == HEAD_ACTION_UNITS else "class mix"
            text += f", {what} within {entry['max_abs_deviation']:.3f} of target"
        elif head != HEAD_ACTION_UNITS:
            text += ", not balanced (the buckets do not name its class)"
        parts.append(text)
    reads = report["reads_per_clip"]
    return (f"input mix of the first {report['batches']} batches (task {report['task']}, {report['sampling']}): "
            f"reads per clip {reads if reads is None else f'{reads:.2f}'}; " + "; ".join(parts))

