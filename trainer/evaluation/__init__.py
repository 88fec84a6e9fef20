"""Evaluation: a model over every labelled frame of a split (``collect``), the whole-set challenge metrics
(``metrics``), reports and pictures (``reports``, ``plots``), TensorBoard logs (``tensorboard``) and the
``affectstream evaluate`` command (``evaluate``).

May import: :mod:`trainer.model`, :mod:`trainer.input`, :mod:`trainer.common`, :mod:`tfrecords_schema`. Never
training or prediction.
"""
