"""The training-time augmentation is the model's first layer (trainer.model.augment.ClipAugmentation).

It keeps the semantics the CPU pipeline had (per-clip flip, crop jitter, contrast around the frame's mean,
brightness, uint8 in and out, within half a grey level of the float reference, padding untouched), runs only with
``training=True``, follows the job's seed, and the export serves without it. (Replicas of one distributed step
augment differently: tests/test_distributed.py.)
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.model import augment
from trainer.model import build as model_lib
from trainer.model import spec as spec_lib


def _reference_augment(clip, num_valid, params):
    """The augmentation as documented, in float64 NumPy on [0, 1] pixels (the float32 pipeline of before)."""
    flip, shift_y, shift_x, factor, delta = params
    size = clip.shape[1]
    positions = np.arange(size)
    rows = np.clip(positions + int(shift_y), 0, size - 1)
    cols = np.clip((size - 1 - positions if flip > 0.5 else positions) + int(shift_x), 0, size - 1)
    x = clip[:, rows][:, :, cols].astype(np.float64) / 255.0
    mean = x[:, ::4, ::4, :].mean(axis=(1, 2, 3), keepdims=True)
    out = np.clip((x - mean) * factor + mean + delta, 0.0, 1.0)
    out[num_valid:] = 0.0
    return out


def test_the_batch_augmentation_matches_the_float_reference_within_half_a_grey_level():
    rng = np.random.default_rng(0)
    clips = rng.integers(1, 256, (24, 5, 20, 20, 3), dtype=np.uint8)
    clips[..., 0] = np.clip(clips[..., 0].astype(int) + 60, 0, 255)  # saturated pixels exercise the clip
    clips[:, 4] = 0  # a padding frame in every clip
    params = augment.augment_params(tf.constant([3, 1], tf.int64), 20, 24)
    out = augment.augment_batch(tf.constant(clips), params).numpy()
    assert out.dtype == np.uint8 and out.shape == clips.shape
    shares = []
    for clip, result, row in zip(clips, out, params.numpy()):
        expected = _reference_augment(clip, 4, row)
        np.testing.assert_allclose(result / 255.0, expected, atol=0.5 / 255 + 1e-5)
        assert not result[4].any()  # the padding frame stays black
        shares.append((result[:4] / 255.0).mean() - expected[:4].mean())
        assert row[0] in (0.0, 1.0) and abs(row[1]) <= 1 and abs(row[2]) <= 1  # 20 px: jitter of 1 pixel
    # Rounding is unbiased: the mean pixel over every draw stays that of the float augmentation.
    assert abs(float(np.mean(shares))) < 0.05 / 255
    draws = params.numpy()
    assert 0 < draws[:, 0].mean() < 1 and draws[:, 3].min() >= 0.8 and draws[:, 3].max() <= 1.2
    assert np.abs(draws[:, 4]).max() <= augment.BRIGHTNESS_DELTA


def _layer_model(enabled=True, seed=5):
    frames = keras.Input((6, 16, 16, 3), dtype="uint8")
    return keras.Model(frames, augment.ClipAugmentation(enabled, seed=seed)(frames))


def test_the_layer_augments_every_frame_of_a_clip_alike_in_training_only():
    frame = tf.random.stateless_uniform([1, 1, 16, 16, 3], [1, 2], 1, 256, tf.int32)
    clips = tf.cast(tf.tile(frame, [4, 6, 1, 1, 1]), tf.uint8).numpy()
    clips[:, 5] = 0  # padding
    model = _layer_model()
    out = model(clips, training=True).numpy()
    assert out.dtype == np.uint8
    assert (out[:, :5] == out[:, :1]).all() and not out[:, 5].any()  # one transform per clip; padding untouched
    assert len({out[b, 0].tobytes() for b in range(4)}) == 4  # each clip its own transform
    again = model(clips, training=True).numpy()
    assert not np.array_equal(again, out)  # the layer's stream moves on from call to call
    np.testing.assert_array_equal(model(clips, training=False).numpy(), clips)  # inference: untouched
    np.testing.assert_array_equal(model(clips).numpy(), clips)
    np.testing.assert_array_equal(_layer_model(enabled=False)(clips, training=True).numpy(), clips)


def test_the_stream_is_the_seeds():
    clips = np.random.default_rng(1).integers(1, 256, (3, 6, 16, 16, 3), dtype=np.uint8)

    def draws(seed):
        keras.utils.set_random_seed(seed)  # what a training job does before it builds its model
        model = _layer_model(seed=None)
        return [model(clips, training=True).numpy() for _ in range(2)]

    first, again, other = draws(4), draws(4), draws(5)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = spec_lib.ModelSpec(heads=("expression",), num_expression_classes=3, crop_size=16, cnn_width=0.125,
                              feature_dim=8, rnn_units=(4,))
    model = model_lib.build_model(spec)
    folder = str(tmp_path_factory.mktemp("export") / "saved_model")
    model.export(folder, verbose=False)
    return model, spec, folder


def test_the_export_serves_without_the_augmentation(exported):
    model, spec, folder = exported
    assert isinstance(model.get_layer(model_lib.AUGMENT_LAYER), augment.ClipAugmentation)
    plain = model_lib.build_model(spec_lib.ModelSpec(**{**spec.__dict__, "augment": False}))
    plain.set_weights(model.get_weights())
    clips = np.random.default_rng(3).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    loaded = tf.saved_model.load(folder)
    served = loaded.serve(tf.constant(clips))
    expected = plain(clips, training=False)["expression"].numpy()
    np.testing.assert_allclose(served["expression"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model(clips, training=False)["expression"].numpy(), expected, atol=1e-6)
