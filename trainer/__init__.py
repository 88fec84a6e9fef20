"""AffectStream trainer: tf.data input, CNN+RNN model, whole-set metrics, training and evaluation entry points.

Entry points: ``python -m trainer.train`` (:func:`trainer.train.run`) and ``python -m trainer.evaluation.evaluate``
(:func:`trainer.evaluation.evaluate.run`). Importing the package registers the trainer's custom Keras layers
(:mod:`trainer.model.layers`), so ``import trainer`` is all an exported ``model.keras`` needs to load:
``keras.models.load_model("JOB/export/model.keras", compile=False)``. When Keras is not loaded yet, the layers are
registered right after it is (:mod:`trainer.common.keras_hook`), so that ``--help`` and the option parsing of every entry
point answer without importing TensorFlow.
"""

import sys

if "keras" in sys.modules:
    from trainer.model import layers  # noqa: F401  (registers the custom layers for keras.models.load_model)
else:
    from trainer.common import keras_hook

    keras_hook.import_after_keras("trainer.model.layers")
