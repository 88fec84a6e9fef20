"""Converter-like train splits for measuring how well batches mix, and the measurements themselves.

:func:`write_layout` writes what ``beam_jobs.convert`` writes for long videos: every video gives many
consecutive clips (ids ``train/<video>/<first frame>``), a clip's bucket is the majority expression class of
its frames (the other frames are mostly Neutral, as in Aff-Wild2), each bucket's clips are hashed into
shards with the converter's own :func:`beam_jobs.pipeline.clips.stable_shard`, and inside a shard records are in
the order ``"id"`` (the converter before issue 9) or ``"hash"`` (:func:`beam_jobs.pipeline.shards.shard_order_key`,
the converter now). Crops are tiny constant JPEGs: only the order of the records matters here.

:func:`write_affwild_layout` writes an Aff-Wild2-like multi-task train split, bucketed by the converter's own
:class:`beam_jobs.pipeline.clips.Bucketer` (``tasks``: composite buckets, or ``expression``: the old default):
the EXPR, VA and AU video sets overlap only in part, half the EXPR frames are Neutral, most VA frames sit in
one quarter of the valence-arousal plane, and the AUs have Aff-Wild2's positive rates (AU24 2.6 %).

:func:`distinct_videos_per_draws` measures the trainer's real stream (:func:`trainer.input.records.mixed_train_records`
with the trainer's shuffle buffers): the mean number of distinct videos among consecutive draws from one
bucket. Used by ``tests/test_mixing.py`` and ``bench/mixing.py``.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import tensorflow as tf
from trainer_data import split_info_of

from beam_jobs.pipeline.clips import Bucketer, stable_shard
from beam_jobs.pipeline.shards import shard_order_key
from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    SPLIT_TRAIN,
    TASK_EXPRESSION,
    TASKS,
    ClipRecord,
    DatasetInfo,
    ShardInfo,
    buckets,
    encode_clip,
    keys,
    make_clip_parser,
    shard_basename,
    write_dataset_info,
)
from trainer.input import records, sampling

CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
ORDERS = ("id", "hash")


def _jpeg(value: int, size: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((size, size, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def _clip(media_id: str, first: int, labels: np.ndarray, bucket: int, images: list[bytes],
          valence_arousal: np.ndarray | None = None, action_units: np.ndarray | None = None) -> ClipRecord:
    n = len(labels)
    frames = np.arange(first, first + n, dtype=np.int64)
    return ClipRecord(
        example_id=f"{SPLIT_TRAIN}/{media_id}/{first:06d}", dataset_name="mix", media_id=media_id,
        data_path=f"videos/{media_id}.mp4", frame_rate=30.0, bucket_index=bucket,
        images=[images[max(c, 0) % len(images)] for c in labels], frame_index=frames,
        timestamp_us=(frames - 1) * 33333, bbox=np.tile(np.array([[0.2, 0.3, 0.6, 0.7]], np.float32), (n, 1)),
        expression=labels.astype(np.int64),
        valence_arousal=np.full((n, 2), keys.VA_INVALID, np.float32) if valence_arousal is None else valence_arousal,
        action_units=np.zeros((n, 0), np.int64) if action_units is None else action_units)


def _write_train_split(root: str, clips: list[ClipRecord], bucketer: Bucketer, label_names: dict, tasks,
                       shards_per_bucket: int, order: str, crop_size: int, clip_length: int,
                       options: dict) -> DatasetInfo:
    """The clips as the converter writes a train split: per bucket, hashed into shards, ordered; with its info."""
    os.makedirs(os.path.join(root, SPLIT_TRAIN), exist_ok=True)
    shards = []
    for b, name in enumerate(bucketer.names):
        members = [c for c in clips if c.bucket_index == b]
        if not members:
            continue
        for index in range(shards_per_bucket):
            mine = [c for c in members if stable_shard(c.example_id, shards_per_bucket) == index]
            mine.sort(key=(lambda c: c.example_id) if order == "id" else (lambda c: shard_order_key(c.example_id)))
            rel = f"{SPLIT_TRAIN}/{shard_basename('mix', SPLIT_TRAIN, name, index, shards_per_bucket)}"
            with tf.io.TFRecordWriter(os.path.join(root, rel)) as writer:
                for clip in mine:
                    writer.write(encode_clip(clip))
            shards.append(ShardInfo(path=rel, bucket=name, num_records=len(mine),
                                    num_frames=sum(c.num_frames for c in mine),
                                    num_bytes=os.path.getsize(os.path.join(root, rel))))
    split = split_info_of(clips, shards, bucketer, label_names, tuple(tasks))
    info = DatasetInfo(name="mix", tasks=list(tasks), label_names=label_names, bucket_by=bucketer.bucket_by,
                       bucket_names=list(bucketer.names), crop_size=crop_size, clip_length=clip_length,
                       splits={SPLIT_TRAIN: split}, options=options)
    info.check()
    write_dataset_info(info, root)
    return info


def write_layout(root: str, *, num_buckets: int = 8, videos_per_bucket: int = 20, clips_per_video: int = 30,
                 shards_per_bucket: int = 4, order: str = "hash", clip_length: int = 4, purity: float = 0.7,
                 crop_size: int = 16, seed: int = 0) -> DatasetInfo:
    """Writes a train split of ``num_buckets`` expression buckets (see the module docstring); returns its info.

    Args:
        root: Output directory.
        num_buckets: Expression classes, each with its own videos (at most ``len(CLASSES)``).
        videos_per_bucket: Videos whose frames lean to each class.
        clips_per_video: Consecutive clips per video.
        shards_per_bucket: Shards of each bucket.
        order: ``"id"`` or ``"hash"``: the record order inside a shard.
        clip_length: Frames per clip.
        purity: Probability that a frame of a video shows the video's class; the rest are Neutral (70 %) or
            any class.
        crop_size: Side of the constant crops.
        seed: Seed of the labels.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    rng = np.random.default_rng(seed)
    names = list(CLASSES[:num_buckets])
    label_names = {HEAD_EXPRESSION: names, HEAD_VALENCE_AROUSAL: [], HEAD_ACTION_UNITS: []}
    bucketer = Bucketer(buckets.BUCKET_BY_EXPRESSION, label_names, [TASK_EXPRESSION])
    images = [_jpeg(20 + 25 * c, crop_size) for c in range(len(names))]
    clips = []
    for home in range(len(names)):
        for v in range(videos_per_bucket):
            media_id = f"{names[home]}_{v:03d}"
            for k in range(clips_per_video):
                draw = rng.random(clip_length)
                other = np.where(rng.random(clip_length) < 0.7, 0, rng.integers(0, len(names), clip_length))
                labels = np.where(draw < purity, home, other)
                bucket = int(np.argmax(np.bincount(labels, minlength=len(names))))
                clips.append(_clip(media_id, 1 + k * clip_length, labels, bucket, images))
    return _write_train_split(root, clips, bucketer, label_names, [TASK_EXPRESSION], shards_per_bucket, order,
                              crop_size, clip_length, {"generator": "tests/mixing_data.py", "order": order})


# The Aff-Wild2-like layout: expression class shares of the EXPR videos' dominant classes (Neutral's clips also
# hold most of the other videos' off-class frames, so about half the EXPR frames are Neutral) and the AU rates.
AFFWILD_CLASS_SHARES = (0.50, 0.03, 0.03, 0.02, 0.18, 0.09, 0.05, 0.10)
AFFWILD_AU_RATES = {"AU1": 0.12, "AU2": 0.05, "AU4": 0.16, "AU6": 0.26, "AU7": 0.39, "AU10": 0.34, "AU12": 0.24,
                    "AU15": 0.03, "AU23": 0.03, "AU24": 0.026, "AU25": 0.63, "AU26": 0.09}
AFFWILD_SETS = {"expr": 0.45, "va": 0.75, "au": 0.6}  # share of the videos in each task's set (independent draws)


def write_affwild_layout(root: str, *, bucket_by: str = buckets.BUCKET_BY_TASKS, videos: int = 160,
                         clips_per_video: int = 10, clip_length: int = 8, shards_per_bucket: int = 1,
                         crop_size: int = 8, seed: int = 0) -> DatasetInfo:
    """Writes an Aff-Wild2-like multi-task train split (see the module docstring); returns its info.

    The same seed gives the same clips (ids and labels) whatever ``bucket_by``, so two outputs compare the
    buckets alone.

    Args:
        root: Output directory.
        bucket_by: ``tasks`` (composite buckets, the converter's default) or ``expression`` (before).
        videos: Videos; each belongs to each task's set with the :data:`AFFWILD_SETS` probability (at least one).
        clips_per_video: Consecutive clips per video.
        clip_length: Frames per clip.
        shards_per_bucket: Shards of each bucket.
        crop_size: Side of the constant crops.
        seed: Seed of the labels.
    """
    rng = np.random.default_rng(seed)
    au_names = list(AFFWILD_AU_RATES)
    label_names = {HEAD_EXPRESSION: list(CLASSES), HEAD_VALENCE_AROUSAL: ["valence", "arousal"],
                   HEAD_ACTION_UNITS: au_names}
    bucketer = Bucketer(bucket_by, label_names, TASKS)
    images = [_jpeg(20 + 25 * c, crop_size) for c in range(len(CLASSES))]
    rates = np.array(list(AFFWILD_AU_RATES.values()))
    clips = []
    for v in range(videos):
        sets = {t: rng.random() < p for t, p in AFFWILD_SETS.items()}
        if not any(sets.values()):
            sets["va"] = True
        home = int(rng.choice(len(CLASSES), p=AFFWILD_CLASS_SHARES))
        # Most videos' valence-arousal lives in the positive quarter (v >= 0, a >= 0), the rest anywhere.
        centre = rng.uniform(0.1, 0.9, 2) if rng.random() < 0.75 else rng.uniform(-0.9, 0.9, 2)
        for k in range(clips_per_video):
            n = clip_length
            expression = np.where(rng.random(n) < 0.75, home, np.where(rng.random(n) < 0.7, 0,
                                                                        rng.integers(0, len(CLASSES), n)))
            va = np.clip(centre + rng.normal(0.0, 0.15, (n, 2)), -1, 1).astype(np.float32)
            au = (rng.random((n, len(rates))) < rates).astype(np.int64)
            unlabelled = rng.random(n) < 0.05  # Aff-Wild2's scattered frames without a label
            expression = np.where(sets["expr"] & ~unlabelled, expression, keys.EXPRESSION_INVALID)
            va[~(sets["va"] & ~unlabelled)] = keys.VA_INVALID
            au[~(sets["au"] & ~unlabelled)] = keys.AU_INVALID
            if not (sets["expr"] or sets["va"] or sets["au"]):
                continue
            clip = _clip(f"video{v:04d}", 1 + k * n, expression, 0, images, va, au)
            name = bucketer.bucket(clip.expression, clip.valence_arousal, clip.action_units)
            clips.append(dataclasses.replace(clip, bucket_index=bucketer.index(name)))
    return _write_train_split(root, clips, bucketer, label_names, TASKS, shards_per_bucket, "hash", crop_size,
                              clip_length, {"generator": "tests/mixing_data.py", "layout": "affwild", "seed": seed})


def distinct_videos_per_draws(data_dir: str, info: DatasetInfo, *, draws: int = 8, num_clips: int = 4096,
                              sampling_mode: str = "balanced", seed: int = 0) -> float:
    """Mean distinct videos among ``draws`` consecutive clips drawn from one bucket, over every bucket.

    Reads the first ``num_clips`` clips of the trainer's train record stream (one pipeline), splits it by
    bucket, cuts each bucket's draws into consecutive groups of ``draws`` and averages their distinct
    ``media_id`` counts (uniform sampling from ``V`` videos gives ``V * (1 - (1 - 1/V) ** draws)``).
    """
    draw = sampling.bucket_draw(info, sampling_mode, "expr")
    shard_sets = records.train_shard_sets(data_dir, info, draw, None, None)
    stream = records.explicitly_seeded(lambda worker: records.mixed_train_records(
        shard_sets, draw, seed=seed, input_context=None, skipped=None, worker=worker))
    parse = make_clip_parser(0)
    pairs = stream.take(num_clips).map(lambda s: (parse(s)["bucket"], parse(s)["media_id"]),
                                       num_parallel_calls=tf.data.AUTOTUNE)
    per_bucket: dict[int, list[bytes]] = {}
    for bucket, media in pairs.as_numpy_iterator():
        per_bucket.setdefault(int(bucket), []).append(media)
    groups = [len(set(seq[i:i + draws])) for seq in per_bucket.values() for i in range(0, len(seq) - draws + 1, draws)]
    return float(np.mean(groups))
