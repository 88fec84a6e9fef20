"""Training-time augmentation of uint8 clips, uint8 in and uint8 out.

Every frame of a clip gets the same augmentation (flip, crop jitter, contrast, brightness), so motion
between frames stays what the video shows. The training pipeline draws the parameters of a whole batch
of clips with :func:`augment_params` (one row per clip), then augments the batch with the function
:func:`batch_augmenter` returns (two XLA-compiled passes over the bytes: about half the CPU of plain ops).
:func:`augment_clip` does the same for one clip.

The pipelines deliver uint8 frames; the model scales them to [0, 1] itself (its ``Rescaling`` input layer,
:mod:`trainer.model.build`), on the accelerator. The augmentation computes in float32 and rounds back to uint8:
each pixel is within half a grey level (0.5 / 255) of the float result.

Example::

    augment = batch_augmenter(xla=True)
    params = augment_params(seed, crop_size=112, num_clips=8)     # float32 [8, 5]
    frames = augment(frames, num_valid, params)                   # uint8 [8, T, 112, 112, 3] -> same
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

# Augmentation strengths (brightness in units of the full pixel range).
BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.8, 1.2)
CROP_JITTER_FRACTION = 1 / 16
NUM_PARAMS = 5  # flip, shift y, shift x, contrast, brightness


def augment_params(seed: tf.Tensor, crop_size: int, num_clips: int) -> tf.Tensor:
    """float32 ``[num_clips, 5]``, one row per clip: flip (0/1), shift y, shift x (pixels), contrast, brightness.

    Drawn for a whole batch at once (a handful of ops per batch instead of per clip).

    Args:
        seed: int64 ``[2]`` stateless seed.
        crop_size: Side of the crops (the shift range is ``CROP_JITTER_FRACTION`` of it, at least 1 pixel).
        num_clips: Rows to draw.
    """
    flip_seed, shift_seed, contrast_seed, bright_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    margin = max(1, round(crop_size * CROP_JITTER_FRACTION))
    n = num_clips
    return tf.concat([
        tf.cast(tf.random.stateless_uniform([n, 1], flip_seed) < 0.5, tf.float32),
        tf.cast(tf.random.stateless_uniform([n, 2], shift_seed, -margin, margin + 1, tf.int32), tf.float32),
        tf.random.stateless_uniform([n, 1], contrast_seed, *CONTRAST_RANGE),
        tf.random.stateless_uniform([n, 1], bright_seed, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
    ], axis=1)


def _shift_indices(params: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Source rows and columns ``[B, S]`` of every clip: flip, then shift, edges replicated."""
    positions = tf.range(size)[None, :]
    flip = params[:, 0:1] > 0.5
    rows = tf.clip_by_value(positions + tf.cast(params[:, 1:2], tf.int32), 0, size - 1)
    cols = tf.clip_by_value(tf.where(flip, size - 1 - positions, positions) + tf.cast(params[:, 2:3], tf.int32), 0,
                            size - 1)
    return rows, cols


def _move_pixels(rows_of_bytes: tf.Tensor, rows: tf.Tensor, byte_cols: tf.Tensor) -> tf.Tensor:
    """Gathers rows ``[B, S]`` and byte columns ``[B, 3S]`` of frames laid out as ``[B, T, S, 3S]``."""
    moved = tf.gather(rows_of_bytes, rows, axis=2, batch_dims=1)
    return tf.gather(moved, byte_cols, axis=3, batch_dims=1)


def _tone(rows_of_bytes: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """``x * scale + offset`` per frame, rounded (offset holds the +0.5) and clipped to uint8."""
    pixels = tf.cast(rows_of_bytes, tf.float32)
    return tf.cast(tf.clip_by_value(pixels * scale + offset, 0.0, 255.0), tf.uint8)


def augment_batch(frames: tf.Tensor, num_valid: tf.Tensor, params: tf.Tensor, move_pixels=_move_pixels,
                  tone=_tone) -> tf.Tensor:
    """Augments a batch of uint8 clips ``[B, T, S, S, 3]`` with per-clip ``params`` ``[B, 5]`` -> uint8.

    Every frame of a clip gets the same flip, shift (edges replicated), contrast around the frame's mean
    (estimated on every 4th row and column) and brightness; the result is rounded to the nearest grey level
    and clipped to [0, 255]. Padding frames (past ``num_valid``) stay 0. The heavy passes see each frame as
    ``[S, 3S]`` bytes: with a minor axis of 3 (``[S, S, 3]``) XLA's CPU loops run about 3x slower.
    :func:`batch_augmenter` compiles ``move_pixels`` and ``tone``, each as its own XLA cluster (fused
    together, XLA's gathers are slower than the two passes).
    """
    _, t, size = frames.shape[0], frames.shape[1], frames.shape[2]
    rows, cols = _shift_indices(params, size)
    # The mean of the moved frame's every 4th row and column, gathered from the input (1/16 of it).
    sample = tf.gather(tf.gather(frames, rows[:, ::4], axis=2, batch_dims=1), cols[:, ::4], axis=3, batch_dims=1)
    mean = tf.reduce_mean(tf.cast(sample, tf.float32), axis=[2, 3, 4])[:, :, None, None]  # grey levels
    byte_cols = tf.reshape(cols[:, :, None] * 3 + tf.range(3)[None, None, :], [-1, size * 3])
    moved = move_pixels(tf.reshape(frames, [-1, t, size, size * 3]), rows, byte_cols)
    is_frame = tf.sequence_mask(num_valid, t, dtype=tf.float32)[:, :, None, None]
    factor = params[:, 3, None, None, None]
    delta = params[:, 4, None, None, None] * 255.0
    # (x - mean) * factor + mean + delta in grey levels; coefficients 0 on padding frames. Adding 0.5 and
    # truncating after the clip rounds to the nearest level.
    out = tone(moved, is_frame * factor, is_frame * ((1.0 - factor) * mean + delta) + 0.5)
    return tf.reshape(out, [-1, t, size, size, 3])


def batch_augmenter(xla: bool = True) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """:func:`augment_batch` with its two passes as ``tf.function``s, XLA-compiled when ``xla``.

    XLA turns each pass into one vectorised loop (about 2x less CPU than separate TensorFlow ops);
    ``xla=False`` is for platforms where XLA is unavailable. Fresh functions per call: nothing is compiled
    at import, and each pipeline owns its own.
    """
    move_pixels = tf.function(_move_pixels, jit_compile=xla)
    tone = tf.function(_tone, jit_compile=xla)

    def augment(frames, num_valid, params):
        return augment_batch(frames, num_valid, params, move_pixels, tone)

    return augment


def augment_clip(frames: tf.Tensor, num_valid: tf.Tensor, seed: tf.Tensor, crop_size: int,
                 xla: bool = True) -> tf.Tensor:
    """Augments one uint8 clip ``[T, S, S, 3]`` -> uint8, as the training pipeline does per batch.

    Args:
        frames: uint8 ``[T, S, S, 3]``; frames past ``num_valid`` are padding.
        num_valid: int32 scalar, the clip's real frames.
        seed: int64 ``[2]`` stateless seed of the clip's parameters.
        crop_size: ``S``.
        xla: Compile with XLA.
    """
    augment = batch_augmenter(xla)
    return augment(frames[None], num_valid[None], augment_params(seed, crop_size, 1))[0]
