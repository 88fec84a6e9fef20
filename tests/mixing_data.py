"""Converter-like train splits for measuring how well batches mix, and the measurements themselves.

:func:`write_layout` writes what ``beam_jobs.convert`` writes for long videos: every video gives many
consecutive clips (ids ``train/<video>/<first frame>``), a clip's bucket is the majority expression class of
its frames (the other frames are mostly Neutral, as in Aff-Wild2), each bucket's clips are hashed into
shards with the converter's own :func:`beam_jobs.pipeline.clips.stable_shard`, and inside a shard records are in
the order ``"id"`` (the converter before issue 9) or ``"hash"`` (:func:`beam_jobs.pipeline.shards.shard_order_key`,
the converter now). Crops are tiny constant JPEGs: only the order of the records matters here.

:func:`distinct_videos_per_draws` measures the trainer's real stream (:func:`trainer.input.records.mixed_train_records`
with the trainer's shuffle buffers): the mean number of distinct videos among consecutive draws from one
bucket. Used by ``tests/test_mixing.py`` and ``bench/mixing.py``.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import tensorflow as tf

from beam_jobs.pipeline.clips import stable_shard
from beam_jobs.pipeline.shards import shard_order_key
from tfrecords_schema import (
    SPLIT_TRAIN,
    TASK_EXPRESSION,
    Accounting,
    ClipRecord,
    DatasetInfo,
    ShardInfo,
    SplitInfo,
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


def _clip(media_id: str, first: int, labels: np.ndarray, bucket: int, images: list[bytes]) -> ClipRecord:
    n = len(labels)
    frames = np.arange(first, first + n, dtype=np.int64)
    return ClipRecord(
        example_id=f"{SPLIT_TRAIN}/{media_id}/{first:06d}", dataset_name="mix", media_id=media_id,
        data_path=f"videos/{media_id}.mp4", frame_rate=30.0, bucket_index=bucket,
        images=[images[c] for c in labels], frame_index=frames, timestamp_us=(frames - 1) * 33333,
        bbox=np.tile(np.array([[0.2, 0.3, 0.6, 0.7]], np.float32), (n, 1)), expression=labels.astype(np.int64),
        valence_arousal=np.full((n, 2), keys.VA_INVALID, np.float32), action_units=np.zeros((n, 0), np.int64))


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
    images = [_jpeg(20 + 25 * c, crop_size) for c in range(len(names))]
    by_bucket: dict[int, list[ClipRecord]] = {b: [] for b in range(len(names))}
    for home in range(len(names)):
        for v in range(videos_per_bucket):
            media_id = f"{names[home]}_{v:03d}"
            for k in range(clips_per_video):
                draw = rng.random(clip_length)
                other = np.where(rng.random(clip_length) < 0.7, 0, rng.integers(0, len(names), clip_length))
                labels = np.where(draw < purity, home, other)
                counts = np.bincount(labels, minlength=len(names))
                bucket = int(np.argmax(counts))
                by_bucket[bucket].append(_clip(media_id, 1 + k * clip_length, labels, bucket, images))
    os.makedirs(os.path.join(root, SPLIT_TRAIN), exist_ok=True)
    shards, all_clips = [], []
    for b, clips in by_bucket.items():
        all_clips += clips
        for index in range(shards_per_bucket):
            mine = [c for c in clips if stable_shard(c.example_id, shards_per_bucket) == index]
            mine.sort(key=(lambda c: c.example_id) if order == "id" else (lambda c: shard_order_key(c.example_id)))
            rel = f"{SPLIT_TRAIN}/{shard_basename('mix', SPLIT_TRAIN, names[b], index, shards_per_bucket)}"
            with tf.io.TFRecordWriter(os.path.join(root, rel)) as writer:
                for clip in mine:
                    writer.write(encode_clip(clip))
            shards.append(ShardInfo(path=rel, bucket=names[b], num_records=len(mine),
                                    num_frames=len(mine) * clip_length, num_bytes=os.path.getsize(os.path.join(root,
                                                                                                             rel))))
    labels = np.concatenate([c.expression for c in all_clips])
    split = SplitInfo(num_clips=len(all_clips), num_frames=len(labels), shards=shards)
    split.bucket_clips = {names[b]: len(c) for b, c in by_bucket.items()}
    split.bucket_frames = {names[b]: len(c) * clip_length for b, c in by_bucket.items()}
    split.class_frames[TASK_EXPRESSION] = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    split.accounting = Accounting(labelled_frames=len(labels), written_frames_with_face=len(labels),
                                  written_frames_without_face=0)
    info = DatasetInfo(name="mix", tasks=[TASK_EXPRESSION],
                       label_names={"expression": names, "valence_arousal": [], "action_units": []},
                       bucket_by="expression", bucket_names=names, crop_size=crop_size, clip_length=clip_length,
                       splits={SPLIT_TRAIN: split}, options={"generator": "tests/mixing_data.py", "order": order})
    info.check()
    write_dataset_info(info, root)
    return info


def distinct_videos_per_draws(data_dir: str, info: DatasetInfo, *, draws: int = 8, num_clips: int = 4096,
                              sampling_mode: str = "balanced", seed: int = 0) -> float:
    """Mean distinct videos among ``draws`` consecutive clips drawn from one bucket, over every bucket.

    Reads the first ``num_clips`` clips of the trainer's train record stream (one pipeline), splits it by
    bucket, cuts each bucket's draws into consecutive groups of ``draws`` and averages their distinct
    ``media_id`` counts (uniform sampling from ``V`` videos gives ``V * (1 - (1 - 1/V) ** draws)``).
    """
    weights = sampling.bucket_weights(info, sampling_mode, "expr")
    counts = sampling.bucket_clip_counts(info)
    shard_sets = records.train_shard_sets(data_dir, info, weights, None, None)
    stream = records.explicitly_seeded(lambda worker: records.mixed_train_records(
        shard_sets, weights, counts, sampling_mode, seed=seed, input_context=None, skipped=None, worker=worker))
    parse = make_clip_parser(0)
    pairs = stream.take(num_clips).map(lambda s: (parse(s)["bucket"], parse(s)["media_id"]),
                                       num_parallel_calls=tf.data.AUTOTUNE)
    per_bucket: dict[int, list[bytes]] = {}
    for bucket, media in pairs.as_numpy_iterator():
        per_bucket.setdefault(int(bucket), []).append(media)
    groups = [len(set(seq[i:i + draws])) for seq in per_bucket.values() for i in range(0, len(seq) - draws + 1, draws)]
    return float(np.mean(groups))
