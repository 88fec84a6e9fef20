"""Per-frame predictions of one video: the no-face rule, smoothing, the CSV and ABAW files, and scoring.

No model and no video here: :mod:`trainer.prediction.predict` fills a :class:`VideoPredictions` (one entry per frame
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
  with the trainer's metrics (:class:`trainer.evaluation.metrics.PredictionAccumulator`), like ``trainer.evaluation.evaluate``.

Example::

    preds = postprocess(raw, no_face="interpolate", smooth_frames=15)
    write_csv("out/clip.csv", preds)
    write_submission("out", preds)
    scores = score_predictions("out", "data/annotations", split="validation")
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import TYPE_CHECKING

import numpy as np

from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    HEADS,
    join_path,
    storage,
)
from tfrecords_schema.atomic import incomplete_file

if TYPE_CHECKING:
    from beam_jobs.media.video import StreamFacts

NO_FACE_MODEL = "model"
NO_FACE_INTERPOLATE = "interpolate"
NO_FACE_RULES = (NO_FACE_MODEL, NO_FACE_INTERPOLATE)
# ABAW test-phase folder of each head (REFERENCE.md §6).
SUBMISSION_DIRS = {HEAD_EXPRESSION: "EXPR", HEAD_VALENCE_AROUSAL: "VA", HEAD_ACTION_UNITS: "AU"}
AU_THRESHOLD = 0.5  # The model_info "outputs" threshold and trainer.evaluation.metrics.action_unit_metrics' default.
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
        stream: What reading the video found (rotation, variable frame rate, a truncated file), when known.
    """

    stem: str
    fps: float
    timestamps_us: np.ndarray
    decoded: np.ndarray
    has_face: np.ndarray
    boxes: np.ndarray
    outputs: dict[str, np.ndarray]
    label_names: dict[str, list[str]]
    stream: StreamFacts | None = None

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


def csv_field(text: str) -> str:
    """``text`` as one CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line break."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text


def submission_header(head: str, label_names: dict[str, list[str]]) -> str:
    """The first line of an ABAW file of ``head``: the model's label names (the challenge's header).

    Raises:
        PredictionFileError: a name the unquoted ABAW header cannot hold (a comma, quote, line break or NUL; the
            conversion refuses such names, so only a hand-made model has one).
    """
    from tfrecords_schema.tasks import label_name_problem

    for name in label_names[head]:
        problem = label_name_problem(name)
        if problem:
            raise PredictionFileError(f"the model's {head} label {name!r} cannot go into an ABAW header: {problem}")
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
    with incomplete_file(path) as tmp, storage.gfile(tmp).GFile(tmp, "w") as f:
        buffer = io.StringIO()
        buffer.write(header + "\n")
        for i, line in enumerate(lines):
            buffer.write(line + "\n")
            if i % 4096 == 4095:
                f.write(buffer.getvalue())
                buffer = io.StringIO()
        f.write(buffer.getvalue())
    return path


def _au_probability_text(p: float) -> str:
    """An AU probability to 6 decimals, on the side of :data:`AU_THRESHOLD` its decision took: one just under it
    would round to ``0.500000`` while the AU file holds 0 for it."""
    text = f"{p:.6f}"
    return "0.499999" if p < AU_THRESHOLD and text == f"{AU_THRESHOLD:.6f}" else text


def write_csv(path: str, preds: VideoPredictions) -> str:
    """Writes ``preds`` as one CSV row per frame (columns: :func:`csv_columns`); returns ``path``.

    A class name holding a comma, quote or line break is quoted (:func:`csv_field`), so the columns after it stay.
    """
    names = preds.label_names
    has = {head: head in preds.outputs for head in HEADS}
    classes = preds.expression_classes() if has[HEAD_EXPRESSION] else None
    va = preds.valence_arousal() if has[HEAD_VALENCE_AROUSAL] else None

    labels = [csv_field(name) for name in names.get(HEAD_EXPRESSION, [])]

    def rows():
        for i in range(preds.num_frames):
            box = preds.boxes[i]
            fields = [str(i + 1), f"{preds.timestamps_us[i] / 1e6:.6f}", str(int(preds.decoded[i])),
                      str(int(preds.has_face[i]))]
            fields += [""] * 4 if np.isnan(box).any() else [f"{v:.5f}" for v in box]
            if classes is not None:
                fields += [f"{p:.6f}" for p in preds.outputs[HEAD_EXPRESSION][i]]
                fields += [str(classes[i]), labels[classes[i]]]
            if va is not None:
                fields += [f"{v:.6f}" for v in va[i]]
            if has[HEAD_ACTION_UNITS]:
                fields += [_au_probability_text(p) for p in preds.outputs[HEAD_ACTION_UNITS][i]]
            yield ",".join(fields)

    return _write_text_lines(path, ",".join(csv_field(c) for c in csv_columns(names)), rows())


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
    with storage.gfile(path).GFile(path, "r") as f:
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


def read_frame_flags(csv_path: str) -> dict[str, np.ndarray] | None:
    """The ``has_face`` and ``decoded`` columns of a prediction CSV, bool ``[N]`` each; None without the file."""
    files = storage.gfile(csv_path)
    if not files.exists(csv_path):
        return None
    with files.GFile(csv_path, "r") as f:
        rows = csv.reader(io.StringIO(f.read()))  # Class names in the header and expr_label may be quoted.
        header = next(rows)
        columns = {name: header.index(name) for name in ("has_face", "decoded")}
        rows = [row for row in rows if row]
    return {name: np.array([row[i] == "1" for row in rows], bool) for name, i in columns.items()}


# --------------------------------------------------------------------------------------------------
# Scoring against annotation files.


