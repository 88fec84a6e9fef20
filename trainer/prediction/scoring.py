"""Scoring prediction files against ABAW annotation files, with the trainer's whole-set metrics.

:func:`score_predictions` reads ABAW files back (:func:`trainer.prediction.outputs.read_submission`) and scores them
against the annotation files of a split like ``affectstream evaluate`` scores a converted split.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_OF_TASK,
    HEAD_VALENCE_AROUSAL,
    HEADS,
    TASK_OF_HEAD,
    join_path,
)
from tfrecords_schema.cli import first_of
from trainer.prediction.outputs import (
    SUBMISSION_DIRS,
    PredictionFileError,
    read_frame_flags,
    read_submission,
    submission_path,
)

SCORE_SPLITS = ("train", "validation", "all")
SCORES_FILENAME = "scores.json"  # in the predictions folder: predict --annotations, affectstream score


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


def _missed(head: str, targets: np.ndarray) -> np.ndarray:
    """Predictions of frames that have none, scored as the challenge would (wrong): no expression class
    (:data:`trainer.evaluation.metrics.NO_PREDICTION`, a miss of the true class), valence and arousal 0, no AU."""
    from trainer.evaluation.metrics import NO_PREDICTION

    if head == HEAD_EXPRESSION:
        return np.full(len(targets), NO_PREDICTION, np.int64)
    return np.zeros_like(targets)


def annotated_tracks(annotations: str, split: str):
    """``(adapter, discovery, tracks of split)`` of an ABAW annotation root: what predictions are scored against.

    Raises:
        ValueError: an unknown split, annotations the adapter cannot read, or no annotation file of the split (the
            check ``predict --annotations`` makes before any video).
    """
    from beam_jobs.sources import make_source

    if split not in SCORE_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SCORE_SPLITS)}")
    # The adapter wants a media root; scoring reads labels only, so the annotation root serves (no media opens).
    source = make_source("abaw", annotations=annotations, videos=annotations)
    found = source.discover()
    tracks = [t for t in found.tracks if split == "all" or t.split == split]
    if not tracks:
        raise ValueError(f"--annotations {annotations} holds no ABAW annotation file of the {split!r} split to score "
                         "against (see docs/abaw.md for the layouts it reads)")
    return source, found, tracks


def check_scorable(annotated: tuple, split: str, heads: Sequence[str], label_names: dict,
                   stems: Sequence[str]) -> list[str]:
    """Checks, before any video is predicted, that a run's predictions can be scored against :func:`annotated_tracks`
    ``annotated``: at least one of the model's ``heads`` is annotated, with the model's class or AU names, and at least
    one of the run's output ``stems`` is an annotated track of the split (else scoring fails after the last video).
    Returns notes: stems that are no annotated track (predicted, not scored; a two-person video's ``_left`` and
    ``_right`` tracks named), heads the annotations lack.

    Raises:
        ValueError: nothing of the run could be scored (the message says why).
    """
    _, found, tracks = annotated
    split_tasks = sorted(_split_tasks(tracks))
    annotated_heads = [h for h in heads if TASK_OF_HEAD[h] in split_tasks]
    if not annotated_heads:
        raise ValueError(f"nothing to score: the model predicts {', '.join(heads)}, and the {split!r} split of the "
                         f"annotations annotates {', '.join(split_tasks) or 'no task'}")
    for head in annotated_heads:
        wanted, have = list(found.label_names.get(head, [])), list(label_names.get(head, []))
        lacking = [n for n in wanted if n not in have] if head == HEAD_ACTION_UNITS else ([] if wanted == have else wanted)
        if lacking:
            raise ValueError(f"the annotations' {head} labels ({','.join(wanted)}) are not the model's "
                             f"({','.join(have)}): its predictions cannot be scored against them")
    ids = {t.media_id for t in tracks if any(TASK_OF_HEAD[h] in t.tasks for h in annotated_heads)}
    unscored = [s for s in stems if s not in ids]
    if len(unscored) == len(stems):
        sides = [s for s in unscored if {f"{s}_left", f"{s}_right"} & ids]
        raise ValueError(f"none of the run's outputs ({first_of(sorted(stems), 5)}) is a track of split {split!r} "
                         f"annotated for {', '.join(annotated_heads)}"
                         + (f"; {', '.join(sides)}: annotated as _left and _right tracks, predict each with --side"
                            if sides else ""))
    notes = [f"{len(unscored)} of the {len(stems)} outputs are no track of split {split!r} annotated for "
             f"{', '.join(annotated_heads)}: predicted, not scored ({first_of(unscored, 5)})"] if unscored else []
    missing = [h for h in heads if h not in annotated_heads]
    if missing:
        notes.append(f"the {split!r} split of the annotations does not annotate {', '.join(missing)}: scored on "
                     f"{', '.join(annotated_heads)}")
    return notes


def write_scores(pred_dir: str, scores: dict) -> str:
    """Writes ``scores`` (:func:`score_predictions`) to ``pred_dir``/:data:`SCORES_FILENAME` atomically; its path."""
    import json

    from tfrecords_schema.atomic import write_atomically

    return write_atomically(join_path(pred_dir, SCORES_FILENAME), json.dumps(scores, indent=2, sort_keys=True) + "\n")


def _split_tasks(tracks) -> set[str]:
    """The tasks the tracks of a split annotate (a discovery's ``tasks`` are those of every split)."""
    return {task for track in tracks for task in track.tasks}


def score_predictions(pred_dir: str, annotations: str, split: str = "validation",
                      stems: Collection[str] | None = None, annotated: tuple | None = None) -> dict:
    """Scores the ABAW files under ``pred_dir`` against the ABAW annotation files of ``split``.

    Every annotated track of the split whose prediction file exists is scored, over its frames with a valid
    label that the predictions cover and that decoded (the CSV's ``decoded`` column: the conversion drops a frame
    that does not decode as ``decode_error``), with the trainer's whole-set metrics: the same figures as
    ``affectstream evaluate`` (``frames``, the ``with_face`` block from each video's CSV ``has_face`` column).
    Next to them, ``all_annotated`` scores every labelled frame of the split as the challenge would: frames of
    tracks without a prediction file, and labelled frames past the end of a prediction file (the video has fewer
    frames than its annotation file; the conversion drops them as ``beyond_video_end``), count as wrong
    (:func:`_missed`); a frame that did not decode is scored there with the line written for it. ``coverage`` says how
    many labelled frames were scored, and why the others were not.

    Args:
        pred_dir: A ``predict`` output folder (``EXPR/``, ``VA/``, ``AU/`` and the CSVs).
        annotations: ABAW annotation root (any layout the adapter reads).
        split: ``validation``, ``train`` or ``all``.
        stems: Score only the prediction files of these names (a run's own videos; files that an earlier run left in
            ``pred_dir`` are not this run's predictions); None: every file found.
        annotated: :func:`annotated_tracks` of ``annotations`` and ``split`` when the caller has it already
            (``predict`` checks the annotations before any video): the root is then not listed again.

    Returns:
        ``{head: metrics (with "frames" and "with_face"), "score", "per_video": rows, "videos_scored",
        "all_annotated": {head: metrics, "score"}, "coverage": {...}, "without_predictions": {head: [track ids]},
        "beyond_predictions": {head: frames}}``.

    Raises:
        ValueError: unknown split, or nothing to score.
        PredictionFileError: a prediction file that does not match the annotations.
    """
    from tfrecords_schema import storage
    from trainer.evaluation.coverage import NOT_FOR_THIS_MODEL, coverage_block
    from trainer.evaluation.metrics import PredictionAccumulator

    source, found, tracks = annotated or annotated_tracks(annotations, split)
    split_tasks = _split_tasks(tracks)  # (A head annotated in another split only: not scored, rather than 0 over 0
    heads = [h for h in HEADS if TASK_OF_HEAD[h] in split_tasks  # frames.)
             and storage.gfile(pred_dir).isdir(join_path(pred_dir, SUBMISSION_DIRS[h]))]
    if not heads:
        raise ValueError(f"nothing to score: {pred_dir} has no {'/'.join(SUBMISSION_DIRS.values())} folder "
                         f"for the tasks of split {split!r} annotated under {annotations} ({', '.join(sorted(split_tasks))})")
    names = {h: list(found.label_names.get(h, [])) for h in HEADS}
    acc = PredictionAccumulator(heads, names[HEAD_EXPRESSION], names[HEAD_ACTION_UNITS])
    every = PredictionAccumulator(heads, names[HEAD_EXPRESSION], names[HEAD_ACTION_UNITS])
    missing: dict[str, list[str]] = {h: [] for h in heads}
    beyond = {h: 0 for h in heads}
    frames = {"labelled": 0, "scored": 0, "decode_error": 0, "no_prediction_file": 0, "beyond_predictions": 0,
              NOT_FOR_THIS_MODEL: 0}
    scored = set()
    for track in tracks:
        track_heads = [h for h in heads if TASK_OF_HEAD[h] in track.tasks]
        labels = source.read_labels(track)
        # Frames labelled only for tasks the predictions have no head for count as labelled and not scored, as
        # evaluate counts them (trainer.evaluation.coverage): both coverage blocks then share their denominator.
        others = [_valid_labels(HEAD_OF_TASK[t], labels, len(names[HEAD_EXPRESSION]))[1] for t in track.tasks
                  if HEAD_OF_TASK[t] not in track_heads]
        other_valid = np.zeros(max(map(len, others), default=0), bool)
        for valid in others:
            other_valid |= _padded(valid, len(other_valid))
        if not track_heads:
            frames["labelled"] += int(other_valid.sum())
            frames[NOT_FOR_THIS_MODEL] += int(other_valid.sum())
            continue
        paths = {h: submission_path(pred_dir, h, track.media_id) for h in track_heads}
        present = [h for h in track_heads if (stems is None or track.media_id in stems)
                   and storage.gfile(paths[h]).exists(paths[h])]
        for h in set(track_heads) - set(present):
            missing[h].append(track.track_id)
        truth = {h: _valid_labels(h, labels, len(names[HEAD_EXPRESSION])) for h in track_heads}
        length = max(len(other_valid), *(len(valid) for _, valid in truth.values()))
        # Per head: the file's values where it has them, the challenge's "wrong" past its end or without a file.
        predicted, covered = {}, {}
        for head in track_heads:
            head_targets, valid = truth[head]
            values = (_aligned_predictions(paths[head], head, names) if head in present
                      else _missed(head, head_targets[:0]))
            n = min(len(values), len(head_targets))
            covered[head] = np.arange(len(valid)) < n
            predicted[head] = np.concatenate([values[:n], _missed(head, head_targets[n:])])
            if head in present:
                beyond[head] += int(valid[n:].sum())
        # Each labelled frame once: predicted (the top figures, as evaluate scores the converted split), or not,
        # and why: the frame did not decode (the conversion drops it as decode_error), it lies past the end of the
        # video, or its head has no prediction file.
        flags = read_frame_flags(join_path(pred_dir, f"{track.media_id}.csv")) if present else None
        face = np.ones(length, bool) if flags is None else _padded(flags["has_face"][:length], length)
        decoded = np.ones(length, bool) if flags is None else _padded(flags["decoded"][:length], length)
        valid_any, covered_any, past_end = np.zeros(length, bool), np.zeros(length, bool), np.zeros(length, bool)
        for head in track_heads:
            valid = _padded(truth[head][1], length)
            valid_any |= valid
            if head in present:
                covered_any |= valid & _padded(covered[head], length)
                past_end |= valid & ~_padded(covered[head], length)
        only_other = _padded(other_valid, length) & ~valid_any
        frames["labelled"] += int(valid_any.sum()) + int(only_other.sum())
        frames[NOT_FOR_THIS_MODEL] += int(only_other.sum())
        frames["scored"] += int((covered_any & decoded).sum())
        frames["decode_error"] += int((covered_any & ~decoded).sum())
        frames["beyond_predictions"] += int((past_end & ~covered_any).sum())
        frames["no_prediction_file"] += int((valid_any & ~covered_any & ~past_end).sum())
        # A frame without a prediction has no face found (its with_face block is over the predicted faces only).
        every.update({h: _padded(truth[h][0], length)[None] for h in track_heads},
                     {h: _padded(predicted[h], length)[None] for h in track_heads},
                     {h: _padded(truth[h][1], length).astype(np.float32)[None] for h in track_heads},
                     has_face=(face & covered_any)[None], media_ids=[track.media_id])
        if not present:
            continue
        # The predicted frames alone: every head of the track in one update call (the per-video frame count counts
        # each frame once); a head whose file or labels end sooner weighs 0 past its own end.
        acc.update({h: _padded(truth[h][0], length)[None] for h in present},
                   {h: _padded(predicted[h], length)[None] for h in present},
                   {h: (_padded(truth[h][1], length) & _padded(covered[h], length) & decoded).astype(np.float32)[None]
                    for h in present}, has_face=face[None], media_ids=[track.media_id])
        scored.add(track.track_id)
    if not scored:
        raise ValueError(f"no prediction file under {pred_dir} matches an annotated track of split {split!r} "
                         f"under {annotations}")
    result = acc.result()
    all_annotated = every.result()
    not_scored = {k: frames[k] for k in ("decode_error", "no_prediction_file", "beyond_predictions",
                                         NOT_FOR_THIS_MODEL) if frames[k]}
    result.update({"per_video": acc.per_video(), "videos_scored": len(scored), "split": split,
                   "all_annotated": {**{h: all_annotated[h] for h in heads}, "score": all_annotated["score"]},
                   "coverage": coverage_block(frames["labelled"], frames["scored"], not_scored),
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


# What a labelled frame without a prediction is scored as in ``all_annotated`` (:func:`_missed`), as printed.
MISSED_AS = {HEAD_EXPRESSION: "frames without a prediction count as wrong",
             HEAD_VALENCE_AROUSAL: "frames without a prediction are scored as valence and arousal 0",
             HEAD_ACTION_UNITS: "frames without a prediction are scored as no AU"}


def format_scores(scores: dict) -> str:
    """Printable lines: each head's main figure over the predicted frames, over every labelled frame of the split
    (frames without a prediction scored as the challenge would: :data:`MISSED_AS`), over the face frames; the
    coverage."""
    from trainer.evaluation.coverage import format_coverage
    from trainer.evaluation.metrics import MAIN_METRIC

    lines = []
    every = scores.get("all_annotated", {})
    for head in HEADS:
        if head not in scores:
            continue
        m, metric = scores[head], MAIN_METRIC[head]
        line = f"{head}: {metric} {m[metric]:.4f} over {m['frames']} predicted frames"
        if head in every:
            line += (f"; {every[head][metric]:.4f} over all {every[head]['frames']} labelled frames of the split "
                     f"({MISSED_AS[head]})")
        lines.append(line + f"; with a face {m['with_face'][metric]:.4f} over {m['with_face']['frames']}")
    for head, tracks in scores.get("without_predictions", {}).items():
        lines.append(f"{head}: {len(tracks)} annotated track(s) of the split have no prediction file")
    if "coverage" in scores:
        lines.append(format_coverage(scores["coverage"], scores.get("split", "split")))
    return "\n".join(lines)
