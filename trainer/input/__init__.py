"""The input stream: shards in, batches of uint8 frames, targets and weights out (one linear tf.data function per mode).

Owns: reading and checking shards (``records``), windows, decoding (JPEG or raw crops), targets and weights
(``frames``), bucket sampling (``sampling``), what the stream holds (``mixing``), the train and eval pipelines
(``pipeline``), the sequence stage's feature windows (``features``) and the tf.data service (``data_service``).
May import: :mod:`trainer.common`, :mod:`tfrecords_schema`. Never the model, training, evaluation or prediction.
"""
