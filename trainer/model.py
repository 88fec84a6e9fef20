"""The end-to-end CNN+RNN: a per-frame CNN, a recurrent stack over time, one head per task.

Input: float32 ``[B, T, S, S, 3]`` face crops in [0, 1]. The CNN runs on every
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

Backbones never download anything: ``keras.applications`` models are built with
``weights=None`` or from a local weights file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import keras
import tensorflow as tf

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEADS
from trainer.layers import PerFrame

BACKBONES = ("simple_cnn", "mobilenet_v3_small", "efficientnet_b0")
RNNS = ("gru", "lstm")
MIXED_PRECISION_POLICY = "mixed_float16"


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
        backbone_weights: None, or a local weights file for the backbone (never a download).
        cnn_width: Filter multiplier of the simple CNN (1.0 = the paper's 64/128/256).
        feature_dim: Per-frame feature size (the paper's Dense 300).
        rnn: One of :data:`RNNS`.
        rnn_units: Units of each recurrent layer, first to last.
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
        if not self.rnn_units or min(self.rnn_units) < 1:
            raise ValueError(f"rnn_units must be positive sizes, got {self.rnn_units}")
        if self.cnn_width <= 0:
            raise ValueError(f"cnn_width must be > 0, got {self.cnn_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backbone_weights is not None and not os.path.isfile(self.backbone_weights):
            raise ValueError(
                f"backbone weights file {self.backbone_weights!r} not found (weights are never downloaded;"
                " pass a local file or none)"
            )


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
    x = keras.layers.BatchNormalization(name="input_norm")(inputs)
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


def _application_cnn(spec: ModelSpec) -> keras.Model:
    """A keras.applications backbone (no download: weights None or a local file) + feature layer."""
    s = spec.crop_size
    inputs = keras.Input((s, s, 3), name="crop")
    if spec.backbone == "mobilenet_v3_small":
        # Our crops are in [0, 1]; MobileNetV3 without its own preprocessing expects [-1, 1].
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
        base = keras.applications.MobileNetV3Small(
            input_shape=(s, s, 3), include_top=False, weights=spec.backbone_weights, pooling="avg",
            include_preprocessing=False,
        )
    else:
        # EfficientNet normalises internally from [0, 255].
        x = keras.layers.Rescaling(255.0, name="to_0_255")(inputs)
        base = keras.applications.EfficientNetB0(
            input_shape=(s, s, 3), include_top=False, weights=spec.backbone_weights, pooling="avg"
        )
    x = base(x)
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


def _build_layers(spec: ModelSpec) -> keras.Model:
    s = spec.crop_size
    frames = keras.Input((spec.seq_len, s, s, 3), name="frames")
    cnn = build_backbone(spec)
    x = PerFrame(cnn, name="per_frame_cnn")(frames)
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
    return keras.Model(frames, outputs, name=f"{spec.backbone}_{spec.rnn}")


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
