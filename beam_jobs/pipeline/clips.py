"""Frames → fixed-length clips → :class:`tfrecords_schema.ClipRecord`; rebalancing buckets; split summaries.

No Apache Beam import. Clip ``k`` of a track holds frames ``k * L + 1 .. (k + 1) * L``
(1-based, ``L`` = clip length; the last clip of a track may be shorter), so clip
boundaries depend only on the annotation, never on what the detector found.

Example:
    buckets = Bucketer(BUCKET_BY_TASKS, label_names, tasks=("expr", "va", "au"))
    builder = ClipBuilder(track, labels, clip_length=64, dataset_name="abaw", frame_rate=30.0, bucketer=buckets)
    clip = builder.add(index, timestamp_us, jpeg, bbox)   # a ClipRecord when one fills, else None
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np

from beam_jobs.sources.base import TrackLabels, TrackSpec
from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    SPLIT_TRAIN,
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_VALENCE_AROUSAL,
    TASKS,
    Accounting,
    ClipRecord,
    keys,
)
from tfrecords_schema import buckets as buckets_lib
from tfrecords_schema.buckets import (
    ALL,
    AU_LABELLED,
    BUCKET_BY,
    BUCKET_BY_EXPRESSION,
    BUCKET_BY_NONE,
    BUCKET_BY_TASKS,
    BUCKET_BY_VA_GRID,
    NO_AU,
    NO_EXPRESSION,
    NO_VA,
    va_cell_names,
    va_cells,
)
from tfrecords_schema.dataset_info import bucket_token, sum_counts
from tfrecords_schema.image_codec import CODEC_JPEG


def expression_class(expression: np.ndarray, names: list[str]) -> str:
    """The clip's dominant valid expression class (ties: the lower class index), ``no_expression`` if none."""
    valid = expression[(expression != keys.EXPRESSION_INVALID) & (expression >= 0) & (expression < len(names))]
    if valid.size == 0:
        return NO_EXPRESSION
    return names[int(np.bincount(valid).argmax())]


def va_class(valence_arousal: np.ndarray) -> str:
    """The grid cell holding most of the clip's valid (valence, arousal) frames (ties: the first cell name), or
    ``no_va``."""
    ok = (valence_arousal != keys.VA_INVALID).all(axis=1)
    if not ok.any():
        return NO_VA
    names = va_cell_names()
    counts = collections.Counter(names[c] for c in va_cells(valence_arousal[ok]).tolist())
    return max(sorted(counts), key=lambda c: counts[c])


def au_class(action_units: np.ndarray) -> str:
    """``au`` when a frame of the clip has valid action-unit labels (every AU 0 or 1), else ``no_au``."""
    if action_units.ndim != 2 or action_units.shape[1] == 0:
        return NO_AU
    return AU_LABELLED if ((action_units == 0) | (action_units == 1)).all(axis=1).any() else NO_AU


class Bucketer:
    """The rebalancing bucket of a clip (:mod:`tfrecords_schema.buckets`).

    * :data:`BUCKET_BY_TASKS`: the composite bucket of the clip's class for every converted task, e.g.
      ``Neutral|v2_a3|au`` (:func:`expression_class`, :func:`va_class`, :func:`au_class`);
    * :data:`BUCKET_BY_EXPRESSION`: the dominant valid expression class of the clip, ``no_expression`` when
      the clip has none;
    * :data:`BUCKET_BY_VA_GRID`: the grid cell holding most valid (valence, arousal) frames, ``no_va`` when none;
    * :data:`BUCKET_BY_NONE`: one bucket, ``all``.

    Args:
        bucket_by: One of :data:`BUCKET_BY`.
        label_names: ``{head: [...]}`` from the dataset adapter (``HEAD_EXPRESSION`` gives the classes).
        tasks: The converted tasks (the parts of a composite bucket).

    Raises:
        ValueError: unknown ``bucket_by``, or class names that make two buckets share a shard file name.
    """

    def __init__(self, bucket_by: str, label_names: dict[str, list[str]], tasks=TASKS):
        if bucket_by not in BUCKET_BY:
            raise ValueError(f"unknown bucket_by {bucket_by!r}; valid values: {list(BUCKET_BY)}")
        self.bucket_by = bucket_by
        self.tasks = buckets_lib.composite_tasks(tasks)
        self._expression_names = list(label_names.get(HEAD_EXPRESSION, []))
        self.names = buckets_lib.bucket_names(bucket_by, self.tasks, label_names)
        self._index = {name: i for i, name in enumerate(self.names)}
        if bucket_by == BUCKET_BY_TASKS:
            for name in self._expression_names:
                buckets_lib.composite_name({TASK_EXPRESSION: name}, [TASK_EXPRESSION])  # refuses the separator
        tokens = collections.Counter(bucket_token(n) for n in self.names)
        clashes = sorted(n for n in self.names if tokens[bucket_token(n)] > 1)
        if clashes:
            raise ValueError(f"buckets {clashes[:4]} would share a shard file name ({bucket_token(clashes[0])!r}): "
                             "rename the classes or convert with another --bucket_by")

    def classes(self, expression: np.ndarray, valence_arousal: np.ndarray, action_units: np.ndarray
                ) -> dict[str, str]:
        """``{task: class}`` of a clip for every converted task, from its per-frame labels."""
        return {TASK_EXPRESSION: expression_class(expression, self._expression_names),
                TASK_VALENCE_AROUSAL: va_class(valence_arousal), TASK_ACTION_UNITS: au_class(action_units)}

    def bucket(self, expression: np.ndarray, valence_arousal: np.ndarray, action_units: np.ndarray) -> str:
        """Bucket name of a clip from its per-frame labels."""
        if self.bucket_by == BUCKET_BY_NONE:
            return ALL
        classes = self.classes(expression, valence_arousal, action_units)
        if self.bucket_by == BUCKET_BY_EXPRESSION:
            return classes[TASK_EXPRESSION]
        if self.bucket_by == BUCKET_BY_VA_GRID:
            return classes[TASK_VALENCE_AROUSAL]
        return buckets_lib.composite_name(classes, self.tasks)

    def bucket_classes(self, name: str) -> dict[str, str]:
        """``{task: class}`` every clip of bucket ``name`` has (:func:`tfrecords_schema.buckets.bucket_classes`)."""
        return buckets_lib.bucket_classes(self.bucket_by, name, self.tasks)

    def index(self, name: str) -> int:
        """Index of a bucket name in :attr:`names` (the record's ``clip/label/index``)."""
        return self._index[name]

    def shard_bucket(self, split: str, bucket: str) -> str | None:
        """The bucket a clip's shard set is named after: the train split is written per bucket."""
        if split == SPLIT_TRAIN and self.bucket_by != BUCKET_BY_NONE:
            return bucket
        return None


def stable_shard(example_id: str, num_shards: int) -> int:
    """Shard of a record: a hash of its id that is the same on every machine and run."""
    digest = hashlib.sha1(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def example_id(track: TrackSpec, first_frame: int) -> str:
    """The unique id of a clip: ``"<split>/<media_id>/<first frame, 6 digits>"``.

    Args:
        track: The clip's subject track.
        first_frame: 1-based index of the clip's first frame.
    """
    return f"{track.split}/{track.media_id}/{first_frame:06d}"


@dataclasses.dataclass
class SplitSummary:
    """Mergeable per-split statistics: records written, histograms and the frame accounting.

    Attributes:
        num_clips: Records written.
        num_frames: Frames in those records.
        bucket_clips: ``{bucket: clips}``.
        bucket_frames: ``{bucket: frames}``.
        class_frames: ``{task: {label name: frames}}``.
        accounting: Where the labelled frames went.
        tracks: Tracks finished.
        seconds: Worker seconds spent decoding and cropping.
        faces: ``{face stage status: labelled frames written}`` for frames from decoded video
            (``beam_jobs.faces.stage.FACE_STATUSES``).
        task_frames: ``{task: frames with a valid label of the task}``.
        bucket_class_frames: ``{bucket: {task: {label name: frames}}}``.
        bucket_task_frames: ``{bucket: {task: frames}}``.
    """

    num_clips: int = 0
    num_frames: int = 0
    bucket_clips: dict[str, int] = dataclasses.field(default_factory=dict)
    bucket_frames: dict[str, int] = dataclasses.field(default_factory=dict)
    class_frames: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    accounting: Accounting = dataclasses.field(default_factory=Accounting)
    tracks: int = 0
    seconds: float = 0.0
    faces: dict[str, int] = dataclasses.field(default_factory=dict)
    task_frames: dict[str, int] = dataclasses.field(default_factory=dict)
    bucket_class_frames: dict[str, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)
    bucket_task_frames: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def merge(self, other: SplitSummary) -> SplitSummary:
        """The sum of two summaries (a new object; neither input changes)."""
        return SplitSummary(
            num_clips=self.num_clips + other.num_clips,
            num_frames=self.num_frames + other.num_frames,
            bucket_clips=sum_counts(self.bucket_clips, other.bucket_clips),
            bucket_frames=sum_counts(self.bucket_frames, other.bucket_frames),
            class_frames=_merge_nested(self.class_frames, other.class_frames),
            accounting=self.accounting.merge(other.accounting),
            tracks=self.tracks + other.tracks,
            seconds=self.seconds + other.seconds,
            faces=sum_counts(self.faces, other.faces),
            task_frames=sum_counts(self.task_frames, other.task_frames),
            bucket_class_frames=_merge_nested(self.bucket_class_frames, other.bucket_class_frames),
            bucket_task_frames=_merge_nested(self.bucket_task_frames, other.bucket_task_frames),
        )


def _merge_nested(a: dict, b: dict) -> dict:
    """Nested ``{key: ... {name: count}}`` mappings added leaf by leaf (:func:`sum_counts` at the leaves)."""
    out = {}
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key, {}), b.get(key, {})
        nested = any(isinstance(v, dict) for v in (*left.values(), *right.values()))
        out[key] = _merge_nested(left, right) if nested else sum_counts(left, right)
    return out


def clip_summary(clip: ClipRecord, bucket: str, label_names: dict[str, list[str]], tasks: list[str]) -> SplitSummary:
    """The statistics one written clip adds to its split (histograms count valid frames only).

    ``class_frames`` and ``task_frames`` are the clip's, and again under its bucket in ``bucket_class_frames``
    and ``bucket_task_frames``.
    """
    class_frames: dict[str, dict[str, int]] = {}
    task_frames: dict[str, int] = {}
    if TASK_EXPRESSION in tasks:
        names = label_names.get(HEAD_EXPRESSION, [])
        valid = clip.expression[clip.expression != keys.EXPRESSION_INVALID].tolist()
        class_frames[TASK_EXPRESSION] = dict(collections.Counter(
            names[v] if 0 <= v < len(names) else f"class_{v}" for v in valid))
        task_frames[TASK_EXPRESSION] = len(valid)
    if TASK_VALENCE_AROUSAL in tasks:
        ok = (clip.valence_arousal != keys.VA_INVALID).all(axis=1)
        names = va_cell_names()
        class_frames[TASK_VALENCE_AROUSAL] = dict(collections.Counter(
            names[c] for c in va_cells(clip.valence_arousal[ok]).tolist()))
        task_frames[TASK_VALENCE_AROUSAL] = int(ok.sum())
    if TASK_ACTION_UNITS in tasks and clip.action_units.shape[1]:
        names = label_names.get(HEAD_ACTION_UNITS, [])
        ok = (clip.action_units != keys.AU_INVALID).all(axis=1)
        positives = (clip.action_units[ok] == 1).sum(axis=0).tolist()
        class_frames[TASK_ACTION_UNITS] = {
            (names[k] if k < len(names) else f"AU_{k}"): int(n) for k, n in enumerate(positives)
        }
        task_frames[TASK_ACTION_UNITS] = int(ok.sum())
    return SplitSummary(
        num_clips=1,
        num_frames=clip.num_frames,
        bucket_clips={bucket: 1},
        bucket_frames={bucket: clip.num_frames},
        class_frames=class_frames,
        task_frames=task_frames,
        bucket_class_frames={bucket: class_frames},
        bucket_task_frames={bucket: task_frames},
    )


class ClipBuilder:
    """Collects the crops of one track and emits a :class:`ClipRecord` each time a clip fills.

    Only the current clip is held in memory. A clip without any valid labelled frame
    is not emitted (it carries no label, so the accounting is unaffected). Frames come in
    order; inside a clip they are consecutive, except that a frame which gave no image (it
    did not decode) is passed to :meth:`skip`: it is left out of the clip and no later
    frame moves into its place, so ``frame_index`` may have a gap there.

    Args:
        track: The subject track.
        labels: Its per-frame labels (row ``i`` = frame ``i + 1``).
        clip_length: Frames per clip.
        dataset_name: Adapter name stored in each record.
        frame_rate: Frames per second of the source.
        bucketer: Computes each clip's bucket.
        image_format: How the crops given to :meth:`add` are encoded (the records' ``image/format``).
    """

    def __init__(
        self,
        track: TrackSpec,
        labels: TrackLabels,
        clip_length: int,
        dataset_name: str,
        frame_rate: float,
        bucketer: Bucketer,
        image_format: str = CODEC_JPEG,
    ):
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        self._track = track
        self._labels = labels
        self._valid = labels.valid
        self._clip_length = clip_length
        self._dataset_name = dataset_name
        self._frame_rate = frame_rate
        self._bucketer = bucketer
        self._image_format = image_format
        self._rows: list[tuple[int, int, bytes, tuple | None, np.ndarray | None]] = []
        self._next: int | None = None  # The frame the open clip expects next (None: no clip open).

    def clip_start(self, index: int) -> int:
        """First frame (1-based) of the clip holding frame ``index``."""
        return (index - 1) // self._clip_length * self._clip_length + 1

    def clip_has_valid(self, index: int) -> bool:
        """Whether the clip holding frame ``index`` has a valid labelled frame (else it can be skipped)."""
        start = self.clip_start(index) - 1
        return bool(self._valid[start:start + self._clip_length].any())

    def add(self, index: int, timestamp_us: int, image: bytes, bbox, keypoints: np.ndarray | None = None
            ) -> ClipRecord | None:
        """Adds frame ``index``; returns a clip when it completes one.

        Args:
            index: 1-based frame index, following the previous frame of the open clip.
            timestamp_us: Frame time.
            image: The encoded crop.
            bbox: Normalised ``(ymin, xmin, ymax, xmax)`` or None without a face.
            keypoints: ``[K, 2]`` normalised ``(x, y)`` or None (no face, or a detector without keypoints).
        """
        self._follow(index)
        self._rows.append((index, timestamp_us, image, bbox, keypoints))
        return self._complete(index)

    def skip(self, index: int) -> ClipRecord | None:
        """Frame ``index`` gave no image: nothing is stored for it. Returns the clip it completes, if any."""
        self._follow(index)
        return self._complete(index)

    def _follow(self, index: int) -> None:
        if self._next is not None and index != self._next:
            raise ValueError(f"frame {index} does not follow frame {self._next - 1}")

    def _complete(self, index: int) -> ClipRecord | None:
        if index % self._clip_length == 0:
            return self.flush()
        self._next = index + 1
        return None

    def flush(self) -> ClipRecord | None:
        """Emits the unfinished clip (the last of a track may be shorter); None when it holds no valid label."""
        rows, self._rows, self._next = self._rows, [], None
        if not rows:
            return None
        idx = np.array([r[0] for r in rows]) - 1
        if not self._valid[idx].any():
            return None
        labels = self._labels
        expression = labels.expression[idx]
        valence_arousal = labels.valence_arousal[idx]
        action_units = labels.action_units[idx]
        bucket = self._bucketer.bucket(expression, valence_arousal, action_units)
        bbox = np.array([r[3] if r[3] is not None else (np.nan,) * 4 for r in rows], np.float32)
        return ClipRecord(
            example_id=example_id(self._track, rows[0][0]),
            dataset_name=self._dataset_name,
            media_id=self._track.media_id,
            data_path=self._track.data_path,
            frame_rate=self._frame_rate,
            bucket_index=self._bucketer.index(bucket),
            images=[r[2] for r in rows],
            frame_index=idx + 1,
            timestamp_us=[r[1] for r in rows],
            bbox=bbox,
            expression=expression,
            valence_arousal=valence_arousal,
            action_units=action_units,
            keypoints=_stack_keypoints([r[4] for r in rows]),
            image_format=self._image_format,
        )


def _stack_keypoints(points: list[np.ndarray | None]) -> np.ndarray | None:
    """``[T, K, 2]`` with NaN rows for the frames without keypoints; None when no frame has any."""
    sizes = {len(p) for p in points if p is not None}
    if not sizes:
        return None
    if len(sizes) > 1:
        raise ValueError(f"frames of one clip have different numbers of keypoints: {sorted(sizes)}")
    out = np.full((len(points), sizes.pop(), 2), np.nan, np.float32)
    for row, p in enumerate(points):
        if p is not None:
            out[row] = p
    return out


def written_accounting(clip: ClipRecord, valid: np.ndarray) -> Accounting:
    """Accounting of the labelled frames a written clip holds (valid frames, with and without face)."""
    rows = clip.frame_index - 1
    ok = valid[rows]
    face = clip.has_face
    return Accounting(
        written_frames_with_face=int((ok & face).sum()),
        written_frames_without_face=int((ok & ~face).sum()),
    )
