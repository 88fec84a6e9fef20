"""Shard files for the trainer: which ones a pipeline reads, checked against ``dataset_info.json``, counted.

* :func:`shard_files` -- this input pipeline's share of a shard set (empty files skipped, the non-empty
  ones dealt round-robin over the pipelines), each checked for existence and size before reading.
* :func:`read_records` -- the serialized records of those files, read in parallel and interleaved; every
  shard is counted against its ``num_records`` when it ends.
* :func:`train_shard_sets` / :func:`mixed_train_records` -- the infinite stream of train records, buckets
  mixed by the sampling weights (``downsample``: blocks holding the minority count of every bucket), built
  inside :func:`explicitly_seeded` so that only its own seeds decide it.
* :func:`stream_seed` -- the seeds of those streams: per job seed, purpose and input pipeline, and per
  tf.data service worker (a tensor known only on the worker, :mod:`trainer.input.data_service`).

Bad shards: a missing shard or one whose size differs from ``dataset_info.json`` fails before reading
(:class:`CorruptShardError`, naming the file). A corrupt or truncated shard (the TFRecord reader stops at
its first bad record) fails while reading with an ``InvalidArgumentError`` naming the file and the counts,
unless the caller passes a :class:`SkippedRecords` counter: then reading goes on, and the records lost in
each such shard (from the first bad record to its end) are printed as a warning naming the file on every
pass over it and added to that counter.
"""

from __future__ import annotations

import logging
import sys
import threading
import zlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfrecords_schema import SPLIT_TRAIN, DatasetInfo, DatasetInfoError, ShardInfo, SplitInfo, join_path
from trainer.input import sampling as sampling_lib

logger = logging.getLogger(__name__)

# Serialized clips held in the record shuffle buffers of one training pipeline, over all buckets
# (about 64 KiB per 16-frame clip of 112-pixel crops: ~32 MiB).
RECORD_SHUFFLE_CLIPS = 512
# Shards read at the same time per stream.
READ_CYCLE_LENGTH = 4
# Records counted together by the shard check (read_shard): fewer function calls per record, at the cost of
# holding up to this many more serialized clips per open shard.
CHECK_BATCH = 4
READ_PARALLELISM = tf.data.AUTOTUNE


class CorruptShardError(ValueError):
    """A shard that is missing or whose size differs from dataset_info.json."""


class SkippedRecords:
    """Counts the records lost to corrupt or truncated shards; passing one makes the readers skip them.

    Create one per job and pass it to every dataset the job builds; read :attr:`total` at the end.
    Counted per pass over a shard: a corrupt shard read in three epochs counts its lost records three
    times. The readers add to it through ``tf.py_function`` (a plain Python counter, no variable in the
    dataset graph, so it is safe under any distribution strategy scope); each worker process counts its
    own. The lock guards the additions from tf.data's parallel reader threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._total = 0

    @property
    def total(self) -> int:
        """Records skipped so far."""
        with self._lock:
            return self._total

    def add(self, lost) -> np.int64:
        """Adds ``lost`` records (called from the dataset graph); returns it."""
        with self._lock:
            self._total += int(lost)
        return np.int64(lost)


def split_info(info: DatasetInfo, split: str) -> SplitInfo:
    """The :class:`SplitInfo` of ``split``.

    Raises:
        DatasetInfoError: the data has no such split (the message lists the splits it has).
    """
    if split not in info.splits:
        raise DatasetInfoError(f"the data has no {split!r} split; it has: {', '.join(sorted(info.splits)) or 'none'}")
    return info.splits[split]


def shards_of_bucket(info: DatasetInfo, bucket: str) -> list[ShardInfo]:
    """The train shards of ``bucket`` (:data:`trainer.input.sampling.UNBUCKETED`: those written without one)."""
    shards = info.splits[SPLIT_TRAIN].shards
    if bucket == sampling_lib.UNBUCKETED:
        return [s for s in shards if s.bucket is None]
    return [s for s in shards if s.bucket == bucket]


def assign_shards(shards: list[ShardInfo], what: str, input_context) -> list[ShardInfo]:
    """The shards of ``what`` that this input pipeline reads: its round-robin share of the non-empty ones.

    Shards listed with ``num_records == 0`` are skipped (``beam_jobs.convert --min_shards`` and hashing can
    leave shard files empty): they add nothing, and a worker whose share held only empty files would get
    an empty stream (which ends or silently leaves the bucket mix). The non-empty files, sorted by path, are
    then dealt round-robin over the pipelines, so every pipeline's share holds records.

    Raises:
        ValueError: fewer non-empty shard files than input pipelines (the message names ``what`` and the
            counts).
    """
    listed = len(shards)
    shards = sorted((s for s in shards if s.num_records > 0), key=lambda s: s.path)
    if input_context is None or input_context.num_input_pipelines <= 1:
        return shards
    n = input_context.num_input_pipelines
    if len(shards) < n:
        raise ValueError(
            f"{what} has {len(shards)} shard file(s) but there are {n} input pipelines (workers); only shard "
            f"files holding records count ({listed} listed, {listed - len(shards)} empty): file-based sharding "
            f"needs at least one non-empty shard per worker (otherwise a worker's stream is empty, or tf.data "
            f"silently falls back to every worker reading all data). Convert again with at least {n} shards "
            f"per shard set (beam_jobs.convert --min_shards {n}) and enough clips to fill them"
        )
    return shards[input_context.input_pipeline_id::n]


def shard_files(data_dir: str, shards: list[ShardInfo], what: str, input_context,
                skipped: SkippedRecords | None) -> tuple[list[str], list[int]]:
    """Paths and record counts of this input pipeline's share of ``shards``, checked against dataset_info.json.

    Args:
        data_dir: Root of the conversion output.
        shards: The shard set (a bucket's or a split's).
        what: How messages name the shard set, e.g. ``"train bucket 'Fear'"``.
        input_context: Multi-worker input context, or None (one pipeline reads every non-empty shard).
        skipped: When given, a size mismatch is a warning (the reader then skips and counts), else an error.

    Returns:
        ``(paths, num_records)`` of the shards to read (see :func:`assign_shards`).

    Raises:
        ValueError: fewer non-empty shards than input pipelines.
        CorruptShardError: a shard is missing, or of the wrong size (unless ``skipped`` is given).
    """
    shards = assign_shards(shards, what, input_context)
    paths = [join_path(data_dir, s.path) for s in shards]
    for path, shard in zip(paths, shards):
        if not tf.io.gfile.exists(path):
            raise CorruptShardError(f"shard {path} listed in dataset_info.json ({what}) does not exist")
        size = tf.io.gfile.stat(path).length
        if shard.num_bytes and size != shard.num_bytes:
            message = (f"shard {path} ({what}) has {size} bytes but dataset_info.json says {shard.num_bytes}: "
                       f"truncated or rewritten")
            if skipped is None:
                raise CorruptShardError(message + " (skip_corrupt=True reads what it can and counts the loss)")
            logger.warning("%s; reading it anyway (skip_corrupt)", message)
    return paths, [s.num_records for s in shards]


def read_shard(path: tf.Tensor, expected: tf.Tensor, skipped: SkippedRecords | None) -> tf.data.Dataset:
    """The records of one shard, counted against ``expected`` when the shard ends (see the module docstring).

    The reader stops at the first bad record of a file (``ignore_errors`` turns the DataLossError, which
    does not name the file, into the end of that file); an empty end-of-shard batch then compares the count.
    Records are counted in groups of :data:`CHECK_BATCH` (the check's functions run once per group, not per
    record), and the groups are split again: the records come out one by one, in file order.
    """
    groups = tf.data.TFRecordDataset(path).ignore_errors(log_warning=skipped is not None).batch(CHECK_BATCH)
    marked = groups.map(lambda g: (g, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True)))

    def count_and_check(count, element):
        group, is_end = element
        if skipped is not None:
            def report():
                lost = expected - count
                tf.print("WARNING: skipped", lost, "unreadable record(s) of corrupt or truncated shard", path,
                         "(read", count, "of", expected, ")", output_stream=sys.stderr)
                return tf.py_function(skipped.add, [lost], tf.int64) > 0
            tf.cond(tf.logical_and(is_end, count < expected), report, lambda: tf.constant(True))
        else:
            tf.debugging.Assert(
                tf.logical_or(tf.logical_not(is_end), tf.equal(count, expected)),
                ["corrupt or truncated shard", path, "yielded", count, "records, dataset_info.json lists",
                 expected, "(pass skip_corrupt=True / --skip_corrupt to skip and count the loss)"],
            )
        return count + tf.size(group, tf.int64), group

    return marked.scan(tf.constant(0, tf.int64), count_and_check).unbatch()


def read_records(paths: list[str], counts: list[int], *, skipped: SkippedRecords | None,
                 shuffle_seed: int | tf.Tensor | None) -> tf.data.Dataset:
    """Serialized records of ``paths``: files shuffled (when seeded) and read in parallel, interleaved."""
    files = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(counts, tf.int64)))
    if shuffle_seed is not None:
        files = files.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return files.interleave(lambda p, n: read_shard(p, n, skipped),
                            cycle_length=min(len(paths), READ_CYCLE_LENGTH), block_length=1,
                            num_parallel_calls=READ_PARALLELISM, deterministic=True)


def sub_seed(seed: int, *parts) -> int:
    """A stable 31-bit seed derived from ``seed`` and names (buckets, pipeline ids)."""
    return zlib.crc32(repr((seed,) + parts).encode("utf-8")) & 0x7FFFFFFF


def stream_seed(seed: int, worker: tf.Tensor | None, *parts) -> int | tf.Tensor:
    """:func:`sub_seed` of ``seed`` and ``parts``, moved by a tf.data service worker's index when given.

    ``worker`` is None in-process (the plain int seed), or the int64 index of the service worker running
    the pipeline (a tensor, only known on the worker). Worker 0 gets the in-process seed, so its stream is
    the in-process stream; worker ``i`` adds ``i`` times a large odd constant modulo 2^31 - 1, so every
    worker draws its own clips, windows and augmentations.
    """
    base = sub_seed(seed, *parts)
    if worker is None:
        return base
    return tf.math.floormod(tf.constant(base, tf.int64) + tf.cast(worker, tf.int64) * 2654435761, 0x7FFFFFFF)


def train_shard_sets(data_dir: str, info: DatasetInfo, buckets, input_context,
                     skipped: SkippedRecords | None) -> dict[str, tuple[list[str], list[int]]]:
    """``{bucket: (paths, num_records)}``: this pipeline's share of every bucket's shards, checked now.

    Checked before any dataset function is traced, so a missing shard or too few shards for the input
    pipelines fails right here with its own message (:func:`shard_files`).
    """
    return {bucket: shard_files(data_dir, shards_of_bucket(info, bucket), f"train bucket {bucket!r}", input_context,
                                skipped)
            for bucket in buckets}


def explicitly_seeded(build: Callable[[tf.Tensor | None], tf.data.Dataset],
                      workers: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """``build(worker)`` traced in a function graph without a graph-level seed (``flat_map`` over ``workers``).

    TensorFlow pairs every op seed with the global seed (``tf.random.set_seed``, which the trainer sets), so
    a stream would differ with the global seed, and a tensor op seed (a tf.data service worker's,
    :func:`stream_seed`) fails under global seed 0 (``random_seed.get_seed`` compares it to 0 as a Python
    bool). Inside this graph the seeds are the explicit ones only: the stream depends on its arguments alone,
    in process and on every service worker alike.

    Args:
        build: Makes the stream; gets the worker index (an int64 scalar tensor) or None.
        workers: One-element dataset of the service worker's index (:func:`trainer.input.data_service.worker_index`),
            or None in process.
    """
    start = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)) if workers is None else workers

    def traced(worker):
        tf.compat.v1.get_default_graph().seed = None  # this function's graph only
        return build(None if workers is None else worker)

    return start.flat_map(traced)


def mixed_train_records(shard_sets: dict[str, tuple[list[str], list[int]]], weights: dict[str, float],
                        counts: dict[str, int], sampling_mode: str, *, seed: int, input_context,
                        skipped: SkippedRecords | None, worker: tf.Tensor | None = None) -> tf.data.Dataset:
    """The infinite stream of serialized train records, buckets mixed by ``weights`` (``downsample``: blocks).

    Args:
        shard_sets: This pipeline's shards of every sampled bucket (:func:`train_shard_sets`).
        weights: ``{bucket: probability}`` of the sampled buckets (:func:`trainer.input.sampling.bucket_weights`).
        counts: ``{bucket: clips}`` (:func:`trainer.input.sampling.bucket_clip_counts`).
        sampling_mode: One of :data:`trainer.input.sampling.SAMPLING_MODES`.
        seed: Seed of the file and record shuffles and of the bucket draws.
        input_context: Multi-worker input context (which pipeline this is, how many there are), or None.
        skipped: Skip corrupt records and count them here (None: fail on them).
        worker: The tf.data service worker's index (a tensor) when the stream runs on one, else None
            (see :func:`stream_seed`). Build the stream inside :func:`explicitly_seeded`.

    Returns:
        A dataset of scalar ``tf.string`` serialized clips.
    """
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id
    # One repeated stream of shuffled serialized records per bucket.
    per_bucket_buffer = max(16, RECORD_SHUFFLE_CLIPS // len(weights))
    streams = []
    for bucket in weights:
        paths, records = shard_sets[bucket]
        stream = read_records(paths, records, skipped=skipped,
                              shuffle_seed=stream_seed(seed, worker, "files", bucket, pipeline_id))
        stream = stream.shuffle(per_bucket_buffer, seed=stream_seed(seed, worker, "records", bucket, pipeline_id),
                                reshuffle_each_iteration=True)
        streams.append(stream.repeat())
    mix_seed = stream_seed(seed, worker, "mix", pipeline_id)
    if len(streams) == 1:
        return streams[0]
    if sampling_mode == "downsample":
        # Exactly `minority` clips of every bucket in each block of `minority x buckets` clips (one epoch).
        minority = min(counts[b] for b in weights)
        if input_context is not None:  # each pipeline reads its share of an epoch
            minority = -(-minority // input_context.num_input_pipelines)
        choices = tf.data.Dataset.range(len(streams)).repeat(minority)
        choices = choices.shuffle(minority * len(streams), seed=mix_seed, reshuffle_each_iteration=True).repeat()
        # Every stream repeats a non-empty share (see assign_shards); one that still ends (every record of
        # a bucket unreadable under skip_corrupt) ends the whole stream instead of skewing the mix.
        return tf.data.Dataset.choose_from_datasets(streams, choices, stop_on_empty_dataset=True)
    return tf.data.Dataset.sample_from_datasets(streams, weights=list(weights.values()), seed=mix_seed,
                                                stop_on_empty_dataset=True)
