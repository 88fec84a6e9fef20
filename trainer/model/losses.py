"""The training losses of every head, per frame weighted, scaled so a sum over replicas is the global batch's.

The losses take per-frame weights ``[B, T]``: invalid labels, frames without a face and padding weigh 0.

The valence-arousal loss is ``1 - CCC`` of the **global** batch: CCC is not a mean over frames, so a mean of
per-replica CCCs is not the global one. Each replica computes the weighted sums CCC needs
(:func:`ccc_sums`: Σw, Σwy, Σwy², Σwŷ, Σwŷ², Σwyŷ per dimension), all-reduces them over the replicas in sync
(``ReplicaContext.all_reduce``, whose gradient is the all-reduce of the gradients), and takes CCC of the sums
(:func:`ccc_from_sums`). Every replica then holds the global loss; each returns it divided by the replicas, so
the step's sum over replicas is the global loss, and the optimizer's sum of the replicas' gradients is its
gradient. Outside a distribution strategy, or with one replica, no collective runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from tfrecords_schema import HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL

_EPS = 1e-8


def ccc_sums(y_true: tf.Tensor, y_pred: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """The weighted sums of CCC, ``[6, D]``: Σw, Σwy, Σwy², Σwŷ, Σwŷ², Σwyŷ over the frames, per column.

    Args:
        y_true, y_pred: ``[..., D]``.
        weights: ``[...]`` (the leading dimensions of ``y_true``).
    """
    d = tf.shape(y_true)[-1]
    y = tf.reshape(tf.cast(y_true, tf.float32), [-1, d])
    p = tf.reshape(tf.cast(y_pred, tf.float32), [-1, d])
    w = tf.reshape(tf.cast(weights, tf.float32), [-1, 1])
    return tf.stack([tf.reduce_sum(w * tf.ones_like(y), 0), tf.reduce_sum(w * y, 0), tf.reduce_sum(w * y * y, 0),
                     tf.reduce_sum(w * p, 0), tf.reduce_sum(w * p * p, 0), tf.reduce_sum(w * y * p, 0)])


def ccc_from_sums(sums: tf.Tensor) -> tf.Tensor:
    """CCC per column ``[D]`` from :func:`ccc_sums` (summed over any number of batches or replicas).

    0 where there are no weighted frames or the denominator is 0. Moments from sums (``E[y²] - E[y]²``) in float32:
    the labels and predictions lie in [-1, 1], so the cancellation costs about 1e-7 of a unit variance.
    """
    total, sy, syy, sp, spp, syp = tf.unstack(sums)
    n = tf.maximum(total, _EPS)
    mt, mp = sy / n, sp / n
    vt = tf.maximum(syy / n - mt * mt, 0.0)
    vp = tf.maximum(spp / n - mp * mp, 0.0)
    cov = syp / n - mt * mp
    den = vt + vp + tf.square(mt - mp)
    return tf.where((den > _EPS) & (total > 0), 2.0 * cov / tf.maximum(den, _EPS), tf.zeros_like(den))


def weighted_ccc(y_true: tf.Tensor, y_pred: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """CCC per column over the frames, each frame weighted (weight 0 = not counted).

    Args:
        y_true, y_pred: ``[..., D]``.
        weights: ``[...]`` (the leading dimensions of ``y_true``).

    Returns:
        ``[D]`` CCC per column; 0 where there are no weighted frames or the denominator is 0.
    """
    return ccc_from_sums(ccc_sums(y_true, y_pred, weights))


def global_sums(sums: tf.Tensor) -> tf.Tensor:
    """``sums`` added over the replicas in sync (itself with one replica or outside a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return sums
    return context.all_reduce(tf.distribute.ReduceOp.SUM, sums)


def compute_losses(
    targets: Mapping[str, tf.Tensor],
    outputs: Mapping[str, tf.Tensor],
    weights: Mapping[str, tf.Tensor],
    global_frames: int | tf.Tensor,
    num_replicas: int = 1,
    au_positive_weights: np.ndarray | None = None,
) -> dict[str, tf.Tensor]:
    """Per-head losses of one (per-replica) batch, scaled so a sum over replicas is the global batch's loss.

    * expression: weighted sparse cross-entropy, summed and divided by ``global_frames``
      (global batch × T), as ``tf.nn.compute_average_loss`` does;
    * valence_arousal: ``1 − mean(CCC_v, CCC_a)`` of the global batch's weighted frames (sums all-reduced
      over the replicas, see the module docstring), / ``num_replicas``;
    * action_units: weighted mean-over-AUs binary cross-entropy, / ``global_frames``; with
      ``au_positive_weights`` each AU's positive term is multiplied by its weight
      (:func:`trainer.input.sampling.au_positive_weights`).

    Call it in the replica context of the step (``strategy.run``): the VA loss all-reduces there.

    Args:
        targets: ``{head: [B, T] int | [B, T, D] float}``.
        outputs: Model outputs (probabilities), float32.
        weights: ``{head: [B, T]}`` frame weights.
        global_frames: Global batch size × T.
        num_replicas: Replicas in sync.
        au_positive_weights: float ``[num AUs]`` or None (every positive weighs 1).
    """
    losses = {}
    denom = tf.cast(global_frames, tf.float32)
    eps = 1e-7
    for head, pred in outputs.items():
        w = tf.cast(weights[head], tf.float32)
        if head == HEAD_EXPRESSION:
            ce = keras.losses.sparse_categorical_crossentropy(tf.cast(targets[head], tf.int32), pred)
            losses[head] = tf.reduce_sum(w * ce) / denom
        elif head == HEAD_VALENCE_AROUSAL:
            ccc = ccc_from_sums(global_sums(ccc_sums(targets[head], pred, w)))
            losses[head] = (1.0 - tf.reduce_mean(ccc)) / float(num_replicas)
        else:
            y = tf.cast(targets[head], tf.float32)
            p = tf.clip_by_value(tf.cast(pred, tf.float32), eps, 1.0 - eps)
            positive = y * tf.math.log(p)
            if au_positive_weights is not None:
                positive *= tf.constant(au_positive_weights, tf.float32)
            bce = -(positive + (1.0 - y) * tf.math.log(1.0 - p))
            losses[head] = tf.reduce_sum(w * tf.reduce_mean(bce, axis=-1)) / denom
    return losses
