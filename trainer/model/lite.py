"""The export's TF Lite copy of the model (``serving.tflite``): what ``predict`` runs on a CPU, without TensorFlow.

``predict`` on a CPU spends more on ``import tensorflow`` (~4 s of CPU on this project's 2-core box) and on loading and
tracing the Keras model than on minutes of video with a light model (``bench/predict.py``). The export therefore also
writes the model converted to TF Lite (:data:`trainer.model.export.TFLITE_FILENAME`) for the shapes ``predict``
feeds: ``[SERVING_BATCH, window, S, S, 3]`` uint8 (the window: :func:`trainer.model.export.serving_window`), one
output per head. ``predict`` runs it with :class:`beam_jobs.faces.tflite.LiteInterpreter` (TF Lite's own
interpreter, loaded without TensorFlow's import).

Shapes are fixed because TF Lite lowers the recurrent layers' loops only with a static batch and time (TensorList
element shapes); another ``predict --batch_size`` runs the Keras model instead. The conversion is checked before it is
kept: both models run on the same pseudo-random batch, and a copy whose outputs differ from Keras' by more than
:data:`MAX_DIFFERENCE` is not written. A model that does not convert (e.g. an imported SavedModel layer) is exported
without the copy; ``model_info.json["tflite"]`` says which, and why.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from tfrecords_schema.cli import native_log_at_tensorflow_level

log = logging.getLogger("trainer.model.lite")

SERVING_BATCH = 16  # windows a model call; predict's default --batch_size
MAX_DIFFERENCE = 1e-3  # largest |TF Lite - Keras| output kept (float32 kernels differ by ~1e-7 here)


@contextlib.contextmanager
def _portable_kernels(model):
    """The model traced and run with kernels TF Lite has, on the CPU: Keras' recurrent layers pick cuDNN's fused
    kernel (no TF Lite equivalent) whenever a GPU is visible, so they are switched to their generic loop meanwhile;
    the reference outputs are computed on the CPU (a GPU's TF32 matrix products would differ by more than the check
    allows)."""
    import tensorflow as tf

    layers = [layer for layer in model._flatten_layers(include_self=False) if hasattr(layer, "use_cudnn")]
    saved = [layer.use_cudnn for layer in layers]
    try:
        for layer in layers:
            layer.use_cudnn = False
        with tf.device("/CPU:0"):
            yield
    finally:
        for layer, value in zip(layers, saved):
            layer.use_cudnn = value


def _convert(model, shape: tuple[int, ...]) -> tuple[bytes, list[str]]:
    """The flatbuffer and its outputs' heads, in order (its one input: the frames)."""
    import keras
    import tensorflow as tf

    # The fixed-shape function traced in Keras' export archive, which tracks the variables as TF Lite's converter
    # needs (a plain tf.function of the model does not convert); converted from the traced function itself: ~1 s on
    # the demo's models, against ~3.5 s through a SavedModel written and read back.
    archive = keras.export.ExportArchive()
    archive.track(model)
    function = archive.add_endpoint(name="serve", fn=lambda frames: model(frames, training=False),
                                    input_signature=[tf.TensorSpec(shape, tf.uint8, name="frames")])
    concrete = function.get_concrete_function()
    if not isinstance(concrete.structured_outputs, dict):
        raise ValueError(f"the model's outputs are not a dict of heads: {type(concrete.structured_outputs).__name__}")
    heads = sorted(concrete.structured_outputs)  # tf.nest flattens a dict in key order: the converted outputs' order
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], archive)
    with native_log_at_tensorflow_level():  # its absl warnings ignore TF_CPP_MIN_LOG_LEVEL (tfrecords_schema.cli)
        return converter.convert(), heads


def _largest_difference(model, path: str, shape: tuple[int, ...], heads: list[str]) -> float:
    """max |TF Lite - Keras| over every head's outputs on one pseudo-random batch of frames (the outputs taken as
    ``heads``, in order: a wrong order fails here)."""
    from beam_jobs.faces.tflite import LiteInterpreter

    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    expected = model(frames, training=False)
    lite = LiteInterpreter(path)
    if sorted(heads) != sorted(expected) or len(lite.outputs) != len(heads):
        raise ValueError(f"the TF Lite outputs {heads} are not the model's {sorted(expected)}")
    lite.set(lite.inputs[0], frames)
    lite.invoke()
    worst = 0.0
    for head, index in zip(heads, lite.outputs):
        want = np.asarray(expected[head], np.float32)
        got = lite.get(index)
        if got.shape != want.shape:
            raise ValueError(f"the TF Lite output for {head} is {got.shape}, not {want.shape}")
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def write_serving_copy(model, window: int, crop_size: int, path: str) -> dict:
    """Writes the TF Lite copy to the local file ``path`` when the model converts and matches; returns what
    ``model_info["tflite"]`` records: ``{"batch_size", "window", "crop_size", "outputs", "max_difference"}``
    (``outputs``: the head of each output tensor, in order; the one input is the uint8 frames), or ``{"error": why}``
    when no copy was written (``predict`` then runs the Keras model)."""
    shape = (SERVING_BATCH, window, crop_size, crop_size, 3)
    try:
        with _portable_kernels(model):
            flat, heads = _convert(model, shape)
            with open(path, "wb") as f:
                f.write(flat)
            difference = _largest_difference(model, path, shape, heads)
    except Exception as e:  # noqa: BLE001 - any conversion failure: the export stays usable through Keras.
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        log.warning("no TF Lite copy of the model (predict will run the Keras model): %s: %s", type(e).__name__,
                    reason)
        if os.path.exists(path):
            os.remove(path)
        return {"error": f"{type(e).__name__}: {reason}"}
    if difference > MAX_DIFFERENCE:
        os.remove(path)
        log.warning("no TF Lite copy of the model: its outputs differ from Keras' by %.3g", difference)
        return {"error": f"outputs differ from the Keras model's by {difference:.3g} (> {MAX_DIFFERENCE})"}
    return {"batch_size": SERVING_BATCH, "window": window, "crop_size": crop_size, "outputs": heads,
            "max_difference": difference}
