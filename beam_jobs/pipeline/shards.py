"""Shards: spilled records → TFRecord shard sets under temp names, completed, then renamed into place.

A shard set is one split (the train split: one set per rebalancing bucket). Its size decides its
shard count (:func:`num_shards`), a stable hash of each record's id decides its shard, and each
shard is written in the order of another stable hash of the id (:func:`shard_order_key`), so two runs
over the same input write the same bytes while consecutive records come from different videos. Shards are
written under ``DIR/.tmp-convert/<split>/`` and renamed to ``DIR/<split>/`` only once the whole
run has been checked (:class:`FinalizeShardsFn`). Names: ``tfrecords_schema.shard_basename``.

    SpilledRecord ─ WriteShards ─ ShardInfo (temp) ┐
                                                   CompleteShardSets ─ ShardInfo (every index)
    DatasetInfo (checked) ─ FinalizeShards (rename into place) ─ DatasetInfo
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.media.video import is_remote
from beam_jobs.pipeline import files
from beam_jobs.pipeline.clips import stable_shard
from beam_jobs.pipeline.progress import counter
from beam_jobs.pipeline.spill import SpilledRecord, read_spilled
from tfrecords_schema import DatasetInfo, ShardInfo, join_path, shard_basename
from tfrecords_schema.dataset_info import parse_shard_basename, shard_path

if TYPE_CHECKING:
    from beam_jobs.pipeline.config import ConvertConfig


def num_shards(total_bytes: int, min_shards: int, shard_bytes: int) -> int:
    """Shards of a shard set: enough for ``shard_bytes`` each, at least ``min_shards``.

    Args:
        total_bytes: Serialised bytes of every record of the shard set.
        min_shards: Least number of shards.
        shard_bytes: Target bytes per shard.

    Returns:
        ``max(min_shards, ceil(total_bytes / shard_bytes))``.
    """
    return max(min_shards, math.ceil(total_bytes / shard_bytes))


def write_tfrecord(path: str, records: Iterable[bytes]) -> None:
    """Writes records as one TFRecord file (TensorFlow's writer: byte-exact, CRC-framed), streaming.

    A remote file is written locally first, then copied in 8 MiB chunks.
    """
    import tensorflow as tf  # Late import: only shard writers need TensorFlow.

    if not is_remote(path):
        files.ensure_parent(path)
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


def shard_order_key(example_id: str) -> tuple[bytes, str]:
    """Sort key of a record inside its shard: the SHA-256 of its id, ties broken by the id.

    Ids are ``split/media_id/first_frame``, so sorting by id would put a video's clips next to each
    other: a reader's shuffle buffer would then hold a few videos at a time and batches would be
    correlated by subject (TFDS orders records by a hash of the key for the same reason). The hash
    spreads every video over the whole shard; it is stable, so reruns still write the same bytes.
    SHA-256, not the SHA-1 of :func:`beam_jobs.pipeline.clips.stable_shard`, so the order inside a shard is
    independent of the shard choice.
    """
    return hashlib.sha256(example_id.encode("utf-8")).digest(), example_id


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


class WriteShardFn(beam.DoFn):
    """((split, bucket, shard, n), records) → ShardInfo; records in :func:`shard_order_key` order, under a temp name.

    Args:
        config: Worker options (output and temp folders, dataset name).
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, element):
        """Writes one shard from the spill files; yields its ShardInfo."""
        (split, bucket, index, n), records = element
        records = sorted(records, key=lambda r: shard_order_key(r.example_id))
        ids = [r.example_id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate example ids in shard {index} of {split}/{bucket}")
        path = shard_path(split, shard_basename(self._config.dataset_name, split, bucket, index, n))
        tmp = join_path(self._config.tmp_dir, path)
        write_tfrecord(tmp, read_spilled(records))
        size = files.file_size(tmp)
        counter("shards_written").inc()
        yield ShardInfo(path=path, bucket=bucket, num_records=len(records),
                        num_frames=int(sum(r.frames for r in records)), num_bytes=int(size))


class WriteShards(beam.PTransform):
    """SpilledRecords → ShardInfo of every written shard (under temp names).

    Sizes each shard set, assigns records to shards by id hash, writes each shard.

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
            # ((split, bucket), bytes)
            | "SumSetBytes" >> beam.CombinePerKey(sum)
            # ((split, bucket), bytes of the set)
        )
        return (
            records
            | "AssignShard" >> beam.ParDo(AssignShardFn(self._config), beam.pvalue.AsDict(set_bytes))
            # ((split, bucket, shard, num_shards), SpilledRecord)
            | "GroupByShard" >> beam.GroupByKey()
            # ((split, bucket, shard, num_shards), [SpilledRecord])
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._config))
            # ShardInfo
        )


class CompleteShardSetsFn(beam.DoFn):
    """Runs once after every shard is written: gives each shard set all its indices.

    A shard set with fewer records than ``min_shards`` misses some indices; each gets an
    empty TFRecord file under its temp name, so every set is ``00000..N-1 of N``.

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, _, shards: list[ShardInfo]):
        """Yields every ShardInfo, the written ones and the empty ones it adds (side input ``shards``)."""
        cfg = self._config
        sets: dict[tuple[str, str | None], int] = {}
        for s in shards:
            sets[(s.split, s.bucket)] = parse_shard_basename(s.basename, cfg.dataset_name).num_shards
        have = {s.path for s in shards}
        yield from shards
        for (split, bucket), n in sorted(sets.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            for i in range(n):
                path = shard_path(split, shard_basename(cfg.dataset_name, split, bucket, i, n))
                if path not in have:
                    write_tfrecord(join_path(cfg.tmp_dir, path), [])
                    yield ShardInfo(path=path, bucket=bucket, num_records=0, num_frames=0, num_bytes=0)


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
                files.ensure_dir(join_path(cfg.output, s.split))
                FileSystems.rename([join_path(cfg.tmp_dir, s.path)], [join_path(cfg.output, s.path)])
        yield info
