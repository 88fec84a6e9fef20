"""The trainer's own Keras layers, registered for serialisation under the package ``affectstream``.

:class:`PerFrame` (the CNN on every frame), :class:`ImageAdapter` and :class:`ClassMap` (an imported network's
input and classes), :class:`LearnedPositions` (the transformer's), and, registered by importing its module,
:class:`trainer.model.saved_model.EmbeddedSavedModel` (an imported SavedModel).
:class:`trainer.model.augment.ClipAugmentation` (the training-time augmentation).
``import trainer`` imports this module, so an exported ``model.keras`` loads in any process that did::

    import keras
    import trainer  # registers the layers below
    model = keras.models.load_model("JOB/export/model.keras", compile=False)
"""

from __future__ import annotations

import keras

from trainer.common.choices import CHANNEL_ORDERS
from trainer.model import augment, saved_model  # noqa: F401  (register ClipAugmentation and EmbeddedSavedModel)
from trainer.model.spec import SERIALIZATION_PACKAGE


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class PerFrame(keras.layers.TimeDistributed):
    """Applies a layer to every frame as one batch of ``B·T`` images (fold time into the batch).

    Keras 3's ``TimeDistributed`` calls the layer once per time step in a Python loop when ``T`` is
    static (T small batches, BatchNorm statistics per step) and collapses an unknown ``T`` to 1 inside
    ``tf.function`` (so a SavedModel with a free time axis would be wrong). Folding time into the batch
    is faster and works for any ``T``.
    """

    def call(self, inputs, training=None, mask=None):
        """Applies the wrapped layer to ``[B, T, ...]`` inputs folded to ``[B*T, ...]``; returns ``[B, T, ...]``."""
        shape = keras.ops.shape(inputs)
        folded = keras.ops.reshape(inputs, (-1, *inputs.shape[2:]))
        kwargs = {"training": training} if self.layer._call_has_training_arg else {}
        outputs = self.layer(folded, **kwargs)
        return keras.ops.reshape(outputs, (shape[0], shape[1], *outputs.shape[1:]))


# Luminance weights of ITU-R BT.601, as OpenCV's COLOR_BGR2GRAY and tf.image.rgb_to_grayscale use them: grey models
# (FER2013's) were trained on pictures made that way.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ImageAdapter(keras.layers.Layer):
    """Turns the trainer's face crops into the input an imported network was trained on.

    Input: float ``[N, H, W, 3]`` RGB in [0, 1] (any crop size); output: float ``[N, size, size, channels]``.
    In order: bilinear resize to ``size`` (skipped when the crop has that size), channel order (``bgr``
    reverses the channels), grey (``channels`` 1: the BT.601 luminance), the pixel range (``[0, 1]`` mapped
    linearly onto ``[low, high]``), then optional per-channel ``(x - mean) / std`` (ImageNet-style models).

    Args:
        size: Side of the network's square input.
        channels: 1 (grey) or 3 (colour).
        pixel_range: ``(low, high)``: what black and white become.
        channel_order: ``"rgb"`` or ``"bgr"`` (networks converted from Caffe/OpenCV pipelines).
        mean: Per-channel means subtracted after the pixel range, or None.
        std: Per-channel divisors applied after ``mean``, or None.
        integer: Round the values (to whole numbers) for a network that takes integer pixels.
    """

    def __init__(self, size: int, channels: int, pixel_range, channel_order: str = "rgb", mean=None, std=None,
                 integer: bool = False, **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {channels}")
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
        low, high = (float(v) for v in pixel_range)
        if not low < high:
            raise ValueError(f"pixel_range must be LOW,HIGH with LOW < HIGH, got {pixel_range}")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) not in (1, channels):
                wanted = "1 value (a grey model)" if channels == 1 else f"1 value or {channels} (one per channel)"
                raise ValueError(f"--{name} needs {wanted}, got {list(values)}")
        if std is not None and min(float(v) for v in std) <= 0:
            raise ValueError(f"std values must be > 0, got {list(std)}")
        self.size, self.channels, self.channel_order = int(size), int(channels), channel_order
        self.pixel_range = (low, high)
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.integer = bool(integer)

    def call(self, inputs):
        """``[N, H, W, 3]`` in [0, 1] → ``[N, size, size, channels]`` in the network's range."""
        x = keras.ops.cast(inputs, self.compute_dtype)
        if tuple(inputs.shape[1:3]) != (self.size, self.size):
            x = keras.ops.image.resize(x, (self.size, self.size), interpolation="bilinear")
        if self.channel_order == "bgr":
            x = keras.ops.flip(x, axis=-1)
        if self.channels == 1:
            weights = GREY_WEIGHTS[::-1] if self.channel_order == "bgr" else GREY_WEIGHTS
            x = keras.ops.sum(x * keras.ops.convert_to_tensor(weights, x.dtype), axis=-1, keepdims=True)
        low, high = self.pixel_range
        x = x * (high - low) + low
        if self.mean is not None:
            x = x - keras.ops.convert_to_tensor(self.mean, x.dtype)
        if self.std is not None:
            x = x / keras.ops.convert_to_tensor(self.std, x.dtype)
        if self.integer:  # (A cast to the network's integer input truncates: 200 / 255 * 255 would become 199.)
            x = keras.ops.round(x)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, self.channels)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "channels": self.channels,
                "pixel_range": list(self.pixel_range), "channel_order": self.channel_order,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                # Only when set: an export of a float network then loads in versions from before the option.
                **({"integer": True} if self.integer else {})}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ClassMap(keras.layers.Layer):
    """Maps class probabilities of a model's own classes onto a dataset's classes: a fixed, saved mapping.

    ``targets[i]`` is the dataset class of the model's class ``i`` (-1: none). A dataset class receives the
    summed probability of the model classes mapped onto it; the result is renormalised over the mapped
    classes, so it is again a distribution (dataset classes that no model class maps to get 0). Input
    ``[..., len(targets)]``, output ``[..., num_classes]``, float32.

    Args:
        targets: Dataset class index per model class, -1 for a class left out.
        num_classes: Classes of the dataset.
    """

    def __init__(self, targets, num_classes: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.targets = tuple(int(t) for t in targets)
        self.num_classes = int(num_classes)
        if not any(t >= 0 for t in self.targets) or max(self.targets) >= self.num_classes or min(self.targets) < -1:
            raise ValueError(f"class map targets {self.targets} must be -1 or in [0, {self.num_classes}), at least "
                             "one mapped")
        self._matrix = tuple(tuple(1.0 if t == j else 0.0 for j in range(self.num_classes)) for t in self.targets)

    def call(self, inputs):
        """``[..., model classes]`` probabilities → ``[..., dataset classes]`` probabilities."""
        x = keras.ops.cast(inputs, "float32")
        mapped = keras.ops.matmul(x, keras.ops.convert_to_tensor(self._matrix, "float32"))
        return mapped / keras.ops.maximum(keras.ops.sum(mapped, axis=-1, keepdims=True), 1e-12)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "targets": list(self.targets), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class LearnedPositions(keras.layers.Layer):
    """Adds a learned embedding of each frame's place in the window: ``[B, T, D]`` → ``[B, T, D]``, ``T <= max_len``.

    Windows of any length up to ``max_len`` share the first ``T`` positions, so a transformer trained on
    windows of 16 frames runs on windows of 8 (or 64, within ``max_len``).
    """

    def __init__(self, max_len: int, **kwargs):
        super().__init__(**kwargs)
        if int(max_len) < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.max_len, int(input_shape[-1])), name="positions",
                                         initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        """``inputs + positions[:T]``; a window longer than ``max_len`` fails (a shape error)."""
        length = keras.ops.shape(inputs)[1]
        return inputs + keras.ops.cast(self.positions[None, :length], inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "max_len": self.max_len}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class SubsampledPointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution of stride ``subsample``, computed as a stride-1 one on every ``subsample``-th pixel.

    The same function with the same weights as ``Conv2D(kernel_size=1, strides=subsample)`` (a 1x1 kernel pads
    nothing under ``same`` or ``valid``; outputs identical on CPU). It exists because TensorFlow 2.17's oneDNN kernels
    corrupt memory in the backward pass of a strided 1x1 convolution on an even-sized input on AVX-512 CPUs
    (``double free or corruption``, a segmentation fault: the residual shortcuts of fer's mini-Xception, ResNets),
    and :func:`without_strided_pointwise` puts it in their place before training.
    """

    def __init__(self, *args, subsample=(2, 2), **kwargs):
        super().__init__(*args, **kwargs)
        self.subsample = tuple(int(s) for s in subsample)

    def _subsampled(self, shape):
        sh, sw = self.subsample
        h, w = shape[1:3]
        return (shape[0], None if h is None else -(-h // sh), None if w is None else -(-w // sw), *shape[3:])

    def build(self, input_shape):
        super().build(self._subsampled(input_shape))

    def call(self, inputs):
        sh, sw = self.subsample
        return super().call(inputs[:, ::sh, ::sw, :])

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._subsampled(input_shape))

    def get_config(self):
        return {**super().get_config(), "subsample": list(self.subsample)}


def _strided_pointwise(layer) -> bool:
    return (type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.strides) != (1, 1) and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and layer.data_format == "channels_last")


def without_strided_pointwise(model: keras.Model) -> keras.Model:
    """``model`` with every strided 1x1 ``Conv2D`` (nested models too) replaced by :class:`SubsampledPointwiseConv2D`
    with its weights; the other layers are shared, not copied. ``model`` itself when it has none."""
    if not any(_strided_pointwise(layer) for layer in model._flatten_layers(include_self=False)):
        return model

    def clone(layer):
        if not _strided_pointwise(layer):
            return layer
        config = layer.get_config()
        subsample = config.pop("strides")
        replacement = SubsampledPointwiseConv2D(strides=(1, 1), subsample=subsample, **config)
        replacement.build(layer.input.shape)
        replacement.set_weights(layer.get_weights())
        return replacement

    return keras.models.clone_model(model, clone_function=clone, recursive=True)
