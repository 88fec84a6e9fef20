"""The trainer's tf.data input pipeline: rebalanced training clips and whole-split evaluation windows.

One linear function per mode, both reading the shards listed in ``dataset_info.json``
(:mod:`trainer.input.records`) with the schema's parser (:func:`tfrecords_schema.make_clip_parser`):

* :func:`make_train_dataset` -- per bucket shard set: shuffle files, interleave reads, shuffle the
  *serialized* records (never decoded ones), repeat; mix the buckets with
  ``tf.data.Dataset.sample_from_datasets`` by the trained task's draw (:func:`trainer.input.sampling.bucket_draw`:
  by the task's classes, buckets without its labels not read; ``downsample``: ``choose_from_datasets`` with
  exactly the minority count per class in every epoch); parse, pick a
  random sub-clip of ``seq_len`` frames (random offset, stride 1 or 2 when the clip is long enough, padding
  when it is short), decode the picked crops only (JPEG, or raw pixels: a reshape), batch; then per batch:
  targets and weights, prefetch. Infinite, fixed shapes. The CPU work is read, parse and decode: the augmentation
  (flip, brightness/contrast, crop jitter; the same for every frame of a clip) is the model's first layer
  (:mod:`trainer.model.augment`), in the training step on the accelerator. With ``data_service`` the same stream
  runs on tf.data service workers (:mod:`trainer.input.data_service`).
* :func:`make_eval_dataset` -- every shard of the split in a fixed order, every clip cut into consecutive
  windows of ``seq_len`` frames (the last padded with weight 0): every frame of the split exactly once.

Training elements are ``(images, targets, weights)``; evaluation elements add ``ids``. ``images`` is
**uint8** ``[B, T, S, S, 3]`` RGB (0..255): the model scales it to [0, 1] in its first layer
(:mod:`trainer.model.build`), so the pipeline's CPUs only decode and the accelerator gets 4x fewer bytes. The crops
are decoded by the data's codec (``dataset_info.json`` ``options.codec``: :func:`trainer.input.frames.decode_frames`).
``targets`` and ``weights`` are dicts keyed by the task's heads (:data:`tfrecords_schema.HEADS`).
Weights: :func:`trainer.input.frames.targets_and_weights` -- training weighs invalid labels, padding and frames
without a face 0; evaluation weighs only invalid labels and padding 0, so every labelled frame is scored.
Per-class expression weights: ``loss_weighting`` (from the train histogram) or ``class_weights`` (e.g.
:func:`trainer.input.mixing.balanced_frame_weights`, which corrects the frame class mix of clip-bucket
sampling). :mod:`trainer.input.mixing` measures what this training stream holds (bucket and frame class
mix) through :func:`train_batches` without decoding a JPEG.

Empty shard files are skipped; under multi-worker training the non-empty files of every shard set are dealt
round-robin over the input pipelines; bad shards fail naming the file, or with a
:class:`trainer.input.records.SkippedRecords` counter are skipped and counted (see :mod:`trainer.input.records`).

Randomness is seeded (``seed``): two pipelines built with the same arguments yield the same elements.

Example::

    from tfrecords_schema import read_dataset_info
    from trainer.input import pipeline as trainer_input
    info = read_dataset_info("/tmp/converted")
    ds = trainer_input.make_train_dataset("/tmp/converted", info, task="expr", seq_len=16, batch_size=8)
    images, targets, weights = next(iter(ds))   # images: uint8 [8, 16, S, S, 3]
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfrecords_schema import (
    HEAD_EXPRESSION,
    HEAD_OF_TASK,
    SPLIT_TRAIN,
    SPLIT_VALIDATION,
    TASK_MULTI,
    DatasetInfo,
    make_clip_parser,
)
from tfrecords_schema.cli import first_of
from tfrecords_schema.filesystems import register_filesystems
from tfrecords_schema.image_codec import CODEC_RAW
from trainer.common.choices import TASK_CHOICES
from trainer.input import data_service as data_service_lib
from trainer.input import frames as frames_lib
from trainer.input import records
from trainer.input import sampling as sampling_lib

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------------------------------
# Tasks and heads.


def heads_for_task(info: DatasetInfo, task: str) -> tuple[str, ...]:
    """The heads trained for ``task`` (``expr``, ``va``, ``au``, or ``multi`` = every task of the data).

    Raises:
        ValueError: unknown task, or the data has no labels for it (the message lists what it has).
    """
    sampling_lib.check_choice(task, TASK_CHOICES, "task")
    available = sampling_lib.labelled_tasks(info)
    if task == TASK_MULTI:
        if not available:
            raise ValueError(f"the data has labels for no task (tasks in dataset_info.json: {info.tasks})")
        return tuple(HEAD_OF_TASK[t] for t in available)
    if task not in available:
        raise ValueError(
            f"the data has no labels for task {task!r}; it has labels for: {', '.join(available) or 'nothing'}"
        )
    return (HEAD_OF_TASK[task],)


def check_heads_and_sizes(info: DatasetInfo, task: str, seq_len: int, batch_size: int) -> tuple[str, ...]:
    """The heads of ``task`` (:func:`heads_for_task`); raises ValueError on a sequence length or batch size < 1."""
    heads = heads_for_task(info, task)
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    return heads


def dataset_options(input_context) -> tf.data.Options:
    """Deterministic order; no auto-sharding under an input context (the files are dealt out here)."""
    options = tf.data.Options()
    options.deterministic = True
    if input_context is not None:
        # Files are already sharded per input pipeline here; no second (DATA) sharding.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_bucket_draw(info: DatasetInfo, sampling_mode: str, task: str) -> sampling_lib.BucketDraw:
    """The bucket draw of the training stream (:func:`trainer.input.sampling.bucket_draw`), logged.

    Logs the declared empty buckets (skipped), the trained tasks' target class mix and the buckets read.
    """
    counts = sampling_lib.bucket_clip_counts(info)
    declared = info.splits[SPLIT_TRAIN].bucket_clips  # bucket_names lists every possible bucket; these were written
    empty = [b for b, n in counts.items() if n == 0 and b in declared]
    if empty:
        logger.warning("%d train bucket(s) have no clips and are skipped: %s", len(empty),
                       first_of((repr(b) for b in empty), 10))
    draw = sampling_lib.bucket_draw(info, sampling_mode, task)  # raises if no bucket is left
    targets = {t: {c: round(v, 4) for c, v in sampling_lib.class_targets(info, sampling_mode, t).items()}
               for t in sampling_lib.trained_tasks(info, task) if t in sampling_lib.balanced_tasks(info)}
    logger.info("sampling %s for task %s: %d streams over %d of %d non-empty buckets; target class mix %s%s",
                sampling_mode, task, len(draw.streams), len(draw.weights), sum(1 for n in counts.values() if n), targets,
                f"; {draw.clips_per_epoch} clips per epoch" if draw.clips_per_epoch else "")
    return draw


def expression_weights(info: DatasetInfo, heads: tuple[str, ...], loss_weighting: str,
                       class_weights: np.ndarray | None) -> np.ndarray | None:
    """The per-class expression weights of the loss: ``class_weights``, from ``loss_weighting``, or None."""
    if class_weights is not None:
        if loss_weighting != "none":
            raise ValueError(f"give either class_weights or loss_weighting, not both (loss_weighting "
                             f"{loss_weighting!r})")
        class_weights = np.asarray(class_weights, np.float32)
        if HEAD_EXPRESSION not in heads or class_weights.shape != (len(info.expression_names),):
            raise ValueError(f"class_weights must hold one weight per expression class "
                             f"({len(info.expression_names)}) of a task with the expression head (heads {heads})")
        return class_weights
    if loss_weighting == "none" or HEAD_EXPRESSION not in heads:
        return None
    weights = sampling_lib.class_loss_weights(info, HEAD_EXPRESSION, loss_weighting)
    logger.info("expression loss weights (%s): %s", loss_weighting,
                {n: round(float(w), 4) for n, w in zip(info.expression_names, weights)})
    return weights


# --------------------------------------------------------------------------------------------------
# The training stream.


def train_batches(info: DatasetInfo, shard_sets: dict, *, heads: tuple[str, ...], seq_len: int, batch_size: int,
                  draw: sampling_lib.BucketDraw, class_weights: np.ndarray | None, seed: int, decode: bool,
                  input_context, skipped: records.SkippedRecords | None,
                  worker: tf.Tensor | None, windows_per_clip: int = 1) -> tf.data.Dataset:
    """The training batches: ``(images, targets, weights)``, or ``(targets, weights, labels)`` when not ``decode``.

    Both variants pick the same clips and windows for the same arguments (the labels-only one measures
    what the stream holds without decoding a crop: ``labels`` is the batch of windows' labels,
    :func:`trainer.input.frames.labels_of`, with each clip's ``bucket`` index and ``example_id``). Build it inside
    :func:`records.explicitly_seeded` (``worker``: see :func:`records.stream_seed`); ``shard_sets``:
    :func:`records.train_shard_sets`. ``windows_per_clip``: see :func:`make_train_dataset`.
    """
    # 1. Serialized clips, buckets mixed; one seed per clip (its window).
    pipeline_id = 0 if input_context is None else input_context.input_pipeline_id
    clips = records.mixed_train_records(shard_sets, draw, seed=seed, input_context=input_context, skipped=skipped,
                                        worker=worker)
    clip_seeds = tf.data.Dataset.random(seed=records.stream_seed(seed, worker, "clips", pipeline_id)).batch(2)
    parse = make_clip_parser(info.num_action_units, image_format=info.codec)
    num_classes = len(info.expression_names)
    crop_size = info.crop_size
    # Windows cut from the clip's crop source (frames_lib.clip_source) rather than from its gathered crops: with
    # several windows, and for raw clips shorter than two windows, whose window is then (nearly) the whole clip: the
    # clip's bytes are reinterpreted as pixels once and the window sliced from them, where gathering its crops and
    # then their bytes would copy the window twice (16-frame raw records, docs/benchmarks.md).
    from_source = windows_per_clip > 1 or (info.codec == CODEC_RAW
                                           and frames_lib.window_spans_clip(info.clip_length, seq_len))

    # 2. Per clip: parse, pick its window(s), decode their crops (uint8). Several windows: the clip's crop source
    #    (its pixels, each crop decoded once; JPEG ones only when the windows take as many frames as a clip holds)
    #    is cut into K windows, each its own element of a K-tuple, so that batching clips gives K batches at once
    #    (the k-th windows of batch_size clips) with no per-window elements and no copy beyond the cut and the
    #    batch. Everything else runs per batch.
    @tf.autograph.experimental.do_not_convert
    def to_clip(serialized, clip_seed):
        clip = parse(serialized)
        n = tf.shape(clip["image"])[0]
        if windows_per_clip == 1:
            indices = frames_lib.random_window_indices(n, clip_seed, seq_len)
        else:  # [K, T]
            indices = tf.stack([frames_lib.random_window_indices(n, s, seq_len) for s in
                                tf.unstack(tf.random.experimental.stateless_split(clip_seed, windows_per_clip))])
        window = frames_lib.gather_frames(clip, indices, n, with_image=decode and not from_source)
        labels = frames_lib.labels_of(window)
        if not decode:
            labels = {**labels, "bucket": clip["bucket"], "example_id": clip["example_id"]}
        if windows_per_clip == 1:
            if not decode:
                return labels
            if from_source:
                source = frames_lib.clip_source(clip, n, crop_size, info.codec)
                return frames_lib.source_window(source, indices, crop_size, seq_len, info.codec), labels
            return frames_lib.decode_frames(window, crop_size, seq_len, info.codec), labels
        # K windows: the labels gathered at once and split per window, the frames cut from the clip's crop source.
        split = {k: tf.unstack(v, windows_per_clip) if k in window else [v] * windows_per_clip  # bucket, example_id
                 for k, v in labels.items()}
        per_window = [{k: v[i] for k, v in split.items()} for i in range(windows_per_clip)]
        if not decode:
            return tuple(per_window)
        source = frames_lib.clip_source(clip, n, crop_size, info.codec,
                                        decode_jpeg=windows_per_clip * seq_len >= info.clip_length)
        return tuple((frames_lib.source_window(source, indices[i], crop_size, seq_len, info.codec), per_window[i])
                     for i in range(windows_per_clip))

    @tf.autograph.experimental.do_not_convert
    def one_batch_per_window(*windows):  # K batched windows -> K elements (no copy)
        batches = tf.data.Dataset.from_tensors(windows[0])
        for window in windows[1:]:
            batches = batches.concatenate(tf.data.Dataset.from_tensors(window))
        return batches

    # 3. Per batch: targets and weights. (The augmentation is the model's: trainer.model.augment.)
    @tf.autograph.experimental.do_not_convert
    def to_batch(*clip_batch):  # (frames, labels), or (labels,) without decoding
        frames, labels = clip_batch if decode else (None, clip_batch[0])
        targets, weights_ = frames_lib.targets_and_weights(labels, heads, num_classes, class_weights,
                                                           require_face=True)
        return (frames, targets, weights_) if decode else (targets, weights_, labels)

    dataset = tf.data.Dataset.zip((clips, clip_seeds)).map(to_clip, num_parallel_calls=AUTOTUNE)
    # Batched without parallel calls: map and batch fuse (tf.data's map_and_batch_fusion), the map's threads writing
    # each clip into its batch, with fewer hand-offs between threads (~5 % of the CPU of the raw stream with 8
    # windows a clip, docs/benchmarks.md).
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if windows_per_clip > 1:  # the k-th windows of batch_size clips: the k-th of K batches
        dataset = dataset.flat_map(one_batch_per_window)
    return dataset.map(to_batch, num_parallel_calls=AUTOTUNE)


def make_train_dataset(data_dir: str, info: DatasetInfo, *, task: str, seq_len: int, batch_size: int,
                       sampling: str = "balanced", loss_weighting: str = "none",
                       class_weights: np.ndarray | None = None, seed: int = 0,
                       input_context: tf.distribute.InputContext | None = None,
                       skipped: records.SkippedRecords | None = None, data_service: str | None = None,
                       data_service_job: str | None = None, windows_per_clip: int = 1) -> tf.data.Dataset:
    """The infinite, rebalanced training stream of ``(images, targets, weights)`` batches.

    Args:
        data_dir: Conversion output (local, ``gs://`` or ``s3://``).
        info: Its dataset info.
        task: ``expr``, ``va``, ``au`` or ``multi`` (the heads: :func:`heads_for_task`).
        seq_len: Frames per sequence ``T``.
        batch_size: Sequences per element of *this* dataset. Under
            ``distribute_datasets_from_function`` pass ``input_context.get_per_replica_batch_size(global)``.
        sampling: The task's class mix, one of :data:`trainer.input.sampling.SAMPLING_MODES`: the clips are
            drawn by the trained task's classes, and buckets without its labels are not read (see
            :mod:`trainer.input.sampling`). For ``downsample`` every block of
            ``trainer.input.sampling.clips_per_epoch(info, "downsample", task)`` clips (one epoch: the caller's
            steps per epoch x batch size) holds exactly the minority count of every class.
        loss_weighting: Expression class weights in ``weights``, one of :data:`trainer.input.sampling.LOSS_WEIGHTINGS`.
        class_weights: float ``[classes]`` expression weights instead (e.g.
            :func:`trainer.input.mixing.balanced_frame_weights`);
            only with ``loss_weighting="none"``.
        seed: Seed of file/record shuffles, bucket draws and frame picks.
        windows_per_clip: Random windows taken from every clip read (each its own offset and stride; 1: one, the
            stream as it has always been). More than one is repeated sampling: the record's reading, checksum and
            parsing serve several windows, which matters for raw crops (a 64-frame record of 112² crops is 2.4 MB,
            of which a 16-frame window uses a quarter). ``batch_size`` clips read in turn give ``windows_per_clip``
            batches in a row, the k-th holding the k-th window of each (a clip's windows are independent draws, so
            which window goes to which batch does not matter): a batch holds one window of each of ``batch_size``
            records read in turn, as with one window, and a clip's windows spread over that many batches in a row.
        input_context: Multi-worker input context: this pipeline reads its share of every stream's files (a stream
            with fewer non-empty files than pipelines is read whole by each, see :func:`records.assign_shards`)
            (in-process input only; service workers read every file).
        skipped: Skip corrupt records and count them in this counter (None: a corrupt shard fails).
        data_service: ``grpc://HOST:PORT`` of a tf.data service dispatcher: the stream runs on its workers
            (each with its own seeds, see :mod:`trainer.input.data_service`); this dataset reads their batches.
        data_service_job: Name of the service job shared by every consumer of one training run (the
            workers of a multi-worker job split its batches); None: a job of this dataset alone.

    Raises:
        ValueError: unknown option (the message lists the valid values), task without labels, every bucket
            empty, fewer shards than input pipelines, ``skipped`` with ``data_service``.
        DatasetInfoError: no train split.
        CorruptShardError: a listed shard is missing or of the wrong size (unless ``skipped`` is given).
    """
    # 1. Options, heads, bucket mix and class weights.
    sampling_mode = sampling_lib.check_choice(sampling, sampling_lib.SAMPLING_MODES, "sampling mode")
    sampling_lib.check_choice(loss_weighting, sampling_lib.LOSS_WEIGHTINGS, "loss weighting")
    heads = check_heads_and_sizes(info, task, seq_len, batch_size)
    if windows_per_clip < 1:
        raise ValueError(f"windows_per_clip must be >= 1, got {windows_per_clip}")
    register_filesystems(data_dir)
    records.split_info(info, SPLIT_TRAIN)
    draw = train_bucket_draw(info, sampling_mode, task)
    class_weights = expression_weights(info, heads, loss_weighting, class_weights)
    stream = {"heads": heads, "seq_len": seq_len, "batch_size": batch_size, "draw": draw,
              "class_weights": class_weights, "seed": seed, "decode": True, "windows_per_clip": windows_per_clip}

    # 2. In process, or on the tf.data service: every worker runs the whole stream (all files) with its own
    #    seeds. Shards are checked here, where errors are clear, before any dataset function is traced.
    if not data_service:
        shard_sets = records.train_shard_sets(data_dir, info, draw, input_context, skipped)
        dataset = records.explicitly_seeded(lambda worker: train_batches(
            info, shard_sets, input_context=input_context, skipped=skipped, worker=worker, **stream))
        return dataset.prefetch(AUTOTUNE).with_options(dataset_options(input_context))
    if skipped is not None:
        raise ValueError("skip_corrupt cannot count skipped records on tf.data service workers (the counter "
                         "lives in this process): check the shards with `affectstream inspect DATA --verify`, "
                         "or train without the data service")
    shard_sets = records.train_shard_sets(data_service_lib.worker_path(data_dir), info, draw, None, None)
    dataset = records.explicitly_seeded(lambda worker: train_batches(
        info, shard_sets, input_context=None, skipped=None, worker=worker, **stream),
        workers=data_service_lib.worker_index())
    dataset = data_service_lib.read_from_service(dataset.with_options(dataset_options(None)), data_service,
                                                 job_name=data_service_job)
    return dataset.prefetch(AUTOTUNE).with_options(dataset_options(input_context))


# --------------------------------------------------------------------------------------------------
# Evaluation.


def make_eval_dataset(data_dir: str, info: DatasetInfo, *, split: str = SPLIT_VALIDATION, task: str,
                      seq_len: int, batch_size: int, input_context=None,
                      skipped: records.SkippedRecords | None = None) -> tf.data.Dataset:
    """The finite evaluation stream: every frame of every clip of ``split`` exactly once, in a fixed order.

    Each clip is cut into consecutive windows of ``seq_len`` frames (the last padded, weight 0); the last
    batch may be smaller. No augmentation, no loss weighting; frames without a face keep their weight (see
    :func:`trainer.input.frames.targets_and_weights`).

    Returns:
        Elements ``(images, targets, weights, ids)``; ``images`` uint8 ``[B, T, S, S, 3]``; ``ids`` is
        ``{"example_id": string [B], "media_id": string [B], "frame_index": int64 [B, T] (-1 on padding),
        "has_face": bool [B, T], "labelled": bool [B, T]}``, so predictions can be traced back to videos, clips and
        frames (``labelled``: :func:`trainer.input.frames.labelled_frames`, the frames a coverage counts as read).

    Raises:
        DatasetInfoError: the split does not exist.
        ValueError: unknown task / task without labels, fewer shards than input pipelines, no records.
        CorruptShardError: a listed shard is missing or of the wrong size (unless ``skipped`` is given).
    """
    # 1. Options, heads, this pipeline's shard files.
    heads = check_heads_and_sizes(info, task, seq_len, batch_size)
    register_filesystems(data_dir)
    split_info = records.split_info(info, split)
    paths, counts = records.shard_files(data_dir, split_info.shards, f"split {split!r}", input_context, skipped)
    if not paths:
        raise ValueError(f"split {split!r} has no shard holding records: nothing to evaluate")
    parse = make_clip_parser(info.num_action_units, image_format=info.codec)
    num_classes = len(info.expression_names)
    crop_size = info.crop_size

    # 2. Per window: decode (uint8), keep the labels and ids; per batch: targets and weights.
    @tf.autograph.experimental.do_not_convert
    def to_example(window):
        frames = frames_lib.decode_frames(window, crop_size, seq_len, info.codec)
        ids = {"example_id": window["example_id"], "media_id": window["media_id"],
               "frame_index": window["frame_index"], "has_face": window["has_face"],
               "labelled": frames_lib.labelled_frames(window, num_classes)}
        return frames, frames_lib.labels_of(window), ids

    @tf.autograph.experimental.do_not_convert
    def to_batch(frames, labels, ids):
        targets, weights = frames_lib.targets_and_weights(labels, heads, num_classes, None, require_face=False)
        return frames, targets, weights, ids

    # 3. Records in shard order -> windows -> batches.
    dataset = records.read_records(paths, counts, skipped=skipped, shuffle_seed=None)
    dataset = dataset.map(tf.autograph.experimental.do_not_convert(
        lambda serialized: frames_lib.eval_windows(parse(serialized), seq_len)), num_parallel_calls=AUTOTUNE)
    dataset = dataset.unbatch()
    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(to_batch, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(dataset_options(input_context))
