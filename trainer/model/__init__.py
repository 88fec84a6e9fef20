"""The model: what it is made of (``spec``), the per-frame CNNs (``backbones``), the temporal heads (``temporal``),
the model and its heads (``build``), the training-time augmentation inside it (``augment``), face models trained
elsewhere (``pretrained``, ``saved_model``), the trainer's own layers (``layers``), the losses (``losses``) and the export files (``export``).

May import: :mod:`trainer.common`, :mod:`tfrecords_schema`. Never the input stream, training, evaluation or
prediction: a model is built and saved the same whatever feeds it.
"""
