"""A model's predictions over a whole evaluation dataset: every scored frame once, into the whole-set metrics.

:func:`collect_predictions` is shared by ``affectstream evaluate`` (:mod:`trainer.evaluation.evaluate`) and the
training job's per-epoch evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainer.evaluation.metrics import PredictionAccumulator


class NonFiniteOutputError(ValueError):
    """A model's output is NaN or infinite on a scored frame: scores of it would mean nothing (the argmax of NaN is
    class 0, a NaN CCC's denominator is not > 0 and became 0.0)."""


def predict_function(model):
    """``model(x, training=False)`` as one ``tf.function`` (batch size and time left free); trace it once per model."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)


def collect_predictions(model, dataset, heads: Sequence[str], info, predict=None,
                        observers: Sequence = ()) -> PredictionAccumulator:
    """Runs ``model`` over a finite eval dataset and collects every scored frame's prediction.

    Args:
        model: A Keras model mapping ``[B, T, S, S, 3]`` to ``{head: [B, T, ...]}``.
        dataset: :func:`trainer.input.pipeline.make_eval_dataset` output, ``(images, targets, weights, ids)`` batches.
        heads: Heads to score.
        info: The dataset's ``DatasetInfo`` (label names).
        predict: ``predict_function(model)``, kept by a caller that evaluates the same model repeatedly (a
            training job, every epoch) so it is traced once; None traces a new one.
        observers: Objects that also see every batch, ``update(targets, outputs, weights, has_face)`` with
            ``{head: array}`` (e.g. :class:`trainer.evaluation.tensorboard.ValidationLoss`, :class:`trainer.evaluation.plots.VADensity`).

    Returns:
        The filled :class:`trainer.evaluation.metrics.PredictionAccumulator` (``.result()``, ``.per_video()``).

    Raises:
        NonFiniteOutputError: the model's output is not finite on a frame it is scored on.
    """
    predict = predict or predict_function(model)
    acc = PredictionAccumulator(heads, info.expression_names, info.action_unit_names)
    if "labelled" in dataset.element_spec[3]:  # (0 read, not unknown, when every record is skipped.)
        acc.labelled_frames_read = 0
    for images, targets, weights, ids in dataset:
        outputs = predict(images)
        batch = ({h: targets[h].numpy() for h in heads}, {h: outputs[h].numpy() for h in heads},
                 {h: weights[h].numpy() for h in heads})
        _check_finite(batch[1], batch[2], model)
        has_face = ids["has_face"].numpy()
        labelled = ids["labelled"].numpy() if "labelled" in ids else None
        acc.update(*batch, has_face=has_face, media_ids=ids["media_id"].numpy(), labelled=labelled)
        for observer in observers:
            observer.update(*batch, has_face=has_face)
    return acc


def _check_finite(outputs: dict, weights: dict, model) -> None:
    for head, out in outputs.items():
        scored = weights[head].reshape(-1) > 0
        bad = int(np.count_nonzero(~np.isfinite(out.reshape(scored.size, -1)).all(axis=1) & scored))
        if bad:
            raise NonFiniteOutputError(f"the model {getattr(model, 'name', '')!r} outputs NaN or infinity for {head} on "
                                       f"{bad} scored frame(s) of a batch: its scores would mean nothing (check the "
                                       "export's weights, or the model it was imported from)")


def evaluate_model(model, dataset, heads: Sequence[str], info) -> dict:
    """The whole-split metrics of ``model`` on an eval dataset (:func:`collect_predictions`).

    Returns:
        ``{head: metrics (with "frames" and a "with_face" block), "score": float}``.
    """
    return collect_predictions(model, dataset, heads, info).result()
