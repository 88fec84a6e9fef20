"""The trainer's tf.data input pipeline: rebalanced training clips and whole-split evaluation windows.

One readable function per mode, both reading the shards listed in ``dataset_info.json`` with the
schema's parser (:func:`tfrecords_schema.make_clip_parser`):

* :func:`make_train_dataset` -- per bucket shard set: shuffle files, interleave parallel reads, shuffle
  the *serialized* records (never decoded ones), repeat; mix the buckets with
  ``tf.data.Dataset.sample_from_datasets`` by :func:`trainer.sampling.bucket_weights` (``downsample``:
  ``choose_from_datasets`` with exactly the minority count per bucket in every epoch); parse, pick a
  random sub-clip of ``seq_len`` frames (random offset, stride 1 or 2 when the clip is long enough, padding
  when it is short), decode the picked JPEGs only, augment (flip, brightness/contrast, crop jitter; the
  same for every frame of a clip), build targets and weights, batch, prefetch. Infinite, fixed shapes.
  Frames stay uint8 until batched; the batch is then augmented and scaled to float32 by one XLA-compiled
  function (about half the CPU of separate ops; ``AFFECTSTREAM_XLA_AUGMENT=0`` turns XLA off).
* :func:`make_eval_dataset` -- every shard of the split in a fixed order, every clip cut into consecutive
  windows of ``seq_len`` frames (the last padded with weight 0): every frame of the split exactly once.

Elements are ``(images, targets, weights)``: ``images`` float32 ``[B, T, S, S, 3]`` in [0, 1];
``targets`` and ``weights`` dicts keyed by the task's heads (:data:`HEADS`). A weight is 0 where the
head's label is invalid, the frame has no face, or the frame is padding, else 1 (times the class loss
weight of the expression when ``loss_weighting != "none"``). Frames are masked, never dropped, so time
never shifts.

Empty shard files (listed with ``num_records`` 0, as ``--min_shards`` or hashing leave them) are skipped;
under multi-worker training the non-empty files of every shard set are dealt round-robin over the input
pipelines, so every worker reads records of every bucket (an error names the shard set and the counts
when it has fewer non-empty files than pipelines).

Bad shards: a shard whose size differs from ``dataset_info.json`` or that is missing fails before
reading, naming the file. While reading, every shard is counted against its ``num_records``; a corrupt or
truncated shard (the TFRecord reader stops at its first bad record) fails with an
``InvalidArgumentError`` whose message names the file and the counts. With ``skip_corrupt=True`` the
reader goes on: the records lost in each such shard (from the first bad record to its end) are printed
as a warning naming the file on every pass over it and added to :func:`skipped_records`.

Randomness is seeded (``seed``): two pipelines built with the same arguments yield the same elements.

Example::

    from tfrecords_schema import read_dataset_info
    from trainer import input as trainer_input
    info = read_dataset_info("/tmp/converted")
    ds = trainer_input.make_train_dataset("/tmp/converted", info, task="expr", seq_len=16, batch_size=8)
    images, targets, weights = next(iter(ds))
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import zlib

import numpy as np
import tensorflow as tf

from tfrecords_schema import (
    SPLIT_TRAIN,
    SPLIT_VALIDATION,
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_VALENCE_AROUSAL,
    DatasetInfo,
    DatasetInfoError,
    ShardInfo,
    join_path,
    make_clip_parser,
)
from trainer import sampling as sampling_lib
from trainer.filesystems import register_filesystems

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
HEADS = ("expression", "valence_arousal", "action_units")
TASK_CHOICES = (TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASK_ACTION_UNITS, "multi")
_HEAD_OF_TASK = {TASK_EXPRESSION: "expression", TASK_VALENCE_AROUSAL: "valence_arousal",
                 TASK_ACTION_UNITS: "action_units"}

# Serialized clips held in the record shuffle buffers of one training pipeline, over all buckets
# (about 64 KiB per 16-frame clip of 112-pixel crops: ~32 MiB).
RECORD_SHUFFLE_CLIPS = 512
# Shards read at the same time per stream.
READ_CYCLE_LENGTH = 4
READ_PARALLELISM = AUTOTUNE
# Augmentation strengths.
BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.8, 1.2)
CROP_JITTER_FRACTION = 1 / 16

_skipped = {"records": 0}
_skipped_lock = threading.Lock()


class CorruptShardError(ValueError):
    """A shard that is missing or whose size differs from dataset_info.json."""


def skipped_records() -> int:
    """Records lost to corrupt/truncated shards so far in this process (``skip_corrupt=True`` only).

    Counted per pass over a shard: a corrupt shard read in three epochs counts its lost records three times.
    (A plain Python counter updated through ``tf.py_function``: no variable in the dataset graph, so it is
    safe under any distribution strategy scope; each worker process counts its own.)
    """
    with _skipped_lock:
        return _skipped["records"]


def _add_skipped(lost) -> np.int64:
    with _skipped_lock:
        _skipped["records"] += int(lost)
    return np.int64(lost)


# --------------------------------------------------------------------------------------------------
# Tasks and heads.


def heads_for_task(info: DatasetInfo, task: str) -> tuple[str, ...]:
    """The heads trained for ``task`` (``expr``, ``va``, ``au``, or ``multi`` = every task of the data).

    Raises:
        ValueError: unknown task, or the data has no labels for it (the message lists what it has).
    """
    sampling_lib.check_choice(task, TASK_CHOICES, "task")
    available = [t for t in (TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASK_ACTION_UNITS) if _has_labels(info, t)]
    if task == "multi":
        if not available:
            raise ValueError(f"the data has labels for no task (tasks in dataset_info.json: {info.tasks})")
        return tuple(_HEAD_OF_TASK[t] for t in available)
    if task not in available:
        raise ValueError(
            f"the data has no labels for task {task!r}; it has labels for: {', '.join(available) or 'nothing'}"
        )
    return (_HEAD_OF_TASK[task],)


def _has_labels(info: DatasetInfo, task: str) -> bool:
    if task not in info.tasks:
        return False
    if task == TASK_EXPRESSION:
        return bool(info.expression_names)
    if task == TASK_ACTION_UNITS:
        return info.num_action_units > 0
    return True


# --------------------------------------------------------------------------------------------------
# Shard files.


def _split(info: DatasetInfo, split: str):
    if split not in info.splits:
        raise DatasetInfoError(f"the data has no {split!r} split; it has: {', '.join(sorted(info.splits)) or 'none'}")
    return info.splits[split]


def _shards_of_bucket(info: DatasetInfo, bucket: str) -> list[ShardInfo]:
    shards = info.splits[SPLIT_TRAIN].shards
    if bucket == sampling_lib.UNBUCKETED:
        return [s for s in shards if s.bucket is None]
    return [s for s in shards if s.bucket == bucket]


def _assign_shards(shards: list[ShardInfo], what: str, input_context) -> list[ShardInfo]:
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


def _shard_files(data_dir: str, shards: list[ShardInfo], what: str, input_context, skip_corrupt: bool):
    """Paths and record counts of this input pipeline's share of ``shards``, checked against dataset_info.json.

    Args:
        data_dir: Root of the conversion output.
        shards: The shard set (a bucket's or a split's).
        what: How messages name the shard set, e.g. ``"train bucket 'Fear'"``.
        input_context: Multi-worker input context, or None (one pipeline reads every non-empty shard).
        skip_corrupt: Warn instead of failing on a size mismatch.

    Returns:
        ``(paths, num_records)`` of the shards to read (see :func:`_assign_shards`).

    Raises:
        ValueError: fewer non-empty shards than input pipelines.
        CorruptShardError: a shard is missing, or of the wrong size (unless ``skip_corrupt``).
    """
    shards = _assign_shards(shards, what, input_context)
    paths = [join_path(data_dir, s.path) for s in shards]
    for path, shard in zip(paths, shards):
        if not tf.io.gfile.exists(path):
            raise CorruptShardError(f"shard {path} listed in dataset_info.json ({what}) does not exist")
        size = tf.io.gfile.stat(path).length
        if shard.num_bytes and size != shard.num_bytes:
            message = (f"shard {path} ({what}) has {size} bytes but dataset_info.json says {shard.num_bytes}: "
                       f"truncated or rewritten")
            if not skip_corrupt:
                raise CorruptShardError(message + " (skip_corrupt=True reads what it can and counts the loss)")
            logger.warning("%s; reading it anyway (skip_corrupt)", message)
    return paths, [s.num_records for s in shards]


def _read_shard(path: tf.Tensor, expected: tf.Tensor, skip_corrupt: bool) -> tf.data.Dataset:
    """The records of one shard, counted against ``expected`` when the shard ends (see module docstring).

    The reader stops at the first bad record of a file (``ignore_errors`` turns the DataLossError, which
    does not name the file, into the end of that file); an end-of-shard marker then compares the count.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors(log_warning=skip_corrupt)
    marked = records.map(lambda r: (r, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(b""), True)))

    def count_and_check(count, element):
        record, is_end = element
        if skip_corrupt:
            def report():
                lost = expected - count
                tf.print("WARNING: skipped", lost, "unreadable record(s) of corrupt or truncated shard", path,
                         "(read", count, "of", expected, ")", output_stream=sys.stderr)
                return tf.py_function(_add_skipped, [lost], tf.int64) > 0
            tf.cond(tf.logical_and(is_end, count < expected), report, lambda: tf.constant(True))
        else:
            tf.debugging.Assert(
                tf.logical_or(tf.logical_not(is_end), tf.equal(count, expected)),
                ["corrupt or truncated shard", path, "yielded", count, "records, dataset_info.json lists",
                 expected, "(pass skip_corrupt=True / --skip_corrupt to skip and count the loss)"],
            )
        return count + 1, (record, is_end)

    checked = marked.scan(tf.constant(0, tf.int64), count_and_check)
    return checked.filter(lambda record, is_end: tf.logical_not(is_end)).map(lambda record, is_end: record)


def _read_records(paths: list[str], counts: list[int], *, skip_corrupt: bool, shuffle_seed: int | None):
    """Serialized records of ``paths``: files shuffled (when seeded) and read in parallel, interleaved."""
    files = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(counts, tf.int64)))
    if shuffle_seed is not None:
        files = files.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return files.interleave(lambda p, n: _read_shard(p, n, skip_corrupt),
                            cycle_length=min(len(paths), READ_CYCLE_LENGTH), block_length=1,
                            num_parallel_calls=READ_PARALLELISM, deterministic=True)


def _sub_seed(seed: int, *parts) -> int:
    """A stable 31-bit seed derived from ``seed`` and names (buckets, pipeline ids)."""
    return zlib.crc32(repr((seed,) + parts).encode("utf-8")) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------------
# Per clip: frame selection, decoding, augmentation, targets.


def _random_window(clip: dict, seed: tf.Tensor, seq_len: int) -> dict:
    """Picks ``seq_len`` frames: random offset, stride 1-2 when the clip is long enough, padding if short."""
    n = tf.shape(clip["image"])[0]
    stride_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    long_enough = n >= 2 * (seq_len - 1) + 1
    stride = tf.where(long_enough, tf.random.stateless_uniform([], stride_seed, 1, 3, tf.int32), 1)
    max_offset = tf.maximum(n - ((seq_len - 1) * stride + 1), 0)
    offset = tf.random.stateless_uniform([], offset_seed, 0, max_offset + 1, tf.int32)
    return _gather_frames(clip, offset + stride * tf.range(seq_len), n)


def _eval_windows(clip: dict, seq_len: int) -> dict:
    """Cuts a clip into consecutive windows ``[W, seq_len]`` covering every frame once (last one padded)."""
    n = tf.shape(clip["image"])[0]
    num_windows = (n + seq_len - 1) // seq_len
    indices = tf.reshape(tf.range(num_windows * seq_len), [num_windows, seq_len])
    windows = tf.map_fn(lambda idx: _gather_frames(clip, idx, n), indices,
                        fn_output_signature=_window_signature(clip, seq_len))
    windows["example_id"] = tf.fill([num_windows], clip["example_id"])
    return windows


def _window_signature(clip: dict, seq_len: int) -> dict:
    signature = {
        "image": tf.TensorSpec([seq_len], tf.string),
        "num_valid": tf.TensorSpec([], tf.int32),
        "frame_index": tf.TensorSpec([seq_len], tf.int64),
        "has_face": tf.TensorSpec([seq_len], tf.bool),
        "expression": tf.TensorSpec([seq_len], tf.int64),
        "valence_arousal": tf.TensorSpec([seq_len, 2], tf.float32),
    }
    if _has_action_units(clip):
        signature["action_units"] = tf.TensorSpec([seq_len, clip["action_units"].shape[-1]], tf.int64)
    return signature


def _has_action_units(clip: dict) -> bool:
    # A dataset without AUs parses to [T, 0]; such zero-size elements are left out of the windows, since
    # stacking them in tf.map_fn crashes TF 2.17 (segmentation fault in the eval pipeline, seen here).
    return clip["action_units"].shape[-1] != 0


def _gather_frames(clip: dict, indices: tf.Tensor, n: tf.Tensor) -> dict:
    """The frames at increasing ``indices``; indices past the clip end are padding (a suffix)."""
    valid = indices < n
    safe = tf.minimum(indices, n - 1)
    return {
        "image": tf.where(valid, tf.gather(clip["image"], safe), ""),
        "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32)),
        "frame_index": tf.where(valid, tf.gather(clip["frame_index"], safe), -1),
        "has_face": tf.logical_and(valid, tf.gather(clip["has_face"], safe)),
        "expression": tf.gather(clip["expression"], safe),
        "valence_arousal": tf.gather(clip["valence_arousal"], safe),
        **({"action_units": tf.gather(clip["action_units"], safe)} if _has_action_units(clip) else {}),
    }


def _decode(window: dict, crop_size: int, seq_len: int) -> tf.Tensor:
    """Decodes the valid frames of a window to uint8 ``[T, S, S, 3]``; padding frames are 0."""
    jpegs = window["image"][: window["num_valid"]]
    frames = tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3), jpegs,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    frames = tf.ensure_shape(frames, [None, crop_size, crop_size, 3])
    frames = tf.pad(frames, [[0, seq_len - window["num_valid"]], [0, 0], [0, 0], [0, 0]])
    return tf.ensure_shape(frames, [seq_len, crop_size, crop_size, 3])


def _to_float(frames: tf.Tensor) -> tf.Tensor:
    """uint8 frames (any leading shape) to float32 in [0, 1]."""
    return tf.cast(frames, tf.float32) * (1.0 / 255.0)


def _augment_params(seed: tf.Tensor, crop_size: int) -> tf.Tensor:
    """float32 ``[5]``, one clip's augmentation: flip (0/1), shift y, shift x (pixels), contrast, brightness."""
    flip_seed, shift_seed, contrast_seed, bright_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    margin = max(1, int(round(crop_size * CROP_JITTER_FRACTION)))
    return tf.concat([
        tf.cast(tf.random.stateless_uniform([1], flip_seed) < 0.5, tf.float32),
        tf.cast(tf.random.stateless_uniform([2], shift_seed, -margin, margin + 1, tf.int32), tf.float32),
        tf.random.stateless_uniform([1], contrast_seed, *CONTRAST_RANGE),
        tf.random.stateless_uniform([1], bright_seed, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
    ], axis=0)


def _augment_batch_ops(frames: tf.Tensor, num_valid: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Augments a batch of uint8 clips ``[B, T, S, S, 3]`` with per-clip ``params`` ``[B, 5]`` -> float32 [0, 1].

    Every frame of a clip gets the same flip, shift (edges replicated), contrast around the frame's mean
    (estimated on every 4th pixel) and brightness. Padding frames (past ``num_valid``) stay 0.
    """
    size = frames.shape[2]
    positions = tf.range(size)[None, :]
    flip = params[:, 0:1] > 0.5
    shift_y = tf.cast(params[:, 1:2], tf.int32)
    shift_x = tf.cast(params[:, 2:3], tf.int32)
    rows = tf.clip_by_value(positions + shift_y, 0, size - 1)  # [B, S]
    cols = tf.clip_by_value(tf.where(flip, size - 1 - positions, positions) + shift_x, 0, size - 1)
    frames = tf.gather(frames, rows, axis=2, batch_dims=1)
    frames = tf.gather(frames, cols, axis=3, batch_dims=1)
    pixels = tf.cast(frames, tf.float32)
    mean = tf.reduce_mean(pixels[:, :, ::4, ::4, :], axis=[2, 3, 4], keepdims=True) * (1.0 / 255.0)
    is_frame = tf.sequence_mask(num_valid, tf.shape(frames)[1], dtype=tf.float32)[:, :, None, None, None]
    factor = params[:, 3, None, None, None, None]
    delta = params[:, 4, None, None, None, None]
    # (x - mean) * factor + mean + delta, with x = pixels / 255; coefficients 0 on padding frames.
    scale = is_frame * (factor / 255.0)
    offset = is_frame * ((1.0 - factor) * mean + delta)
    return tf.clip_by_value(pixels * scale + offset, 0.0, 1.0)


# XLA fuses the gathers and the elementwise arithmetic into a couple of passes (about 2x less CPU than
# separate TensorFlow ops). AFFECTSTREAM_XLA_AUGMENT=0 uses plain TensorFlow ops instead.
_augment_batch = tf.function(_augment_batch_ops,
                             jit_compile=os.environ.get("AFFECTSTREAM_XLA_AUGMENT", "1") != "0")


def _augment(frames: tf.Tensor, num_valid: tf.Tensor, seed: tf.Tensor, crop_size: int) -> tf.Tensor:
    """Augments one uint8 clip ``[T, S, S, 3]`` -> float32 (the pipeline does it per batch)."""
    return _augment_batch(frames[None], num_valid[None], _augment_params(seed, crop_size)[None])[0]


def _targets_and_weights(window: dict, heads: tuple[str, ...], num_classes: int,
                         expression_weights: np.ndarray | None):
    """Per-head targets (invalid -> 0) and float32 weights ``[T]`` (0 for invalid / no face / padding).

    A label is valid when it is in range: expression in ``[0, classes)``, valence and arousal in ``[-1, 1]``,
    every AU 0 or 1. The schema's invalid markers (``keys.EXPRESSION_INVALID``, ``VA_INVALID``,
    ``AU_INVALID``) all fall outside, and so does any other out-of-range value.
    """
    seq_len = window["image"].shape[0]
    usable = tf.logical_and(window["has_face"], tf.sequence_mask(window["num_valid"], seq_len))
    targets, weights = {}, {}
    if "expression" in heads:
        label = window["expression"]
        valid = tf.logical_and(label >= 0, label < num_classes)
        targets["expression"] = tf.cast(tf.where(valid, label, 0), tf.int32)
        weight = tf.cast(tf.logical_and(valid, usable), tf.float32)
        if expression_weights is not None:
            weight *= tf.gather(tf.constant(expression_weights, tf.float32), targets["expression"])
        weights["expression"] = weight
    if "valence_arousal" in heads:
        va = window["valence_arousal"]
        valid = tf.reduce_all(tf.logical_and(va >= -1.0, va <= 1.0), axis=-1)
        targets["valence_arousal"] = tf.where(valid[:, None], va, 0.0)
        weights["valence_arousal"] = tf.cast(tf.logical_and(valid, usable), tf.float32)
    if "action_units" in heads:
        au = window["action_units"]
        valid = tf.reduce_all(tf.logical_and(au >= 0, au <= 1), axis=-1)
        targets["action_units"] = tf.cast(tf.where(valid[:, None], au, 0), tf.float32)
        weights["action_units"] = tf.cast(tf.logical_and(valid, usable), tf.float32)
    return targets, weights


def _check_common(info: DatasetInfo, task: str, seq_len: int, batch_size: int) -> tuple[str, ...]:
    heads = heads_for_task(info, task)
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    return heads


def _options(input_context) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if input_context is not None:
        # Files are already sharded per input pipeline here; no second (DATA) sharding.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _mixed_train_records(data_dir: str, info: DatasetInfo, weights: dict[str, float], counts: dict[str, int],
                         sampling_mode: str, *, seed: int, input_context, skip_corrupt: bool) -> tf.data.Dataset:
    """The infinite stream of serialized train records, buckets mixed by ``weights`` (``downsample``: blocks).

    Args:
        data_dir: Conversion output.
        info: Its dataset info.
        weights: ``{bucket: probability}`` of the sampled buckets (:func:`trainer.sampling.bucket_weights`).
        counts: ``{bucket: clips}`` (:func:`trainer.sampling.bucket_clip_counts`).
        sampling_mode: One of :data:`trainer.sampling.SAMPLING_MODES`.
        seed: Seed of the file and record shuffles and of the bucket draws.
        input_context: Multi-worker input context (this pipeline's share of every bucket), or None.
        skip_corrupt: Skip and count corrupt records instead of failing.

    Returns:
        A dataset of scalar ``tf.string`` serialized clips.
    """
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id
    # One repeated stream of shuffled serialized records per bucket.
    per_bucket_buffer = max(16, RECORD_SHUFFLE_CLIPS // len(weights))
    streams = []
    for bucket in weights:
        paths, records = _shard_files(data_dir, _shards_of_bucket(info, bucket), f"train bucket {bucket!r}",
                                      input_context, skip_corrupt)
        stream = _read_records(paths, records, skip_corrupt=skip_corrupt,
                               shuffle_seed=_sub_seed(seed, "files", bucket, pipeline_id))
        stream = stream.shuffle(per_bucket_buffer, seed=_sub_seed(seed, "records", bucket, pipeline_id),
                                reshuffle_each_iteration=True)
        streams.append(stream.repeat())
    mix_seed = _sub_seed(seed, "mix", pipeline_id)
    if len(streams) == 1:
        clips = streams[0]
    elif sampling_mode == "downsample":
        # Exactly `minority` clips of every bucket in each block of `minority x buckets` clips (one epoch).
        minority = min(counts[b] for b in weights)
        if input_context is not None:  # each pipeline reads its share of an epoch
            minority = -(-minority // input_context.num_input_pipelines)
        choices = tf.data.Dataset.range(len(streams)).repeat(minority)
        choices = choices.shuffle(minority * len(streams), seed=mix_seed, reshuffle_each_iteration=True).repeat()
        # Every stream repeats a non-empty share (see _assign_shards); one that still ends (every record of
        # a bucket unreadable under skip_corrupt) ends the whole stream instead of skewing the mix.
        clips = tf.data.Dataset.choose_from_datasets(streams, choices, stop_on_empty_dataset=True)
    else:
        clips = tf.data.Dataset.sample_from_datasets(streams, weights=list(weights.values()), seed=mix_seed,
                                                     stop_on_empty_dataset=True)
    return clips


# --------------------------------------------------------------------------------------------------
# The two pipelines.


def make_train_dataset(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, batch_size: int,
                       sampling: str = "balanced", loss_weighting: str = "none", seed: int = 0,
                       augment: bool = True, input_context: tf.distribute.InputContext | None = None,
                       skip_corrupt: bool = False) -> tf.data.Dataset:
    """The infinite, rebalanced training stream of ``(images, targets, weights)`` batches.

    Args:
        data_dir: Conversion output (local, ``gs://`` or ``s3://``).
        info: Its dataset info.
        task: ``expr``, ``va``, ``au`` or ``multi`` (the heads: :func:`heads_for_task`).
        seq_len: Frames per sequence ``T``.
        batch_size: Sequences per element of *this* dataset. Under
            ``distribute_datasets_from_function`` pass ``input_context.get_per_replica_batch_size(global)``.
        sampling: Bucket mix, one of :data:`trainer.sampling.SAMPLING_MODES`. For ``downsample`` every
            block of ``trainer.sampling.clips_per_epoch(info, "downsample", task)`` clips (one epoch: the
            caller's steps per epoch x batch size) holds exactly the minority count from every bucket. With
            ``task`` equal to the bucketing task (``expr`` over expression buckets), the bucket of clips
            without that label is not sampled (see :mod:`trainer.sampling`).
        loss_weighting: Expression class weights in ``weights``, one of :data:`trainer.sampling.LOSS_WEIGHTINGS`.
        seed: Seed of file/record shuffles, bucket draws, frame picks and augmentation.
        augment: Apply flip / brightness / contrast / crop jitter.
        input_context: Multi-worker input context: this pipeline reads its share of every bucket's files.
        skip_corrupt: Skip and count corrupt records instead of failing (:func:`skipped_records`).

    Raises:
        ValueError: unknown option (the message lists the valid values), task without labels, every bucket
            empty, fewer shards than input pipelines.
        DatasetInfoError: no train split.
        CorruptShardError: a listed shard is missing or of the wrong size (unless ``skip_corrupt``).
    """
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    sampling_lib.check_choice(loss_weighting, sampling_lib.LOSS_WEIGHTINGS, "loss weighting")
    heads = _check_common(info, task, seq_len, batch_size)
    register_filesystems(data_dir)
    _split(info, SPLIT_TRAIN)
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id

    counts = sampling_lib.bucket_clip_counts(info)
    for bucket, n in counts.items():
        if n == 0:
            logger.warning("train bucket %r has no clips: skipped", bucket)
    weights = sampling_lib.bucket_weights(info, sampling_mode, task)  # raises if no bucket is left
    logger.info("sampling %s: requested bucket weights %s (clips per bucket %s)%s", sampling_mode,
                {b: round(w, 4) for b, w in weights.items()}, {b: counts[b] for b in weights},
                f"; {sampling_lib.clips_per_epoch(info, sampling_mode, task)} clips per epoch"
                if sampling_mode == "downsample" else "")
    expression_weights = None
    if loss_weighting != "none" and "expression" in heads:
        expression_weights = sampling_lib.class_loss_weights(info, "expression", loss_weighting)
        logger.info("expression loss weights (%s): %s", loss_weighting,
                    {n: round(float(w), 4) for n, w in zip(info.expression_names, expression_weights)})

    clips = _mixed_train_records(data_dir, info, weights, counts, sampling_mode, seed=seed,
                                 input_context=input_context, skip_corrupt=skip_corrupt)

    # Parse, pick frames, decode, augment, label; then batch.
    parse = make_clip_parser(info.num_action_units)
    num_classes = len(info.expression_names)
    crop_size = info.crop_size
    clip_seeds = tf.data.Dataset.random(seed=_sub_seed(seed, "clips", pipeline_id)).batch(2)

    def to_clip(serialized, clip_seed):
        window_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(clip_seed, 2))
        window = _random_window(parse(serialized), window_seed, seq_len)
        frames = _decode(window, crop_size, seq_len)  # uint8 until batched
        targets, weights_ = _targets_and_weights(window, heads, num_classes, expression_weights)
        return frames, window["num_valid"], _augment_params(augment_seed, crop_size), targets, weights_

    def to_float_batch(frames, num_valid, augment_params, targets, weights_):
        images = _augment_batch(frames, num_valid, augment_params) if augment else _to_float(frames)
        return images, targets, weights_

    dataset = tf.data.Dataset.zip((clips, clip_seeds))
    dataset = dataset.map(to_clip, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(to_float_batch, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(_options(input_context))


def empirical_bucket_mix(data_dir: str, info: DatasetInfo, *, task: str, sampling: str = "balanced",
                         num_clips: int, seed: int = 0, skip_corrupt: bool = False) -> dict[str, float]:
    """Share of each sampled bucket among the first ``num_clips`` clips of the training stream.

    The stream is the one :func:`make_train_dataset` batches with the same ``seed`` (a single pipeline, no
    input context): the first ``num_clips`` clips are its first ``num_clips // batch_size`` batches. Only
    the bucket index of each serialized clip is parsed (no image is decoded).

    Args:
        data_dir: Conversion output.
        info: Its dataset info.
        task: The training task (decides which buckets are sampled, see :mod:`trainer.sampling`).
        sampling: One of :data:`trainer.sampling.SAMPLING_MODES`.
        num_clips: Clips to count (>= 1).
        seed: The training stream's seed.
        skip_corrupt: Skip and count corrupt records instead of failing.

    Returns:
        ``{bucket: fraction of the clips}`` for every sampled bucket (the requested weights' keys).

    Raises:
        ValueError: unknown sampling mode, ``num_clips < 1``, no bucket to sample.
    """
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    register_filesystems(data_dir)
    _split(info, SPLIT_TRAIN)
    counts = sampling_lib.bucket_clip_counts(info)
    weights = sampling_lib.bucket_weights(info, sampling_mode, task)
    names = list(weights)
    if len(names) == 1:
        return {names[0]: 1.0}
    clips = _mixed_train_records(data_dir, info, weights, counts, sampling_mode, seed=seed, input_context=None,
                                 skip_corrupt=skip_corrupt)
    parse = make_clip_parser(info.num_action_units)
    indices = clips.take(num_clips).map(lambda serialized: parse(serialized)["bucket"], num_parallel_calls=AUTOTUNE)
    seen = np.zeros(len(info.bucket_names), np.int64)
    for batch in indices.batch(1024).with_options(_options(None)):
        seen += np.bincount(batch.numpy(), minlength=len(seen))[: len(seen)]
    return {b: float(seen[info.bucket_names.index(b)]) / num_clips for b in names}


def make_eval_dataset_with_ids(data_dir: str, info: DatasetInfo, *, split: str = SPLIT_VALIDATION, task: str,
                               seq_len: int, batch_size: int, input_context=None,
                               skip_corrupt: bool = False) -> tf.data.Dataset:
    """Like :func:`make_eval_dataset`, with a fourth element ``ids``.

    ``ids`` is ``{"example_id": string [B], "frame_index": int64 [B, T]}`` (frame index -1 on padding), so
    predictions can be traced back to clips and frames.
    """
    heads = _check_common(info, task, seq_len, batch_size)
    register_filesystems(data_dir)
    split_info = _split(info, split)
    paths, records = _shard_files(data_dir, split_info.shards, f"split {split!r}", input_context, skip_corrupt)
    if not paths:
        raise ValueError(f"split {split!r} has no shard holding records: nothing to evaluate")
    parse = make_clip_parser(info.num_action_units)
    num_classes = len(info.expression_names)
    crop_size = info.crop_size

    def to_example(window):
        frames = _decode(window, crop_size, seq_len)  # uint8 until batched
        targets, weights = _targets_and_weights(window, heads, num_classes, None)
        ids = {"example_id": window["example_id"], "frame_index": window["frame_index"]}
        return frames, targets, weights, ids

    dataset = _read_records(paths, records, skip_corrupt=skip_corrupt, shuffle_seed=None)
    dataset = dataset.map(lambda serialized: _eval_windows(parse(serialized), seq_len),
                          num_parallel_calls=AUTOTUNE)
    dataset = dataset.unbatch()
    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(lambda frames, targets, weights, ids: (_to_float(frames), targets, weights, ids),
                          num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(_options(input_context))


def make_eval_dataset(data_dir: str, info: DatasetInfo, *, split: str = SPLIT_VALIDATION, task: str,
                      seq_len: int, batch_size: int, input_context=None,
                      skip_corrupt: bool = False) -> tf.data.Dataset:
    """The finite evaluation stream: every frame of every clip of ``split`` exactly once, in a fixed order.

    Each clip is cut into consecutive windows of ``seq_len`` frames (the last padded, weight 0); the last
    batch may be smaller. No augmentation, no loss weighting. Elements ``(images, targets, weights)``.

    Raises:
        DatasetInfoError: the split does not exist.
        ValueError: unknown task / task without labels, fewer shards than input pipelines.
        CorruptShardError: a listed shard is missing or of the wrong size (unless ``skip_corrupt``).
    """
    dataset = make_eval_dataset_with_ids(data_dir, info, split=split, task=task, seq_len=seq_len,
                                         batch_size=batch_size, input_context=input_context,
                                         skip_corrupt=skip_corrupt)
    return dataset.map(lambda images, targets, weights, ids: (images, targets, weights))
