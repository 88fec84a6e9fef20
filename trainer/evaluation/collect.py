"""A model's predictions over a whole evaluation dataset: every scored frame once, into the whole-set metrics.

:func:`collect_predictions` is shared by ``affectstream evaluate`` (:mod:`trainer.evaluation.evaluate`) and the
training job's per-epoch evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.evaluation.metrics import PredictionAccumulator


def predict_function(model):
    """``model(x, training=False)`` as one ``tf.function`` (batch size and time left free); trace it once per model."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


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
    """
    predict = predict or predict_function(model)
    acc = PredictionAccumulator(heads, info.expression_names, info.action_unit_names)
    for images, targets, weights, ids in dataset:
        outputs = predict(images)
        batch = ({h: targets[h].numpy() for h in heads}, {h: outputs[h].numpy() for h in heads},
                 {h: weights[h].numpy() for h in heads})
        has_face = ids["has_face"].numpy()
        labelled = ids["labelled"].numpy() if "labelled" in ids else None
        acc.update(*batch, has_face=has_face, media_ids=ids["media_id"].numpy(), labelled=labelled)
        for observer in observers:
            observer.update(*batch, has_face=has_face)
    return acc


def evaluate_model(model, dataset, heads: Sequence[str], info) -> dict:
    """The whole-split metrics of ``model`` on an eval dataset (:func:`collect_predictions`).

    Returns:
        ``{head: metrics (with "frames" and a "with_face" block), "score": float}``.
    """
    return collect_predictions(model, dataset, heads, info).result()
