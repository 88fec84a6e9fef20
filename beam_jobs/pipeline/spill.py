"""Spill files: where encoded clips wait for their shard, so the shuffle moves a few bytes per clip.

Memory: a worker holds one clip of one track at a time. :class:`EncodeClipsFn` appends each
serialised record to a spill file and only its location (a :class:`SpilledRecord`, ~100 bytes)
goes through the shuffle to the shard writer, which streams the records into the shard in id
order (:func:`read_spilled`). So even the DirectRunner, which keeps shuffled data in memory,
holds a few bytes per clip instead of its images.

On-disk format:
    ``DIR/.tmp-convert/spill/<32 hex digits>.bin``: one file per bundle of ``EncodeClips``
    (a fresh random name per bundle, so retried bundles never append to a file another attempt
    wrote). The file is the serialised records (``tfrecords_schema.encode_clip`` bytes, each a
    ``tf.train.SequenceExample``) one after another, with no header, framing or padding: record
    ``k`` is the byte range ``[offset, offset + length)`` its :class:`SpilledRecord` names. A file
    is complete when its bundle finishes (``finish_bundle`` closes it), before the shuffle hands
    its records on. Spill files are read only by shard writers, in any order, and deleted with
    the temp folder once the run has finished.

Example:
    records = clips | beam.ParDo(EncodeClipsFn(config)).with_outputs(TAG_STATS, main="records")
    for data in read_spilled(sorted(records_of_one_shard, key=lambda r: r.example_id)):
        writer.write(data)
"""

from __future__ import annotations

import collections
import dataclasses
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.pipeline import files
from beam_jobs.pipeline.clips import clip_summary
from tfrecords_schema import ClipRecord, encode_clip, join_path

if TYPE_CHECKING:
    from beam_jobs.pipeline.config import ConvertConfig

SPILL_DIRNAME = "spill"  # Folder of the spill files under the run's temp folder.
MAX_OPEN_SPILL_FILES = 8  # Spill files a shard writer keeps open at once (LRU).
TAG_STATS = "stats"  # EncodeClipsFn's output of per-clip statistics.


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


class SpillWriter:
    """Appends serialised records to one spill file, opened on the first record.

    Args:
        spill_dir: Folder of the spill files (local or URL).
    """

    def __init__(self, spill_dir: str):
        self._dir = spill_dir
        self._file = None
        self._path = ""
        self._offset = 0

    def append(self, data: bytes) -> tuple[str, int]:
        """Writes one record; returns ``(spill file, offset)`` where it starts."""
        if self._file is None:
            self._path = join_path(self._dir, f"{uuid.uuid4().hex}.bin")
            self._file = files.create(self._path)
            self._offset = 0
        self._file.write(data)
        where = (self._path, self._offset)
        self._offset += len(data)
        return where

    def close(self) -> None:
        """Closes the file (its records are complete); a later append opens a new file."""
        if self._file is not None:
            self._file.close()
            self._file = None


class EncodeClipsFn(beam.DoFn):
    """(split, ClipRecord) → SpilledRecord; per-clip statistics tagged :data:`TAG_STATS`.

    The serialised record is appended to this bundle's spill file under the output's temp
    folder and only its location travels on, so the shuffle before the shard writer moves
    a few bytes per clip instead of the images: memory stays flat on the DirectRunner too.

    Args:
        config: Worker options (output folder, bucketing, label names).

    Outputs:
        main: :class:`SpilledRecord`.
        :data:`TAG_STATS`: ``(split, SplitSummary)`` of the clip.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config
        self._bucketer = None
        self._spill: SpillWriter | None = None

    def setup(self):
        """Builds the bucketer once per worker."""
        self._bucketer = self._config.bucketer()

    def start_bundle(self):
        """Starts the bundle's spill writer (its file is opened on the bundle's first clip)."""
        self._close_spill()  # A bundle that failed never reached finish_bundle: its file is closed here.
        self._spill = SpillWriter(join_path(self._config.tmp_dir, SPILL_DIRNAME))

    def process(self, element: tuple[str, ClipRecord]):
        """Appends the encoded clip to the spill file; yields its location and its statistics."""
        split, clip = element
        bucket = self._bucketer.names[clip.bucket_index]
        data = encode_clip(clip)
        path, offset = self._spill.append(data)
        yield SpilledRecord(split, self._bucketer.shard_bucket(split, bucket), clip.example_id, path, offset,
                            len(data), clip.num_frames)
        yield beam.pvalue.TaggedOutput(
            TAG_STATS, (split, clip_summary(clip, bucket, self._config.label_names, list(self._config.tasks))))

    def finish_bundle(self):
        """Closes the bundle's spill file (its records are complete before the shuffle reads them)."""
        self._close_spill()

    def teardown(self):
        """Closes a spill file a failed bundle left open: a failed run's folder is removed, and an open file would
        keep its space taken (the disk-space figure of the failure report would count it) until the worker exits."""
        self._close_spill()

    def _close_spill(self):
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def read_spilled(records: Iterable[SpilledRecord], max_open: int = MAX_OPEN_SPILL_FILES) -> Iterator[bytes]:
    """Reads the records back from the spill files, one at a time, in the given order.

    At most ``max_open`` spill files are open at once (least recently used closed first),
    so a shard whose records come from many bundles neither runs out of file handles nor
    holds a read buffer per remote spill file.

    Args:
        records: Where each record is, in output order.
        max_open: Most spill files open at once (>= 1).

    Raises:
        ValueError: ``max_open`` < 1.
        OSError: a spill file is shorter than a record says.
    """
    if max_open < 1:
        raise ValueError(f"max_open must be >= 1, got {max_open}")
    return _read_spilled(records, max_open)


def _read_spilled(records: Iterable[SpilledRecord], max_open: int) -> Iterator[bytes]:
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
