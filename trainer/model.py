"""The end-to-end CNN+RNN: a per-frame CNN, a recurrent stack over time, one head per task.

Input: uint8 ``[B, T, S, S, 3]`` RGB face crops (0..255), as the input pipelines and ``predict`` deliver
them; the model's first layer (a ``Rescaling`` named ``"to_unit_range"``) scales them to [0, 1] on the
accelerator, and the export carries it. A float input is cast to uint8 by Keras, so [0, 1] floats would
become black frames: feed uint8 pixels. The CNN runs on every
frame (:class:`PerFrame`: time folded into the batch); a stack of GRU or LSTM layers (the paper's
100 → 100 → 50 by default) runs over time; each head is a per-frame Dense layer:

* ``"expression"``: softmax over the dataset's classes, ``[B, T, C]``;
* ``"valence_arousal"``: tanh, ``[B, T, 2]``;
* ``"action_units"``: sigmoid, ``[B, T, K]``.

Heads always output float32 (also under mixed precision). Besides built-in Keras
layers the model uses one layer of its own, :class:`trainer.layers.PerFrame`, registered
for serialisation when the ``trainer`` package is imported. The losses (:func:`compute_losses`)
take per-frame weights ``[B, T]``: invalid labels, frames without a face and padding weigh 0.

Mixed precision: :func:`build_model` with ``mixed_precision=True`` builds the layers under Keras'
``mixed_float16`` global dtype policy and restores the previous policy afterwards
(:func:`_global_dtype_policy`, the trainer's one place that touches the global policy; the
``keras.applications`` backbones take no per-layer dtype, so the global policy is the only way in).

Backbone weights (:attr:`ModelSpec.backbone_weights`): random (None), a local weights file, or
``"imagenet"`` for the ``keras.applications`` backbones: Keras downloads them once into its cache
(``~/.keras/models``, or ``$KERAS_HOME/models``); without internet that fails with
:class:`BackboneWeightsError`, which says to pass a local file instead.

Two-stage training (:mod:`trainer.stages`): a spec with no recurrent layers (``rnn_units=()``) builds the
per-frame model of ``--stage frames`` (heads straight on the CNN features); :func:`build_sequence_model`
builds the recurrent stack and heads on precomputed features (``--stage sequence``), with the same layer
names as :func:`build_model`, so its weights drop into the end-to-end model that is exported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import urllib.error
from collections.abc import Iterator, Mapping, Sequence

import keras
import tensorflow as tf

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEADS
from trainer.choices import BACKBONES, RNNS
from trainer.layers import PerFrame

MIXED_PRECISION_POLICY = "mixed_float16"
IMAGENET = "imagenet"  # the backbone_weights value that asks Keras for its ImageNet weights
PER_FRAME_LAYER = "per_frame_cnn"  # the PerFrame layer holding the CNN, in every model built here


class BackboneWeightsError(ValueError):
    """Backbone weights that cannot be had: a download without internet, or ImageNet for simple_cnn."""


@dataclasses.dataclass
class ModelSpec:
    """What to build.

    Attributes:
        heads: Heads to build, a subset of :data:`tfrecords_schema.HEADS`.
        num_expression_classes: Classes of the expression head (7 or 8 for ABAW).
        num_action_units: Outputs of the AU head.
        crop_size: Side ``S`` of the square input crops.
        seq_len: Frames per input sequence ``T``; None builds a model that takes any ``T``.
        backbone: One of :data:`BACKBONES`.
        backbone_weights: None (random), ``"imagenet"`` (keras.applications backbones; downloaded and
            cached by Keras), or a local weights file of the backbone (``simple_cnn``: the whole CNN as
            saved by ``save_weights``; applications: the ``keras.applications`` base model's file).
        cnn_width: Filter multiplier of the simple CNN (1.0 = the paper's 64/128/256).
        feature_dim: Per-frame feature size (the paper's Dense 300).
        rnn: One of :data:`RNNS`.
        rnn_units: Units of each recurrent layer, first to last; empty: no recurrent layer, the heads
            sit on each frame's CNN features (the per-frame model of ``--stage frames``).
        dropout: Dropout after the CNN features (the paper's 0.5).
    """

    heads: Sequence[str]
    num_expression_classes: int = 0
    num_action_units: int = 0
    crop_size: int = 96
    seq_len: int | None = None
    backbone: str = "simple_cnn"
    backbone_weights: str | None = None
    cnn_width: float = 1.0
    feature_dim: int = 300
    rnn: str = "gru"
    rnn_units: Sequence[int] = (100, 100, 50)
    dropout: float = 0.5

    def __post_init__(self):
        self.heads = tuple(self.heads)
        if not self.heads:
            raise ValueError(f"at least one head is needed; valid heads: {list(HEADS)}")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown heads {unknown}; valid heads: {list(HEADS)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid backbones: {', '.join(BACKBONES)}")
        if self.rnn not in RNNS:
            raise ValueError(f"unknown rnn {self.rnn!r}; valid: {', '.join(RNNS)}")
        if HEAD_EXPRESSION in self.heads and self.num_expression_classes < 2:
            raise ValueError(f"the expression head needs >= 2 classes, got {self.num_expression_classes}")
        if HEAD_ACTION_UNITS in self.heads and self.num_action_units < 1:
            raise ValueError(f"the action_units head needs >= 1 AU, got {self.num_action_units}")
        if self.crop_size < 16:
            raise ValueError(f"crop_size must be >= 16, got {self.crop_size}")
        self.rnn_units = tuple(int(u) for u in self.rnn_units)
        if self.rnn_units and min(self.rnn_units) < 1:
            raise ValueError(f"rnn_units must be positive sizes, got {self.rnn_units}")
        if self.cnn_width <= 0:
            raise ValueError(f"cnn_width must be > 0, got {self.cnn_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backbone_weights == IMAGENET and self.backbone == "simple_cnn":
            raise BackboneWeightsError("simple_cnn has no ImageNet weights; use --backbone mobilenet_v3_small or "
                                       "efficientnet_b0 with --weights imagenet, or a local weights file")
        if self.backbone_weights not in (None, IMAGENET) and not os.path.isfile(self.backbone_weights):
            raise ValueError(f"backbone weights file {self.backbone_weights!r} not found (valid: none, imagenet, "
                             "or the path of a local weights file)")


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


@contextlib.contextmanager
def _global_dtype_policy(name: str) -> Iterator[None]:
    """Sets Keras' global dtype policy to ``name`` for the ``with`` block, then restores the previous one.

    The one place the trainer switches the global policy (see the module docstring): layers keep the
    policy they were built with, so nothing outside :func:`build_model` sees the switch.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(spec: ModelSpec, *, mixed_precision: bool = False) -> keras.Model:
    """Builds the CNN+RNN with one output per head (a dict keyed by head name).

    Build it inside ``strategy.scope()`` for distributed training.

    Args:
        spec: What to build.
        mixed_precision: Compute in float16 with float32 variables (``mixed_float16``; for GPUs); the
            output activations stay float32. Otherwise every layer is float32, whatever the global policy.
    """
    with _global_dtype_policy(MIXED_PRECISION_POLICY if mixed_precision else "float32"):
        return _build_layers(spec)


def build_sequence_model(spec: ModelSpec, *, mixed_precision: bool = False) -> keras.Model:
    """The recurrent stack and heads on per-frame features ``[B, T, feature_dim]`` (``--stage sequence``).

    Dropout (``spec.dropout``) on the features stands in for the CNN's own feature dropout, which the
    precomputed (inference-mode) features do not have. Layer names match :func:`build_model`'s, so the
    trained weights copy into the end-to-end model by name (:func:`trainer.two_stage.assemble_export`).
    """
    if not spec.rnn_units:
        raise ValueError("the sequence stage needs at least one recurrent layer (rnn_units)")
    with _global_dtype_policy(MIXED_PRECISION_POLICY if mixed_precision else "float32"):
        features = keras.Input((spec.seq_len, spec.feature_dim), name="features")
        x = keras.layers.Dropout(spec.dropout, name="sequence_feature_dropout")(features)
        return keras.Model(features, _temporal_heads(x, spec), name=f"{spec.rnn}_on_features")


def model_name(spec: ModelSpec) -> str:
    """``<backbone>_<rnn>``, or ``<backbone>_per_frame`` without recurrent layers."""
    return f"{spec.backbone}_{spec.rnn if spec.rnn_units else 'per_frame'}"


def pretrained_layers(model: keras.Model, spec: ModelSpec) -> list[keras.layers.Layer]:
    """The layers of ``model`` that hold the pretrained backbone weights (what ``--freeze_backbone_epochs`` freezes).

    ``simple_cnn``: the whole CNN (its weights file holds every CNN layer); ``keras.applications``
    backbones: the base model only, so the new feature layer on top of it trains from the first step.
    """
    cnn = model.get_layer(PER_FRAME_LAYER).layer
    if spec.backbone == "simple_cnn":
        return [cnn]
    return [layer for layer in cnn.layers if isinstance(layer, keras.Model)]


def _build_layers(spec: ModelSpec) -> keras.Model:
    s = spec.crop_size
    frames = keras.Input((spec.seq_len, s, s, 3), dtype="uint8", name="frames")
    cnn = build_backbone(spec)
    # Pixels arrive as uint8 (a quarter of the bytes of float32) and are scaled here, on the accelerator.
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(frames)
    x = PerFrame(cnn, name=PER_FRAME_LAYER)(x)
    return keras.Model(frames, _temporal_heads(x, spec), name=model_name(spec))


def _temporal_heads(x, spec: ModelSpec) -> dict:
    """The recurrent stack (none for a per-frame model) and one per-frame head per task on ``x`` ``[B, T, F]``."""
    rnn_cls = keras.layers.GRU if spec.rnn == "gru" else keras.layers.LSTM
    for i, units in enumerate(spec.rnn_units):
        x = rnn_cls(units, return_sequences=True, name=f"{spec.rnn}_{i + 1}")(x)
    outputs = {}
    if HEAD_EXPRESSION in spec.heads:
        logits = keras.layers.Dense(spec.num_expression_classes, name="expression_logits")(x)
        outputs[HEAD_EXPRESSION] = keras.layers.Activation("softmax", dtype="float32", name=HEAD_EXPRESSION)(logits)
    if HEAD_VALENCE_AROUSAL in spec.heads:
        va = keras.layers.Dense(2, name="valence_arousal_linear")(x)
        outputs[HEAD_VALENCE_AROUSAL] = keras.layers.Activation("tanh", dtype="float32",
                                                                name=HEAD_VALENCE_AROUSAL)(va)
    if HEAD_ACTION_UNITS in spec.heads:
        au = keras.layers.Dense(spec.num_action_units, name="action_units_logits")(x)
        outputs[HEAD_ACTION_UNITS] = keras.layers.Activation("sigmoid", dtype="float32", name=HEAD_ACTION_UNITS)(au)
    return outputs


def weighted_ccc(y_true: tf.Tensor, y_pred: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """CCC per column over the frames, each frame weighted (weight 0 = not counted).

    Args:
        y_true, y_pred: ``[..., D]``.
        weights: ``[...]`` (the leading dimensions of ``y_true``).

    Returns:
        ``[D]`` CCC per column; 0 where there are no weighted frames or the denominator is 0.
    """
    d = tf.shape(y_true)[-1]
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1, d])
    y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1, d])
    w = tf.reshape(tf.cast(weights, tf.float32), [-1, 1])
    total = tf.reduce_sum(w)
    safe_total = tf.maximum(total, 1e-8)
    mt = tf.reduce_sum(w * y_true, 0) / safe_total
    mp = tf.reduce_sum(w * y_pred, 0) / safe_total
    vt = tf.reduce_sum(w * tf.square(y_true - mt), 0) / safe_total
    vp = tf.reduce_sum(w * tf.square(y_pred - mp), 0) / safe_total
    cov = tf.reduce_sum(w * (y_true - mt) * (y_pred - mp), 0) / safe_total
    den = vt + vp + tf.square(mt - mp)
    return tf.where(den > 1e-8, 2.0 * cov / tf.maximum(den, 1e-8), tf.zeros_like(den))


def compute_losses(
    targets: Mapping[str, tf.Tensor],
    outputs: Mapping[str, tf.Tensor],
    weights: Mapping[str, tf.Tensor],
    global_frames: int | tf.Tensor,
    num_replicas: int = 1,
) -> dict[str, tf.Tensor]:
    """Per-head losses of one (per-replica) batch, scaled so a sum over replicas is the mean.

    * expression: weighted sparse cross-entropy, summed and divided by ``global_frames``
      (global batch × T), as ``tf.nn.compute_average_loss`` does;
    * valence_arousal: ``1 − mean(CCC_v, CCC_a)`` over the batch's weighted frames, / ``num_replicas``;
    * action_units: weighted mean-over-AUs binary cross-entropy, / ``global_frames``.

    Args:
        targets: ``{head: [B, T] int | [B, T, D] float}``.
        outputs: Model outputs (probabilities), float32.
        weights: ``{head: [B, T]}`` frame weights.
        global_frames: Global batch size × T.
        num_replicas: Replicas in sync.
    """
    losses = {}
    denom = tf.cast(global_frames, tf.float32)
    eps = 1e-7
    for head, pred in outputs.items():
        w = tf.cast(weights[head], tf.float32)
        if head == HEAD_EXPRESSION:
            ce = keras.losses.sparse_categorical_crossentropy(tf.cast(targets[head], tf.int32), pred)
            losses[head] = tf.reduce_sum(w * ce) / denom
        elif head == HEAD_VALENCE_AROUSAL:
            ccc = weighted_ccc(targets[head], pred, w)
            losses[head] = (1.0 - tf.reduce_mean(ccc)) / float(num_replicas)
        else:
            y = tf.cast(targets[head], tf.float32)
            p = tf.clip_by_value(pred, eps, 1.0 - eps)
            bce = -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
            losses[head] = tf.reduce_sum(w * tf.reduce_mean(bce, axis=-1)) / denom
    return losses
