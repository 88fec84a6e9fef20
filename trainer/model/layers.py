"""The trainer's own Keras layers, registered for serialisation under the package ``affectstream``.

``import trainer`` imports this module, so an exported ``model.keras`` loads in any process that did::

    import keras
    import trainer  # registers the layers below
    model = keras.models.load_model("JOB/export/model.keras", compile=False)
"""

from __future__ import annotations

import keras

SERIALIZATION_PACKAGE = "affectstream"


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
