"""AffectStream trainer: tf.data input, CNN+RNN model, whole-set metrics, training and evaluation entry points.

Entry points: ``python -m trainer.train`` (:func:`trainer.train.run`) and ``python -m trainer.evaluate``
(:func:`trainer.evaluate.run`). Importing the package registers the trainer's custom Keras layers
(:mod:`trainer.layers`, which imports Keras), so ``import trainer`` is all an exported ``model.keras`` needs
to load: ``keras.models.load_model("JOB/export/model.keras", compile=False)``.
"""

from trainer import layers  # noqa: F401  (registers the custom layers for keras.models.load_model)
