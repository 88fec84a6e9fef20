"""Face models trained elsewhere, and the per-frame networks of exports: loaded, split, cut, mapped.

An imported expression network (a ``.keras`` file, a legacy ``.h5``/``.hdf5`` or a SavedModel folder;
:func:`load_network`) becomes the CNN of an ordinary AffectStream model (:func:`trainer.model.build.build_model`
with ``cnn=``):

* :func:`split_classifier` splits it where its classifier starts: the features are the input of its last
  Dense layer (``... → Dense(C) [→ softmax]``), or, when its last layers are parameter-free (FER2013's
  mini-Xception: ``conv → global average pool → softmax``), the logits under the softmax. The classifier becomes
  the model's ``expression_logits`` Dense layer (its own kernel, or the identity on the logits), so the model's
  softmax gives exactly the network's probabilities;
* :func:`imported_cnn` puts an :class:`trainer.model.layers.ImageAdapter` in front of the feature part (the
  trainer's crops, any size, RGB in [0, 1] → the network's size, grey or colour, pixel range), so the export
  takes the same uint8 ``[B, T, S, S, 3]`` crops as every export;
* :func:`class_map_targets` turns ``--class_map a=Anger,...`` into the fixed mapping of
  :class:`trainer.model.layers.ClassMap`.

For every export, :func:`export_cnn` is its per-frame network (the ``per_frame_cnn`` layer: what the heads read)
and :func:`cut_network` cuts such a network at a named layer (``--feature_layer``), pooled to a vector.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from trainer.model.layers import ImageAdapter
from trainer.model.saved_model import EmbeddedSavedModel, SavedModelError, saved_model_network
from trainer.model.spec import PER_FRAME_LAYER

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class ModelImportError(ValueError):
    """A network that cannot be imported as it is: a file that does not load, an input that is not an image, a
    classifier that cannot be found, class names that do not fit (one line for the user)."""



@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What an imported network takes (recorded in ``model_info.json["input"]``).

    Attributes:
        size: Side of its square input in pixels.
        channels: 1 (grey) or 3 (colour).
        pixel_range: ``(low, high)``: what black and white become.
        channel_order: ``rgb`` or ``bgr``.
        mean: Per-channel means subtracted after the pixel range, or None.
        std: Per-channel divisors after ``mean``, or None.
        integer: The network takes integer pixels (a ``uint8`` input): the values are rounded before its cast.
    """

    size: int
    channels: int
    pixel_range: tuple[float, float]
    channel_order: str = "rgb"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    integer: bool = False

    def adapter(self, name: str = "input_adapter") -> ImageAdapter:
        """The layer that turns the trainer's crops into this input."""
        return ImageAdapter(self.size, self.channels, self.pixel_range, self.channel_order, self.mean, self.std,
                            self.integer, name=name)

    def to_dict(self) -> dict:
        """JSON-ready, with the resize and grey rules spelled out."""
        return {**dataclasses.asdict(self), "pixel_range": list(self.pixel_range),
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "resize": "bilinear, from the face crop to size x size",
                "grey": "BT.601 luminance (0.299 R + 0.587 G + 0.114 B)" if self.channels == 1 else None}


# --------------------------------------------------------------------------------------------------
# Loading and splitting an imported network.


def load_network(path: str, model_outputs: str = "probabilities") -> keras.Model:
    """The Keras model in ``path``: a ``.keras`` file, a legacy ``.h5``/``.hdf5`` or a SavedModel folder.

    A SavedModel folder holds no Keras graph that Keras 3 can rebuild; it is wrapped whole
    (:class:`trainer.model.saved_model.EmbeddedSavedModel`, its files inside the export; probabilities come out as
    their log, the logits of a softmax), so its own layers cannot be split or cut.

    Raises:
        ModelImportError: no such file, or it does not load as a model.
    """
    if os.path.isdir(path):
        try:
            return saved_model_network(path, log_probabilities=model_outputs == "probabilities")
        except SavedModelError as e:
            raise ModelImportError(f"--keras {e}") from e
    if not os.path.isfile(path):
        raise ModelImportError(f"--keras {path}: no such file or SavedModel folder")
    if not path.lower().endswith(KERAS_SUFFIXES):
        raise ModelImportError(f"--keras {path}: expected a {', '.join(KERAS_SUFFIXES)} file or a SavedModel folder")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - h5py, zipfile, JSON and Keras errors alike: the file is not a model.
        text = str(e)
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if unknown:  # Keras's first line blames the model's from_config
            raise ModelImportError(
                f"--keras {path} uses the custom class {unknown.group(1)!r}, which is not available here: export the "
                "model as a SavedModel folder (model.export(DIR), where its code is) and import that folder") from e
        if "`Lambda` layer" in text and "safe_mode" in text:  # Keras suggests an option this command does not have
            raise ModelImportError(
                f"--keras {path} holds a Lambda layer (Python code, which Keras does not load from a file by "
                "default): export the model as a SavedModel folder (model.export(DIR)) and import that folder") from e
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise ModelImportError(f"--keras {path} does not load as a Keras model ({type(e).__name__}: {first})") from e
    if not isinstance(model, keras.Model):
        raise ModelImportError(f"--keras {path} holds a {type(model).__name__}, not a model")
    try:
        defined = bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):  # a Sequential saved before it was built, a subclassed model
        defined = False
    if not defined:
        raise ModelImportError(f"--keras {path}: the model has no defined input and output (a Sequential model saved "
                               "before it was built?): save it with a keras.Input of its image shape")
    return model


def network_input(net: keras.Model) -> tuple[int | None, int]:
    """``(size or None when free, channels)`` of a network that takes one square image ``[N, H, W, 1|3]``.

    Raises:
        ModelImportError: several inputs, or an input that is not an image.
    """
    if len(net.inputs) != 1:
        raise ModelImportError(f"the model takes {len(net.inputs)} inputs; an image model takes one image batch")
    shape = tuple(net.inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ModelImportError(f"the model's input {shape} is not an image: expected [batch, height, width, 1 or 3]")
    height, width = shape[1:3]
    if height != width and None not in (height, width):
        raise ModelImportError(f"the model's input is {height}x{width}: only square inputs are supported "
                               "(face crops are square)")
    return (height if height is not None and width is not None else None), int(shape[-1])


def network_classes(net: keras.Model) -> int:
    """The classes of a network's one output ``[N, C]``.

    Raises:
        ModelImportError: several outputs, or one that is not ``[N, C]``.
    """
    if len(net.outputs) != 1:
        raise ModelImportError(f"the model has {len(net.outputs)} outputs; an expression model has one, [batch, "
                               "classes]")
    shape = tuple(net.outputs[0].shape)
    if len(shape) != 2 or not shape[-1]:
        raise ModelImportError(f"the model's output {shape} is not [batch, classes]")
    return int(shape[-1])


@dataclasses.dataclass
class SplitNetwork:
    """An imported network split where its classifier starts (:func:`split_classifier`).

    Attributes:
        features: The network up to its features: image → ``[N, D]``.
        kernel: ``[D, C]`` of the classifier (the identity when the features are the logits).
        bias: ``[C]``.
        feature_layer: Name of the layer whose output the features are.
    """

    features: keras.Model
    kernel: np.ndarray
    bias: np.ndarray
    feature_layer: str


def _producer(tensor):
    return tensor._keras_history[0]


def _is_softmax(layer) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def split_classifier(net: keras.Model, model_outputs: str = "probabilities") -> SplitNetwork:
    """Splits ``net`` into features and a linear classifier (see the module docstring).

    Args:
        net: A network with one image input and one ``[N, C]`` output.
        model_outputs: ``probabilities`` (a softmax ends it) or ``logits`` (no softmax at the end).

    Raises:
        ModelImportError: the output is not where a classifier can be found (the message says what the last
            layer is).
    """
    classes = network_classes(net)
    tensor = net.outputs[0]
    layer = _producer(tensor)
    if isinstance(layer, keras.Model) and len(layer.inputs) == 1 and len(layer.outputs) == 1:
        # The classifier ends a nested model (a Sequential head, a whole network behind preprocessing): split that,
        # and run the outer layers in front of it.
        inner = split_classifier(layer, model_outputs)
        fed = layer._inbound_nodes[tensor._keras_history[1]].input_tensors[0]  # (a model's .input is its own)
        feature_layer, features = inner.feature_layer, inner.features(fed)
        own = {nested.name: nested for nested in layer.layers}  # (a Sequential lists no InputLayer)
        if feature_layer not in own or isinstance(own[feature_layer], keras.layers.InputLayer):  # the head reads
            # what is fed to it: inner.features is an identity, which Keras 3.12 (the last for Python 3.10) saves
            # but cannot load back ("`inputs` not connected to `outputs`"), so it is left out.
            feature_layer, features = _producer(fed).name, fed
        return SplitNetwork(keras.Model(net.inputs[0], features, name=f"{net.name}_features"),
                            inner.kernel, inner.bias, feature_layer)
    if isinstance(layer, EmbeddedSavedModel):
        model_outputs = "logits"  # a SavedModel's probabilities come out as their log (load_network)
    if model_outputs == "probabilities":
        if isinstance(layer, keras.layers.Dense) and _is_softmax(layer):
            return _split_at_dense(net, layer)
        if not (_is_softmax(layer) and not layer.weights):
            raise ModelImportError(
                f"the model's last layer {layer.name!r} ({type(layer).__name__}) is not a softmax: if the model "
                "outputs logits, pass --model_outputs logits")
        tensor = layer.input
        layer = _producer(tensor)
    elif _is_softmax(layer):
        raise ModelImportError(f"the model's last layer {layer.name!r} ({type(layer).__name__}) is a softmax: its "
                               "outputs are probabilities, not logits: leave out --model_outputs logits")
    elif getattr(getattr(layer, "activation", None), "__name__", "linear") != "linear":
        raise ModelImportError(f"the model's last layer {layer.name!r} ({type(layer).__name__}) applies a "
                               f"{layer.activation.__name__} activation: its outputs are not logits (an expression "
                               "model gives softmax probabilities, or logits with --model_outputs logits)")
    if isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", None) == "linear":
        return _split_at_dense(net, layer)
    if len(tensor.shape) != 2:
        raise ModelImportError(f"the model's logits come from {layer.name!r} with shape {tuple(tensor.shape)}, "
                               "not [batch, classes]")
    return SplitNetwork(keras.Model(net.inputs[0], tensor, name=f"{net.name}_features"),
                        np.eye(classes, dtype=np.float32), np.zeros(classes, np.float32), layer.name)


def _split_at_dense(net: keras.Model, dense) -> SplitNetwork:
    features = dense.input
    if len(features.shape) != 2:
        raise ModelImportError(f"the classifier {dense.name!r} takes {tuple(features.shape)} inputs, not [batch, "
                               "features]")
    kernel = keras.ops.convert_to_numpy(dense.kernel)
    bias = keras.ops.convert_to_numpy(dense.bias) if dense.use_bias else np.zeros(kernel.shape[1], np.float32)
    return SplitNetwork(keras.Model(net.inputs[0], features, name=f"{net.name}_features"),
                        np.asarray(kernel, np.float32), np.asarray(bias, np.float32), _producer(features).name)


def imported_cnn(features: keras.Model, input_spec: InputSpec, name: str) -> keras.Model:
    """The per-frame network of an imported model: float crops ``[S, S, 3]`` in [0, 1] (any S) → ``[D]``."""
    crops = keras.Input((None, None, 3), name="crop")
    return keras.Model(crops, features(input_spec.adapter()(crops)), name=name)


def cnn_name(path: str) -> str:
    """``imported_<file or folder name>``, as a valid layer name."""
    stem = os.path.basename(os.path.normpath(path))
    for suffix in KERAS_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return "imported_" + (re.sub(r"[^A-Za-z0-9_]", "_", stem) or "model")


# --------------------------------------------------------------------------------------------------
# Class maps.


def parse_class_map(text: str) -> dict[str, str]:
    """``"a=Anger,b=Happiness"`` → ``{"a": "Anger", "b": "Happiness"}`` (in order).

    Raises:
        ValueError: an entry without ``=``, an empty name, or a source class given twice.
    """
    mapping: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        source, sep, target = (part.strip() for part in entry.partition("="))
        if not sep or not source or not target:
            raise ValueError(f"--class_map entry {entry!r} is not SOURCE=TARGET (e.g. happy=Happiness)")
        if source in mapping:
            raise ValueError(f"--class_map maps {source!r} twice")
        mapping[source] = target
    if not mapping:
        raise ValueError("--class_map is empty: give SOURCE=TARGET pairs, e.g. happy=Happiness,sad=Sadness")
    return mapping


def class_map_targets(source_names: Sequence[str], mapping: Mapping[str, str],
                      target_names: Sequence[str]) -> tuple[int, ...]:
    """The dataset class index of every source class (-1: not mapped), for :class:`trainer.model.layers.ClassMap`.

    Raises:
        ValueError: a mapped name that is not a source class or not a dataset class.
    """
    unknown = [s for s in mapping if s not in source_names]
    if unknown:
        raise ValueError(f"--class_map names {unknown}, which are not the model's classes {list(source_names)}")
    missing = [t for t in mapping.values() if t not in target_names]
    if missing:
        raise ValueError(f"--class_map maps onto {missing}, which are not the dataset's classes {list(target_names)}")
    return tuple(list(target_names).index(mapping[s]) if s in mapping else -1 for s in source_names)


# --------------------------------------------------------------------------------------------------
# The per-frame network of an export, and its cut at a named layer.


def export_cnn(model: keras.Model) -> keras.Model:
    """The per-frame network of an exported model (its ``per_frame_cnn`` layer): crops in [0, 1] → the features
    its heads read."""
    try:
        return model.get_layer(PER_FRAME_LAYER).layer
    except ValueError as e:
        raise ModelImportError(f"the model {model.name!r} has no {PER_FRAME_LAYER!r} layer: not an AffectStream "
                               "export") from e


def layer_names(network: keras.Model) -> list[str]:
    """Every layer name of ``network``, nested models' layers included (depth first)."""
    names = []
    for layer in network.layers:
        names.append(layer.name)
        if isinstance(layer, keras.Model):
            names += layer_names(layer)
    return names


def _pooled(tensor, name: str):
    """A layer output as one vector per image: spatial maps and token sequences averaged."""
    if len(tensor.shape) == 4:
        return keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(tensor)
    if len(tensor.shape) == 3:
        return keras.layers.GlobalAveragePooling1D(name=f"{name}_pool")(tensor)
    if len(tensor.shape) == 2:
        return tensor
    raise ModelImportError(f"layer {name!r} outputs {tuple(tensor.shape)}: not a feature map or vector")


def cut_network(network: keras.Model, layer_name: str) -> keras.Model:
    """``network`` up to the output of its layer ``layer_name`` (also inside a nested model), pooled to ``[D]``.

    A spatial output ``[H, W, C]`` is averaged over the picture, a token output ``[N, C]`` over the tokens.

    Raises:
        ModelImportError: no such layer (the message lists some), or it sits behind layers that are not a chain.
    """
    top = [layer.name for layer in network.layers]
    if layer_name in top:
        return keras.Model(network.inputs, _pooled(network.get_layer(layer_name).output, layer_name),
                           name=f"{network.name}_to_{layer_name}")
    for nested in (layer for layer in network.layers if isinstance(layer, keras.Model)):
        if layer_name in layer_names(nested):
            inner = cut_network(nested, layer_name)
            # Replay the chain of layers in front of the nested model, then its cut.
            inputs = keras.Input(network.inputs[0].shape[1:], dtype=network.inputs[0].dtype)
            x = inputs
            for layer in network.layers[1:]:
                if layer is nested:
                    return keras.Model(inputs, inner(x), name=f"{network.name}_to_{layer_name}")
                if isinstance(x, (list, tuple)):
                    raise ModelImportError(f"cannot cut {network.name!r} at {layer_name!r}: its layers are not a chain")
                x = layer(x)
    names = layer_names(network)
    shown = ", ".join(names[-12:])
    raise ModelImportError(f"--feature_layer {layer_name!r} is not a layer of the per-frame network "
                           f"{network.name!r} ({len(names)} layers; the last ones: {shown})")
