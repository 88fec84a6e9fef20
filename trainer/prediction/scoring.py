"""Scoring prediction files against ABAW annotation files, with the trainer's whole-set metrics.

:func:`score_predictions` reads ABAW files back (:func:`trainer.prediction.outputs.read_submission`) and scores them
against the annotation files of a split like ``affectstream evaluate`` scores a converted split.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEADS, TASK_OF_HEAD, join_path
from trainer.prediction.outputs import (
    SUBMISSION_DIRS,
    PredictionFileError,
    read_has_face,
    read_submission,
    submission_path,
)

SCORE_SPLITS = ("train", "validation", "all")


def _valid_labels(head: str, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, valid)`` of one head from the adapter's track labels (the trainer's validity rules)."""
    if head == HEAD_EXPRESSION:
        t = labels.expression
        return t, (t >= 0) & (t < num_classes)
    if head == HEAD_VALENCE_AROUSAL:
        t = labels.valence_arousal
        return t, ((t >= -1.0) & (t <= 1.0)).all(axis=1)
    t = labels.action_units
    return t, ((t >= 0) & (t <= 1)).all(axis=1) & (t.shape[1] > 0)


def _aligned_predictions(path: str, head: str, label_names: dict[str, list[str]]) -> np.ndarray:
    """The file's values, AU columns put in the annotations' order; checks the header against the labels."""
    names, values = read_submission(path, head)
    wanted = list(label_names[head])
    if head == HEAD_ACTION_UNITS:
        missing = [n for n in wanted if n not in names]
        if missing:
            raise PredictionFileError(f"{path}: the annotations have AUs {missing} that the predictions lack "
                                      f"(prediction header {','.join(names)})")
        return values[:, [names.index(n) for n in wanted]]
    if names != wanted:
        raise PredictionFileError(f"{path}: header {','.join(names)} differs from the annotations' "
                                  f"{','.join(wanted)}")
    return values


def _padded(values: np.ndarray, length: int) -> np.ndarray:
    """``values`` extended with zeros (of its dtype) along the first axis to ``length`` rows."""
    values = np.asarray(values)
    if len(values) >= length:
        return values[:length]
    return np.concatenate([values, np.zeros((length - len(values), *values.shape[1:]), values.dtype)])


def score_predictions(pred_dir: str, annotations: str, split: str = "validation",
                      stems: Collection[str] | None = None) -> dict:
    """Scores the ABAW files under ``pred_dir`` against the ABAW annotation files of ``split``.

    Every annotated track of the split whose prediction file exists is scored, over its frames with a valid
    label that the predictions cover, with the trainer's whole-set metrics: the same figures as
    ``trainer.evaluation.evaluate`` (``frames``, the ``with_face`` block from each video's CSV ``has_face`` column).
    Annotation tracks without a prediction file are listed, not scored; labelled frames past the end of a
    prediction file (the video has fewer frames than its annotation file) are counted in
    ``beyond_predictions``, as the conversion drops them as ``beyond_video_end``.

    Args:
        pred_dir: A ``predict`` output folder (``EXPR/``, ``VA/``, ``AU/`` and the CSVs).
        annotations: ABAW annotation root (any layout the adapter reads).
        split: ``validation``, ``train`` or ``all``.
        stems: Score only the prediction files of these names (a run's own videos; files that an earlier run left in
            ``pred_dir`` are not this run's predictions); None: every file found.

    Returns:
        ``{head: metrics (with "frames" and "with_face"), "score", "per_video": rows, "videos_scored",
        "without_predictions": {head: [track ids]}, "beyond_predictions": {head: frames}}``.

    Raises:
        ValueError: unknown split, or nothing to score.
        PredictionFileError: a prediction file that does not match the annotations.
    """
    import tensorflow as tf

    from beam_jobs.sources import make_source
    from trainer.evaluation.metrics import PredictionAccumulator

    if split not in SCORE_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SCORE_SPLITS)}")
    # The adapter wants a media root; scoring reads labels only, so the annotation root serves (no media opens).
    source = make_source("abaw", annotations=annotations, videos=annotations)
    found = source.discover()
    tracks = [t for t in found.tracks if split == "all" or t.split == split]
    heads = [h for h in HEADS if TASK_OF_HEAD[h] in found.tasks
             and tf.io.gfile.isdir(join_path(pred_dir, SUBMISSION_DIRS[h]))]
    if not heads:
        raise ValueError(f"nothing to score: {pred_dir} has no {'/'.join(SUBMISSION_DIRS.values())} folder "
                         f"for the tasks annotated under {annotations} ({', '.join(found.tasks)})")
    names = {h: list(found.label_names.get(h, [])) for h in HEADS}
    acc = PredictionAccumulator(heads, names[HEAD_EXPRESSION], names[HEAD_ACTION_UNITS])
    missing: dict[str, list[str]] = {h: [] for h in heads}
    beyond = {h: 0 for h in heads}
    scored = set()
    for track in tracks:
        track_heads = [h for h in heads if TASK_OF_HEAD[h] in track.tasks]
        paths = {h: submission_path(pred_dir, h, track.media_id) for h in track_heads}
        present = [h for h in track_heads if (stems is None or track.media_id in stems)
                   and tf.io.gfile.exists(paths[h])]
        for h in set(track_heads) - set(present):
            missing[h].append(track.track_id)
        if not present:
            continue
        labels = source.read_labels(track)
        has_face = read_has_face(join_path(pred_dir, f"{track.media_id}.csv"))
        # Every head of the track in one update call, so the per-video frame count counts each frame once; a head
        # whose file or labels end sooner weighs 0 past its own end.
        targets, predicted, weights = {}, {}, {}
        for head in present:
            head_predicted = _aligned_predictions(paths[head], head, names)
            head_targets, valid = _valid_labels(head, labels, len(names[HEAD_EXPRESSION]))
            n = min(len(head_predicted), len(head_targets))
            beyond[head] += int(valid[n:].sum())
            targets[head], predicted[head] = head_targets[:n], head_predicted[:n]
            weights[head] = valid[:n].astype(np.float32)
        length = max(len(w) for w in weights.values())
        face = np.ones(length, bool) if has_face is None else _padded(has_face[:length], length)
        acc.update({h: _padded(v, length)[None] for h, v in targets.items()},
                   {h: _padded(v, length)[None] for h, v in predicted.items()},
                   {h: _padded(v, length)[None] for h, v in weights.items()}, has_face=face[None],
                   media_ids=[track.media_id])
        scored.add(track.track_id)
    if not scored:
        raise ValueError(f"no prediction file under {pred_dir} matches an annotated track of split {split!r} "
                         f"under {annotations}")
    result = acc.result()
    result.update({"per_video": acc.per_video(), "videos_scored": len(scored), "split": split,
                   "without_predictions": {h: v for h, v in missing.items() if v},
                   "beyond_predictions": beyond})
    return result


def main_figures(scores: dict) -> dict[str, float]:
    """The headline figure of each scored head (macro-F1, mean CCC, mean AU F1), all frames and with a face."""
    from trainer.evaluation.metrics import MAIN_METRIC

    out = {}
    for head in HEADS:
        if head in scores:
            metric = MAIN_METRIC[head]
            out[f"{head}/{metric}"] = scores[head][metric]
            out[f"{head}/with_face/{metric}"] = scores[head]["with_face"][metric]
    return out


def format_scores(scores: dict) -> str:
    """A few printable lines: the main figure of each head over every labelled frame and over face frames."""
    from trainer.evaluation.metrics import MAIN_METRIC

    lines = []
    for head in HEADS:
        if head not in scores:
            continue
        m, metric = scores[head], MAIN_METRIC[head]
        lines.append(f"{head}: {metric} {m[metric]:.4f} over {m['frames']} labelled frames; "
                     f"with a face {m['with_face'][metric]:.4f} over {m['with_face']['frames']}")
    for head, tracks in scores.get("without_predictions", {}).items():
        lines.append(f"{head}: {len(tracks)} annotated track(s) of the split have no prediction file (not scored)")
    for head, frames in scores.get("beyond_predictions", {}).items():
        if frames:
            lines.append(f"{head}: {frames} labelled frame(s) past the end of their video (not scored)")
    return "\n".join(lines)
