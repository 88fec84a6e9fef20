"""The pictures of an evaluation, rendered to PNG bytes: confusion matrix, valence/arousal density, per-AU F1.

Each ``render_*`` function returns PNG bytes (the caller writes them with
:func:`tfrecords_schema.atomic.write_atomically`, or logs them to TensorBoard) and stores its title in the
PNG's ``Title`` text chunk, so a picture names what it shows also to a program. Matplotlib runs on its
``Agg`` back end (no display). :class:`VADensity` is the streaming 2-D histogram the density plot draws:
memory is fixed by the bins, never by the number of frames.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from tfrecords_schema import HEAD_VALENCE_AROUSAL

VA_BINS = 40
VA_RANGE = (-1.0, 1.0)
VA_DIMENSIONS = ("valence", "arousal")
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_bytes(fig, title: str) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Title": title})
    finally:
        plt.close(fig)
    return buffer.getvalue()


def confusion_matrix_cells(matrix: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """What each confusion-matrix cell shows: ``(percent, counts)``.

    Args:
        matrix: Counts ``[C, C]``, row = true class, column = predicted class.

    Returns:
        float ``[C, C]`` percentages of the row (of the true class's frames; each row sums to 100, a class
        without frames is a row of 0) and the int64 counts.

    Raises:
        ValueError: a matrix that is not square or holds negative counts.
    """
    counts = np.asarray(matrix, np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square [C, C], got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("a confusion matrix holds counts >= 0")
    rows = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * counts, rows, out=np.zeros(counts.shape, np.float64), where=rows > 0)
    return percent, counts


def render_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """The confusion matrix as PNG bytes: colour = % of the true class, each cell "percent (count)".

    A colour bar gives the scale (0-100 % of the row); each true class's label carries its frame count.
    """
    percent, counts = confusion_matrix_cells(matrix)
    n = len(class_names)
    if percent.shape != (n, n):
        raise ValueError(f"{n} class names for a {percent.shape} confusion matrix")
    plt = _pyplot()
    size = max(5.0, 0.95 * n + 3.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0)
    colour_bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colour_bar.set_label("% of the true class's frames")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=[f"{name} (n={int(counts[i].sum())})" for i, name in enumerate(class_names)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (frames)")
    ax.set_title(title, fontsize=10)
    font = 8 if n <= 10 else 6
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{percent[i, j]:.1f}%\n({counts[i, j]})", ha="center", va="center", fontsize=font,
                    color="white" if percent[i, j] > 50 else "black")
    fig.tight_layout()
    return _png_bytes(fig, title)


class VADensity:
    """Streaming 2-D histograms of prediction vs truth for valence and for arousal (``VA_BINS`` bins a side).

    An observer of :func:`trainer.evaluation.collect.collect_predictions`: it counts every frame that the metrics
    score (weight > 0, frames without a face included), so the density shows the frames behind the CCC.
    Values are clipped into ``VA_RANGE``.
    """

    def __init__(self, bins: int = VA_BINS):
        self.edges = np.linspace(VA_RANGE[0], VA_RANGE[1], bins + 1)
        self.counts = np.zeros((len(VA_DIMENSIONS), bins, bins), np.int64)  # [dimension, truth bin, prediction bin]

    @property
    def frames(self) -> int:
        """Frames counted so far."""
        return int(self.counts[0].sum())

    def update(self, targets: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray], has_face: np.ndarray | None = None) -> None:
        """Adds one batch ``{head: [B, T, ...]}``; a batch without the valence/arousal head adds nothing."""
        del has_face  # the density shows every scored frame, as the metrics do
        if HEAD_VALENCE_AROUSAL not in weights:
            return
        keep = np.asarray(weights[HEAD_VALENCE_AROUSAL]).reshape(-1) > 0
        truth = np.clip(np.asarray(targets[HEAD_VALENCE_AROUSAL], np.float64).reshape(-1, 2)[keep], *VA_RANGE)
        pred = np.clip(np.asarray(outputs[HEAD_VALENCE_AROUSAL], np.float64).reshape(-1, 2)[keep], *VA_RANGE)
        for d in range(len(VA_DIMENSIONS)):
            hist, _, _ = np.histogram2d(truth[:, d], pred[:, d], bins=[self.edges, self.edges])
            self.counts[d] += hist.astype(np.int64)


def render_va_density(density: VADensity, ccc: Mapping[str, float], title: str) -> bytes:
    """Prediction vs truth, one 2-D histogram per dimension (log colour scale), its CCC in each panel's title.

    Args:
        density: The counted frames.
        ccc: ``{"valence": ccc, "arousal": ccc}``.
        title: The figure's title.
    """
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(VA_DIMENSIONS), figsize=(11.5, 5.4), layout="constrained")
    peak = max(int(density.counts.max()), 1)
    image = None
    for ax, dimension, counts in zip(axes, VA_DIMENSIONS, density.counts):
        # x = truth, y = prediction: transpose the [truth, prediction] counts for imshow's [row=y, column=x].
        masked = np.ma.masked_equal(counts.T, 0)
        image = ax.imshow(masked, origin="lower", extent=(*VA_RANGE, *VA_RANGE), cmap="viridis",
                          norm=LogNorm(vmin=1, vmax=max(peak, 2)), interpolation="nearest", aspect="equal")
        ax.plot(VA_RANGE, VA_RANGE, color="tab:red", linewidth=1, linestyle="--", label="prediction = truth")
        ax.set_xlabel(f"true {dimension}")
        ax.set_ylabel(f"predicted {dimension}")
        ax.set_title(f"{dimension}: CCC {ccc[dimension]:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    colour_bar = fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    colour_bar.set_label(f"frames per bin ({density.frames} frames)")
    fig.suptitle(title, fontsize=10)
    return _png_bytes(fig, title)


def render_au_f1(per_au: Mapping[str, Mapping], mean_f1: float, title: str) -> bytes:
    """Per-AU F1 as bars (in the given AU order), each labelled with its F1 and its positive frames.

    Args:
        per_au: ``{au: {"f1", "positives"}}`` (:func:`trainer.evaluation.metrics.action_unit_metrics`).
        mean_f1: Drawn as a dashed line.
        title: The figure's title.
    """
    names = list(per_au)
    f1 = np.array([per_au[name]["f1"] for name in names], np.float64)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2.0), 4.8))
    bars = ax.bar(range(len(names)), f1, color="tab:blue")
    for bar, name, value in zip(bars, names, f1):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}\nn={per_au[name]['positives']}",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(mean_f1, color="tab:red", linestyle="--", linewidth=1, label=f"mean F1 {mean_f1:.3f}")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_ylim(0.0, 1.15)
    ax.set_ylabel("F1 (threshold 0.5); n = positive frames")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _png_bytes(fig, title)
