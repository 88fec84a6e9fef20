"""A SavedModel folder as a Keras layer whose files travel inside the ``.keras`` file: imported SavedModels.

Keras 3 cannot rebuild a Keras graph from a SavedModel, and its own ``keras.layers.TFSMLayer`` keeps only the
folder's path (the export would break when the folder moves, and loading it needs ``safe_mode=False``).
:class:`EmbeddedSavedModel` instead stores the folder's files as the layer's assets (Keras' mechanism for
vocabularies and the like: they go into the ``.keras`` archive) and loads them back with
``tf.saved_model.load``. A layer loaded from a ``.keras`` file keeps its own copy of the files (a private temporary
folder, removed with the layer), so the model it is part of can be saved again: a training job's export of an
imported network, e.g. ``--stage sequence --features_from IMPORT``. The layer is frozen (its serving function is
called as it is); with ``log_probabilities`` it returns the log of probabilities, so that a softmax on top gives
them back exactly (:func:`trainer.model.pretrained.split_classifier` then finds its logits).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref

import keras

from trainer.model.spec import SERIALIZATION_PACKAGE

ENDPOINTS = ("serving_default", "serve")  # tried in this order
LOG_FLOOR = 1e-7  # probabilities below it are taken as this (log 0 would be -inf)
ASSETS_DIRNAME = "saved_model"  # the folder's name among the layer's assets


class SavedModelError(ValueError):
    """A SavedModel folder that cannot be used as an image model (one line for the user)."""


def _load(path: str):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - any failure to read the folder: it is not a usable SavedModel.
        raise SavedModelError(f"{path} does not load as a SavedModel ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
    for endpoint in ENDPOINTS:
        if endpoint in loaded.signatures:
            return loaded, loaded.signatures[endpoint], endpoint
    raise SavedModelError(f"{path} has no serving signature ({', '.join(ENDPOINTS)}); it has "
                          f"{sorted(loaded.signatures)}")


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class EmbeddedSavedModel(keras.layers.Layer):
    """The serving function of a SavedModel, its folder saved with the layer: images ``[N, H, W, C]`` → ``[N, K]``.

    Args:
        input_name: The signature's input argument.
        output_key: The signature's output taken.
        output_dim: ``K``.
        log_probabilities: Return ``log(max(p, 1e-7))`` of the output (for a softmax on top).
        path: The folder to load now (when the layer is made; a loaded ``.keras`` file restores it from its assets).
    """

    def __init__(self, input_name: str, output_key: str, output_dim: int, log_probabilities: bool = False,
                 path: str | None = None, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.input_name, self.output_key = input_name, output_key
        self.output_dim, self.log_probabilities = int(output_dim), bool(log_probabilities)
        self._source = None  # the folder the files come from (saved as the layer's assets)
        self._copy = None  # the finalizer of the layer's own copy of the files (loaded from a .keras file)
        self._function = None
        if path is not None:
            self._attach(path)

    def _attach(self, path: str) -> None:
        self._loaded, self._function, _ = _load(path)  # _loaded keeps the function's variables alive
        self._source = path

    def call(self, inputs):
        """The serving function's ``output_key`` on ``inputs`` (log probabilities with ``log_probabilities``)."""
        if self._function is None:
            raise SavedModelError(f"{self.name}: the SavedModel's files were not loaded")
        outputs = self._function(**{self.input_name: keras.ops.cast(inputs, "float32")})[self.output_key]
        outputs = keras.ops.cast(outputs, "float32")
        return keras.ops.log(keras.ops.maximum(outputs, LOG_FLOOR)) if self.log_probabilities else outputs

    def parameter_count(self) -> int:
        """Values in the SavedModel's variables (its weights are not Keras weights: the layer is frozen)."""
        return int(sum(v.shape.num_elements() or 0 for v in self._loaded.variables)) if self._function else 0

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], self.output_dim), dtype="float32")

    def save_assets(self, dir_path):
        """Copies the SavedModel's files into the ``.keras`` archive's assets."""
        if self._source is None:
            raise SavedModelError(f"{self.name}: the SavedModel's files were not loaded, so it cannot be saved")
        shutil.copytree(self._source, os.path.join(dir_path, ASSETS_DIRNAME), dirs_exist_ok=True)

    def load_assets(self, dir_path):
        """Loads the SavedModel from the archive's assets, copied first into a folder of the layer's own.

        Keras removes the assets' folder once the model is loaded; the copy keeps the files for :meth:`save_assets`
        (a model loaded from a ``.keras`` file is saved again by every training job that starts from an imported
        SavedModel). It is removed when the layer is garbage-collected, or when the process exits.
        """
        if self._copy is not None:  # loaded again: the previous copy goes
            self._copy()
        copy = tempfile.mkdtemp(prefix="affectstream-saved-model-")
        self._copy = weakref.finalize(self, shutil.rmtree, copy, ignore_errors=True)
        shutil.copytree(os.path.join(dir_path, ASSETS_DIRNAME), copy, dirs_exist_ok=True)
        self._attach(copy)

    def get_config(self):
        return {**super().get_config(), "input_name": self.input_name, "output_key": self.output_key,
                "output_dim": self.output_dim, "log_probabilities": self.log_probabilities}


def saved_model_network(path: str, log_probabilities: bool = False) -> keras.Model:
    """A Keras model around the SavedModel in ``path`` (one image input, one ``[N, K]`` output).

    Raises:
        SavedModelError: it does not load, has no serving signature, or its signature is not one image in and
            one ``[N, K]`` out.
    """
    _, function, endpoint = _load(path)
    inputs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    if len(inputs) != 1:
        raise SavedModelError(f"{path}: the {endpoint} signature takes {len(inputs)} inputs {sorted(inputs)}; an "
                              "image model takes one")
    (input_name, spec), = inputs.items()
    if len(spec.shape) != 4:
        raise SavedModelError(f"{path}: the input {input_name!r} {spec.shape} is not an image: expected [batch, "
                              "height, width, 1 or 3]")
    if len(outputs) != 1:
        raise SavedModelError(f"{path}: the {endpoint} signature has {len(outputs)} outputs {sorted(outputs)}; an "
                              "expression model has one, [batch, classes]")
    (output_key, out_spec), = outputs.items()
    if len(out_spec.shape) != 2 or out_spec.shape[-1] is None:
        raise SavedModelError(f"{path}: the output {output_key!r} {out_spec.shape} is not [batch, classes]")
    image = keras.Input(tuple(spec.shape[1:]), name="image")
    layer = EmbeddedSavedModel(input_name, output_key, int(out_spec.shape[-1]), log_probabilities, path=path,
                               name="saved_model")
    name = re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(os.path.normpath(path))) or "saved_model"
    return keras.Model(image, layer(image), name=name)
