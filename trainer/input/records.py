"""Shard files for the trainer: which ones a pipeline reads, checked against ``dataset_info.json``, counted.

* :func:`shard_files` -- this input pipeline's share of a shard set (empty files skipped, the non-empty
  ones dealt round-robin over the pipelines; a train bucket with fewer files than pipelines is shared by them),
  each checked for existence and size before reading.
* :func:`read_records` -- the serialized records of those files, read in parallel and interleaved; every
  shard is counted against its ``num_records`` when it ends.
* :func:`train_shard_sets` / :func:`mixed_train_records` -- the infinite stream of train records, buckets
  mixed by the draw of :func:`trainer.input.sampling.bucket_draw`: one stream per class of the trained task, the
  union of that class's bucket files (``downsample``: epochs holding the minority count of every class), built
  inside :func:`explicitly_seeded` so that only its own seeds decide it. Memory stays bounded however many
  streams are read: their record shuffle buffers share :data:`RECORD_SHUFFLE_CLIPS` and their open shard files
  :data:`OPEN_SHARDS`, each by its weight (a rarely drawn stream holds a couple of records and one file).
* :func:`stream_seed` -- the seeds of those streams: per job seed, purpose and input pipeline, and per
  tf.data service worker (a tensor known only on the worker, :mod:`trainer.input.data_service`).

Bad shards: a missing shard or one whose size differs from ``dataset_info.json`` fails before reading
(:class:`CorruptShardError`, naming the file). A corrupt or truncated shard (the TFRecord reader stops at
its first bad record) fails while reading with an ``InvalidArgumentError`` naming the file and the counts,
unless the caller passes a :class:`SkippedRecords` counter: then reading goes on, and the records lost in
each such shard (from the first bad record to its end) are printed as a warning naming the file on every
pass over it and added to that counter; records past a shard's listed count are not read.
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
from tfrecords_schema.storage import is_url
from trainer.input import sampling as sampling_lib

logger = logging.getLogger(__name__)

# Serialized clips held in the record shuffle buffers of one training pipeline, over all buckets, shared by
# weight (about 64 KiB per 16-frame clip of 112-pixel crops: ~32 MiB); each bucket holds at least
# MIN_BUCKET_SHUFFLE, so composite buckets (up to a few hundred) add at most a few hundred clips more.
# Raw crops (convert --codec raw) are about 2.4 MiB per 64-frame clip of 112-pixel crops: ~1.2 GiB at most.
RECORD_SHUFFLE_CLIPS = 512
MIN_BUCKET_SHUFFLE = 2
# Shards read at the same time per stream, at most; and over all streams, shared by weight (every stream keeps
# at least one open file, with its read buffer and a CHECK_BATCH group of records).
READ_CYCLE_LENGTH = 4
OPEN_SHARDS = 32
# Records counted together by the shard check (read_shard): fewer function calls per record, at the cost of
# holding up to this many more serialized clips per open shard.
CHECK_BATCH = 4
# Read buffer of a local shard: none. The reader then reads each record straight into its string, where a buffer
# costs one more copy of every byte (a 2.3 MB raw clip: ~25 % of reading it, docs/benchmarks.md). Remote shards
# keep TensorFlow's default buffer: every read there is a request.
LOCAL_READ_BUFFER = 0
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


def assign_shards(shards: list[ShardInfo], what: str, input_context, share: bool = False) -> list[ShardInfo]:
    """The shards of ``what`` that this input pipeline reads: its round-robin share of the non-empty ones.

    Shards listed with ``num_records == 0`` are skipped (``beam_jobs.convert --min_shards`` and hashing can
    leave shard files empty): they add nothing, and a worker whose share held only empty files would get
    an empty stream (which ends or silently leaves the bucket mix). The non-empty files, sorted by path, are
    then dealt round-robin over the pipelines, so every pipeline's share holds records.

    With ``share`` (a train bucket: composite buckets are many and some are small), a shard set with fewer
    non-empty files than pipelines is read whole by every pipeline instead, each in its own shuffled order.
    What that costs: every pipeline holds those files open, and the pipelines' draws from that bucket are no
    longer disjoint (a clip of it can reach two workers in one pass, as sampling with replacement does; a
    bucket that small is repeated by any balancing anyway). Reads per delivered clip stay 1.

    Raises:
        ValueError: fewer non-empty shard files than input pipelines without ``share`` (the message names
            ``what`` and the counts).
    """
    listed = len(shards)
    shards = sorted((s for s in shards if s.num_records > 0), key=lambda s: s.path)
    if input_context is None or input_context.num_input_pipelines <= 1:
        return shards
    n = input_context.num_input_pipelines
    if len(shards) < n and share and shards:
        logger.info("%s has %d non-empty shard file(s) for %d input pipelines: every pipeline reads all of them",
                    what, len(shards), n)
        return shards
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
                skipped: SkippedRecords | None, share: bool = False) -> tuple[list[str], list[int]]:
    """Paths and record counts of this input pipeline's share of ``shards``, checked against dataset_info.json.

    Args:
        data_dir: Root of the conversion output.
        shards: The shard set (a bucket's or a split's).
        what: How messages name the shard set, e.g. ``"train bucket 'Fear'"``.
        input_context: Multi-worker input context, or None (one pipeline reads every non-empty shard).
        skipped: When given, a size mismatch is a warning (the reader then skips and counts), else an error.
        share: Pipelines share a set with fewer non-empty shards than pipelines (:func:`assign_shards`).

    Returns:
        ``(paths, num_records)`` of the shards to read (see :func:`assign_shards`).

    Raises:
        ValueError: fewer non-empty shards than input pipelines (without ``share``).
        CorruptShardError: a shard is missing, or of the wrong size (unless ``skipped`` is given).
    """
    shards = assign_shards(shards, what, input_context, share)
    paths = [join_path(data_dir, s.path) for s in shards]
    for path, shard in zip(paths, shards):
        if not tf.io.gfile.exists(path):
            raise CorruptShardError(f"shard {path} listed in dataset_info.json ({what}) does not exist")
        size = tf.io.gfile.stat(path).length
        if shard.num_bytes and size != shard.num_bytes:
            message = (f"shard {path} ({what}) has {size} bytes but dataset_info.json says {shard.num_bytes}: "
                       f"truncated or rewritten")
            if skipped is None:
                raise CorruptShardError(message + " (--skip_corrupt reads what it can and counts the loss)")
            logger.warning("%s; reading it anyway, its %d listed records at most (skip_corrupt)", message,
                           shard.num_records)
    return paths, [s.num_records for s in shards]


def read_shard(path: tf.Tensor, expected: tf.Tensor, skipped: SkippedRecords | None,
               buffer_size: int | None = None) -> tf.data.Dataset:
    """The records of one shard, counted against ``expected`` when the shard ends (see the module docstring).

    The reader stops at the first bad record of a file (``ignore_errors`` turns the DataLossError, which
    does not name the file, into the end of that file); an empty end-of-shard batch then compares the count.
    Records are counted in groups of :data:`CHECK_BATCH` (the check's functions run once per group, not per
    record), and the groups are split again: the records come out one by one, in file order.
    """
    records = tf.data.TFRecordDataset(path, buffer_size=buffer_size).ignore_errors(log_warning=skipped is not None)
    if skipped is not None:
        # Its listed records at most: a shard rewritten with more (a record appended twice) would otherwise have
        # frames counted twice, past every count of dataset_info.json. (Without ``skipped`` the count check fails.)
        records = records.take(expected)
    groups = records.batch(CHECK_BATCH)
    marked = groups.map(tf.autograph.experimental.do_not_convert(lambda g: (g, False))).concatenate(
        tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True)))

    @tf.autograph.experimental.do_not_convert
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
                 expected, "(pass --skip_corrupt to skip and count the loss)"],
            )
        return count + tf.size(group, tf.int64), group

    return marked.scan(tf.constant(0, tf.int64), count_and_check).unbatch()


def read_records(paths: list[str], counts: list[int], *, skipped: SkippedRecords | None,
                 shuffle_seed: int | tf.Tensor | None, cycle_length: int = READ_CYCLE_LENGTH) -> tf.data.Dataset:
    """Serialized records of ``paths``: files shuffled (when seeded) and read interleaved, up to ``cycle_length``
    at a time, on reader threads; ``cycle_length`` 1 reads one file at a time on the caller's thread (no
    read-ahead: a rarely drawn bucket of many holds one open file and nothing more)."""
    files = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(counts, tf.int64)))
    if shuffle_seed is not None:
        files = files.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    buffer_size = None if any(is_url(p) for p in paths) else LOCAL_READ_BUFFER

    @tf.autograph.experimental.do_not_convert
    def read(path, expected):
        return read_shard(path, expected, skipped, buffer_size)

    if cycle_length <= 1:
        return files.interleave(read, cycle_length=1, block_length=1)
    return files.interleave(read, cycle_length=min(len(paths), cycle_length), block_length=1,
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


def train_shard_sets(data_dir: str, info: DatasetInfo, draw: sampling_lib.BucketDraw, input_context,
                     skipped: SkippedRecords | None) -> list[tuple[list[str], list[int]]]:
    """``[(paths, num_records)]``: this pipeline's share of every stream's shards, checked now.

    A stream reads the union of its buckets' shards (:class:`trainer.input.sampling.Stream`). Checked before any
    dataset function is traced, so a missing shard fails right here with its own message (:func:`shard_files`);
    a stream with fewer non-empty shards than input pipelines is shared by them (:func:`assign_shards`).
    """
    return [shard_files(data_dir, [shard for b in stream.buckets for shard in shards_of_bucket(info, b)],
                        f"train {stream.name}", input_context, skipped, share=True) for stream in draw.streams]


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

    @tf.autograph.experimental.do_not_convert
    def traced(worker):
        tf.compat.v1.get_default_graph().seed = None  # this function's graph only
        return build(None if workers is None else worker)

    return start.flat_map(traced)


def stream_budget(weights: list[float], total: int, least: int) -> list[int]:
    """Each stream's share of ``total`` by weight, at least ``least`` (buffer clips, open files)."""
    return [max(least, int(total * w)) for w in weights]


def mixed_train_records(shard_sets: list[tuple[list[str], list[int]]], draw: sampling_lib.BucketDraw, *,
                        seed: int, input_context, skipped: SkippedRecords | None,
                        worker: tf.Tensor | None = None) -> tf.data.Dataset:
    """The infinite stream of serialized train records, streams mixed by ``draw`` (``downsample``: epochs).

    Args:
        shard_sets: This pipeline's shards of every stream of ``draw`` (:func:`train_shard_sets`).
        draw: Which stream each clip comes from (:func:`trainer.input.sampling.bucket_draw`).
        seed: Seed of the file and record shuffles and of the stream draws.
        input_context: Multi-worker input context (which pipeline this is, how many there are), or None.
        skipped: Skip corrupt records and count them here (None: fail on them).
        worker: The tf.data service worker's index (a tensor) when the stream runs on one, else None
            (see :func:`stream_seed`). Build the stream inside :func:`explicitly_seeded`.

    Returns:
        A dataset of scalar ``tf.string`` serialized clips.
    """
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id
    weights = [s.weight for s in draw.streams]
    # One repeated stream of shuffled serialized records per stream; buffers and open files shared by weight.
    buffers = stream_budget(weights, RECORD_SHUFFLE_CLIPS, MIN_BUCKET_SHUFFLE)
    cycles = stream_budget(weights, OPEN_SHARDS, 1)
    streams = []
    for i, (stream, (paths, records)) in enumerate(zip(draw.streams, shard_sets)):
        name = ",".join(stream.buckets)
        data = read_records(paths, records, skipped=skipped, cycle_length=min(READ_CYCLE_LENGTH, cycles[i]),
                            shuffle_seed=stream_seed(seed, worker, "files", name, pipeline_id))
        data = data.shuffle(buffers[i], seed=stream_seed(seed, worker, "records", name, pipeline_id),
                            reshuffle_each_iteration=True)
        streams.append(data.repeat())
    mix_seed = stream_seed(seed, worker, "mix", pipeline_id)
    if len(streams) == 1:
        return streams[0]
    if draw.clips_per_epoch:
        # Per task: exactly `per_epoch` clips of each of its streams in every epoch of the task (each pipeline its
        # share), in a shuffled order; several tasks are drawn in turn (uniformly).
        pipelines = 1 if input_context is None else input_context.num_input_pipelines
        per_task = []
        for task in draw.tasks:
            members = [i for i, s in enumerate(draw.streams) if s.task == task]
            order = np.repeat(np.arange(len(members), dtype=np.int64),
                              [-(-draw.streams[i].per_epoch // pipelines) for i in members])
            choices = tf.data.Dataset.from_tensor_slices(order).shuffle(
                len(order), seed=stream_seed(seed, worker, "mix", task, pipeline_id),
                reshuffle_each_iteration=True).repeat()
            # Every stream repeats a non-empty share (see assign_shards); one that still ends (every record of
            # a bucket unreadable under skip_corrupt) ends the whole stream instead of skewing the mix.
            per_task.append(tf.data.Dataset.choose_from_datasets([streams[i] for i in members], choices,
                                                                 stop_on_empty_dataset=True))
        if len(per_task) == 1:
            return per_task[0]
        return tf.data.Dataset.sample_from_datasets(per_task, seed=mix_seed, stop_on_empty_dataset=True)
    return tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=mix_seed, stop_on_empty_dataset=True)
