"""Evaluation reports: confusion-matrix PNG + JSON, metrics.json, a printable summary."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrecords_schema import join_path


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def write_json(path: str, payload) -> str:
    """Writes deterministic JSON (sorted keys) to a local path or URL; returns the path."""
    _write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def write_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], report_dir: str, *, title: str,
    stem: str = "confusion_matrix",
) -> dict[str, str]:
    """Writes ``<stem>.png`` (row-normalised colours, counts in cells) and ``<stem>.json``.

    Returns:
        ``{"png": path, "json": path}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tf.io.gfile.makedirs(report_dir)
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
    # matplotlib writes local files; go through a temp file so URLs work too.
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as tmp:
        local = tmp.name
    try:
        fig.savefig(local, dpi=100)
        tf.io.gfile.copy(local, png_path, overwrite=True)
    finally:
        plt.close(fig)
        os.remove(local)
    json_path = write_json(
        join_path(report_dir, f"{stem}.json"),
        {"class_names": list(class_names), "matrix": cm.tolist(), "rows": "true class", "columns": "predicted class",
         "title": title},
    )
    return {"png": png_path, "json": json_path}


def write_reports(metrics: Mapping, expression_names: Sequence[str], report_dir: str, *, title: str) -> dict[str, str]:
    """Writes the reports of one evaluation: ``metrics.json`` and, for expressions, the confusion matrix."""
    tf.io.gfile.makedirs(report_dir)
    paths = {"metrics": write_json(join_path(report_dir, "metrics.json"), dict(metrics))}
    if "expression" in metrics:
        cm_paths = write_confusion_matrix(metrics["expression"]["confusion_matrix"], expression_names, report_dir,
                                          title=title)
        paths["confusion_matrix_png"] = cm_paths["png"]
        paths["confusion_matrix_json"] = cm_paths["json"]
    return paths


def format_metrics(metrics: Mapping) -> str:
    """A short human-readable summary of an evaluation's metrics."""
    lines = []
    if "expression" in metrics:
        m = metrics["expression"]
        present = f" (over present classes {m['macro_f1_present']:.4f})" if "macro_f1_present" in m else ""
        lines.append(f"expression: macro-F1 {m['macro_f1']:.4f}{present}  accuracy {m['accuracy']:.4f}  "
                     f"2020 score {m['score_2020']:.4f}  ({m['num_frames']} frames)")
        for name, c in m["per_class"].items():
            lines.append(f"  {name:>12s}: P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  "
                         f"n={c['support']}")
    if "valence_arousal" in metrics:
        m = metrics["valence_arousal"]
        lines.append(f"valence/arousal: CCC-V {m['ccc_valence']:.4f}  CCC-A {m['ccc_arousal']:.4f}  "
                     f"mean {m['ccc_mean']:.4f}  ({m['num_frames']} frames)")
    if "action_units" in metrics:
        m = metrics["action_units"]
        per_au = "  ".join(f"{name} {v['f1']:.3f}" for name, v in m["per_au"].items())
        lines.append(f"action units: mean F1 {m['mean_f1']:.4f}  accuracy {m['accuracy']:.4f}  "
                     f"2020 score {m['score_2020']:.4f}  ({m['num_frames']} frames)")
        lines.append(f"  {per_au}")
    if "score" in metrics:
        lines.append(f"selection score: {metrics['score']:.4f}")
    return "\n".join(lines)
