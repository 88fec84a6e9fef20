"""The per-frame CNNs: the paper's simple CNN and the ``keras.applications`` backbones, ``[S, S, 3]`` -> ``[feature_dim]``.

Backbone weights (:attr:`trainer.model.spec.ModelSpec.backbone_weights`): random (None), a local weights file, or
``"imagenet"`` for the ``keras.applications`` backbones: Keras downloads them once into its cache
(``~/.keras/models``, or ``$KERAS_HOME/models``); without internet that fails with
:class:`trainer.model.spec.BackboneWeightsError`, which says to pass a local file instead.
"""

from __future__ import annotations

import urllib.error

import keras

from trainer.model.spec import IMAGENET, BackboneWeightsError, ModelSpec

INPUT_NORM_MOMENTUM = 0.9  # of the simple CNN's input BatchNorm (see _simple_cnn)


def _simple_cnn(spec: ModelSpec) -> keras.Model:
    """The paper's simple CNN (Khorrami et al. 2016), filters scaled by ``cnn_width``.

    BatchNorm → Conv 64 5×5 → MaxPool → Conv 128 5×5 → MaxPool → Conv 256 5×5 →
    average pool → Dense 300 → Dropout 0.5. The paper's 9×9 average pool on the 24×24 map of a
    96² crop leaves a 2×2 grid; the pool here is scaled with the crop (``9/24`` of the map side) so
    any crop size keeps that coarse layout — where the mouth and brows are is the signal, which a
    global average would throw away.
    """
    s = spec.crop_size

    def width(n: int) -> int:
        return max(4, round(n * spec.cnn_width))

    inputs = keras.Input((s, s, 3), name="crop")
    # The input BatchNorm's moving statistics are what every evaluation and the export use. Keras' default
    # momentum (0.99) starts them at mean 0 / variance 1 and needs ~500 steps to reach the real pixel statistics
    # (variance ~0.06), so a model evaluated earlier saw inputs ~2-4x too small: on the demo the validation
    # score sat near chance for 300 steps while the training loss had long fallen (bench/learning.py). 0.9 follows
    # the data within ~50 steps; the statistics of pixels change little from batch to batch, so nothing is lost.
    x = keras.layers.BatchNormalization(momentum=INPUT_NORM_MOMENTUM, name="input_norm")(inputs)
    x = keras.layers.Conv2D(width(64), 5, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(width(128), 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Conv2D(width(256), 5, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.AveragePooling2D(max(1, (s // 4) * 9 // 24), name="avg_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(spec.feature_dim, activation="relu", name="features")(x)
    x = keras.layers.Dropout(spec.dropout, name="feature_dropout")(x)
    cnn = keras.Model(inputs, x, name="simple_cnn")
    if spec.backbone_weights:
        cnn.load_weights(spec.backbone_weights)
    return cnn


def _application_base(spec: ModelSpec) -> keras.Model:
    """The keras.applications base model, with random, local-file or (downloaded) ImageNet weights."""
    s = spec.crop_size
    try:
        if spec.backbone == "mobilenet_v3_small":
            return keras.applications.MobileNetV3Small(
                input_shape=(s, s, 3), include_top=False, weights=spec.backbone_weights, pooling="avg",
                include_preprocessing=False,
            )
        return keras.applications.EfficientNetB0(
            input_shape=(s, s, 3), include_top=False, weights=spec.backbone_weights, pooling="avg"
        )
    except Exception as e:  # keras.utils.get_file raises a bare Exception("URL fetch failure on ...")
        fetch_failed = isinstance(e, (urllib.error.URLError, ConnectionError, TimeoutError)) or (
            "URL fetch failure" in str(e))
        if spec.backbone_weights != IMAGENET or not fetch_failed:
            raise
        raise BackboneWeightsError(
            f"--weights imagenet needs internet: Keras could not download the {spec.backbone} ImageNet weights "
            f"({e}). Use --weights PATH with a local copy of the weights file (on a machine with internet, Keras "
            "keeps it in ~/.keras/models), or --weights none") from e


def _application_cnn(spec: ModelSpec) -> keras.Model:
    """A keras.applications backbone (:func:`_application_base`) + feature layer."""
    s = spec.crop_size
    inputs = keras.Input((s, s, 3), name="crop")
    if spec.backbone == "mobilenet_v3_small":
        # Our crops are in [0, 1]; MobileNetV3 without its own preprocessing expects [-1, 1].
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    else:
        # EfficientNet normalises internally from [0, 255].
        x = keras.layers.Rescaling(255.0, name="to_0_255")(inputs)
    x = _application_base(spec)(x)
    x = keras.layers.Dense(spec.feature_dim, activation="relu", name="features")(x)
    x = keras.layers.Dropout(spec.dropout, name="feature_dropout")(x)
    return keras.Model(inputs, x, name=spec.backbone)


def build_backbone(spec: ModelSpec) -> keras.Model:
    """The per-frame CNN: ``[S, S, 3]`` → ``[feature_dim]``."""
    if spec.backbone == "simple_cnn":
        return _simple_cnn(spec)
    return _application_cnn(spec)
