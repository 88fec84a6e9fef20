"""What a training job logs to TensorBoard once per epoch, and the validation loss behind it.

Two runs under ``JOB/logs`` (``tensorboard --logdir JOB/logs``):

* ``train`` (x axis: training step): ``loss/loss`` and ``loss/<head>`` every ``--log_every`` steps (logged by
  :mod:`trainer.train`), and :data:`TAG_LEARNING_RATE` at the end of every epoch (:func:`log_learning_rate`);
* ``<select split>`` (:func:`evaluation_run`; x axis: epoch; :func:`log_epoch`): the selection score, every scalar metric of each
  head and its face-frame main metric, the validation loss (:class:`ValidationLoss`), the F1 of every
  expression class and of every AU, and the confusion-matrix picture (:func:`trainer.evaluation.reports.confusion_matrix_png`).

:data:`TAGS` describes every tag; the README's "Watch training" section lists the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEADS

TRAIN_RUN = "train"
TAG_SCORE = "score"
TAG_LEARNING_RATE = "learning_rate"
VALIDATION_LOSS_PREFIX = "val_loss"
TOTAL_LOSS = "loss"  # the name trainer.training.step gives the sum of the head losses
TAG_CONFUSION_MATRIX = f"{HEAD_EXPRESSION}/confusion_matrix"

# Every tag (a pattern where it holds a name), its run and what it shows. The selection run is named after the split
# the epochs are selected on (--select_split: "selection" by default, "validation" for data without one).
TAGS = {
    f"{TOTAL_LOSS}/{TOTAL_LOSS}, {TOTAL_LOSS}/<head>": "train run, per --log_every steps: the training loss "
    "(total and per head) of the last step",
    TAG_LEARNING_RATE: "train run, per epoch: the optimizer's learning rate at the end of the epoch",
    TAG_SCORE: "selection run, per epoch: the selection score (sum over heads of macro-F1 / mean CCC / mean AU F1)",
    "<head>/<metric>": "selection run, per epoch: every scalar metric of the head (expression/macro_f1, "
    "expression/accuracy, valence_arousal/ccc_valence, action_units/mean_f1, ...)",
    "<head>/with_face/<main metric>": "selection run, per epoch: the head's main metric over frames with a face",
    f"{VALIDATION_LOSS_PREFIX}/{TOTAL_LOSS}, {VALIDATION_LOSS_PREFIX}/<head>": "selection run, per epoch: the "
    "training loss function on that split (frames with a face, no class weights)",
    f"{HEAD_EXPRESSION}/f1/<class>, {HEAD_ACTION_UNITS}/f1/<AU>": "selection run, per epoch: F1 of every "
    "expression class / action unit",
    TAG_CONFUSION_MATRIX: "selection run, per epoch (Images tab): the confusion matrix, % of each true class "
    "and counts",
}


def evaluation_run(split: str) -> str:
    """The run (folder under ``JOB/logs``) of the per-epoch evaluation of ``split``: the split's name, or
    ``<split>_eval`` for a split named like the training run (``--select_split train``), whose step-axis
    curves would otherwise share one run with the epoch-axis ones."""
    return f"{split}_eval" if split == TRAIN_RUN else split


class ValidationLoss:
    """The training loss (:func:`trainer.model.losses.compute_losses`) over an evaluation, batch by batch.

    An observer of :func:`trainer.evaluation.collect.collect_predictions`. Each batch's losses are computed as a
    training step computes them (scaled by the batch's ``B × T`` frame slots) on the frames the training
    loss counts: labelled and, with ``require_face``, with a face (evaluation batches carry no class
    weights). The result is the mean over batches weighted by their frame slots; for expression and AUs
    that is exactly ``sum(weight · loss) / frame slots`` over the whole split, for valence/arousal the
    mean of the per-batch ``1 − CCC``, as the training curve shows it.

    Args:
        require_face: Leave frames without a face out, as the training loss does.
        au_positive_weights: The training loss's per-AU positive weights (``--au_positive_weight``), or None.
    """

    def __init__(self, require_face: bool = True, au_positive_weights: np.ndarray | None = None):
        self.require_face = require_face
        self.au_positive_weights = au_positive_weights
        self._sums: dict[str, float] = {}
        self._slots = 0

    def update(self, targets: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray], has_face: np.ndarray | None = None) -> None:
        """Adds one batch: ``{head: [B, T, ...]}`` arrays, ``has_face`` bool ``[B, T]`` (None: every frame)."""
        from trainer.model.losses import compute_losses

        heads = [h for h in HEADS if h in weights and h in outputs]
        if not heads:
            raise ValueError(f"the batch holds no head's outputs and weights (outputs {sorted(outputs)}, "
                             f"weights {sorted(weights)})")
        slots = int(np.asarray(weights[heads[0]]).size)
        face = 1.0 if has_face is None or not self.require_face else np.asarray(has_face, np.float32)
        counted = {h: np.asarray(weights[h], np.float32) * face for h in heads}
        losses = compute_losses({h: targets[h] for h in heads}, {h: outputs[h] for h in heads}, counted,
                                global_frames=slots, au_positive_weights=self.au_positive_weights)
        values = {h: float(v) for h, v in losses.items()}
        values[TOTAL_LOSS] = sum(values.values())
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value * slots
        self._slots += slots

    def result(self) -> dict[str, float]:
        """``{"loss": total, head: loss}``; empty when no batch was added."""
        return {name: total / self._slots for name, total in self._sums.items()} if self._slots else {}


def learning_rate_of(optimizer) -> float:
    """The optimizer's current learning rate (a schedule's value at the current step; through loss scaling)."""
    import keras

    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def log_learning_rate(writer, step: int, optimizer) -> None:
    """Writes :data:`TAG_LEARNING_RATE` at ``step`` (the training run's x axis is the step)."""
    import tensorflow as tf

    with writer.as_default(step=step):
        tf.summary.scalar(TAG_LEARNING_RATE, learning_rate_of(optimizer))
    writer.flush()


def _log_metric_scalars(result: Mapping) -> None:
    """The selection score, every scalar of each head, its face-frame main metric and per-class / per-AU F1."""
    import tensorflow as tf

    from trainer.evaluation.metrics import MAIN_METRIC

    tf.summary.scalar(TAG_SCORE, result["score"])
    for head in HEADS:
        values = result.get(head)
        if not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            if isinstance(value, (int, float)) and name != "frames":
                tf.summary.scalar(f"{head}/{name}", value)
        if values.get("with_face"):
            tf.summary.scalar(f"{head}/with_face/{MAIN_METRIC[head]}", values["with_face"][MAIN_METRIC[head]])
        per_label = values.get("per_class") or values.get("per_au") or {}
        for label, figures in per_label.items():
            tf.summary.scalar(f"{head}/f1/{label}", figures["f1"])


def log_epoch(writer, epoch: int, result: Mapping, *, validation_loss: Mapping[str, float] | None = None,
              expression_names: Sequence[str] = (), context=None) -> None:
    """Writes one epoch's evaluation to ``writer`` at step ``epoch`` (the tags of the validation run, :data:`TAGS`).

    Args:
        writer: The validation run's summary writer (a no-op writer on non-chief workers: nothing is
            rendered then).
        epoch: The evaluated epoch.
        result: The evaluation's metrics (:meth:`trainer.evaluation.metrics.PredictionAccumulator.result`).
        validation_loss: :meth:`ValidationLoss.result`, or None.
        expression_names: The class names (the confusion-matrix picture).
        context: A :class:`trainer.evaluation.reports.ReportContext` titling the confusion-matrix picture; None: no picture.
    """
    import tensorflow as tf

    from trainer.evaluation import reports

    with writer.as_default(step=epoch):
        if not bool(tf.summary.should_record_summaries()):
            return
        _log_metric_scalars(result)
        for name, value in (validation_loss or {}).items():
            tf.summary.scalar(f"{VALIDATION_LOSS_PREFIX}/{name}", value)
        if HEAD_EXPRESSION in result and context is not None:
            png = reports.confusion_matrix_png(result, expression_names, context)
            tf.summary.image(TAG_CONFUSION_MATRIX, tf.image.decode_png(png, channels=3)[tf.newaxis])
    writer.flush()
