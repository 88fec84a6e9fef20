"""The trainer's ground floor: the option values every command lists (``choices``), its errors and the hook that
registers the custom layers once Keras loads. (The file systems of ``gs://`` and ``s3://`` URLs are the schema's,
:mod:`tfrecords_schema.filesystems`: the conversion and ``inspect`` read them too.)

Owns: :mod:`~trainer.common.choices`, :mod:`~trainer.common.errors`, :mod:`~trainer.common.keras_hook`. May import: :mod:`tfrecords_schema` only.
"""
