"""The training losses of every head, per frame weighted, scaled so a sum over replicas is the global batch's mean.

The losses take per-frame weights ``[B, T]``: invalid labels, frames without a face and padding weigh 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from tfrecords_schema import HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL


def weighted_ccc(y_true: tf.Tensor, y_pred: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """CCC per column over the frames, each frame weighted (weight 0 = not counted).

    Args:
        y_true, y_pred: ``[..., D]``.
        weights: ``[...]`` (the leading dimensions of ``y_true``).

    Returns:
        ``[D]`` CCC per column; 0 where there are no weighted frames or the denominator is 0.
    """
    d = tf.shape(y_true)[-1]
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1, d])
    y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1, d])
    w = tf.reshape(tf.cast(weights, tf.float32), [-1, 1])
    total = tf.reduce_sum(w)
    safe_total = tf.maximum(total, 1e-8)
    mt = tf.reduce_sum(w * y_true, 0) / safe_total
    mp = tf.reduce_sum(w * y_pred, 0) / safe_total
    vt = tf.reduce_sum(w * tf.square(y_true - mt), 0) / safe_total
    vp = tf.reduce_sum(w * tf.square(y_pred - mp), 0) / safe_total
    cov = tf.reduce_sum(w * (y_true - mt) * (y_pred - mp), 0) / safe_total
    den = vt + vp + tf.square(mt - mp)
    return tf.where(den > 1e-8, 2.0 * cov / tf.maximum(den, 1e-8), tf.zeros_like(den))


def compute_losses(
    targets: Mapping[str, tf.Tensor],
    outputs: Mapping[str, tf.Tensor],
    weights: Mapping[str, tf.Tensor],
    global_frames: int | tf.Tensor,
    num_replicas: int = 1,
) -> dict[str, tf.Tensor]:
    """Per-head losses of one (per-replica) batch, scaled so a sum over replicas is the mean.

    * expression: weighted sparse cross-entropy, summed and divided by ``global_frames``
      (global batch × T), as ``tf.nn.compute_average_loss`` does;
    * valence_arousal: ``1 − mean(CCC_v, CCC_a)`` over the batch's weighted frames, / ``num_replicas``;
    * action_units: weighted mean-over-AUs binary cross-entropy, / ``global_frames``.

    Args:
        targets: ``{head: [B, T] int | [B, T, D] float}``.
        outputs: Model outputs (probabilities), float32.
        weights: ``{head: [B, T]}`` frame weights.
        global_frames: Global batch size × T.
        num_replicas: Replicas in sync.
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
            ccc = weighted_ccc(targets[head], pred, w)
            losses[head] = (1.0 - tf.reduce_mean(ccc)) / float(num_replicas)
        else:
            y = tf.cast(targets[head], tf.float32)
            p = tf.clip_by_value(pred, eps, 1.0 - eps)
            bce = -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
            losses[head] = tf.reduce_sum(w * tf.reduce_mean(bce, axis=-1)) / denom
    return losses
