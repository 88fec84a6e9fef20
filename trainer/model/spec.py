"""What a model is made of (:class:`ModelSpec`), checked before anything is built, and the names every model shares."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEADS
from trainer.common.choices import BACKBONES, RNNS, TEMPORAL_HEADS, TEMPORAL_TRANSFORMER

SERIALIZATION_PACKAGE = "affectstream"  # the package the trainer's Keras layers are registered under


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
        temporal: The temporal head, one of :data:`trainer.common.choices.TEMPORAL_HEADS`
            (:mod:`trainer.model.temporal`), or None: the heads sit on each frame's CNN features (the
            per-frame model of ``--stage frames``).
        rnn_units: Units of each recurrent layer (``gru``, ``lstm``), first to last; empty: no recurrent
            layer (a per-frame model, as ``temporal=None``).
        temporal_width: Channels of the TCN, width of the transformer.
        temporal_layers: TCN blocks or transformer layers; None: the head's default
            (:data:`trainer.model.temporal.DEFAULT_LAYERS`).
        max_window: The longest window the transformer takes (its learned positions).
        dropout: Dropout after the CNN features (the paper's 0.5).
        class_map: The expression head over another class list mapped onto the dataset's: ``class_map[i]``
            is the dataset class of source class ``i`` (-1: left out); the head is then softmax over
            ``len(class_map)`` source classes followed by :class:`trainer.model.layers.ClassMap`. None: a
            softmax over the dataset's classes.
        augment: Augment the clips in training (:class:`trainer.model.augment.ClipAugmentation`, the model's first
            layer; inactive at inference either way).
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
    temporal: str | None = "gru"
    rnn_units: Sequence[int] = (100, 100, 50)
    temporal_width: int = 64
    temporal_layers: int | None = None
    max_window: int = 256
    dropout: float = 0.5
    class_map: Sequence[int] | None = None
    augment: bool = True

    def __post_init__(self):
        self.heads = tuple(self.heads)
        if not self.heads:
            raise ValueError(f"at least one head is needed; valid heads: {list(HEADS)}")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown heads {unknown}; valid heads: {list(HEADS)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid backbones: {', '.join(BACKBONES)}")
        if self.temporal is not None and self.temporal not in TEMPORAL_HEADS:
            raise ValueError(f"unknown temporal head {self.temporal!r}; valid: {', '.join(TEMPORAL_HEADS)}")
        if self.temporal_width < 1 or (self.temporal_layers is not None and self.temporal_layers < 1):
            raise ValueError(f"temporal_width and temporal_layers must be >= 1, got {self.temporal_width}, "
                             f"{self.temporal_layers}")
        if self.temporal == TEMPORAL_TRANSFORMER and self.seq_len is not None and self.seq_len > self.max_window:
            raise ValueError(f"the transformer takes windows of up to max_window {self.max_window} frames, got "
                             f"seq_len {self.seq_len}")
        if self.class_map is not None:
            self.class_map = tuple(int(t) for t in self.class_map)
            if max(self.class_map) >= self.num_expression_classes or max(self.class_map) < 0:
                raise ValueError(f"class_map {list(self.class_map)} must map at least one class onto the "
                                 f"{self.num_expression_classes} expression classes")
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

    @property
    def per_frame(self) -> bool:
        """Whether the heads sit on each frame's CNN features, with no temporal head."""
        return self.temporal is None or (self.temporal in RNNS and not self.rnn_units)
