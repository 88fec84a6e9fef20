"""The parts of ``dataset_info.json`` below a dataset: a split's shards and its frame accounting.

:mod:`tfrecords_schema.dataset_info` (the whole file) and :mod:`tfrecords_schema.dataset_info_checks` (the
strict reader) both build on these; :mod:`tfrecords_schema.dataset_info` re-exports them.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping


class DatasetInfoError(ValueError):
    """A dataset_info.json that is missing, malformed or of another schema version."""


@dataclasses.dataclass
class ShardInfo:
    """One TFRecord shard file.

    Attributes:
        path: Path relative to the dataset root, e.g. ``"train/abaw-train-Fear.tfrecord-00000-of-00002"``.
        bucket: Rebalancing bucket of every clip in the shard (None for unbucketed splits).
        num_records: Clips in the shard.
        num_frames: Frames in those clips.
        num_bytes: File size in bytes.
    """

    path: str
    bucket: str | None
    num_records: int
    num_frames: int
    num_bytes: int

    @property
    def split(self) -> str:
        """The split folder the shard is in (the first part of :attr:`path`)."""
        return self.path.split("/", 1)[0]

    @property
    def basename(self) -> str:
        """The shard file name (see :func:`shard_basename` and :func:`parse_shard_basename`)."""
        return self.path.rsplit("/", 1)[-1]


@dataclasses.dataclass
class Accounting:
    """Where every labelled frame of a split went.

    ``labelled_frames == written_frames_with_face + written_frames_without_face + sum(dropped)``.

    Attributes:
        labelled_frames: Frames with at least one label (valid or rejected) in the annotations.
        written_frames_with_face: Labelled frames written with a detected (or provided) face.
        written_frames_without_face: Labelled frames written without a face (blank or held crop).
        dropped: ``{reason: frames}`` for labelled frames not written.
    """

    labelled_frames: int = 0
    written_frames_with_face: int = 0
    written_frames_without_face: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def written_frames(self) -> int:
        return self.written_frames_with_face + self.written_frames_without_face

    @property
    def dropped_frames(self) -> int:
        return sum(self.dropped.values())

    def is_balanced(self) -> bool:
        return self.labelled_frames == self.written_frames + self.dropped_frames

    def check(self, split: str) -> None:
        """Raises DatasetInfoError when the frames do not add up."""
        if not self.is_balanced():
            raise DatasetInfoError(
                f"accounting of split {split!r} does not add up: labelled_frames={self.labelled_frames} != "
                f"with_face {self.written_frames_with_face} + without_face {self.written_frames_without_face}"
                f" + dropped {self.dropped_frames} {dict(sorted(self.dropped.items()))}"
            )

    def merge(self, other: Accounting) -> Accounting:
        return Accounting(
            self.labelled_frames + other.labelled_frames,
            self.written_frames_with_face + other.written_frames_with_face,
            self.written_frames_without_face + other.written_frames_without_face,
            sum_counts(self.dropped, other.dropped),
        )


def sum_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """``{name: count}`` mappings added key by key (the one merge of every count in the project).

    Unlike ``Counter.__add__``, keys whose sum is 0 are kept, so a count recorded as 0 stays in
    the output.
    """
    total: collections.Counter = collections.Counter()
    for c in counts:
        total.update(c)
    return dict(total)


@dataclasses.dataclass
class SplitInfo:
    """What one split holds.

    Attributes:
        num_clips: Records written.
        num_frames: Frames in those records (labelled or not).
        bucket_clips: ``{bucket: clips}``; for the train split each bucket has its own shard set.
        bucket_frames: ``{bucket: frames}``.
        class_frames: Per task, ``{label name: frames}``: valid expression frames per class,
            positive frames per AU, and for VA the valid frames per valence/arousal grid cell.
        shards: Every shard file of the split.
        accounting: Where the labelled frames went.
        faces: What the face stage did on the labelled frames written from decoded video, by its status
            (``detected``, ``held``, ``lost``, ``none``: ``beam_jobs.faces.stage.FACE_STATUSES``); provided crops
            (``--cropped_aligned``) are not counted. Empty in a version-1 file.
        task_frames: ``{task: frames with a valid label of the task}`` (the denominator of the AU rates).
        bucket_classes: ``{bucket: {task: class}}``: the class every clip of the bucket has for each task
            (``tfrecords_schema.buckets.bucket_classes``; ``{}`` for a task the buckets do not separate).
        bucket_class_frames: ``{bucket: {task: {label name: frames}}}``: :attr:`class_frames` per bucket.
        bucket_task_frames: ``{bucket: {task: frames}}``: :attr:`task_frames` per bucket.
            The last four are empty in a version 1-2 file; summed over the buckets they give the split's.
    """

    num_clips: int = 0
    num_frames: int = 0
    bucket_clips: dict[str, int] = dataclasses.field(default_factory=dict)
    bucket_frames: dict[str, int] = dataclasses.field(default_factory=dict)
    class_frames: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    shards: list[ShardInfo] = dataclasses.field(default_factory=list)
    accounting: Accounting = dataclasses.field(default_factory=Accounting)
    faces: dict[str, int] = dataclasses.field(default_factory=dict)
    task_frames: dict[str, int] = dataclasses.field(default_factory=dict)
    bucket_classes: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    bucket_class_frames: dict[str, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)
    bucket_task_frames: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def shards_of_bucket(self, bucket: str | None) -> list[ShardInfo]:
        return [s for s in self.shards if s.bucket == bucket]
