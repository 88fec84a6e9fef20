"""Training-time augmentation of uint8 clips, and the uint8 -> float32 scaling of every pipeline.

Every frame of a clip gets the same augmentation (flip, crop jitter, contrast, brightness), so motion
between frames stays what the video shows. The training pipeline draws one clip's parameters with
:func:`augment_params` while clips are still single (uint8), then augments and scales whole batches with
the function :func:`batch_augmenter` returns (one XLA-compiled function: about half the CPU of separate
ops). :func:`augment_clip` does the same for one clip.

Example::

    augment = batch_augmenter(xla=True)
    images = augment(frames, num_valid, params)   # uint8 [B, T, S, S, 3] -> float32 in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

# Augmentation strengths.
BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.8, 1.2)
CROP_JITTER_FRACTION = 1 / 16
NUM_PARAMS = 5  # flip, shift y, shift x, contrast, brightness


def to_float(frames: tf.Tensor) -> tf.Tensor:
    """uint8 frames (any leading shape) to float32 in [0, 1]."""
    return tf.cast(frames, tf.float32) * (1.0 / 255.0)


def augment_params(seed: tf.Tensor, crop_size: int) -> tf.Tensor:
    """float32 ``[5]``, one clip's augmentation: flip (0/1), shift y, shift x (pixels), contrast, brightness."""
    flip_seed, shift_seed, contrast_seed, bright_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    margin = max(1, round(crop_size * CROP_JITTER_FRACTION))
    return tf.concat([
        tf.cast(tf.random.stateless_uniform([1], flip_seed) < 0.5, tf.float32),
        tf.cast(tf.random.stateless_uniform([2], shift_seed, -margin, margin + 1, tf.int32), tf.float32),
        tf.random.stateless_uniform([1], contrast_seed, *CONTRAST_RANGE),
        tf.random.stateless_uniform([1], bright_seed, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
    ], axis=0)


def augment_batch(frames: tf.Tensor, num_valid: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Augments a batch of uint8 clips ``[B, T, S, S, 3]`` with per-clip ``params`` ``[B, 5]`` -> float32 [0, 1].

    Every frame of a clip gets the same flip, shift (edges replicated), contrast around the frame's mean
    (estimated on every 4th pixel) and brightness. Padding frames (past ``num_valid``) stay 0. Plain
    TensorFlow ops; :func:`batch_augmenter` compiles it.
    """
    size = frames.shape[2]
    positions = tf.range(size)[None, :]
    flip = params[:, 0:1] > 0.5
    shift_y = tf.cast(params[:, 1:2], tf.int32)
    shift_x = tf.cast(params[:, 2:3], tf.int32)
    rows = tf.clip_by_value(positions + shift_y, 0, size - 1)  # [B, S]
    cols = tf.clip_by_value(tf.where(flip, size - 1 - positions, positions) + shift_x, 0, size - 1)
    frames = tf.gather(frames, rows, axis=2, batch_dims=1)
    frames = tf.gather(frames, cols, axis=3, batch_dims=1)
    pixels = tf.cast(frames, tf.float32)
    mean = tf.reduce_mean(pixels[:, :, ::4, ::4, :], axis=[2, 3, 4], keepdims=True) * (1.0 / 255.0)
    is_frame = tf.sequence_mask(num_valid, tf.shape(frames)[1], dtype=tf.float32)[:, :, None, None, None]
    factor = params[:, 3, None, None, None, None]
    delta = params[:, 4, None, None, None, None]
    # (x - mean) * factor + mean + delta, with x = pixels / 255; coefficients 0 on padding frames.
    scale = is_frame * (factor / 255.0)
    offset = is_frame * ((1.0 - factor) * mean + delta)
    return tf.clip_by_value(pixels * scale + offset, 0.0, 1.0)


def batch_augmenter(xla: bool = True) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """:func:`augment_batch` as a ``tf.function``, XLA-compiled when ``xla``.

    XLA fuses the gathers and the elementwise arithmetic into a couple of passes (about 2x less CPU than
    separate TensorFlow ops); ``xla=False`` is for platforms where XLA is unavailable. A fresh function per
    call: nothing is compiled at import, and each pipeline owns its own.
    """
    return tf.function(augment_batch, jit_compile=xla)


def augment_clip(frames: tf.Tensor, num_valid: tf.Tensor, seed: tf.Tensor, crop_size: int,
                 xla: bool = True) -> tf.Tensor:
    """Augments one uint8 clip ``[T, S, S, 3]`` -> float32, as the training pipeline does per batch.

    Args:
        frames: uint8 ``[T, S, S, 3]``; frames past ``num_valid`` are padding.
        num_valid: int32 scalar, the clip's real frames.
        seed: int64 ``[2]`` stateless seed of the clip's parameters.
        crop_size: ``S``.
        xla: Compile with XLA.
    """
    augment = batch_augmenter(xla)
    return augment(frames[None], num_valid[None], augment_params(seed, crop_size)[None])[0]
