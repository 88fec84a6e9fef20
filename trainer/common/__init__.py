"""The trainer's ground floor: the option values every command lists (``choices``), its errors, the file systems
(``gs://``, ``s3://``) and the hook that registers the custom layers once Keras loads.

Owns: :mod:`~trainer.common.choices`, :mod:`~trainer.common.errors`, :mod:`~trainer.common.filesystems`,
:mod:`~trainer.common.keras_hook`. May import: :mod:`tfrecords_schema` only.
"""
