"""AffectStream trainer: tf.data input, CNN+RNN model, whole-set metrics, training and evaluation entry points.

Entry points: ``python -m trainer.train`` (:func:`trainer.train.run`) and ``python -m trainer.evaluate``
(:func:`trainer.evaluate.run`). Modules import TensorFlow lazily where they can, so ``import trainer`` is light.
"""
