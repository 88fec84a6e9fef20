"""What a model is made of (:class:`ModelSpec`), checked before anything is built, and the names every model shares."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEADS
from trainer.common.choices import BACKBONES, RNNS

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
