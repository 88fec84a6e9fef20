"""Evaluation reports: metrics.json, confusion-matrix PNG + JSON, the per-video CSV, a printable summary.

Every file is written through :func:`tfrecords_schema.atomic.incomplete_file`: it appears whole or not at
all, on local disks and object stores alike.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, join_path
from tfrecords_schema.atomic import incomplete_file, write_atomically

METRICS_FILENAME = "metrics.json"
PER_VIDEO_FILENAME = "per_video.csv"
CONFUSION_MATRIX_STEM = "confusion_matrix"


def write_json(path: str, payload) -> str:
    """Writes deterministic JSON (sorted keys) to a local path or URL, atomically; returns the path."""
    return write_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_per_video_csv(path: str, rows: Sequence[Mapping]) -> str:
    """Writes the rows of :meth:`trainer.metrics.PredictionAccumulator.per_video` as CSV; returns the path.

    Floats get 4 decimals; a missing value (a video without frames of a head) is an empty cell.
    """
    text = io.StringIO()
    columns = list(rows[0]) if rows else ["media_id", "frames", "face_rate"]
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return write_atomically(path, text.getvalue())


def write_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], report_dir: str, *, title: str,
    stem: str = CONFUSION_MATRIX_STEM,
) -> dict[str, str]:
    """Writes ``<stem>.png`` (row-normalised colours, counts in cells) and ``<stem>.json``.

    Returns:
        ``{"png": path, "json": path}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.7 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    png_path = join_path(report_dir, f"{stem}.png")
    # matplotlib writes local files; render to one, then copy it in (URLs work too).
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as tmp:
        local = tmp.name
    try:
        fig.savefig(local, dpi=100)
        with incomplete_file(png_path) as partial:
            tf.io.gfile.copy(local, partial, overwrite=True)
    finally:
        plt.close(fig)
        os.remove(local)
    json_path = write_json(
        join_path(report_dir, f"{stem}.json"),
        {"class_names": list(class_names), "matrix": cm.tolist(), "rows": "true class", "columns": "predicted class",
         "title": title},
    )
    return {"png": png_path, "json": json_path}


def write_reports(metrics: Mapping, per_video: Sequence[Mapping], expression_names: Sequence[str], *,
                  metrics_path: str, report_dir: str, title: str) -> dict[str, str]:
    """Writes the files of one evaluation.

    Args:
        metrics: The whole-split metrics (:meth:`trainer.metrics.PredictionAccumulator.result` plus the
            caller's fields); written to ``metrics_path``.
        per_video: The per-video rows; written to ``report_dir/per_video.csv``.
        expression_names: Class names (the confusion matrix, when the expression head was evaluated).
        metrics_path: Where ``metrics.json`` goes (a job keeps it at its top, next to ``reports/``).
        report_dir: Where the pictures and the per-video CSV go.
        title: Title of the pictures.

    Returns:
        ``{name: path}`` of every file written.
    """
    paths = {"metrics_json": write_json(metrics_path, dict(metrics)),
             "per_video_csv": write_per_video_csv(join_path(report_dir, PER_VIDEO_FILENAME), per_video)}
    if HEAD_EXPRESSION in metrics:
        cm_paths = write_confusion_matrix(metrics[HEAD_EXPRESSION]["confusion_matrix"], expression_names,
                                          report_dir, title=title)
        paths["confusion_matrix_png"] = cm_paths["png"]
        paths["confusion_matrix_json"] = cm_paths["json"]
    return paths


def _face_only(m: Mapping, key: str) -> str:
    face = m.get("with_face")
    if not face:
        return ""
    return f"; face frames only: {face[key]:.4f} over {face['frames']}"


def format_metrics(metrics: Mapping) -> str:
    """A short human-readable summary of an evaluation's metrics."""
    lines = []
    if HEAD_EXPRESSION in metrics:
        m = metrics[HEAD_EXPRESSION]
        present = f" (over present classes {m['macro_f1_present']:.4f})" if "macro_f1_present" in m else ""
        lines.append(f"expression: macro-F1 {m['macro_f1']:.4f}{present}  accuracy {m['accuracy']:.4f}  "
                     f"2020 score {m['score_2020']:.4f}  ({m['frames']} frames{_face_only(m, 'macro_f1')})")
        for name, c in m["per_class"].items():
            lines.append(f"  {name:>12s}: P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  "
                         f"n={c['support']}")
    if HEAD_VALENCE_AROUSAL in metrics:
        m = metrics[HEAD_VALENCE_AROUSAL]
        lines.append(f"valence/arousal: CCC-V {m['ccc_valence']:.4f}  CCC-A {m['ccc_arousal']:.4f}  "
                     f"mean {m['ccc_mean']:.4f}  ({m['frames']} frames{_face_only(m, 'ccc_mean')})")
    if HEAD_ACTION_UNITS in metrics:
        m = metrics[HEAD_ACTION_UNITS]
        per_au = "  ".join(f"{name} {v['f1']:.3f}" for name, v in m["per_au"].items())
        lines.append(f"action units: mean F1 {m['mean_f1']:.4f}  accuracy {m['accuracy']:.4f}  "
                     f"2020 score {m['score_2020']:.4f}  ({m['frames']} frames{_face_only(m, 'mean_f1')})")
        lines.append(f"  {per_au}")
    if "score" in metrics:
        lines.append(f"selection score: {metrics['score']:.4f}")
    return "\n".join(lines)
