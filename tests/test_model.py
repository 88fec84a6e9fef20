"""Model building (offline), output shapes/dtypes, masked losses, exports that load in a fresh process."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.model import backbones, losses
from trainer.model import build as model_lib
from trainer.model import spec as spec_lib


def tiny_spec(**kw):
    base = {"heads": ("expression", "valence_arousal", "action_units"), "num_expression_classes": 4,
            "num_action_units": 3, "crop_size": 32, "backbone": "simple_cnn", "cnn_width": 0.125, "feature_dim": 16,
            "rnn_units": (8, 4)}
    base.update(kw)
    return spec_lib.ModelSpec(**base)


@pytest.mark.parametrize("temporal", ["gru", "lstm"])
def test_simple_cnn_model_outputs_every_head_per_frame(temporal):
    m = model_lib.build_model(tiny_spec(temporal=temporal))
    out = m(np.random.rand(2, 5, 32, 32, 3).astype("float32"))
    assert out["expression"].shape == (2, 5, 4)
    assert out["valence_arousal"].shape == (2, 5, 2)
    assert out["action_units"].shape == (2, 5, 3)
    np.testing.assert_allclose(out["expression"].numpy().sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.abs(out["valence_arousal"].numpy()) <= 1)
    assert all(v.dtype == tf.float32 for v in out.values())


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_application_backbones_build_offline_with_no_weights(backbone):
    m = model_lib.build_model(tiny_spec(backbone=backbone, heads=("expression",)))
    out = m(np.random.rand(1, 2, 32, 32, 3).astype("float32"))
    assert out["expression"].shape == (1, 2, 4)


def test_backbone_weights_load_from_a_local_file(tmp_path):
    spec = tiny_spec(heads=("expression",))
    cnn = backbones.build_backbone(spec)
    path = str(tmp_path / "cnn.weights.h5")
    cnn.save_weights(path)
    loaded = backbones.build_backbone(tiny_spec(heads=("expression",), backbone_weights=path))
    for a, b in zip(cnn.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_backbone_message_lists_valid_values():
    with pytest.raises(ValueError, match="simple_cnn, mobilenet_v3_small, efficientnet_b0"):
        tiny_spec(backbone="resnet")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        tiny_spec(backbone_weights=str(tmp_path / "nope.h5"))


@pytest.mark.parametrize("precision, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_computes_in_16_bits_outputs_float32_and_leaves_the_global_policy_alone(precision, compute):
    import keras

    before = keras.mixed_precision.global_policy().name
    m = model_lib.build_model(tiny_spec(), precision=precision)
    assert keras.mixed_precision.global_policy().name == before == "float32"
    assert m.get_layer("gru_1").compute_dtype == compute and m.get_layer("gru_1").variable_dtype == "float32"
    out = m(np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32, 3), dtype=np.uint8))
    assert all(v.dtype == tf.float32 for v in out.values())
    with pytest.raises(ValueError, match="valid values: float32, mixed_float16, mixed_bfloat16"):
        model_lib.build_model(tiny_spec(), precision="float8")
    # A float32 build stays float32 whatever the global policy says.
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        plain = model_lib.build_model(tiny_spec())
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert plain.get_layer("gru_1").compute_dtype == "float32"


def test_weighted_ccc_ignores_zero_weight_frames():
    t = tf.constant([[0.1, 0.2], [0.5, -0.3], [0.9, 0.7], [5.0, -9.0]])
    p = tf.constant([[0.1, 0.2], [0.5, -0.3], [0.9, 0.7], [-4.0, 3.0]])
    w = tf.constant([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(losses.weighted_ccc(t, p, w).numpy(), [1.0, 1.0], rtol=1e-5)


def test_losses_ignore_masked_frames():
    targets = {"expression": tf.constant([[0, 1]]), "action_units": tf.constant([[[1.0], [0.0]]])}
    good = {"expression": tf.constant([[[0.9, 0.1], [0.1, 0.9]]]), "action_units": tf.constant([[[0.9], [0.1]]])}
    bad_second = {"expression": tf.constant([[[0.9, 0.1], [0.99, 0.01]]]),
                  "action_units": tf.constant([[[0.9], [0.99]]])}
    w = {"expression": tf.constant([[1.0, 0.0]]), "action_units": tf.constant([[1.0, 0.0]])}
    a = losses.compute_losses(targets, good, w, global_frames=2)
    b = losses.compute_losses(targets, bad_second, w, global_frames=2)
    for head in a:
        assert float(a[head]) == pytest.approx(float(b[head]))
    expected_ce = -np.log(0.9) / 2
    assert float(a["expression"]) == pytest.approx(expected_ce, rel=1e-5)


def test_per_frame_cnn_takes_any_number_of_frames_inside_tf_function(tmp_path):
    m = model_lib.build_model(tiny_spec(heads=("expression",)))
    f = tf.function(lambda x: m(x, training=False),
                    input_signature=[tf.TensorSpec([None, None, 32, 32, 3], tf.float32)])
    x = np.random.rand(2, 7, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(f(x)["expression"].numpy(), m(x)["expression"].numpy(), atol=1e-5)
    # Round trip through the .keras format (PerFrame is registered).
    import keras

    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(x)["expression"].numpy(), m(x)["expression"].numpy(), atol=1e-5)


def test_exported_keras_file_loads_in_a_fresh_process_after_import_trainer(tmp_path):
    m = model_lib.build_model(tiny_spec(heads=("expression",)))
    path = str(tmp_path / "model.keras")
    m.save(path)
    x = np.random.default_rng(0).random((1, 3, 32, 32, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", m(x)["expression"].numpy())
    # A new interpreter, started outside the repository: only `import trainer` registers the custom layers.
    script = ("import numpy as np, keras, trainer\n"
              f"m = keras.models.load_model({path!r}, compile=False)\n"
              f"y = m(np.load({str(tmp_path / 'x.npy')!r}))['expression'].numpy()\n"
              f"np.testing.assert_allclose(y, np.load({str(tmp_path / 'y.npy')!r}), atol=1e-5)\n"
              "print('loaded', type(m.get_layer('per_frame_cnn')).__name__)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded PerFrame" in done.stdout
    # Without the import the custom layer is unknown: the test above proves the registration, not luck.
    failed = subprocess.run([sys.executable, "-c", f"import keras; keras.models.load_model({path!r})"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert failed.returncode != 0 and "ClipAugmentation" in failed.stderr  # the first of its custom layers


def test_strided_pointwise_convolutions_are_replaced_by_the_same_function(tmp_path):
    from trainer.model.layers import SubsampledPointwiseConv2D, without_strided_pointwise

    inner_in = keras.Input((None, None, 4))
    shortcut = keras.layers.Conv2D(6, 1, strides=2, padding="same", use_bias=False, name="shortcut")(inner_in)
    main = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="main")(inner_in)
    inner = keras.Model(inner_in, keras.layers.Add()([shortcut, main]), name="block")
    outer_in = keras.Input((None, None, 4))
    x = inner(outer_in)
    x = keras.layers.Conv2D(5, 1, strides=(3, 2), padding="valid", activation="relu", name="head")(x)
    model = keras.Model(outer_in, keras.layers.GlobalAveragePooling2D()(x))
    rewritten = without_strided_pointwise(model)
    kinds = [type(layer).__name__ for layer in rewritten._flatten_layers() if "Conv" in type(layer).__name__]
    assert sorted(kinds) == ["Conv2D", "SubsampledPointwiseConv2D", "SubsampledPointwiseConv2D"]  # 3x3 kept
    rng = np.random.default_rng(0)
    for size in (12, 13, 30):  # Even and odd sides: 'same' and 'valid' pick the same pixels for a 1x1 kernel.
        x = rng.normal(size=(2, size, size, 4)).astype("float32")
        np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    path = tmp_path / "m.keras"
    rewritten.save(path)
    again = keras.saving.load_model(path, compile=False)
    assert isinstance(again.get_layer("head"), SubsampledPointwiseConv2D)
    np.testing.assert_array_equal(again(x).numpy(), rewritten(x).numpy())
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    assert without_strided_pointwise(plain) is plain  # Nothing to replace: the model as it is.
