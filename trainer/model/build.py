"""The end-to-end CNN+RNN: a per-frame CNN, a recurrent stack over time, one head per task.

Input: uint8 ``[B, T, S, S, 3]`` RGB face crops (0..255), as the input pipelines and ``predict`` deliver
them. The model's first layer (:class:`trainer.model.augment.ClipAugmentation`, named ``"augment"``) augments each
clip in training only (flip, crop jitter, contrast, brightness; at inference it passes the frames through), then a
``Rescaling`` named ``"to_unit_range"`` scales them to [0, 1]: both run on the accelerator, and the export carries
them. A float input is cast to uint8 by Keras, so [0, 1] floats would
become black frames: feed uint8 pixels. The CNN runs on every
frame (:class:`PerFrame`: time folded into the batch); a temporal head (:mod:`trainer.model.temporal`: the
paper's GRU stack 100 → 100 → 50 by default, an LSTM stack, a TCN or a small transformer) runs over time; each
head is a per-frame Dense layer:

* ``"expression"``: softmax over the dataset's classes, ``[B, T, C]``;
* ``"valence_arousal"``: tanh, ``[B, T, 2]``;
* ``"action_units"``: sigmoid, ``[B, T, K]``.

Heads always output float32 (also under mixed precision). Besides built-in Keras
layers the model uses layers of its own (:mod:`trainer.model.layers`: :class:`PerFrame`, and where needed the
transformer's positions, an imported network's input adapter and a class map), registered
for serialisation when the ``trainer`` package is imported. The CNN is built from ``spec.backbone``, or given
ready (``cnn=``: the per-frame network of an export or an imported model, :mod:`trainer.model.pretrained`). The
losses (:func:`trainer.model.losses.compute_losses`) take per-frame weights ``[B, T]``: invalid labels, frames
without a face and padding weigh 0.

Mixed precision: :func:`build_model` with ``precision="mixed_float16"`` (GPUs) or ``"mixed_bfloat16"`` (TPUs, and
GPUs from Ampere on: float32's range, so no loss scaling) builds the layers under that Keras global dtype policy and
restores the previous policy afterwards (:func:`_global_dtype_policy`, the trainer's one place that touches the
global policy; the ``keras.applications`` backbones take no per-layer dtype, so the global policy is the only way in).
Variables stay float32, and so do the heads' outputs, hence the losses, CCC and metrics computed from them.

Backbone weights (:attr:`ModelSpec.backbone_weights`): random (None), a local weights file, or
``"imagenet"`` for the ``keras.applications`` backbones: Keras downloads them once into its cache
(``~/.keras/models``, or ``$KERAS_HOME/models``); without internet that fails with
:class:`BackboneWeightsError`, which says to pass a local file instead.

Two-stage training (:mod:`trainer.training.stages`): a per-frame spec (``temporal=None``) builds the
per-frame model of ``--stage frames`` (heads straight on the CNN features); :func:`build_sequence_model`
builds the temporal head and heads on precomputed features (``--stage sequence``), with the same layer
names as :func:`build_model`, so its weights drop into the end-to-end model that is exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
from trainer.common.choices import PRECISION_FLOAT32, PRECISIONS
from trainer.model.augment import ClipAugmentation
from trainer.model.backbones import build_backbone
from trainer.model.layers import ClassMap, PerFrame, without_strided_pointwise
from trainer.model.spec import PER_FRAME_LAYER, ModelSpec
from trainer.model.temporal import temporal_stack

AUGMENT_LAYER = "augment"  # the training-time augmentation, the first layer of every model built by build_model
EXPRESSION_LOGITS = "expression_logits"  # the Dense layer under the expression softmax
SOURCE_EXPRESSION = "source_expression"  # with a class map: the softmax over the source classes
# The Dense layer of each head (what a fine-tuned model keeps of an export's heads).
HEAD_LAYERS = {HEAD_EXPRESSION: EXPRESSION_LOGITS, HEAD_VALENCE_AROUSAL: "valence_arousal_linear",
               HEAD_ACTION_UNITS: "action_units_logits"}


@contextlib.contextmanager
def _global_dtype_policy(name: str) -> Iterator[None]:
    """Sets Keras' global dtype policy to ``name`` for the ``with`` block, then restores the previous one.

    The one place the trainer switches the global policy (see the module docstring): layers keep the
    policy they were built with, so nothing outside :func:`build_model` sees the switch.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid values: {', '.join(PRECISIONS)}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(spec: ModelSpec, *, precision: str = PRECISION_FLOAT32, cnn: keras.Model | None = None) -> keras.Model:
    """Builds the CNN+RNN with one output per head (a dict keyed by head name).

    Build it inside ``strategy.scope()`` for distributed training.

    Args:
        spec: What to build.
        precision: ``float32`` (every layer, whatever the global policy), ``mixed_float16`` or ``mixed_bfloat16``
            (compute in 16 bits with float32 variables; the output activations stay float32).
        cnn: A ready per-frame network (float ``[S, S, 3]`` in [0, 1] → ``[D]``; its layers keep their own
            dtype) used as it is, instead of one built from ``spec.backbone``.
    """
    with _global_dtype_policy(precision):
        return _build_layers(spec, cnn)


def frame_features_model(cnn: keras.Model, crop_size: int, name: str = "frame_features") -> keras.Model:
    """uint8 frames ``[B, T, S, S, 3]`` → ``[B, T, D]``: the front of :func:`build_model` (pixel scaling, ``cnn``
    per frame), what the sequence stage's features are made with."""
    frames = keras.Input((None, crop_size, crop_size, 3), dtype="uint8", name="frames")
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(frames)
    return keras.Model(frames, PerFrame(cnn, name=PER_FRAME_LAYER)(x), name=name)


def build_sequence_model(spec: ModelSpec, *, precision: str = PRECISION_FLOAT32) -> keras.Model:
    """The recurrent stack and heads on per-frame features ``[B, T, feature_dim]`` (``--stage sequence``).

    Dropout (``spec.dropout``) on the features stands in for the CNN's own feature dropout, which the
    precomputed (inference-mode) features do not have. Layer names match :func:`build_model`'s, so the
    trained weights copy into the end-to-end model by name (:func:`trainer.training.features.assemble_export`).
    """
    if spec.per_frame:
        raise ValueError("the sequence stage needs a temporal head (--temporal, and for gru/lstm --rnn_units)")
    with _global_dtype_policy(precision):
        features = keras.Input((spec.seq_len, spec.feature_dim), name="features")
        x = keras.layers.Dropout(spec.dropout, name="sequence_feature_dropout")(features)
        return keras.Model(features, _temporal_heads(x, spec), name=f"{spec.temporal}_on_features")


def model_name(spec: ModelSpec, backbone: str | None = None) -> str:
    """``<backbone>_<temporal head>``, or ``<backbone>_per_frame`` without one."""
    return f"{backbone or spec.backbone}_{'per_frame' if spec.per_frame else spec.temporal}"


def pretrained_layers(model: keras.Model, spec: ModelSpec) -> list[keras.layers.Layer]:
    """The layers of ``model`` that hold the pretrained backbone weights (what ``--freeze_backbone_epochs`` freezes).

    ``simple_cnn``: the whole CNN (its weights file holds every CNN layer); ``keras.applications``
    backbones: the base model only, so the new feature layer on top of it trains from the first step.
    """
    cnn = model.get_layer(PER_FRAME_LAYER).layer
    if spec.backbone == "simple_cnn":
        return [cnn]
    return [layer for layer in cnn.layers if isinstance(layer, keras.Model)]


def _build_layers(spec: ModelSpec, cnn: keras.Model | None) -> keras.Model:
    s = spec.crop_size
    frames = keras.Input((spec.seq_len, s, s, 3), dtype="uint8", name="frames")
    backbone = None if cnn is None else cnn.name
    # A given network (an export's, an imported one) may hold strided 1x1 convolutions, whose gradient crashes
    # TensorFlow's oneDNN kernels on AVX-512 CPUs: the same function without them (layers.SubsampledPointwiseConv2D).
    cnn = build_backbone(spec) if cnn is None else without_strided_pointwise(cnn)
    # Pixels arrive as uint8 (a quarter of the bytes of float32) and are augmented (training only) and scaled here,
    # on the accelerator: the CPU input pipeline only reads, parses and decodes.
    x = ClipAugmentation(spec.augment, name=AUGMENT_LAYER)(frames)
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(x)
    x = PerFrame(cnn, name=PER_FRAME_LAYER)(x)
    return keras.Model(frames, _temporal_heads(x, spec), name=model_name(spec, backbone))


def _temporal_heads(x, spec: ModelSpec) -> dict:
    """The temporal head (none for a per-frame model) and one per-frame head per task on ``x`` ``[B, T, F]``."""
    if not spec.per_frame:
        x = temporal_stack(x, spec)
    outputs = {}
    if HEAD_EXPRESSION in spec.heads and spec.class_map is not None:
        # The source model's classes, then the fixed map onto the dataset's (trainer.model.layers.ClassMap).
        logits = keras.layers.Dense(len(spec.class_map), name=EXPRESSION_LOGITS)(x)
        probabilities = keras.layers.Activation("softmax", dtype="float32", name=SOURCE_EXPRESSION)(logits)
        outputs[HEAD_EXPRESSION] = ClassMap(spec.class_map, spec.num_expression_classes,
                                            name=HEAD_EXPRESSION)(probabilities)
    elif HEAD_EXPRESSION in spec.heads:
        logits = keras.layers.Dense(spec.num_expression_classes, name=EXPRESSION_LOGITS)(x)
        outputs[HEAD_EXPRESSION] = keras.layers.Activation("softmax", dtype="float32", name=HEAD_EXPRESSION)(logits)
    if HEAD_VALENCE_AROUSAL in spec.heads:
        va = keras.layers.Dense(2, name=HEAD_LAYERS[HEAD_VALENCE_AROUSAL])(x)
        outputs[HEAD_VALENCE_AROUSAL] = keras.layers.Activation("tanh", dtype="float32",
                                                                name=HEAD_VALENCE_AROUSAL)(va)
    if HEAD_ACTION_UNITS in spec.heads:
        au = keras.layers.Dense(spec.num_action_units, name=HEAD_LAYERS[HEAD_ACTION_UNITS])(x)
        outputs[HEAD_ACTION_UNITS] = keras.layers.Activation("sigmoid", dtype="float32", name=HEAD_ACTION_UNITS)(au)
    return outputs


