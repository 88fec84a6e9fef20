"""Whole-set challenge metrics, computed with NumPy on accumulated predictions.

The official Aff-Wild2 / ABAW metrics are defined over the whole split, not as
averages of per-batch values (REFERENCE.md §1-2). :class:`PredictionAccumulator`
collects the per-frame predictions, targets and weights of every batch of an
evaluation; the functions below turn them into metrics. Only frames with weight
> 0 count (invalid labels, frames without a face and padding have weight 0).

Conventions:
    * F1 of a class that is neither present nor predicted is 0 (scikit-learn's
      ``zero_division=0``). ``macro_f1`` -- the official figure, used for model
      selection and ``score_2020`` -- averages over *all* classes of the dataset,
      as the ABAW challenge does (mean F1 over all classes), so a class absent from
      the split and never predicted counts 0. ``macro_f1_present`` averages only
      over the classes present in the truth or in the predictions (scikit-learn's
      ``f1_score(average="macro")`` default), for comparison with such tools.
    * CCC of a constant series is 0 (the denominator would be 0 otherwise only
      when both series are the same constant; then it is defined as 0 too).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

EXPRESSION = "expression"
VALENCE_AROUSAL = "valence_arousal"
ACTION_UNITS = "action_units"


def _valid(weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights, np.float64).reshape(-1) > 0


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]``: row = true class, column = predicted class."""
    y_true = np.asarray(y_true, np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, np.int64).reshape(-1)
    if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"true classes must lie in [0, {num_classes}), got {y_true.min()}..{y_true.max()}")
    if y_pred.size and (y_pred.min() < 0 or y_pred.max() >= num_classes):
        raise ValueError(f"predicted classes must lie in [0, {num_classes}), got {y_pred.min()}..{y_pred.max()}")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1


def expression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Expression metrics over every frame with weight > 0.

    Args:
        y_true: int ``[N]`` (any shape, flattened) true classes.
        y_pred: int ``[N]`` predicted classes, or float ``[N, C]`` scores (argmax is taken).
        weights: ``[N]`` frame weights; frames with weight <= 0 are ignored.
        class_names: The ``C`` class names, in index order.

    Returns:
        ``{"macro_f1" (official: mean F1 over all C classes), "macro_f1_present" (mean F1 over the classes
        present in truth or prediction; 0 when none), "accuracy", "score_2020" (0.67·macro_f1 + 0.33·acc),
        "num_frames", "per_class": {name: {"precision", "recall", "f1", "support"}}, "confusion_matrix"}``.
    """
    num_classes = len(class_names)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim >= 2 and y_pred.shape[-1] == num_classes and y_pred.dtype.kind == "f":
        y_pred = y_pred.reshape(-1, num_classes).argmax(axis=-1)
    keep = _valid(weights)
    y_true = np.asarray(y_true).reshape(-1)[keep]
    y_pred = np.asarray(y_pred).reshape(-1)[keep]
    cm = confusion_matrix(y_true, y_pred, num_classes)
    precision, recall, f1 = precision_recall_f1(cm)
    total = int(cm.sum())
    accuracy = float(np.trace(cm) / total) if total else 0.0
    macro_f1 = float(f1.mean()) if num_classes else 0.0
    present = (cm.sum(axis=1) + cm.sum(axis=0)) > 0
    macro_f1_present = float(f1[present].mean()) if present.any() else 0.0
    return {
        "macro_f1": macro_f1,
        "macro_f1_present": macro_f1_present,
        "accuracy": accuracy,
        "score_2020": 0.67 * macro_f1 + 0.33 * accuracy,
        "num_frames": total,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def concordance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient of two series (population moments).

    ``CCC = 2·cov(x, y) / (var(x) + var(y) + (mean(x) − mean(y))²)``; 0 for empty input
    or a zero denominator.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.size == 0:
        return 0.0
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    den = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / den) if den > 0 else 0.0


def valence_arousal_metrics(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> dict:
    """CCC of valence and arousal over every frame with weight > 0, and their mean.

    Args:
        y_true: float ``[N, 2]`` (any leading shape) true valence, arousal.
        y_pred: float ``[N, 2]`` predictions.
        weights: ``[N]`` frame weights.
    """
    keep = _valid(weights)
    y_true = np.asarray(y_true, np.float64).reshape(-1, 2)[keep]
    y_pred = np.asarray(y_pred, np.float64).reshape(-1, 2)[keep]
    ccc_v = concordance_correlation(y_true[:, 0], y_pred[:, 0])
    ccc_a = concordance_correlation(y_true[:, 1], y_pred[:, 1])
    return {
        "ccc_valence": ccc_v,
        "ccc_arousal": ccc_a,
        "ccc_mean": (ccc_v + ccc_a) / 2,
        "num_frames": int(keep.sum()),
    }


def action_unit_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, au_names: Sequence[str], threshold: float = 0.5
) -> dict:
    """Per-AU F1, mean F1, accuracy and the 2020 score (0.5·mean F1 + 0.5·accuracy).

    Args:
        y_true: 0/1 ``[N, K]`` (any leading shape).
        y_pred: probabilities ``[N, K]``; a frame-AU is positive when ``>= threshold``.
        weights: ``[N]`` frame weights.
        au_names: The ``K`` AU names.
        threshold: Decision threshold on the probabilities.
    """
    k = len(au_names)
    keep = _valid(weights)
    y_true = np.asarray(y_true).reshape(-1, k)[keep] > 0.5
    y_pred = np.asarray(y_pred, np.float64).reshape(-1, k)[keep] >= threshold
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    accuracy = float((y_true == y_pred).mean()) if y_true.size else 0.0
    mean_f1 = float(f1.mean()) if k else 0.0
    return {
        "mean_f1": mean_f1,
        "accuracy": accuracy,
        "score_2020": 0.5 * mean_f1 + 0.5 * accuracy,
        "num_frames": int(keep.sum()),
        "per_au": {name: {"f1": float(f1[i]), "positives": int(y_true[:, i].sum())} for i, name in enumerate(au_names)},
    }


def primary_score(metrics: Mapping[str, dict]) -> float:
    """The score used to pick the best epoch: the sum over heads of each head's main metric.

    expression → macro-F1, valence_arousal → mean CCC, action_units → mean F1.
    """
    score = 0.0
    if EXPRESSION in metrics:
        score += metrics[EXPRESSION]["macro_f1"]
    if VALENCE_AROUSAL in metrics:
        score += metrics[VALENCE_AROUSAL]["ccc_mean"]
    if ACTION_UNITS in metrics:
        score += metrics[ACTION_UNITS]["mean_f1"]
    return float(score)


class PredictionAccumulator:
    """Collects per-frame predictions of a whole split, then computes its metrics.

    Frames with weight <= 0 are dropped as batches arrive, so memory grows with the
    number of valid frames times the (small) per-frame output size, never with images.

    Args:
        heads: Heads to collect, a subset of ``("expression", "valence_arousal", "action_units")``.
        expression_names: Class names (needed when ``"expression"`` is a head).
        action_unit_names: AU names (needed when ``"action_units"`` is a head).
    """

    def __init__(self, heads: Sequence[str], expression_names: Sequence[str] = (),
                 action_unit_names: Sequence[str] = ()):
        unknown = sorted(set(heads) - {EXPRESSION, VALENCE_AROUSAL, ACTION_UNITS})
        if unknown:
            raise ValueError(f"unknown heads {unknown}; valid: {[EXPRESSION, VALENCE_AROUSAL, ACTION_UNITS]}")
        self.heads = tuple(heads)
        self.expression_names = list(expression_names)
        self.action_unit_names = list(action_unit_names)
        self._true: dict[str, list[np.ndarray]] = {h: [] for h in self.heads}
        self._pred: dict[str, list[np.ndarray]] = {h: [] for h in self.heads}

    def update(self, targets: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray]) -> None:
        """Adds one batch: arrays ``[B, T, ...]`` per head (tensors are converted with ``np.asarray``)."""
        for head in self.heads:
            w = np.asarray(weights[head]).reshape(-1)
            keep = w > 0
            t = np.asarray(targets[head])
            p = np.asarray(predictions[head])
            if head == EXPRESSION:
                t = t.reshape(-1)
                p = p.reshape(w.size, -1).argmax(axis=-1) if p.ndim >= 3 else p.reshape(-1)
            else:
                t = t.reshape(w.size, -1)
                p = p.reshape(w.size, -1)
            self._true[head].append(t[keep])
            self._pred[head].append(p[keep])

    def _stack(self, head: str, which: dict) -> np.ndarray:
        parts = which[head]
        if not parts:
            return np.zeros((0,))
        return np.concatenate(parts, axis=0)

    def result(self) -> dict:
        """``{head: metrics}`` for every head, plus ``"score"`` (:func:`primary_score`)."""
        out: dict = {}
        for head in self.heads:
            t = self._stack(head, self._true)
            p = self._stack(head, self._pred)
            ones = np.ones(len(t))
            if head == EXPRESSION:
                out[head] = expression_metrics(t, p, ones, self.expression_names)
            elif head == VALENCE_AROUSAL:
                out[head] = valence_arousal_metrics(t.reshape(-1, 2), p.reshape(-1, 2), ones)
            else:
                k = len(self.action_unit_names)
                out[head] = action_unit_metrics(t.reshape(-1, k), p.reshape(-1, k), ones, self.action_unit_names)
        out["score"] = primary_score(out)
        return out
