"""Evaluation reports: metrics.json, the pictures, the per-video CSV, printable summaries.

Files an evaluation writes (:func:`write_reports`), by head:

* every head: ``metrics.json`` (where the caller says) and ``per_video.csv``;
* expression: ``confusion_matrix.png`` (row-normalised percentages and counts per cell, colour bar) and
  ``confusion_matrix.json`` (the counts);
* valence/arousal: ``va_density.png`` (prediction vs truth, a 2-D histogram per dimension with its CCC);
* action units: ``au_f1.png`` (per-AU F1 bars).

Every picture's title names the dataset and split, the model, the epoch and the head's main figure
(:class:`ReportContext`). Every file is written through :mod:`tfrecords_schema.atomic`: it appears whole or
not at all, on local disks and object stores alike.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
from collections.abc import Mapping, Sequence

import numpy as np

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, join_path
from tfrecords_schema.atomic import write_atomically, write_json
from trainer.evaluation import plots
from trainer.evaluation.coverage import format_coverage

METRICS_FILENAME = "metrics.json"
PER_VIDEO_FILENAME = "per_video.csv"
CONFUSION_MATRIX_STEM = "confusion_matrix"
VA_DENSITY_FILENAME = "va_density.png"
AU_F1_FILENAME = "au_f1.png"
# Every file a report folder may hold, and the folder `affectstream evaluate` writes them to by default, next to the
# export it scores (trainer.evaluation.evaluate.default_report_dir).
REPORT_FILENAMES = (METRICS_FILENAME, PER_VIDEO_FILENAME, f"{CONFUSION_MATRIX_STEM}.png",
                    f"{CONFUSION_MATRIX_STEM}.json", VA_DENSITY_FILENAME, AU_F1_FILENAME)
EVALUATION_DIRNAME = "evaluation"


@dataclasses.dataclass(frozen=True)
class ReportContext:
    """What a report's pictures are about; their titles are built from it (:meth:`title`).

    Attributes:
        dataset: The dataset's name (``dataset_info.json``).
        split: The evaluated split.
        model: The model: its name (``backbone_rnn``), optionally where it lies (:func:`model_label`).
        epoch: The evaluated epoch (the exported best epoch after training), None when unknown.
    """

    dataset: str
    split: str
    model: str
    epoch: int | None

    def title(self, figure: str) -> str:
        """``"<dataset> <split>, <model>\\nepoch <n>, <figure>"`` (figure: e.g. ``"macro-F1 0.4123"``)."""
        epoch = "epoch unknown" if self.epoch is None else f"epoch {self.epoch}"
        return f"{self.dataset} {self.split}, {self.model}\n{epoch}, {figure}"


def model_label(name: str, model_dir: str | None = None) -> str:
    """A model's name for titles: ``name``, plus the last two parts of its folder (``"... from job/export"``)."""
    if not model_dir:
        return name
    parts = [p for p in model_dir.replace("\\", "/").rstrip("/").split("/") if p]
    return f"{name} from {posixpath.join(*parts[-2:])}" if parts else name


def head_figure(head: str, metrics: Mapping) -> str:
    """The main figure of one head's metrics, as picture titles show it (e.g. ``"macro-F1 0.4123"``)."""
    if head == HEAD_EXPRESSION:
        return f"macro-F1 {metrics['macro_f1']:.4f}"
    if head == HEAD_VALENCE_AROUSAL:
        return f"mean CCC {metrics['ccc_mean']:.4f}"
    return f"mean AU F1 {metrics['mean_f1']:.4f}"


def write_per_video_csv(path: str, rows: Sequence[Mapping]) -> str:
    """Writes the rows of :meth:`trainer.evaluation.metrics.PredictionAccumulator.per_video` as CSV; returns the path.

    Floats get 4 decimals; a missing value (a video without frames of a head) is an empty cell.
    """
    text = io.StringIO()
    columns = list(rows[0]) if rows else ["media_id", "frames", "face_rate"]
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return write_atomically(path, text.getvalue())


def confusion_matrix_png(metrics: Mapping, expression_names: Sequence[str], context: ReportContext) -> bytes:
    """The expression head's confusion matrix (``metrics[HEAD_EXPRESSION]``) as PNG bytes, titled by ``context``."""
    m = metrics[HEAD_EXPRESSION]
    return plots.render_confusion_matrix(m["confusion_matrix"], expression_names,
                                         context.title(head_figure(HEAD_EXPRESSION, m)))


def write_confusion_matrix(metrics: Mapping, expression_names: Sequence[str], report_dir: str,
                           context: ReportContext, *, stem: str = CONFUSION_MATRIX_STEM) -> dict[str, str]:
    """Writes ``<stem>.png`` (:func:`trainer.evaluation.plots.render_confusion_matrix`) and ``<stem>.json`` (the counts).

    Returns:
        ``{"png": path, "json": path}``.
    """
    m = metrics[HEAD_EXPRESSION]
    title = context.title(head_figure(HEAD_EXPRESSION, m))
    png_path = write_atomically(join_path(report_dir, f"{stem}.png"),
                                plots.render_confusion_matrix(m["confusion_matrix"], expression_names, title))
    percent, _ = plots.confusion_matrix_cells(m["confusion_matrix"])
    json_path = write_json(
        join_path(report_dir, f"{stem}.json"),
        {"class_names": list(expression_names), "matrix": m["confusion_matrix"],
         "row_percent": np.round(percent, 2).tolist(), "rows": "true class", "columns": "predicted class",
         "title": title},
    )
    return {"png": png_path, "json": json_path}


def write_reports(metrics: Mapping, per_video: Sequence[Mapping], expression_names: Sequence[str], *,
                  metrics_path: str, report_dir: str, context: ReportContext,
                  va_density: plots.VADensity | None = None) -> dict[str, str]:
    """Writes the files of one evaluation (see the module docstring).

    Args:
        metrics: The whole-split metrics (:meth:`trainer.evaluation.metrics.PredictionAccumulator.result` plus the
            caller's fields); written to ``metrics_path``.
        per_video: The per-video rows; written to ``report_dir/per_video.csv``.
        expression_names: Class names (the confusion matrix, when the expression head was evaluated).
        metrics_path: Where ``metrics.json`` goes (a job keeps it at its top, next to ``reports/``).
        report_dir: Where the pictures and the per-video CSV go.
        context: What the pictures' titles name.
        va_density: The valence/arousal frames, counted during the evaluation (``collect_predictions``'
            observer); the density plot is drawn when it holds frames.

    Returns:
        ``{name: path}`` of every file written.
    """
    paths = {"metrics_json": write_json(metrics_path, dict(metrics)),
             "per_video_csv": write_per_video_csv(join_path(report_dir, PER_VIDEO_FILENAME), per_video)}
    if HEAD_EXPRESSION in metrics:
        cm_paths = write_confusion_matrix(metrics, expression_names, report_dir, context)
        paths["confusion_matrix_png"] = cm_paths["png"]
        paths["confusion_matrix_json"] = cm_paths["json"]
    if HEAD_VALENCE_AROUSAL in metrics and va_density is not None and va_density.frames:
        m = metrics[HEAD_VALENCE_AROUSAL]
        png = plots.render_va_density(va_density, {"valence": m["ccc_valence"], "arousal": m["ccc_arousal"]},
                                      context.title(head_figure(HEAD_VALENCE_AROUSAL, m)))
        paths["va_density_png"] = write_atomically(join_path(report_dir, VA_DENSITY_FILENAME), png)
    if HEAD_ACTION_UNITS in metrics:
        m = metrics[HEAD_ACTION_UNITS]
        png = plots.render_au_f1(m["per_au"], m["mean_f1"], context.title(head_figure(HEAD_ACTION_UNITS, m)))
        paths["au_f1_png"] = write_atomically(join_path(report_dir, AU_F1_FILENAME), png)
    return paths


# ==================================================================================================
# Printable summaries.


def chance_macro_f1(supports: Sequence[int]) -> tuple[float, float]:
    """The macro-F1 of a uniform random guess over ``K = len(supports)`` classes: ``(balanced, this mix)``.

    A guess that picks each class with probability 1/K, whatever the frame, gets on class k (a share
    ``p_k`` of the frames) precision ``p_k`` and recall ``1/K``, so ``F1_k = 2 p_k / (1 + K p_k)`` (the
    large-sample value). With balanced classes every ``F1_k`` is ``1/K``, hence macro-F1 ``1/K``; with
    the given class mix (``supports``: frames per true class) it is the mean of the ``F1_k`` over all K
    classes (an absent class scores 0, as in the official macro-F1), which is never above ``1/K``.

    Raises:
        ValueError: no classes.
    """
    k = len(supports)
    if k == 0:
        raise ValueError("chance level of zero classes")
    counts = np.asarray(supports, np.float64)
    total = counts.sum()
    share = counts / total if total > 0 else np.full(k, 1.0 / k)
    return 1.0 / k, float(np.mean(2 * share / (1 + k * share)))


def _expression_line(m: Mapping) -> str:
    present = f" (over present classes {m['macro_f1_present']:.4f})" if "macro_f1_present" in m else ""
    return (f"macro-F1 {m['macro_f1']:.4f}{present}  accuracy {m['accuracy']:.4f}  2020 score {m['score_2020']:.4f}  "
            f"({m['frames']} frames)")


def _va_line(m: Mapping) -> str:
    return (f"CCC-V {m['ccc_valence']:.4f}  CCC-A {m['ccc_arousal']:.4f}  mean {m['ccc_mean']:.4f}  "
            f"({m['frames']} frames)")


def _au_line(m: Mapping) -> str:
    return (f"mean F1 {m['mean_f1']:.4f}  accuracy {m['accuracy']:.4f}  2020 score {m['score_2020']:.4f}  "
            f"({m['frames']} frames)")


_HEAD_LINES = ((HEAD_EXPRESSION, "expression", _expression_line),
               (HEAD_VALENCE_AROUSAL, "valence/arousal", _va_line),
               (HEAD_ACTION_UNITS, "action units", _au_line))


def _head_lines(metrics: Mapping, head: str, label: str, line) -> list[str]:
    """A head's line over every scored frame, then (when there) the same figures over the frames with a face."""
    m = metrics[head]
    if m.get("frames") == 0:  # Its figures are 0 by convention, not a measured disagreement: said as it is.
        return [f"{label}: not scored (no frame of this split is labelled for it)"]
    lines = [f"{label}: {line(m)}"]
    if m.get("with_face"):
        lines.append(f"  frames with a face: {line(m['with_face'])}")
    return lines


def format_metrics(metrics: Mapping) -> str:
    """A human-readable summary of an evaluation's metrics, with the per-class and per-AU figures."""
    lines = []
    for head, label, line in _HEAD_LINES:
        if head not in metrics:
            continue
        lines += _head_lines(metrics, head, label, line)
        if metrics[head].get("frames") == 0:
            continue
        if head == HEAD_EXPRESSION:
            for name, c in metrics[head]["per_class"].items():
                lines.append(f"  {name:>12s}: P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  "
                             f"n={c['support']}")
        if head == HEAD_ACTION_UNITS:
            lines.append("  " + "  ".join(f"{name} {v['f1']:.3f}" for name, v in metrics[head]["per_au"].items()))
    if "score" in metrics:
        # The criterion the best epoch is selected by, here on this split (not a figure of the selection split).
        lines.append(f"score (the epoch-selection criterion: sum over heads) on {metrics.get('split', 'this split')}: "
                     f"{metrics['score']:.4f}")
    return "\n".join(lines + _coverage_lines(metrics))


def _coverage_lines(metrics: Mapping) -> list[str]:
    """What the figures cover (:mod:`trainer.evaluation.coverage`), when the metrics say."""
    if "coverage" not in metrics:
        return []
    return [format_coverage(metrics["coverage"], metrics.get("split", "split"))]


def format_summary(metrics: Mapping, expression_names: Sequence[str]) -> str:
    """The final summary of a run, as the README shows it: one line per head, its face-frame line, chance level.

    Per head: the main figures over every scored frame (expression: macro-F1, macro-F1 over the present
    classes, accuracy, 2020 score, frames), then the same over the frames with a face. For expressions,
    the chance macro-F1 of a uniform random guess (:func:`chance_macro_f1`) as a number, for the balanced
    case and for this split's class mix.

    Args:
        metrics: An evaluation's metrics (``metrics.json``).
        expression_names: The dataset's class names (their count K sets the chance level; the per-class
            supports come from ``metrics``).
    """
    lines = []
    for head, label, line in _HEAD_LINES:
        if head not in metrics:
            continue
        lines += _head_lines(metrics, head, label, line)
        if head == HEAD_EXPRESSION and metrics[head].get("frames"):
            per_class = metrics[head]["per_class"]
            balanced, mix = chance_macro_f1([per_class.get(name, {}).get("support", 0) for name in expression_names])
            lines.append(f"chance macro-F1 with {len(expression_names)} classes: {balanced:.3f} (uniform random "
                         f"guess; {mix:.3f} with this split's class mix)")
    return "\n".join(lines + _coverage_lines(metrics))
