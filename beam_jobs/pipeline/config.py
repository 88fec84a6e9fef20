"""The conversion's worker options, :class:`ConvertConfig`, and the names of its temp folders.

Kept out of :mod:`beam_jobs.pipeline.transforms` (which re-exports these names): the parser of `affectstream convert`
takes its defaults from here, and `--help` must answer without importing Apache Beam or OpenCV.
"""

from __future__ import annotations

import dataclasses

from beam_jobs.faces import stage as faces_lib
from beam_jobs.pipeline.clips import Bucketer
from tfrecords_schema import join_path
from tfrecords_schema.buckets import BUCKET_BY_TASKS
from tfrecords_schema.dataset_info import CONVERT_TMP_DIRNAME

TMP_DIRNAME = CONVERT_TMP_DIRNAME  # The run's temp folder under the output (spill files, temp shards, markers).
PROGRESS_DIRNAME = "progress"  # Folder of the progress markers under the temp folder.


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Options the workers need (plain values, pickled to every worker).

    Attributes:
        dataset_name: Adapter name (record field and shard prefix).
        output: Output root (local path or URL).
        label_names: Label names from the adapter.
        tasks: Tasks in the output.
        face: The face stage (detector, detection cadence, box hold, crop size, JPEG quality).
        clip_length: Frames per clip.
        bucket_by: Rebalancing buckets: one of ``tfrecords_schema.buckets.BUCKET_BY``.
        min_shards: Least shards per shard set.
        shard_bytes: Target bytes per shard.
        opencv_threads: Threads OpenCV (and its FFmpeg decoder) may use in each worker (0: OpenCV's default). Set 1 when
            there is one Beam worker process per core, so they do not oversubscribe the cores.
    """

    dataset_name: str
    output: str
    label_names: dict
    tasks: tuple
    face: faces_lib.FaceStageConfig = dataclasses.field(default_factory=faces_lib.FaceStageConfig)
    clip_length: int = 64
    bucket_by: str = BUCKET_BY_TASKS
    min_shards: int = 1
    shard_bytes: int = 128 << 20
    opencv_threads: int = 0

    @property
    def tmp_dir(self) -> str:
        """Temporary folder of the run (spill files, temp shards, progress markers, staged info)."""
        return join_path(self.output, TMP_DIRNAME)

    @property
    def progress_dir(self) -> str:
        """Folder of the progress markers."""
        return join_path(self.output, TMP_DIRNAME, PROGRESS_DIRNAME)

    def bucketer(self) -> Bucketer:
        """The rebalancing bucketer of these options."""
        return Bucketer(self.bucket_by, self.label_names, self.tasks)

