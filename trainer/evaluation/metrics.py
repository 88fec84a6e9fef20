"""Whole-set challenge metrics, computed with NumPy on accumulated predictions.

The official Aff-Wild2 / ABAW metrics are defined over the whole split, not as
averages of per-batch values (REFERENCE.md §1-2). :class:`PredictionAccumulator`
collects the per-frame predictions, targets and weights of every batch of an
evaluation; the functions below turn them into metrics. Only frames with weight
> 0 count: in evaluation, invalid labels and padding weigh 0, frames without a
face count (see :mod:`trainer.input.frames`).

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

from collections.abc import Mapping, Sequence

import numpy as np

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEADS


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


NO_PREDICTION = -1  # A predicted expression class meaning "no prediction": a miss of the frame's true class.


def expression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Expression metrics over every frame with weight > 0.

    Args:
        y_true: int ``[N]`` (any shape, flattened) true classes.
        y_pred: int ``[N]`` predicted classes, or float ``[N, C]`` scores (argmax is taken). A predicted class of
            :data:`NO_PREDICTION` is a frame without a prediction: it counts against its true class's recall and
            the accuracy, and in no class's precision (scoring a video that has no prediction file).
        weights: ``[N]`` frame weights; frames with weight <= 0 are ignored.
        class_names: The ``C`` class names, in index order.

    Returns:
        ``{"macro_f1" (official: mean F1 over all C classes), "macro_f1_present" (mean F1 over the classes
        present in truth or prediction; 0 when none), "accuracy", "score_2020" (0.67·macro_f1 + 0.33·acc),
        "frames", "per_class": {name: {"precision", "recall", "f1", "support"}}, "confusion_matrix"}`` (the
        confusion matrix counts the predicted frames; with misses, also ``"missed_frames"``).
    """
    num_classes = len(class_names)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim >= 2 and y_pred.shape[-1] == num_classes and y_pred.dtype.kind == "f":
        y_pred = y_pred.reshape(-1, num_classes).argmax(axis=-1)
    keep = _valid(weights)
    y_true = np.asarray(y_true).reshape(-1)[keep]
    y_pred = np.asarray(y_pred).reshape(-1)[keep]
    missed = y_pred == NO_PREDICTION
    cm = confusion_matrix(y_true[~missed], y_pred[~missed], num_classes)
    misses = np.bincount(np.asarray(y_true[missed], np.int64), minlength=num_classes)[:num_classes]
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1) + misses)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = int(cm.sum() + misses.sum())
    accuracy = float(np.trace(cm) / total) if total else 0.0
    macro_f1 = float(f1.mean()) if num_classes else 0.0
    present = (cm.sum(axis=1) + cm.sum(axis=0) + misses) > 0
    macro_f1_present = float(f1[present].mean()) if present.any() else 0.0
    result = {
        "macro_f1": macro_f1,
        "macro_f1_present": macro_f1_present,
        "accuracy": accuracy,
        "score_2020": 0.67 * macro_f1 + 0.33 * accuracy,
        "frames": total,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum() + misses[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }
    if missed.any():
        result["missed_frames"] = int(missed.sum())
    return result


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
        "frames": int(keep.sum()),
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
        "frames": int(keep.sum()),
        "per_au": {name: {"f1": float(f1[i]), "positives": int(y_true[:, i].sum())} for i, name in enumerate(au_names)},
    }


# The main metric of each head: the figure of the challenge, summed by :func:`primary_score`.
MAIN_METRIC = {HEAD_EXPRESSION: "macro_f1", HEAD_VALENCE_AROUSAL: "ccc_mean", HEAD_ACTION_UNITS: "mean_f1"}


def head_metrics(head: str, y_true: np.ndarray, y_pred: np.ndarray, expression_names: Sequence[str] = (),
                 action_unit_names: Sequence[str] = ()) -> dict:
    """The metrics of one head over every given frame (no weights: the frames are already selected).

    Args:
        head: One of :data:`tfrecords_schema.HEADS`.
        y_true: Targets ``[N]`` (expression) or ``[N, D]``.
        y_pred: Predicted classes ``[N]`` or scores ``[N, C]`` (expression), or ``[N, D]`` outputs.
        expression_names: Class names (expression).
        action_unit_names: AU names (action units).
    """
    ones = np.ones(len(y_true))
    if head == HEAD_EXPRESSION:
        return expression_metrics(y_true, y_pred, ones, expression_names)
    if head == HEAD_VALENCE_AROUSAL:
        return valence_arousal_metrics(np.reshape(y_true, (-1, 2)), np.reshape(y_pred, (-1, 2)), ones)
    k = len(action_unit_names)
    return action_unit_metrics(np.reshape(y_true, (-1, k)), np.reshape(y_pred, (-1, k)), ones, action_unit_names)


def primary_score(metrics: Mapping[str, dict]) -> float:
    """The score used to pick the best epoch: the sum over heads of each head's main metric.

    expression → macro-F1, valence_arousal → mean CCC, action_units → mean F1 (:data:`MAIN_METRIC`). A head that
    scored no frame (the split labels none for it) is left out: its 0 is no measure of the model.
    """
    return float(sum(metrics[head][MAIN_METRIC[head]] for head in HEADS
                     if head in metrics and metrics[head].get("frames", 1)))


class PredictionAccumulator:
    """Collects per-frame predictions of a whole split, then computes its metrics.

    Frames with weight <= 0 are dropped as batches arrive, so memory grows with the number of scored
    frames times the (small) per-frame output size, never with images. Each kept frame also keeps
    whether it had a face and which video (``media_id``) it belongs to, for the ``with_face`` blocks of
    :meth:`result` and the rows of :meth:`per_video`.

    Args:
        heads: Heads to collect, a subset of :data:`tfrecords_schema.HEADS`.
        expression_names: Class names (needed when the expression head is collected).
        action_unit_names: AU names (needed when the action-unit head is collected).
    """

    def __init__(self, heads: Sequence[str], expression_names: Sequence[str] = (),
                 action_unit_names: Sequence[str] = ()):
        unknown = sorted(set(heads) - set(HEADS))
        if unknown:
            raise ValueError(f"unknown heads {unknown}; valid: {list(HEADS)}")
        self.heads = tuple(heads)
        self.expression_names = list(expression_names)
        self.action_unit_names = list(action_unit_names)
        self._videos: dict[str, int] = {}  # media_id -> code, in order of first appearance
        # Per head: lists of per-batch arrays of the kept frames.
        self._parts: dict[str, dict[str, list[np.ndarray]]] = {
            h: {"true": [], "pred": [], "face": [], "video": []} for h in self.heads}
        # Frames scored by at least one head (for the per-video frame count and face rate).
        self._any: dict[str, list[np.ndarray]] = {"face": [], "video": []}
        # Labelled frames read, scored or not (None until a batch says which frames are labelled).
        self.labelled_frames_read: int | None = None

    def _video_codes(self, media_ids, batch: int, frames: int) -> np.ndarray:
        """int32 ``[batch * frames]``: the video code of every frame of the batch."""
        if media_ids is None:
            names = [""] * batch
        else:
            names = [m.decode("utf-8") if isinstance(m, bytes) else str(m) for m in np.asarray(media_ids).reshape(-1)]
        codes = np.array([self._videos.setdefault(n, len(self._videos)) for n in names], np.int32)
        return np.repeat(codes, frames)

    def update(self, targets: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray], has_face: np.ndarray | None = None,
               media_ids: np.ndarray | None = None, labelled: np.ndarray | None = None) -> None:
        """Adds one batch: arrays ``[B, T, ...]`` per head (tensors are converted with ``np.asarray``).

        A batch may carry a subset of the heads (those in ``weights``). The per-video ``frames`` and
        ``face_rate`` (:meth:`per_video`) count the frames that some head of *this call* scored, so give
        every head of a frame in one call to count it once.

        Args:
            targets, predictions, weights: ``{head: [B, T, ...]}``.
            has_face: bool ``[B, T]`` (None: every frame had a face).
            media_ids: ``[B]`` video names, bytes or str (None: one unnamed video).
            labelled: bool ``[B, T]``: the frames with a label of any task, scored or not (counted in
                :attr:`labelled_frames_read`; None: not counted).

        Raises:
            ValueError: ``weights`` holds none of the accumulator's heads.
        """
        heads = [h for h in self.heads if h in weights]
        if not heads:
            raise ValueError(f"the batch holds none of the heads {list(self.heads)} (it has {sorted(weights)})")
        w0 = np.asarray(weights[heads[0]])
        batch, frames = w0.shape[0], int(np.prod(w0.shape[1:], dtype=np.int64))
        face = np.ones(batch * frames, bool) if has_face is None else np.asarray(has_face, bool).reshape(-1)
        video = self._video_codes(media_ids, batch, frames)
        any_kept = np.zeros(batch * frames, bool)
        for head in heads:
            w = np.asarray(weights[head]).reshape(-1)
            keep = w > 0
            any_kept |= keep
            t = np.asarray(targets[head])
            p = np.asarray(predictions[head])
            if head == HEAD_EXPRESSION:
                t = t.reshape(-1)
                p = p.reshape(w.size, -1).argmax(axis=-1) if p.ndim >= 3 else p.reshape(-1)
            else:
                t = t.reshape(w.size, -1)
                p = p.reshape(w.size, -1)
            parts = self._parts[head]
            for name, values in (("true", t), ("pred", p), ("face", face), ("video", video)):
                parts[name].append(values[keep])
        self._any["face"].append(face[any_kept])
        self._any["video"].append(video[any_kept])
        if labelled is not None:
            self.labelled_frames_read = (self.labelled_frames_read or 0) + int(np.count_nonzero(labelled))

    @property
    def scored_frames(self) -> int:
        """Frames scored by at least one head so far."""
        return int(sum(len(v) for v in self._any["video"]))

    def _stacked(self, head: str) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts, axis=0) if parts else np.zeros((0,))
                for name, parts in self._parts[head].items()}

    def _metrics(self, head: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        return head_metrics(head, y_true, y_pred, self.expression_names, self.action_unit_names)

    def result(self) -> dict:
        """``{head: metrics, "score": float}`` (:func:`primary_score`).

        Each head's metrics cover every frame it scored (``frames``) and hold a ``with_face`` block: the
        same metrics over the frames that had a face (its own ``frames``).
        """
        out: dict = {}
        for head in self.heads:
            s = self._stacked(head)
            face = s["face"].astype(bool)
            out[head] = self._metrics(head, s["true"], s["pred"])
            out[head]["with_face"] = self._metrics(head, s["true"][face], s["pred"][face])
        out["score"] = primary_score(out)
        return out

    def per_video(self) -> list[dict]:
        """One row per video, in order of first appearance: its frames, face rate and main metrics per head.

        Columns: ``media_id``, ``frames`` (scored by any head), ``face_rate``, then per head
        ``<head>_frames`` and ``expression_macro_f1`` / ``valence_ccc``, ``arousal_ccc`` /
        ``action_units_mean_f1`` (None for a video without frames of that head).
        """
        names = sorted(self._videos, key=self._videos.get)
        any_video = np.concatenate(self._any["video"]) if self._any["video"] else np.zeros(0, np.int32)
        any_face = np.concatenate(self._any["face"]) if self._any["face"] else np.zeros(0, bool)
        rows = []
        for code, name in enumerate(names):
            mine = any_video == code
            frames = int(mine.sum())
            rows.append({"media_id": name, "frames": frames,
                         "face_rate": float(any_face[mine].mean()) if frames else None})
        for head in self.heads:
            s = self._stacked(head)
            for code, row in enumerate(rows):
                mine = s["video"] == code
                row[f"{head}_frames"] = int(mine.sum())
                m = self._metrics(head, s["true"][mine], s["pred"][mine]) if mine.any() else None
                row.update(_video_columns(head, m))
        return rows


def _video_columns(head: str, m: dict | None) -> dict:
    """The per-video CSV columns of one head's metrics (None: the video has no frames of that head)."""
    if head == HEAD_EXPRESSION:
        return {"expression_macro_f1": m and m["macro_f1"]}
    if head == HEAD_VALENCE_AROUSAL:
        return {"valence_ccc": m and m["ccc_valence"], "arousal_ccc": m and m["ccc_arousal"]}
    return {"action_units_mean_f1": m and m["mean_f1"]}
