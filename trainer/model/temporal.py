"""The temporal heads: what runs over time on the per-frame features, ``[B, T, F]`` → ``[B, T, F']``.

``--temporal`` (:data:`trainer.common.choices.TEMPORAL_HEADS`):

* ``gru`` (default) / ``lstm``: the paper's recurrent stack (Rangulov & Fahim 2020: GRU 100 → 100 → 50,
  ``rnn_units``), causal: frame ``t`` sees frames ``<= t``.
* ``tcn``: a temporal convolutional network (Bai et al. 2018): ``temporal_layers`` residual blocks, block ``i``
  two causal convolutions of kernel :data:`TCN_KERNEL` dilated by ``2**i`` (receptive field
  ``1 + 2 (k - 1)(2**L - 1)`` frames: 61 for the default 4 blocks), ``temporal_width`` channels, ReLU, dropout,
  a 1×1 projection on the skip path where the width changes. Causal like the GRU.
* ``transformer``: a small encoder (pre-norm blocks of multi-head self-attention and a 2× feed-forward,
  ``temporal_layers`` of them, ``temporal_width`` wide, :data:`ATTENTION_HEADS` heads) over the window, with
  learned positions (:class:`trainer.model.layers.LearnedPositions`) for any window of up to ``max_window``
  frames. Every frame attends to the whole window (padding frames of a short last window included).

Every layer is a built-in Keras layer or a registered one, named after its head and place, so a head trained on
precomputed features (:func:`trainer.model.build.build_sequence_model`) copies by name into the end-to-end model.
"""

from __future__ import annotations

import keras

from trainer.common.choices import RNNS, TEMPORAL_TCN, TEMPORAL_TRANSFORMER
from trainer.model.layers import LearnedPositions

TCN_KERNEL = 3
ATTENTION_HEADS = 4
INNER_DROPOUT = 0.1  # inside the TCN blocks and the transformer layers
# temporal_layers left unset: TCN blocks (receptive field 61 frames) and transformer layers.
DEFAULT_LAYERS = {TEMPORAL_TCN: 4, TEMPORAL_TRANSFORMER: 2}


def temporal_layers(spec) -> int:
    """The TCN blocks or transformer layers of ``spec`` (its ``temporal_layers``, else the head's default)."""
    return spec.temporal_layers or DEFAULT_LAYERS[spec.temporal]


def temporal_stack(x, spec):
    """Applies ``spec.temporal`` to ``x`` ``[B, T, F]`` (see the module docstring); returns ``[B, T, F']``."""
    if spec.temporal in RNNS:
        rnn_cls = keras.layers.GRU if spec.temporal == "gru" else keras.layers.LSTM
        for i, units in enumerate(spec.rnn_units):
            x = rnn_cls(units, return_sequences=True, name=f"{spec.temporal}_{i + 1}")(x)
        return x
    if spec.temporal == TEMPORAL_TCN:
        return _tcn(x, spec.temporal_width, temporal_layers(spec))
    if spec.temporal == TEMPORAL_TRANSFORMER:
        return _transformer(x, spec.temporal_width, temporal_layers(spec), spec.max_window)
    raise ValueError(f"unknown temporal head {spec.temporal!r}")


def describe(spec) -> dict:
    """The temporal head of ``spec`` as ``model_info.json`` records it (None: a per-frame model)."""
    if spec.per_frame:
        return None
    if spec.temporal in RNNS:
        return {"type": spec.temporal, "units": list(spec.rnn_units), "causal": True}
    record = {"type": spec.temporal, "width": spec.temporal_width, "layers": temporal_layers(spec)}
    if spec.temporal == TEMPORAL_TCN:
        blocks = temporal_layers(spec)
        return {**record, "kernel": TCN_KERNEL, "dilations": [2 ** i for i in range(blocks)],
                "receptive_field": 1 + 2 * (TCN_KERNEL - 1) * (2 ** blocks - 1), "causal": True}
    return {**record, "attention_heads": ATTENTION_HEADS, "max_window": spec.max_window, "causal": False}


def _tcn(x, width: int, blocks: int):
    for i in range(blocks):
        name, dilation = f"tcn_{i + 1}", 2 ** i
        y = x
        for j in (1, 2):
            y = keras.layers.Conv1D(width, TCN_KERNEL, dilation_rate=dilation, padding="causal", activation="relu",
                                    name=f"{name}_conv{j}")(y)
            y = keras.layers.Dropout(INNER_DROPOUT, name=f"{name}_dropout{j}")(y)
        skip = x if x.shape[-1] == width else keras.layers.Conv1D(width, 1, name=f"{name}_skip")(x)
        x = keras.layers.Activation("relu", name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([y, skip]))
    return x


def _transformer(x, width: int, layers: int, max_window: int):
    x = keras.layers.Dense(width, name="transformer_in")(x)
    x = LearnedPositions(max_window, name="transformer_positions")(x)
    for i in range(layers):
        name = f"transformer_{i + 1}"
        y = keras.layers.LayerNormalization(name=f"{name}_norm1")(x)
        y = keras.layers.MultiHeadAttention(ATTENTION_HEADS, max(1, width // ATTENTION_HEADS), dropout=INNER_DROPOUT,
                                            name=f"{name}_attention")(y, y)
        x = keras.layers.Add(name=f"{name}_add1")([x, y])
        y = keras.layers.LayerNormalization(name=f"{name}_norm2")(x)
        y = keras.layers.Dense(2 * width, activation="relu", name=f"{name}_ffn1")(y)
        y = keras.layers.Dropout(INNER_DROPOUT, name=f"{name}_dropout")(y)
        y = keras.layers.Dense(width, name=f"{name}_ffn2")(y)
        x = keras.layers.Add(name=f"{name}_add2")([x, y])
    return keras.layers.LayerNormalization(name="transformer_out")(x)
