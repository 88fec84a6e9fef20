"""Training-time augmentation inside the model: :class:`ClipAugmentation`, uint8 clips in, uint8 clips out.

Every frame of a clip gets the same augmentation (flip, crop jitter, contrast, brightness), so motion between frames
stays what the video shows. It is the model's first layer (:mod:`trainer.model.build`), active only when the model
is called with ``training=True``: on a GPU host it runs on the accelerator with the rest of the training step, so
the CPU input pipeline only reads, parses and decodes (:mod:`trainer.input.pipeline`). At inference (evaluation,
``predict``, the SavedModel) it returns its input untouched.

The parameters of a batch are drawn with :func:`augment_params` (one row per clip) from a seed the layer draws from
its own ``keras.random.SeedGenerator`` (a model variable: saved in checkpoints, so a resumed job goes on with the same
stream; built after ``keras.utils.set_random_seed(seed)``, so the stream is the job's seed's) folded with the replica's
id (replicas of one step augment their clips differently). :func:`augment_batch` applies them. The model then scales
the pixels to [0, 1] itself (its ``Rescaling`` layer). The augmentation computes in float32 and rounds back to uint8:
each pixel is within half a grey level (0.5 / 255) of the float result.

Padding frames (past a short clip's end: all zero) are left as they are. The layer sees pixels only, so it tells
them by being all zero: a frame that is black in the data (the blank crop of frames before any face, which weighs 0
in the training loss anyway) is left unaugmented too.

Example::

    params = augment_params(seed, crop_size=112, num_clips=8)     # float32 [8, 5]
    frames = augment_batch(frames, params)                        # uint8 [8, T, 112, 112, 3] -> same
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.model.spec import SERIALIZATION_PACKAGE

# Augmentation strengths (brightness in units of the full pixel range).
BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.8, 1.2)
CROP_JITTER_FRACTION = 1 / 16
NUM_PARAMS = 5  # flip, shift y, shift x, contrast, brightness


def augment_params(seed: tf.Tensor, crop_size: int, num_clips) -> tf.Tensor:
    """float32 ``[num_clips, 5]``, one row per clip: flip (0/1), shift y, shift x (pixels), contrast, brightness.

    Drawn for a whole batch at once (a handful of ops per batch instead of per clip).

    Args:
        seed: int ``[2]`` stateless seed.
        crop_size: Side of the crops (the shift range is ``CROP_JITTER_FRACTION`` of it, at least 1 pixel).
        num_clips: Rows to draw (an int or a scalar tensor).
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


def augment_batch(frames: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Augments a batch of uint8 clips ``[B, T, S, S, 3]`` with per-clip ``params`` ``[B, 5]`` -> uint8.

    Every frame of a clip gets the same flip, shift (edges replicated), contrast around the frame's mean
    (estimated on every 4th row and column) and brightness; the result is rounded to the nearest grey level
    and clipped to [0, 255]. All-zero frames (padding) stay 0. The heavy passes see each frame as ``[S, 3S]``
    bytes: with a minor axis of 3 (``[S, S, 3]``) XLA's CPU loops run about 3x slower.
    """
    t, size = frames.shape[1], frames.shape[2]
    rows, cols = _shift_indices(params, size)
    # The mean of the moved frame's every 4th row and column, gathered from the input (1/16 of it).
    sample = tf.gather(tf.gather(frames, rows[:, ::4], axis=2, batch_dims=1), cols[:, ::4], axis=3, batch_dims=1)
    mean = tf.reduce_mean(tf.cast(sample, tf.float32), axis=[2, 3, 4])[:, :, None, None]  # grey levels
    byte_cols = tf.reshape(cols[:, :, None] * 3 + tf.range(3)[None, None, :], [-1, size * 3])
    rows_of_bytes = tf.reshape(frames, [-1, t, size, size * 3])
    moved = tf.gather(tf.gather(rows_of_bytes, rows, axis=2, batch_dims=1), byte_cols, axis=3, batch_dims=1)
    is_frame = tf.cast(tf.reduce_max(rows_of_bytes, axis=[2, 3]) > 0, tf.float32)[:, :, None, None]
    factor = params[:, 3, None, None, None]
    delta = params[:, 4, None, None, None] * 255.0
    # (x - mean) * factor + mean + delta in grey levels; coefficients 0 on padding frames. Adding 0.5 and
    # truncating after the clip rounds to the nearest level.
    scale, offset = is_frame * factor, is_frame * ((1.0 - factor) * mean + delta) + 0.5
    out = tf.cast(tf.clip_by_value(tf.cast(moved, tf.float32) * scale + offset, 0.0, 255.0), tf.uint8)
    return tf.reshape(out, [-1, t, size, size, 3])


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ClipAugmentation(keras.layers.Layer):
    """Per-clip flip, crop jitter, contrast and brightness of uint8 clips ``[B, T, S, S, 3]``, with ``training=True``.

    See the module docstring. At inference, or with ``enabled=False`` (``--augment false``), the input is returned
    as it is; the layer (and its seed variable) is in the model either way, so the checkpoint layout does not
    depend on the option.

    Args:
        enabled: Augment in training.
        seed: Seed of the layer's stream (None: drawn from Keras' global seed, ``keras.utils.set_random_seed``).
    """

    def __init__(self, enabled: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.enabled, self.seed = bool(enabled), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, frames, training=None):
        """uint8 ``[B, T, S, S, 3]`` -> the same shape and dtype."""
        if not (training and self.enabled):
            return frames
        # A stateless seed from the layer's stream, different on every replica of a distributed step.
        seed = tf.cast(keras.random.randint([2], 0, 2**31 - 1, seed=self.seed_generator, dtype="int32"), tf.int64)
        replica = tf.distribute.get_replica_context()
        if replica is not None:
            seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(replica.replica_id_in_sync_group, tf.int64))
        params = augment_params(seed, int(frames.shape[2]), tf.shape(frames)[0])
        return augment_batch(frames, params)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, frames, training=None):
        return keras.KerasTensor(frames.shape, dtype=frames.dtype)

    def get_config(self):
        return {**super().get_config(), "enabled": self.enabled, "seed": self.seed}
