"""Names in a conversion's output folder, declared once (:mod:`tfrecords_schema.dataset_info` re-exports them): here
so that the output transaction (:mod:`tfrecords_schema.transaction`), which the dataset info's reader asks about an
unfinished run, does not import the reader."""

DATASET_INFO_FILENAME = "dataset_info.json"
# A conversion's temp folder under the folder it writes (spill files, temp shards, progress markers). It never
# stays in a finished output; `inspect` reports one left by a run killed during its cleanup.
CONVERT_TMP_DIRNAME = ".tmp-convert"
