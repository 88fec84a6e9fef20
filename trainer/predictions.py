"""Per-frame predictions of one video: the no-face rule, smoothing, the CSV and ABAW files, and scoring.

No model and no video here: :mod:`trainer.predict` fills a :class:`VideoPredictions` (one entry per frame
index of the video) and this module turns it into files, and scores files against annotations.

* :func:`fill_no_face` -- the ``interpolate`` rule: the outputs of frames without a face are linearly
  interpolated between the nearest face frames before and after (the nearest face frame's outputs at the
  ends). The ``model`` rule (the default, shared with evaluation) keeps the model's outputs on the crop
  the face stage produced for such a frame (the crop at the last-seen face place, or the blank crop).
* :func:`smooth` -- a centred moving average over ``N`` frames (shorter at the ends) of the probabilities
  and valence/arousal; decisions (argmax, AU threshold) are taken after it.
* :func:`write_csv` -- ``OUT/<stem>.csv``: one row per frame (:func:`csv_columns`).
* :func:`write_submission` -- ``OUT/<EXPR|VA|AU>/<stem>.txt``: the ABAW test-phase files, a header line
  (the model's label names) then exactly one line per frame.
* :func:`score_predictions` -- reads submission files back and scores them against ABAW annotation files
  with the trainer's metrics (:class:`trainer.metrics.PredictionAccumulator`), like ``trainer.evaluate``.

Example::

    preds = postprocess(raw, no_face="interpolate", smooth_frames=15)
    write_csv("out/clip.csv", preds)
    write_submission("out", preds)
    scores = score_predictions("out", "data/annotations", split="validation")
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    HEADS,
    TASK_OF_HEAD,
    join_path,
)
from tfrecords_schema.atomic import incomplete_file

NO_FACE_MODEL = "model"
NO_FACE_INTERPOLATE = "interpolate"
NO_FACE_RULES = (NO_FACE_MODEL, NO_FACE_INTERPOLATE)
# ABAW test-phase folder of each head (REFERENCE.md §6).
SUBMISSION_DIRS = {HEAD_EXPRESSION: "EXPR", HEAD_VALENCE_AROUSAL: "VA", HEAD_ACTION_UNITS: "AU"}
AU_THRESHOLD = 0.5  # The model_info "outputs" threshold and trainer.metrics.action_unit_metrics' default.
SCORE_SPLITS = ("train", "validation", "all")
_BOX_COLUMNS = ("box_ymin", "box_xmin", "box_ymax", "box_xmax")


class PredictionFileError(ValueError):
    """A prediction file that does not match the model or the annotations (header, width, values)."""


@dataclasses.dataclass
class VideoPredictions:
    """Per-frame results for one video (one subject): row ``i`` is frame ``i + 1``.

    Attributes:
        stem: Output name (the video stem, ``_left``/``_right`` appended for a side).
        fps: Frame rate used for the timestamps.
        timestamps_us: int64 ``[N]``.
        decoded: bool ``[N]``: the frame decoded (a corrupt frame repeats the previous crop, without a face).
        has_face: bool ``[N]``: the face stage held a face.
        boxes: float32 ``[N, 4]`` normalised ``(ymin, xmin, ymax, xmax)``, NaN without a face.
        outputs: ``{head: float32 [N, D]}``: expression probabilities, (valence, arousal), AU probabilities.
        label_names: ``{head: names}`` of the model (``model_info.json``).
    """

    stem: str
    fps: float
    timestamps_us: np.ndarray
    decoded: np.ndarray
    has_face: np.ndarray
    boxes: np.ndarray
    outputs: dict[str, np.ndarray]
    label_names: dict[str, list[str]]

    @property
    def num_frames(self) -> int:
        """Frames of the video (the last decoded frame's index)."""
        return len(self.has_face)

    def expression_classes(self) -> np.ndarray:
        """int ``[N]``: the most probable expression of every frame."""
        return np.argmax(self.outputs[HEAD_EXPRESSION], axis=-1).astype(np.int64)

    def valence_arousal(self) -> np.ndarray:
        """float ``[N, 2]`` clipped to [-1, 1] (the model's tanh is in range; smoothing keeps it so)."""
        return np.clip(self.outputs[HEAD_VALENCE_AROUSAL], -1.0, 1.0)

    def action_units(self) -> np.ndarray:
        """int ``[N, K]``: 1 where the AU probability is >= 0.5."""
        return (self.outputs[HEAD_ACTION_UNITS] >= AU_THRESHOLD).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Frames without a face, smoothing.


def fill_no_face(values: np.ndarray, has_face: np.ndarray) -> np.ndarray:
    """The ``interpolate`` rule: outputs of no-face frames interpolated between the nearest face frames.

    Args:
        values: float ``[N, D]``.
        has_face: bool ``[N]``.

    Returns:
        A new array: face frames unchanged, no-face frames linearly interpolated in time between the face
        frames around them, the nearest face frame's values before the first and after the last one. A
        video without any face frame is returned unchanged (nothing to interpolate from).
    """
    values = np.asarray(values, np.float32)
    has_face = np.asarray(has_face, bool)
    faces = np.flatnonzero(has_face)
    if faces.size == 0 or faces.size == has_face.size:
        return values.copy()
    missing = np.flatnonzero(~has_face)
    out = values.copy()
    for column in range(values.shape[1]):
        # np.interp holds the end values outside [faces[0], faces[-1]]: the nearest face frame.
        out[missing, column] = np.interp(missing, faces, values[faces, column])
    return out


def smooth(values: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average over ``frames`` frames (``frames <= 1``: unchanged).

    Frame ``i`` averages frames ``i - (frames - 1) // 2 .. i + frames // 2``, the ones that exist (the
    window is shorter at the ends, so the first and last frames are not pulled towards zero).
    """
    values = np.asarray(values, np.float32)
    if frames <= 1 or len(values) == 0:
        return values.copy()
    n = len(values)
    before, after = (frames - 1) // 2, frames // 2
    sums = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0, dtype=np.float64)])
    lo = np.clip(np.arange(n) - before, 0, n)
    hi = np.clip(np.arange(n) + after + 1, 0, n)
    return ((sums[hi] - sums[lo]) / (hi - lo)[:, None]).astype(np.float32)


def postprocess(preds: VideoPredictions, no_face: str = NO_FACE_MODEL, smooth_frames: int = 0) -> VideoPredictions:
    """Applies the no-face rule, then smoothing, to every head's outputs; returns a new object.

    Raises:
        ValueError: an unknown rule or a negative ``smooth_frames``.
    """
    if no_face not in NO_FACE_RULES:
        raise ValueError(f"unknown no-face rule {no_face!r}; valid: {', '.join(NO_FACE_RULES)}")
    if smooth_frames < 0:
        raise ValueError(f"smoothing must be >= 0 frames, got {smooth_frames}")
    outputs = {}
    for head, values in preds.outputs.items():
        if no_face == NO_FACE_INTERPOLATE:
            values = fill_no_face(values, preds.has_face)
        outputs[head] = smooth(values, smooth_frames)
    return dataclasses.replace(preds, outputs=outputs)


# --------------------------------------------------------------------------------------------------
# Files.


def submission_header(head: str, label_names: dict[str, list[str]]) -> str:
    """The first line of an ABAW file of ``head``: the model's label names (the challenge's header)."""
    return ",".join(label_names[head])


def submission_path(out_dir: str, head: str, stem: str) -> str:
    """``OUT/<EXPR|VA|AU>/<stem>.txt``."""
    return join_path(out_dir, SUBMISSION_DIRS[head], f"{stem}.txt")


def csv_columns(label_names: dict[str, list[str]]) -> list[str]:
    """The CSV header: frame, timestamp, decoded, has_face, box, then the columns of the model's heads."""
    columns = ["frame", "timestamp_s", "decoded", "has_face", *_BOX_COLUMNS]
    if label_names.get(HEAD_EXPRESSION):
        columns += [f"expr_{name}" for name in label_names[HEAD_EXPRESSION]] + ["expr_index", "expr_label"]
    if label_names.get(HEAD_VALENCE_AROUSAL):
        columns += list(label_names[HEAD_VALENCE_AROUSAL])
    if label_names.get(HEAD_ACTION_UNITS):
        columns += [f"au_{name}" for name in label_names[HEAD_ACTION_UNITS]]
    return columns


def _write_text_lines(path: str, header: str, lines) -> str:
    """Writes ``header`` and ``lines`` through a temporary name (buffered in blocks, never all at once)."""
    import tensorflow as tf

    with incomplete_file(path) as tmp, tf.io.gfile.GFile(tmp, "w") as f:
        buffer = io.StringIO()
        buffer.write(header + "\n")
        for i, line in enumerate(lines):
            buffer.write(line + "\n")
            if i % 4096 == 4095:
                f.write(buffer.getvalue())
                buffer = io.StringIO()
        f.write(buffer.getvalue())
    return path


def write_csv(path: str, preds: VideoPredictions) -> str:
    """Writes ``preds`` as one CSV row per frame (columns: :func:`csv_columns`); returns ``path``."""
    names = preds.label_names
    has = {head: head in preds.outputs for head in HEADS}
    classes = preds.expression_classes() if has[HEAD_EXPRESSION] else None
    va = preds.valence_arousal() if has[HEAD_VALENCE_AROUSAL] else None

    def rows():
        for i in range(preds.num_frames):
            box = preds.boxes[i]
            fields = [str(i + 1), f"{preds.timestamps_us[i] / 1e6:.6f}", str(int(preds.decoded[i])),
                      str(int(preds.has_face[i]))]
            fields += [""] * 4 if np.isnan(box).any() else [f"{v:.5f}" for v in box]
            if classes is not None:
                fields += [f"{p:.6f}" for p in preds.outputs[HEAD_EXPRESSION][i]]
                fields += [str(classes[i]), names[HEAD_EXPRESSION][classes[i]]]
            if va is not None:
                fields += [f"{v:.6f}" for v in va[i]]
            if has[HEAD_ACTION_UNITS]:
                fields += [f"{p:.6f}" for p in preds.outputs[HEAD_ACTION_UNITS][i]]
            yield ",".join(fields)

    return _write_text_lines(path, ",".join(csv_columns(names)), rows())


def write_submission(out_dir: str, preds: VideoPredictions) -> dict[str, str]:
    """Writes the ABAW file of every head the model has; returns ``{head: path}``.

    Each file is the header line then exactly one line per frame of the video: EXPR an integer class,
    VA ``v,a`` in [-1, 1], AU one 0/1 per AU.
    """
    paths = {}
    for head in HEADS:
        if head not in preds.outputs:
            continue
        if head == HEAD_EXPRESSION:
            lines = (str(c) for c in preds.expression_classes())
        elif head == HEAD_VALENCE_AROUSAL:
            lines = (f"{v:.6f},{a:.6f}" for v, a in preds.valence_arousal())
        else:
            lines = (",".join(str(int(x)) for x in row) for row in preds.action_units())
        path = submission_path(out_dir, head, preds.stem)
        paths[head] = _write_text_lines(path, submission_header(head, preds.label_names), lines)
    return paths


def read_submission(path: str, head: str) -> tuple[list[str], np.ndarray]:
    """Reads an ABAW file: ``(header names, values)``; values int ``[N]``, float ``[N, 2]`` or int ``[N, K]``.

    Raises:
        PredictionFileError: a line with the wrong number of fields or a value that does not parse.
    """
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        lines = f.read().splitlines()
    if not lines:
        raise PredictionFileError(f"{path}: empty prediction file (no header line)")
    names = [n.strip() for n in lines[0].split(",")]
    width = 1 if head == HEAD_EXPRESSION else len(names)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != width:
            raise PredictionFileError(f"{path}:{number}: {len(fields)} fields, expected {width}: {line[:80]!r}")
        try:
            rows.append([float(v) for v in fields])
        except ValueError as e:
            raise PredictionFileError(f"{path}:{number}: not a number in {line[:80]!r}") from e
    values = np.asarray(rows, np.float64).reshape(len(rows), width)
    if head == HEAD_VALENCE_AROUSAL:
        return names, values.astype(np.float32)
    return names, (values[:, 0] if head == HEAD_EXPRESSION else values).astype(np.int64)


def read_has_face(csv_path: str) -> np.ndarray | None:
    """The ``has_face`` column of a prediction CSV as bool ``[N]``; None when the file does not exist."""
    import tensorflow as tf

    if not tf.io.gfile.exists(csv_path):
        return None
    with tf.io.gfile.GFile(csv_path, "r") as f:
        header = f.readline().rstrip("\n").split(",")
        column = header.index("has_face")
        return np.array([line.split(",")[column] == "1" for line in f.read().splitlines() if line], bool)


# --------------------------------------------------------------------------------------------------
# Scoring against annotation files.


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


def score_predictions(pred_dir: str, annotations: str, split: str = "validation") -> dict:
    """Scores the ABAW files under ``pred_dir`` against the ABAW annotation files of ``split``.

    Every annotated track of the split whose prediction file exists is scored, over its frames with a valid
    label that the predictions cover, with the trainer's whole-set metrics: the same figures as
    ``trainer.evaluate`` (``frames``, the ``with_face`` block from each video's CSV ``has_face`` column).
    Annotation tracks without a prediction file are listed, not scored; labelled frames past the end of a
    prediction file (the video has fewer frames than its annotation file) are counted in
    ``beyond_predictions``, as the conversion drops them as ``beyond_video_end``.

    Args:
        pred_dir: A ``predict`` output folder (``EXPR/``, ``VA/``, ``AU/`` and the CSVs).
        annotations: ABAW annotation root (any layout the adapter reads).
        split: ``validation``, ``train`` or ``all``.

    Returns:
        ``{head: metrics (with "frames" and "with_face"), "score", "per_video": rows, "videos_scored",
        "without_predictions": {head: [track ids]}, "beyond_predictions": {head: frames}}``.

    Raises:
        ValueError: unknown split, or nothing to score.
        PredictionFileError: a prediction file that does not match the annotations.
    """
    import tensorflow as tf

    from beam_jobs.sources import make_source
    from trainer.metrics import PredictionAccumulator

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
        present = [h for h in track_heads if tf.io.gfile.exists(paths[h])]
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
    from trainer.metrics import MAIN_METRIC

    out = {}
    for head in HEADS:
        if head in scores:
            metric = MAIN_METRIC[head]
            out[f"{head}/{metric}"] = scores[head][metric]
            out[f"{head}/with_face/{metric}"] = scores[head]["with_face"][metric]
    return out


def format_scores(scores: dict) -> str:
    """A few printable lines: the main figure of each head over every labelled frame and over face frames."""
    from trainer.metrics import MAIN_METRIC

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
