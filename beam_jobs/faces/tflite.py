"""TF Lite models run without importing TensorFlow: the face detector's and ``predict``'s served model.

``import tensorflow`` costs ~4 s of CPU on this project's 2-core box (``python -X importtime``), more than
``predict`` spends on a minute of video once the face stage and a light model are running. TF Lite's interpreter is one
small extension module inside the TensorFlow wheel (``tensorflow/lite/python/interpreter_wrapper``), linked against
``libtensorflow_framework`` only, not against the TensorFlow runtime that ``import tensorflow`` loads. This module
loads that extension from its file and drives it the way ``tf.lite.Interpreter`` does (the same calls, so the same
kernels and the same bits): loading it takes ~0.05 s.

The extension is registered under its own dotted name, so a later ``import tensorflow`` in the same process finds it
there (a second copy of the same pybind11 module would fail to register its types). When TensorFlow is already
imported its own copy is used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import numpy as np

from tfrecords_schema.cli import native_log_at_tensorflow_level

WRAPPER_MODULE = "tensorflow.lite.python.interpreter_wrapper._pywrap_tensorflow_interpreter_wrapper"
# tf.lite's OpResolverType ids (tensorflow/lite/python/interpreter.py, _get_op_resolver_id).
RESOLVER_AUTO = 1  # builtin kernels with TF Lite's default XNNPACK delegate
RESOLVER_WITHOUT_DEFAULT_DELEGATES = 3


class TFLiteError(OSError):
    """A TF Lite model that cannot be loaded (one line for the user)."""


def _wrapper_module():
    """The interpreter extension: already imported, or loaded from the TensorFlow wheel's file."""
    if WRAPPER_MODULE in sys.modules:
        return sys.modules[WRAPPER_MODULE]
    if "tensorflow" in sys.modules:  # TensorFlow's own import of it (and of its parent packages)
        return importlib.import_module(WRAPPER_MODULE)
    spec = importlib.util.find_spec("tensorflow")  # a top-level find does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise TFLiteError("TF Lite models need the tensorflow package (pip install tensorflow==2.17.1)")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "lite", "python", "interpreter_wrapper")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "_pywrap_tensorflow_interpreter_wrapper" + suffix)
        if os.path.isfile(path):
            loader = importlib.machinery.ExtensionFileLoader(WRAPPER_MODULE, path)
            module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(WRAPPER_MODULE, path,
                                                                                            loader=loader))
            loader.exec_module(module)
            sys.modules[WRAPPER_MODULE] = module
            return module
    raise TFLiteError(f"TensorFlow's TF Lite interpreter is missing from {folder}")


class LiteInterpreter:
    """One ``.tflite`` model: set inputs, invoke, read outputs (``tf.lite.Interpreter``'s calls, without TensorFlow).

    Args:
        path: The ``.tflite`` file.
        threads: Interpreter threads.
        xnnpack: Run with TF Lite's default XNNPACK delegate (``tf.lite.Interpreter``'s default); False: the builtin
            kernels only (other float kernels: the golden conversion test uses it to stand in for another CPU).
    """

    def __init__(self, path: str, threads: int = 1, xnnpack: bool = True):
        wrapper = _wrapper_module()
        resolver = RESOLVER_AUTO if xnnpack else RESOLVER_WITHOUT_DEFAULT_DELEGATES
        # (model, op resolver, custom op registerers by name and by function, preserve all tensors, disable
        # delegate clustering, threads, default delegate latest features): tf.lite.Interpreter's arguments.
        # (TF Lite's own log, "INFO: Created TensorFlow Lite XNNPACK delegate", ignores TF_CPP_MIN_LOG_LEVEL.)
        with native_log_at_tensorflow_level():
            try:
                self._wrapper = wrapper.CreateWrapperFromFile(path, resolver, [], [], False, False, int(threads),
                                                              False)
            except ValueError as e:
                raise TFLiteError(f"{path} does not load as a TF Lite model ({e})") from e
            if not self._wrapper:
                raise TFLiteError(f"{path} does not load as a TF Lite model")
            self._wrapper.AllocateTensors(-1)  # -1: every subgraph (tf.lite.Interpreter.allocate_tensors)
        self.inputs = list(self._wrapper.InputIndices())
        self.outputs = list(self._wrapper.OutputIndices())

    def shape(self, index: int) -> tuple[int, ...]:
        """The shape of tensor ``index``."""
        return tuple(int(d) for d in self._wrapper.TensorSize(index, 0))

    def dtype(self, index: int) -> np.dtype:
        """The NumPy type of tensor ``index``."""
        return np.dtype(self._wrapper.TensorType(index, 0))

    def signature(self, key: str) -> tuple[dict[str, int], dict[str, int]]:
        """``(inputs, outputs)`` of signature ``key``: argument and output names → tensor indices."""
        signatures = self._wrapper.GetSignatureDefs()
        if key not in signatures:
            raise TFLiteError(f"the TF Lite model has no signature {key!r} (it has {sorted(signatures)})")
        return dict(signatures[key]["inputs"]), dict(signatures[key]["outputs"])

    def set(self, index: int, value: np.ndarray) -> None:
        """Copies ``value`` into input tensor ``index`` (its shape and type must match)."""
        self._wrapper.SetTensor(index, value, 0)

    def resize_input(self, index: int, shape: tuple[int, ...]) -> None:
        """Gives input tensor ``index`` the shape ``shape`` and allocates the tensors again
        (``tf.lite.Interpreter.resize_tensor_input`` and ``allocate_tensors``): a fully convolutional model then runs
        at another input size, its outputs shaped to match. Views taken before are no longer valid (:meth:`view`).
        """
        self._wrapper.ResizeInputTensor(index, np.array(shape, np.int32), False, 0)  # (strict: False, subgraph 0)
        self._wrapper.AllocateTensors(-1)

    def invoke(self) -> None:
        self._wrapper.Invoke(0)

    def get(self, index: int) -> np.ndarray:
        """A copy of tensor ``index``."""
        return self._wrapper.GetTensor(index, 0)

    def view(self, index: int) -> np.ndarray:
        """Tensor ``index``'s own buffer as a writable array, no copy (``tf.lite.Interpreter.tensor``).

        Write an input in place before :meth:`invoke`, read an output after it. The view is valid until the tensors
        are allocated again (a resized input): take it anew for each pass and keep none across an :meth:`invoke`
        (an output's values are those of the last one).
        """
        return self._wrapper.tensor(self._wrapper, index, 0)
