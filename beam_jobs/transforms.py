"""The DoFns and PTransforms of the conversion job.

Each DoFn does one step; :class:`ConvertTracks` composes them::

    tracks ─ Reshuffle ─ ReadLabels ─ DecodeAndCrop ─ EncodeClips ─ WriteShards ─ CompleteShardSets ─┐
                 (failed)  │   (accounting) │  (clip stats) │                                        │
                 CountUnreadableLabels ─────┴───────────────┴─ CombineSummaries ─ BuildDatasetInfo ◄─┘
                           (+ discovery drops)                        │
                 dead letters ─ WriteDeadLetters ─┐          FinalizeShards (rename into place)
                                                  └──────────► WriteDatasetInfo (last, atomic)

Every labelled frame ends either in a written clip or in the accounting's
``dropped`` with a reason; dead letters go to ``DIR/errors/dead_letters.jsonl``.

Memory: a worker holds one clip of one track at a time. Encoded clips are appended to
spill files under ``DIR/.tmp-convert/spill/`` and only their (id, file, offset, length)
goes through the shuffle to the shard writer, which streams them into the shard in id
order; so even the DirectRunner, which keeps shuffled data in memory, holds ~100 bytes
per clip instead of its images.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Iterable

import apache_beam as beam
import cv2
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import faces as faces_lib
from beam_jobs import progress
from beam_jobs.clips import (
    Bucketer,
    ClipBuilder,
    SplitSummary,
    clip_summary,
    stable_shard,
    written_accounting,
)
from beam_jobs.sources.base import (
    DROP_BEYOND_VIDEO_END,
    DROP_DECODE_ERROR,
    DROP_NO_MEDIA,
    DROP_READ_LABELS_ERROR,
    DROP_UNREADABLE_MEDIA,
    DatasetSource,
    DeadLetter,
    SplitDrop,
    TrackLabels,
    TrackSpec,
)
from beam_jobs.video import VideoError, VideoReader, frame_timestamp_us, is_remote, probe_fps
from tfrecords_schema import (
    DATASET_INFO_FILENAME,
    Accounting,
    DatasetInfo,
    ShardInfo,
    SplitInfo,
    encode_clip,
    join_path,
    shard_basename,
)

_LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "affectstream"
TMP_DIRNAME = ".tmp-convert"
PROGRESS_DIRNAME = "progress"
SPILL_DIRNAME = "spill"
ERRORS_DIRNAME = "errors"
DEAD_LETTERS_FILENAME = "dead_letters.jsonl"
DROP_UNREADABLE_CROP = "unreadable_crop"  # Counter/dead-letter reason: a provided crop that does not decode.
MAX_OPEN_SPILL_FILES = 8  # Spill files a shard writer keeps open at once (LRU).

TAG_ACCOUNTING = "accounting"
TAG_DEAD_LETTERS = "dead_letters"
TAG_STATS = "stats"


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Options the workers need (plain values, pickled to every worker).

    Attributes:
        dataset_name: Adapter name (record field and shard prefix).
        output: Output root (local path or URL).
        label_names: Label names from the adapter.
        tasks: Tasks in the output.
        crop_size: Side of the square crops.
        clip_length: Frames per clip.
        detector: Registered detector name.
        detect_every: Detect every N frames.
        detect_width: Width of the downscaled detection image.
        max_hold: Frames a box is held after a missed detection (None: 2 x detect_every).
        bucket_by: Rebalancing buckets: ``expression``, ``va_grid`` or ``none``.
        min_shards: Least shards per shard set.
        shard_bytes: Target bytes per shard.
        jpeg_quality: JPEG quality of the crops.
        opencv_threads: Threads OpenCV may use in each worker (0: OpenCV's default). Set 1 when
            there is one Beam worker process per core, so they do not oversubscribe the cores.
    """

    dataset_name: str
    output: str
    label_names: dict
    tasks: tuple
    crop_size: int = 112
    clip_length: int = 64
    detector: str = "haar"
    detect_every: int = 5
    detect_width: int = 320
    max_hold: int | None = None
    bucket_by: str = "expression"
    min_shards: int = 1
    shard_bytes: int = 128 << 20
    jpeg_quality: int = 90
    opencv_threads: int = 0

    @property
    def tmp_dir(self) -> str:
        """Temporary folder of the run (spill files, temp shards, progress markers)."""
        return join_path(self.output, TMP_DIRNAME)

    @property
    def progress_dir(self) -> str:
        """Folder of the progress markers."""
        return join_path(self.output, TMP_DIRNAME, PROGRESS_DIRNAME)

    def bucketer(self) -> Bucketer:
        """The rebalancing bucketer of these options."""
        return Bucketer(self.bucket_by, self.label_names)


def dead_letter_dict(letter: DeadLetter, track: str = "") -> dict:
    """A dead letter as the JSON object written to ``DIR/errors/dead_letters.jsonl``.

    Args:
        letter: The failure.
        track: Id of the track it belongs to ("" for discovery problems).

    Returns:
        ``{"source", "reason", "message", "frames", "track"}``.
    """
    return {"source": letter.source, "reason": letter.reason, "message": letter.message,
            "frames": int(letter.frames), "track": track}


def _counter(name: str):
    return Metrics.counter(METRICS_NAMESPACE, name)


def _ensure_dir(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def _write_bytes(path: str, data: bytes) -> None:
    _ensure_dir(os.path.dirname(path) if not is_remote(path) else path)
    with FileSystems.create(path) as f:
        f.write(data)


def write_atomically(path: str, data: bytes, tmp_dir: str) -> None:
    """Writes ``data`` to a temporary file under ``tmp_dir``, then renames it to ``path``.

    Locally the rename is atomic (a reader sees the old or the new file, never a partial
    one); on object stores an object appears whole once its upload completes.

    Args:
        path: Final path (local or URL).
        data: The bytes.
        tmp_dir: Folder for the temporary file, on the same file system as ``path``.
    """
    tmp = join_path(tmp_dir, f".{uuid.uuid4().hex}-{os.path.basename(path.rstrip('/'))}")
    _write_bytes(tmp, data)
    _ensure_dir(os.path.dirname(path) if not is_remote(path) else path)
    FileSystems.rename([tmp], [path])


def _count_subject_lines(path: str, media_id: str) -> int:
    """Non-blank lines after the header; in a file listing several subjects, this subject's rows only."""
    prefix = (media_id + "/").encode("utf-8")
    lines = subject_rows = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        first = True
        for raw in f:
            if first:  # The header.
                first = False
                continue
            text = raw.strip()
            if not text:
                continue
            lines += 1
            if text.startswith(prefix):
                subject_rows += 1
    return subject_rows or lines


def annotation_line_count(track: TrackSpec) -> tuple[int, list[str]]:
    """Labelled lines of a track counted without the adapter (when the adapter itself failed).

    Per annotation file (rejected ones included): its non-blank lines after the header,
    or, in a file listing several subjects (rows starting ``<media_id>/``, as multi-task
    files do), this subject's rows. The track's frames are the most over its files: an
    upper bound of its labelled frames, since invalid-marker lines count too.

    Returns:
        ``(frames, unreadable)``: the count and the files that could not be read.
    """
    paths = sorted({path for _, path in track.annotation_files} | {r.path for r in track.rejected_files})
    frames, unreadable = 0, []
    for path in paths:
        try:
            frames = max(frames, _count_subject_lines(path, track.media_id))
        except (OSError, ValueError):
            unreadable.append(path)
    return frames, unreadable


class _DropTally:
    """Labelled frames of one track that are not written, by reason (mirrored in Beam counters)."""

    def __init__(self):
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str, frames: int) -> None:
        """Counts ``frames`` dropped with ``reason`` (nothing for 0)."""
        if frames:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(frames)
            _counter(f"dropped_{reason}").inc(int(frames))

    def drop_rejected(self, labels: TrackLabels) -> None:
        """Counts the frames whose only labels the adapter rejected, by their reason."""
        only_rejected = (labels.rejected != "") & ~labels.valid
        for reason in sorted(set(labels.rejected[only_rejected].tolist())):
            self.drop(reason, int((labels.rejected == reason)[only_rejected].sum()))


class ReadLabelsFn(beam.DoFn):
    """TrackSpec → (TrackSpec, TrackLabels): parses a track's annotation files with the adapter.

    Args:
        source: The dataset adapter (pickled to workers).
    """

    def __init__(self, source: DatasetSource):
        self._source = source

    def process(self, track: TrackSpec) -> Iterable[tuple[TrackSpec, TrackLabels]]:
        """Yields the track with its labels."""
        yield track, self._source.read_labels(track)


class CountUnreadableLabelsFn(beam.DoFn):
    """A track whose labels the adapter failed to read → its lines counted as dropped, and a dead letter.

    Input: ``(TrackSpec, (exception type, repr, traceback))`` from ``ReadLabels``'s
    ``with_exception_handling()``. The track's labelled frames are estimated without the
    adapter (:func:`annotation_line_count`) and counted as labelled and dropped with
    ``read_labels_error``, so the split's accounting still holds them.

    Args:
        config: Worker options (for the progress markers).

    Outputs:
        main: the dead-letter dict (``frames`` = the estimate).
        ``accounting``: ``(split, SplitSummary)`` for the track.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, element):
        """Yields the track's accounting entry and its dead letter."""
        track, error = element
        message = error[1] if isinstance(error, tuple) and len(error) > 1 else error
        frames, unreadable = annotation_line_count(track)
        tally = _DropTally()
        tally.drop(DROP_READ_LABELS_ERROR, frames)
        _counter("tracks_done").inc()
        note = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
        yield dead_letter_dict(DeadLetter(
            track.track_id, DROP_READ_LABELS_ERROR,
            f"annotations could not be read: {message}; {frames} annotation lines counted as dropped{note}",
            frames), track.track_id)
        acc = Accounting(labelled_frames=frames, dropped=tally.dropped)
        yield beam.pvalue.TaggedOutput(TAG_ACCOUNTING, (track.split, SplitSummary(accounting=acc, tracks=1)))
        progress.write_marker(self._config.progress_dir, track.track_id, frames, 0, 0.0, progress.media_key(track))


class DecodeAndCropFn(beam.DoFn):
    """(TrackSpec, TrackLabels) → clips, one at a time as they fill; accounting and dead letters tagged.

    Streams the frames (or the provided crops in ``--cropped_aligned`` mode), detects
    the subject's face every ``detect_every`` frames, crops, JPEG-encodes and emits a
    ``(split, ClipRecord)`` whenever a clip fills, so a worker holds one clip at most.
    Clips without a valid label are skipped without decoding their pixels.

    Args:
        config: Worker options (detector, crop size, clip length, ...).

    Outputs:
        main: ``(split, ClipRecord)``.
        ``accounting``: ``(split, SplitSummary)`` once per track.
        ``dead_letters``: dicts for ``DIR/errors/``.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config
        self._detector = None
        self._bucketer = None

    def setup(self):
        """Builds the face detector and the bucketer once per worker."""
        if self._config.opencv_threads:
            cv2.setNumThreads(self._config.opencv_threads)
        self._detector = faces_lib.make_detector(self._config.detector)
        self._bucketer = self._config.bucketer()

    def process(self, element):
        """Yields the track's clips as they fill, its dead letters, then its accounting entry."""
        track, labels = element
        started = time.monotonic()
        tally = _DropTally()
        tally.drop_rejected(labels)
        for letter in labels.dead_letters:
            yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(letter, track.track_id))

        n_valid = int(labels.valid.sum())
        problem = track.problem or (None if (track.media_path or track.crops_dir) else DROP_NO_MEDIA)
        if problem:
            tally.drop(problem, n_valid)
            written = Accounting()
            if n_valid:  # (With no valid frame left, the adapter's own dead letters say it all.)
                yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(DeadLetter(
                    track.track_id, problem, f"track not converted: {problem}", n_valid), track.track_id))
        else:
            written = yield from self._convert_track(track, labels, tally)

        acc = Accounting(labelled_frames=int(labels.labelled.sum())).merge(written).merge(
            Accounting(dropped=tally.dropped))
        _counter("tracks_done").inc()
        _counter("frames_with_face").inc(acc.written_frames_with_face)
        _counter("frames_without_face").inc(acc.written_frames_without_face)
        seconds = time.monotonic() - started
        yield beam.pvalue.TaggedOutput(TAG_ACCOUNTING, (track.split, SplitSummary(accounting=acc, tracks=1, seconds=seconds)))
        progress.write_marker(self._config.progress_dir, track.track_id, acc.labelled_frames, acc.written_frames,
                              seconds, progress.media_key(track))

    def _convert_track(self, track: TrackSpec, labels: TrackLabels, tally: _DropTally):
        """Yields the clips and dead letters of a track with media or crops; returns its written accounting.

        A failure part-way drops the valid frames after the last emitted clip (``unreadable_media``
        for a video that stops decoding, ``decode_error`` for any other exception).
        """
        valid = labels.valid
        written = Accounting()
        emitted_upto = 0  # Last frame index of the last emitted clip.
        frames_seen = 0
        try:
            clips = self._provided_crops(track, labels) if track.crops_dir else self._decoded_crops(track, labels)
            for item in clips:
                if isinstance(item, dict):  # A dead letter from the crop reader.
                    yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, item)
                    continue
                if isinstance(item, int):  # End marker: frames the media gave.
                    frames_seen = item
                    continue
                written = written.merge(written_accounting(item, valid))
                emitted_upto = int(item.frame_index[-1])
                _counter("clips_written").inc()
                yield track.split, item
            beyond = int(valid[frames_seen:].sum())
            tally.drop(DROP_BEYOND_VIDEO_END, beyond)
            if beyond:
                yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(DeadLetter(
                    track.media_path or track.track_id, DROP_BEYOND_VIDEO_END,
                    f"{labels.num_frames} annotation lines but only {frames_seen} decodable frames",
                    beyond), track.track_id))
        except VideoError as e:
            lost = int(valid[emitted_upto:].sum())
            tally.drop(DROP_UNREADABLE_MEDIA, lost)
            yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(DeadLetter(
                track.media_path or track.track_id, DROP_UNREADABLE_MEDIA, str(e), lost), track.track_id))
        except Exception as e:  # noqa: BLE001 - any failure mid-track becomes counted frames + a dead letter.
            lost = int(valid[emitted_upto:].sum())
            tally.drop(DROP_DECODE_ERROR, lost)
            _LOG.warning("decode error in %s: %r", track.track_id, e)
            yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(DeadLetter(
                track.media_path or track.track_id, DROP_DECODE_ERROR,
                f"{type(e).__name__}: {e} (after frame {emitted_upto})", lost), track.track_id))
        return written

    def _decoded_crops(self, track: TrackSpec, labels: TrackLabels):
        cfg = self._config
        cropper = faces_lib.FaceCropper(
            self._detector, crop_size=cfg.crop_size, detect_every=cfg.detect_every,
            detect_width=cfg.detect_width, side=track.side, max_hold=cfg.max_hold,
        )
        n = labels.num_frames
        with VideoReader(track.media_path) as video:
            builder = ClipBuilder(track, labels, cfg.clip_length, cfg.dataset_name, video.fps, self._bucketer)
            skipping = False
            for index in range(1, n + 1):
                if not builder.clip_has_valid(index):
                    if not video.skip():
                        break
                    skipping = True
                    continue
                if skipping:
                    cropper.reset()
                    skipping = False
                frame = video.read()
                if frame is None:
                    break
                face = cropper.process(frame)
                clip = builder.add(index, frame_timestamp_us(index, video.fps),
                                   faces_lib.encode_jpeg(face.crop, cfg.jpeg_quality), face.bbox)
                if clip is not None:
                    yield clip
            clip = builder.flush()
            if clip is not None:
                yield clip
            yield video.frames_read

    def _provided_crops(self, track: TrackSpec, labels: TrackLabels):
        cfg = self._config
        fps = probe_fps(track.media_path)
        builder = ClipBuilder(track, labels, cfg.clip_length, cfg.dataset_name, fps, self._bucketer)
        blank = faces_lib.encode_jpeg(faces_lib.blank_crop(cfg.crop_size), cfg.jpeg_quality)
        for index in range(1, labels.num_frames + 1):
            if not builder.clip_has_valid(index):
                continue
            path = join_path(track.crops_dir, f"{index:05d}.jpg")
            image, bbox = None, None
            if FileSystems.exists(path):
                with FileSystems.open(path) as f:
                    image = faces_lib.decode_image(f.read())
                if image is None:
                    _counter(f"no_face_{DROP_UNREADABLE_CROP}").inc()
                    yield dead_letter_dict(DeadLetter(path, DROP_UNREADABLE_CROP,
                                                      "provided crop does not decode; frame written without a face", 0),
                                           track.track_id)
            if image is not None:
                h, w = image.shape[:2]
                jpeg = faces_lib.encode_jpeg(faces_lib.square_crop(image, (0, 0, w, h), cfg.crop_size, margin=1.0),
                                             cfg.jpeg_quality)
                bbox = (0.0, 0.0, 1.0, 1.0)  # The provided crop is the face.
            else:
                jpeg = blank
            clip = builder.add(index, frame_timestamp_us(index, fps), jpeg, bbox)
            if clip is not None:
                yield clip
        clip = builder.flush()
        if clip is not None:
            yield clip
        yield labels.num_frames


@dataclasses.dataclass(frozen=True)
class SpilledRecord:
    """Where an encoded clip waits for its shard: a byte range of a spill file (small to shuffle).

    Attributes:
        split: Split of the clip.
        bucket: Shard-set bucket (None for unbucketed shard sets).
        example_id: The clip's unique id (sort key inside a shard).
        path: Spill file holding the serialised record.
        offset: Byte offset in the spill file.
        length: Bytes of the serialised record.
        frames: Frames in the clip.
    """

    split: str
    bucket: str | None
    example_id: str
    path: str
    offset: int
    length: int
    frames: int

    @property
    def set_key(self) -> tuple[str, str | None]:
        """The shard set of the record: ``(split, bucket)``."""
        return self.split, self.bucket


class EncodeClipsFn(beam.DoFn):
    """(split, ClipRecord) → SpilledRecord; per-clip statistics tagged ``stats``.

    The serialised record is appended to this bundle's spill file under the output's temp
    folder and only its location travels on, so the shuffle before the shard writer moves
    a few bytes per clip instead of the images: memory stays flat on the DirectRunner too.

    Args:
        config: Worker options (output folder, bucketing, label names).
    """

    def __init__(self, config: ConvertConfig):
        self._config = config
        self._bucketer = None
        self._spill = None
        self._spill_path = ""
        self._offset = 0

    def setup(self):
        """Builds the bucketer once per worker."""
        self._bucketer = self._config.bucketer()

    def start_bundle(self):
        """Starts without a spill file (one is opened on the bundle's first clip)."""
        self._spill = None

    def _open_spill(self):
        self._spill_path = join_path(self._config.tmp_dir, SPILL_DIRNAME, f"{uuid.uuid4().hex}.bin")
        if not is_remote(self._spill_path):
            _ensure_dir(os.path.dirname(self._spill_path))
        self._spill = FileSystems.create(self._spill_path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._offset = 0

    def process(self, element):
        """Appends the encoded clip to the spill file; yields its location and its statistics."""
        split, clip = element
        bucket = self._bucketer.names[clip.bucket_index]
        data = encode_clip(clip)
        if self._spill is None:
            self._open_spill()
        self._spill.write(data)
        yield SpilledRecord(split, self._bucketer.shard_bucket(split, bucket), clip.example_id, self._spill_path,
                            self._offset, len(data), clip.num_frames)
        self._offset += len(data)
        yield beam.pvalue.TaggedOutput(
            TAG_STATS, (split, clip_summary(clip, bucket, self._config.label_names, list(self._config.tasks))))

    def finish_bundle(self):
        """Closes the bundle's spill file (its records are complete before the shuffle reads them)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def num_shards(total_bytes: int, min_shards: int, shard_bytes: int) -> int:
    """Shards of a shard set: enough for ``shard_bytes`` each, at least ``min_shards``.

    Args:
        total_bytes: Serialised bytes of every record of the shard set.
        min_shards: Least number of shards.
        shard_bytes: Target bytes per shard.

    Returns:
        ``max(min_shards, ceil(total_bytes / shard_bytes))``.
    """
    return max(min_shards, int(math.ceil(total_bytes / shard_bytes)))


class AssignShardFn(beam.DoFn):
    """SpilledRecord → ((split, bucket, shard, num_shards), record) by a stable hash of the id.

    Args:
        config: Worker options (``min_shards``, ``shard_bytes``).
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, record: SpilledRecord, set_bytes: dict):
        """Yields the record keyed by its shard (``set_bytes``: bytes per shard set, a side input)."""
        n = num_shards(set_bytes[record.set_key], self._config.min_shards, self._config.shard_bytes)
        yield (record.split, record.bucket, stable_shard(record.example_id, n), n), record


def _write_tfrecord(path: str, records: Iterable[bytes]) -> None:
    """Writes records as one TFRecord file (TensorFlow's writer: byte-exact, CRC-framed), streaming."""
    import tensorflow as tf

    if not is_remote(path):
        _ensure_dir(os.path.dirname(path))
        with tf.io.TFRecordWriter(path) as writer:
            for data in records:
                writer.write(data)
        return
    fd, local = tempfile.mkstemp(suffix=".tfrecord")
    os.close(fd)
    try:
        with tf.io.TFRecordWriter(local) as writer:
            for data in records:
                writer.write(data)
        with open(local, "rb") as src, FileSystems.create(path) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    finally:
        os.remove(local)


def _read_spilled(records: list[SpilledRecord], max_open: int = MAX_OPEN_SPILL_FILES) -> Iterable[bytes]:
    """Reads the records back from the spill files, one at a time, in the given order.

    At most ``max_open`` spill files are open at once (least recently used closed first),
    so a shard whose records come from many bundles neither runs out of file handles nor
    holds a read buffer per remote spill file.

    Args:
        records: Where each record is, in output order.
        max_open: Most spill files open at once (>= 1).
    """
    if max_open < 1:
        raise ValueError(f"max_open must be >= 1, got {max_open}")
    handles: collections.OrderedDict[str, Any] = collections.OrderedDict()
    try:
        for r in records:
            f = handles.get(r.path)
            if f is None:
                if len(handles) >= max_open:
                    handles.popitem(last=False)[1].close()
                f = handles[r.path] = FileSystems.open(r.path, compression_type=CompressionTypes.UNCOMPRESSED)
            else:
                handles.move_to_end(r.path)
            f.seek(r.offset)
            data = f.read(r.length)
            if len(data) != r.length:
                raise OSError(f"spill file {r.path} is short: wanted {r.length} bytes at {r.offset}")
            yield data
    finally:
        for f in handles.values():
            f.close()


class WriteShardFn(beam.DoFn):
    """((split, bucket, shard, n), records) → ShardInfo; records sorted by id, written under a temp name.

    Args:
        config: Worker options (output and temp folders, dataset name).
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, element):
        """Writes one shard from the spill files; yields its ShardInfo."""
        (split, bucket, index, n), records = element
        records = sorted(records, key=lambda r: r.example_id)
        ids = [r.example_id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate example ids in shard {index} of {split}/{bucket}")
        name = shard_basename(self._config.dataset_name, split, bucket, index, n)
        tmp = join_path(self._config.tmp_dir, split, name)
        _write_tfrecord(tmp, _read_spilled(records))
        size = FileSystems.match([tmp])[0].metadata_list[0].size_in_bytes
        _counter("shards_written").inc()
        yield ShardInfo(path=f"{split}/{name}", bucket=bucket, num_records=len(records),
                        num_frames=int(sum(r.frames for r in records)), num_bytes=int(size))


class WriteShards(beam.PTransform):
    """Sizes each shard set, assigns records to shards by id hash, writes each shard under a temp name.

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        super().__init__()
        self._config = config

    def expand(self, records):
        """SpilledRecords → ShardInfo of every written shard (under temp names)."""
        set_bytes = (
            records
            | "SetBytes" >> beam.Map(lambda r: (r.set_key, r.length))
            | "SumSetBytes" >> beam.CombinePerKey(sum)
        )
        return (
            records
            | "AssignShard" >> beam.ParDo(AssignShardFn(self._config), beam.pvalue.AsDict(set_bytes))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._config))
        )


class MergeSummariesFn(beam.CombineFn):
    """Merges :class:`SplitSummary` values (accounting, histograms, counts)."""

    def create_accumulator(self):
        """An empty summary."""
        return SplitSummary()

    def add_input(self, acc, summary):
        """Adds one summary."""
        return acc.merge(summary)

    def merge_accumulators(self, accs):
        """Merges partial summaries."""
        out = SplitSummary()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc):
        """The merged summary."""
        return acc


def dataset_info_skeleton(config: ConvertConfig, options: dict, unused_media: list[str]) -> DatasetInfo:
    """A :class:`DatasetInfo` with the run's options and label names and no split yet.

    Args:
        config: Worker options.
        options: Options recorded in ``dataset_info.json``.
        unused_media: Media without annotation.
    """
    bucketer = config.bucketer()
    return DatasetInfo(
        name=config.dataset_name, tasks=list(config.tasks), label_names=dict(config.label_names),
        bucket_by=config.bucket_by, bucket_names=list(bucketer.names), crop_size=config.crop_size,
        clip_length=config.clip_length, splits={}, options=dict(options), unused_media=list(unused_media),
    )


def _sorted_letters(dead_letters: Iterable[dict]) -> list[dict]:
    return sorted(dead_letters, key=lambda d: (d["track"], d["source"], d["reason"], d["message"]))


def _split_drop_summary(drop: SplitDrop) -> tuple[str, SplitSummary]:
    """A discovery drop as an accounting entry of its split (labelled and dropped)."""
    frames = int(drop.frames)
    return drop.split, SplitSummary(accounting=Accounting(labelled_frames=frames, dropped={drop.reason: frames}))


class CompleteShardSetsFn(beam.DoFn):
    """Runs once after every shard is written: gives each shard set all its indices.

    A shard set with fewer records than ``min_shards`` misses some indices; each gets an
    empty TFRecord file under its temp name, so every set is ``00000..N-1 of N``.

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, _, shards: list):
        """Yields every ShardInfo, the written ones and the empty ones it adds (side input ``shards``)."""
        cfg = self._config
        sets: dict[tuple, int] = {}
        for s in shards:
            split, name = s.path.split("/", 1)
            sets[(split, s.bucket)] = int(name.rsplit("-of-", 1)[1])
        have = {s.path for s in shards}
        yield from shards
        for (split, bucket), n in sorted(sets.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            for i in range(n):
                name = shard_basename(cfg.dataset_name, split, bucket, i, n)
                if f"{split}/{name}" not in have:
                    _write_tfrecord(join_path(cfg.tmp_dir, split, name), [])
                    yield ShardInfo(path=f"{split}/{name}", bucket=bucket, num_records=0, num_frames=0, num_bytes=0)


class BuildDatasetInfoFn(beam.DoFn):
    """Runs once: builds the :class:`DatasetInfo` and checks it (no file is written here).

    Checks that each split's accounting adds up (every labelled frame written or dropped
    with a reason) and that the shards hold exactly the clips encoded; raises otherwise,
    so nothing is renamed into place and no ``dataset_info.json`` appears.

    Args:
        config: Worker options.
        splits: Splits of the run (each gets an entry, even an empty one).
        options: Options recorded in ``dataset_info.json``.
        unused_media: Media without annotation.
    """

    def __init__(self, config: ConvertConfig, splits: list[str], options: dict, unused_media: list[str]):
        self._config = config
        self._splits = list(splits)
        self._options = dict(options)
        self._unused = list(unused_media)

    def process(self, _, shards: list, summaries: list, dead_letters: list):
        """Yields the checked DatasetInfo (side inputs: all shards, ``(split, SplitSummary)``, dead letters)."""
        info = dataset_info_skeleton(self._config, self._options, self._unused)
        by_split = {split: SplitSummary() for split in self._splits}
        for split, summary in summaries:
            by_split[split] = by_split.get(split, SplitSummary()).merge(summary)
        shards = sorted(shards, key=lambda s: s.path)
        for split, summary in sorted(by_split.items()):
            info.splits[split] = SplitInfo(
                num_clips=summary.num_clips, num_frames=summary.num_frames,
                bucket_clips=dict(sorted(summary.bucket_clips.items())),
                bucket_frames=dict(sorted(summary.bucket_frames.items())),
                class_frames={t: dict(sorted(h.items())) for t, h in sorted(summary.class_frames.items())},
                shards=[s for s in shards if s.path.startswith(split + "/")],
                accounting=Accounting(
                    summary.accounting.labelled_frames, summary.accounting.written_frames_with_face,
                    summary.accounting.written_frames_without_face, dict(sorted(summary.accounting.dropped.items())),
                ),
            )
            written = sum(s.num_records for s in info.splits[split].shards)
            if written != summary.num_clips:
                raise RuntimeError(f"split {split}: {written} records in shards but {summary.num_clips} clips encoded")
        info.check()  # The job's own check: every labelled frame is written or dropped with a reason.
        by_reason: dict[str, int] = {}
        for d in dead_letters:
            by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
        errors_path = f"{ERRORS_DIRNAME}/{DEAD_LETTERS_FILENAME}"
        info.failures = {"dead_letters": len(dead_letters), "by_reason": dict(sorted(by_reason.items())),
                         "files": [errors_path] if dead_letters else []}
        info.run = {"tracks": sum(s.tracks for s in by_split.values()),
                    "worker_seconds": round(sum(s.seconds for s in by_split.values()), 3)}
        yield info


class FinalizeShardsFn(beam.DoFn):
    """DatasetInfo → the same, after renaming each of its shards from its temp name to its final name.

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, info: DatasetInfo):
        """Renames the shards into ``DIR/<split>/``; yields ``info``."""
        cfg = self._config
        for split_info in info.splits.values():
            for s in split_info.shards:
                _ensure_dir(join_path(cfg.output, s.path.split("/", 1)[0]))
                FileSystems.rename([join_path(cfg.tmp_dir, s.path)], [join_path(cfg.output, s.path)])
        yield info


class WriteDeadLettersFn(beam.DoFn):
    """Runs once: writes every dead letter, sorted, to ``DIR/errors/dead_letters.jsonl``.

    No file when there is none (some object stores refuse zero-byte multipart uploads).

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, _, dead_letters: list):
        """Writes the file (side input ``dead_letters``); yields its path relative to the output, if any."""
        letters = _sorted_letters(dead_letters)
        if letters:
            body = "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in letters)
            _write_bytes(join_path(self._config.output, ERRORS_DIRNAME, DEAD_LETTERS_FILENAME), body.encode("utf-8"))
            yield f"{ERRORS_DIRNAME}/{DEAD_LETTERS_FILENAME}"


class WriteDatasetInfoFn(beam.DoFn):
    """DatasetInfo → ``DIR/dataset_info.json``, written last and atomically (temp name, then rename).

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, info: DatasetInfo, unused_errors_written: list):
        """Writes the file once the shards and dead letters are in place (side input: the dead-letter
        file written, an ordering barrier); yields its JSON text."""
        text = info.to_json()
        write_atomically(join_path(self._config.output, DATASET_INFO_FILENAME), text.encode("utf-8"),
                         self._config.tmp_dir)
        yield text


class ConvertTracks(beam.PTransform):
    """Track specs → shards, dead letters and ``dataset_info.json`` under ``config.output``.

    Args:
        source: The dataset adapter (pickled to workers).
        config: Worker options.
        splits: Splits present in the discovery (each gets an entry in dataset_info).
        options: Options recorded in dataset_info.
        discovery_dead_letters: Dicts from the adapter's discovery.
        unused_media: Media without annotation.
        split_drops: Labelled lines the discovery lost outside any track (``Discovery.split_drops``);
            they enter their split's accounting.
    """

    def __init__(self, source: DatasetSource, config: ConvertConfig, splits: list[str], options: dict,
                 discovery_dead_letters: list[dict], unused_media: list[str], split_drops: Iterable[SplitDrop] = ()):
        super().__init__()
        self._source = source
        self._config = config
        self._split_drops = list(split_drops)
        self._splits = sorted(set(splits) | {d.split for d in self._split_drops})
        self._options = options
        self._discovery_letters = discovery_dead_letters
        self._unused = unused_media

    def expand(self, tracks):
        """TrackSpecs → the JSON text of the written ``dataset_info.json`` (one element)."""
        p = tracks.pipeline
        cfg = self._config
        labelled, bad_labels = (
            tracks
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadLabels" >> beam.ParDo(ReadLabelsFn(self._source)).with_exception_handling()
        )
        unreadable = bad_labels | "CountUnreadableLabels" >> beam.ParDo(CountUnreadableLabelsFn(cfg)).with_outputs(
            TAG_ACCOUNTING, main="dead_letters")
        decoded = labelled | "DecodeAndCrop" >> beam.ParDo(DecodeAndCropFn(cfg)).with_outputs(
            TAG_ACCOUNTING, TAG_DEAD_LETTERS, main="clips")
        encoded = decoded.clips | "EncodeClips" >> beam.ParDo(EncodeClipsFn(cfg)).with_outputs(
            TAG_STATS, main="records")
        shards = encoded.records | "WriteShards" >> WriteShards(cfg)
        summaries = (
            (
                decoded[TAG_ACCOUNTING],
                unreadable[TAG_ACCOUNTING],
                encoded[TAG_STATS],
                p | "DiscoveryDrops" >> beam.Create([_split_drop_summary(d) for d in self._split_drops]),
            )
            | "FlattenSummaries" >> beam.Flatten()
            | "CombineSummaries" >> beam.CombinePerKey(MergeSummariesFn())
        )
        dead_letters = (
            (
                decoded[TAG_DEAD_LETTERS],
                unreadable.dead_letters,
                p | "DiscoveryDeadLetters" >> beam.Create(self._discovery_letters),
            )
            | "FlattenDeadLetters" >> beam.Flatten()
        )
        finish = p | "Finish" >> beam.Create([None])
        all_shards = finish | "CompleteShardSets" >> beam.ParDo(CompleteShardSetsFn(cfg), beam.pvalue.AsList(shards))
        errors_written = finish | "WriteDeadLetters" >> beam.ParDo(
            WriteDeadLettersFn(cfg), beam.pvalue.AsList(dead_letters))
        return (
            finish
            | "BuildDatasetInfo" >> beam.ParDo(
                BuildDatasetInfoFn(cfg, self._splits, self._options, self._unused),
                beam.pvalue.AsList(all_shards), beam.pvalue.AsList(summaries), beam.pvalue.AsList(dead_letters),
            )
            | "FinalizeShards" >> beam.ParDo(FinalizeShardsFn(cfg))
            | "WriteDatasetInfo" >> beam.ParDo(WriteDatasetInfoFn(cfg), beam.pvalue.AsList(errors_written))
        )
