"""Tiny *converted datasets* for the trainer tests: shards + dataset_info.json, written without Beam.

The data looks like a `beam_jobs.convert` output (same schema, shard names, `dataset_info.json`), but is
drawn so that the labels are visible in the crops and a small model can learn them:

* expression: the crop's base colour (one distinct colour per class);
* valence: a vertical brightness gradient (top brighter than bottom for positive valence);
* arousal: the contrast of horizontal stripes (4-pixel period) in the upper three quarters;
* action units: in the bottom quarter, one horizontal band per AU, white when the AU is active.

Every cue is invariant to a horizontal flip and robust to small crop jitter and brightness/contrast
changes, so training-time augmentation does not hide it. Frames without a face are a flat grey crop with
NaN boxes (their labels stay in the record, as the converter keeps them). Invalid labels use the
Aff-Wild2 markers from `tfrecords_schema.keys`.

Usage::

    from tests.trainer_data import write_dataset
    info = write_dataset(tmp_path, num_clips_per_class={"Neutral": 6, "Happiness": 3, "Fear": 1})
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os

import cv2
import numpy as np
import tensorflow as tf

from beam_jobs.pipeline.clips import Bucketer, SplitSummary, clip_summary
from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    SPLIT_TRAIN,
    SPLIT_VALIDATION,
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_VALENCE_AROUSAL,
    TASKS,
    Accounting,
    ClipRecord,
    DatasetInfo,
    ShardInfo,
    SplitInfo,
    buckets,
    encode_clip,
    keys,
    shard_basename,
    write_dataset_info,
)
from tfrecords_schema.image_codec import JPEG_DCT_METHOD

DEFAULT_CLIPS_PER_CLASS = {"Neutral": 6, "Happiness": 4, "Sadness": 3, "Fear": 2}

# Distinct, well separated RGB base colours (0..1), one per expression class.
_PALETTE = np.array(
    [
        [0.80, 0.25, 0.25],  # red
        [0.25, 0.75, 0.25],  # green
        [0.25, 0.35, 0.85],  # blue
        [0.85, 0.80, 0.20],  # yellow
        [0.75, 0.25, 0.80],  # magenta
        [0.20, 0.80, 0.80],  # cyan
        [0.90, 0.55, 0.15],  # orange
        [0.50, 0.50, 0.50],  # grey
    ],
    np.float32,
)
_NO_FACE_GREY = 0.5


def draw_crop(expression: int, valence: float, arousal: float, action_units: np.ndarray, crop_size: int,
              texture: np.ndarray | None = None) -> np.ndarray:
    """Draws one uint8 RGB crop ``[S, S, 3]`` whose pixels show the labels (see the module docstring).

    ``texture`` (float ``[S, S, 3]``, optional) is added to the picture, e.g. smooth noise that makes the
    JPEGs as costly to decode as real face crops.
    """
    s = crop_size
    img = np.empty((s, s, 3), np.float32)
    img[:] = _PALETTE[expression % len(_PALETTE)] if expression >= 0 else _NO_FACE_GREY
    if texture is not None:
        img += texture
    rows = np.arange(s, dtype=np.float32)
    upper = (3 * s) // 4
    gradient = 0.2 * valence * (1.0 - 2.0 * rows / max(s - 1, 1))  # +0.2 v at the top, -0.2 v at the bottom
    img += gradient[:, None, None]
    stripes = np.where((rows // 2) % 2 == 0, 1.0, -1.0) * 0.08 * (arousal + 1.0)
    img[:upper] += stripes[:upper, None, None]
    k = len(action_units)
    if k:
        band_rows = np.array_split(np.arange(upper, s), k)
        for active, band in zip(action_units, band_rows):
            img[band] = 1.0 if active > 0 else 0.0
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("cv2 could not encode a JPEG")
    return buf.tobytes()


def _make_clip(
    rng: np.random.Generator,
    *,
    split: str,
    media_id: str,
    class_index: int,
    bucket_index: int,
    num_frames: int,
    crop_size: int,
    tasks: tuple[str, ...],
    num_action_units: int,
    invalid_fraction: float,
    no_face_fraction: float,
    name: str,
    texture: float = 0.0,
    au_rates: np.ndarray | float = 0.4,
) -> ClipRecord:
    n = num_frames
    frame_index = np.arange(1, n + 1, dtype=np.int64)
    has_face = rng.random(n) >= no_face_fraction
    has_face[0] = True  # every clip starts on a face, so a clip is never all blank
    valence0, arousal0 = rng.uniform(-0.9, 0.9, size=2)
    drift = np.linspace(0.0, 1.0, n, dtype=np.float32) * rng.uniform(-0.1, 0.1, size=(2,))[:, None]
    va = np.clip(np.stack([valence0 + drift[0], arousal0 + drift[1]], axis=-1), -1.0, 1.0).astype(np.float32)
    au = (rng.random((n, num_action_units)) < au_rates).astype(np.int64)
    expression = np.full(n, class_index, np.int64)

    field = None
    if texture > 0:  # a smooth "skin" pattern per clip, plus a little sensor noise per frame
        field = cv2.GaussianBlur(rng.normal(0.0, 2.0 * texture, (crop_size, crop_size, 3)).astype(np.float32),
                                 (0, 0), 1.5)
    images = []
    for t in range(n):
        if has_face[t]:
            noise = None if field is None else field + rng.normal(0.0, texture / 4, field.shape).astype(np.float32)
            images.append(_encode_jpeg(draw_crop(class_index, va[t, 0], va[t, 1], au[t], crop_size, noise)))
        else:
            images.append(_encode_jpeg(np.full((crop_size, crop_size, 3), int(_NO_FACE_GREY * 255), np.uint8)))

    # Invalid markers, per task and independently, like Aff-Wild2's partly labelled frames.
    if TASK_EXPRESSION in tasks:
        expression[rng.random(n) < invalid_fraction] = keys.EXPRESSION_INVALID
    else:
        expression[:] = keys.EXPRESSION_INVALID
    if TASK_VALENCE_AROUSAL in tasks:
        va[rng.random(n) < invalid_fraction] = keys.VA_INVALID
    else:
        va[:] = keys.VA_INVALID
    if TASK_ACTION_UNITS in tasks:
        au[rng.random(n) < invalid_fraction] = keys.AU_INVALID
    bbox = np.where(has_face[:, None], np.array([[0.2, 0.3, 0.6, 0.7]], np.float32), np.nan).astype(np.float32)
    return ClipRecord(
        example_id=f"{split}/{media_id}/{1:06d}",
        dataset_name=name,
        media_id=media_id,
        data_path=f"videos/{media_id}.mp4",
        frame_rate=30.0,
        bucket_index=bucket_index,
        images=images,
        frame_index=frame_index,
        timestamp_us=(frame_index - 1) * 33333,
        bbox=bbox,
        expression=expression,
        valence_arousal=va,
        action_units=au,
    )


def _write_shards(data_dir: str, name: str, split: str, bucket: str | None, clips: list[ClipRecord],
                  num_shards: int, empty: tuple[int, ...] = ()) -> list[ShardInfo]:
    """Writes ``clips`` round-robin into ``num_shards`` files (sorted by id inside a shard).

    Shard indices in ``empty`` are written as empty files (as hashing or ``--min_shards`` can leave them);
    the clips are dealt over the other indices.
    """
    os.makedirs(os.path.join(data_dir, split), exist_ok=True)
    filled = [i for i in range(num_shards) if i not in empty]
    if not filled:
        raise ValueError(f"every one of the {num_shards} shards would be empty")
    shards = []
    for i in range(num_shards):
        mine = sorted(clips[filled.index(i)::len(filled)], key=lambda c: c.example_id) if i in filled else []
        rel = f"{split}/{shard_basename(name, split, bucket, i, num_shards)}"
        path = os.path.join(data_dir, rel)
        with tf.io.TFRecordWriter(path) as writer:
            for clip in mine:
                writer.write(encode_clip(clip))
        shards.append(ShardInfo(path=rel, bucket=bucket, num_records=len(mine),
                                num_frames=sum(c.num_frames for c in mine), num_bytes=os.path.getsize(path)))
    return shards


def split_info_of(clips: list[ClipRecord], shards: list[ShardInfo], bucketer: Bucketer | None,
                label_names: dict[str, list[str]], tasks: tuple[str, ...]) -> SplitInfo:
    """The split's entry, its histograms counted by the converter's own code (``clip_summary``)."""
    summary = SplitSummary()
    for clip in clips:
        bucket = bucketer.names[clip.bucket_index] if bucketer is not None else buckets.ALL
        summary = summary.merge(clip_summary(clip, bucket, label_names, list(tasks)))
    info = SplitInfo(num_clips=len(clips), num_frames=sum(c.num_frames for c in clips), shards=shards,
                     class_frames=summary.class_frames, task_frames=summary.task_frames)
    if bucketer is not None:
        info.bucket_clips = summary.bucket_clips
        info.bucket_frames = summary.bucket_frames
        info.bucket_classes = {b: bucketer.bucket_classes(b) for b in summary.bucket_clips}
        info.bucket_class_frames = summary.bucket_class_frames
        info.bucket_task_frames = summary.bucket_task_frames
    with_face = int(sum(c.has_face.sum() for c in clips))
    info.accounting = Accounting(labelled_frames=info.num_frames, written_frames_with_face=with_face,
                                 written_frames_without_face=info.num_frames - with_face)
    return info


def write_dataset(
    root,
    *,
    num_clips_per_class: dict[str, int] | None = None,
    num_validation_clips_per_class: int = 2,
    clip_length: int = 16,
    short_clip_every: int = 3,
    crop_size: int = 32,
    tasks: tuple[str, ...] = TASKS,
    num_action_units: int = 4,
    num_shards_per_bucket: int = 2,
    num_validation_shards: int = 2,
    seed: int = 0,
    invalid_fraction: float = 0.1,
    no_face_fraction: float = 0.05,
    name: str = "synth",
    texture: float = 0.0,
    num_clips_without_expression: int = 0,
    empty_shard_indices: tuple[int, ...] = (),
    bucket_by: str | None = None,
    au_rates: tuple[float, ...] | None = None,
    codec: str = "jpeg",
) -> DatasetInfo:
    """Writes a tiny converted dataset under ``root`` and returns its :class:`DatasetInfo`.

    Args:
        root: Output directory (created).
        num_clips_per_class: ``{expression class name: train clips}``, in class order; the names become
            the expression labels (and the train buckets when ``"expr"`` is a task). A 0 makes an empty
            bucket (listed, no shards).
        num_validation_clips_per_class: Validation clips of every class (one unbucketed shard set).
        clip_length: Frames per clip.
        short_clip_every: Every n-th clip is shorter (``clip_length // 2 + 1`` frames), like the last clip of a
            track; 0 disables.
        crop_size: Side of the square crops.
        tasks: Tasks with labels, a subset of ``tfrecords_schema.TASKS``; other labels are all invalid.
        num_action_units: AUs per frame when ``"au"`` is a task.
        num_shards_per_bucket: Shards per train bucket.
        num_validation_shards: Shards of the validation split (0 writes no validation split).
        seed: Seed of every random choice (same seed, same bytes).
        invalid_fraction: Fraction of frames with an invalid marker, per task.
        no_face_fraction: Fraction of frames without a face.
        name: Dataset name (shard prefix).
        num_clips_without_expression: Train clips whose expression labels are all invalid (other labels
            valid), written like the converter does: in one more bucket, ``"no_expression"``.
        empty_shard_indices: Indices (of ``num_shards_per_bucket``) of every train bucket's shards written
            as empty files, listed with ``num_records`` 0.
        texture: Strength of a smooth noise pattern added to the crops (0: flat colours, tiny JPEGs;
            ~0.1 gives JPEGs the size of real 112-pixel face crops, for benchmarks).
        bucket_by: The train buckets, bucketed by the converter's own :class:`Bucketer`: ``"tasks"`` (composite,
            the converter's default), ``"expression"`` or ``"none"``; default: ``"expression"`` when ``"expr"`` is
            a task (a version 1-2 conversion's default, which many tests read by class), else ``"none"``.
        au_rates: Each AU's positive rate per frame (sets the number of AUs); default 0.4 for every one of
            ``num_action_units``.
        codec: ``"jpeg"``, or ``"raw"``: every crop stored as the uint8 RGB pixels its JPEG decodes to (so a raw
            dataset of a seed holds exactly the pixels of the JPEG one).
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; valid: {list(TASKS)}")
    num_clips_per_class = dict(DEFAULT_CLIPS_PER_CLASS if num_clips_per_class is None else num_clips_per_class)
    root = str(root)
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    expression_names = list(num_clips_per_class)
    if au_rates is not None:
        num_action_units = len(au_rates)
    rates = np.array(au_rates if au_rates is not None else [0.4] * num_action_units)
    au_names = [f"AU{k + 1}" for k in range(num_action_units)] if TASK_ACTION_UNITS in tasks else []
    if bucket_by is None:
        bucket_by = buckets.BUCKET_BY_EXPRESSION if TASK_EXPRESSION in tasks else buckets.BUCKET_BY_NONE
    label_names = {HEAD_EXPRESSION: expression_names if TASK_EXPRESSION in tasks else [],
                   HEAD_VALENCE_AROUSAL: ["valence", "arousal"] if TASK_VALENCE_AROUSAL in tasks else [],
                   HEAD_ACTION_UNITS: au_names}
    bucketer = Bucketer(bucket_by, label_names, tuple(t for t in TASKS if t in tasks))

    def clips_for(split: str, counts: dict[str, int]) -> list[ClipRecord]:
        clips, serial = [], 0
        for class_index, class_name in enumerate(expression_names):
            for i in range(counts[class_name]):
                serial += 1
                short = short_clip_every and serial % short_clip_every == 0
                clips.append(_make_clip(
                    rng, split=split, media_id=f"{class_name}_{i:03d}", class_index=class_index, bucket_index=0,
                    num_frames=clip_length // 2 + 1 if short else clip_length, crop_size=crop_size, tasks=tasks,
                    num_action_units=len(au_names), invalid_fraction=invalid_fraction,
                    no_face_fraction=no_face_fraction, name=name, texture=texture, au_rates=rates[:len(au_names)]))
        return clips

    def as_codec(clip: ClipRecord) -> ClipRecord:
        if codec == "jpeg":
            return clip
        images = [tf.io.decode_jpeg(jpeg, channels=3, dct_method=JPEG_DCT_METHOD).numpy().tobytes()
                  for jpeg in clip.images]
        return dataclasses.replace(clip, images=images, image_format=codec)

    def bucket(clip: ClipRecord) -> ClipRecord:  # the converter's bucket of the clip
        name = bucketer.bucket(clip.expression, clip.valence_arousal, clip.action_units)
        return dataclasses.replace(clip, bucket_index=bucketer.index(name))

    splits = {}
    train = clips_for(SPLIT_TRAIN, num_clips_per_class)
    for i in range(num_clips_without_expression):
        clip = _make_clip(rng, split=SPLIT_TRAIN, media_id=f"unlabelled_{i:03d}", class_index=i % len(expression_names),
                          bucket_index=0, num_frames=clip_length, crop_size=crop_size,
                          tasks=tasks, num_action_units=len(au_names), invalid_fraction=invalid_fraction,
                          no_face_fraction=no_face_fraction, name=name, texture=texture)
        clip.expression[:] = keys.EXPRESSION_INVALID
        train.append(clip)
    train = [as_codec(bucket(c)) for c in train]
    train_shards = []
    for b, bucket_name in enumerate(bucketer.names):
        members = [c for c in train if c.bucket_index == b]
        if members:
            train_shards += _write_shards(root, name, SPLIT_TRAIN, bucket_name, members, num_shards_per_bucket,
                                          empty=tuple(empty_shard_indices))
    splits[SPLIT_TRAIN] = split_info_of(train, train_shards, bucketer, label_names, tasks)
    if bucket_by == buckets.BUCKET_BY_EXPRESSION:  # every class declared (0: an empty bucket), as tests read them
        declared = splits[SPLIT_TRAIN].bucket_clips
        splits[SPLIT_TRAIN].bucket_clips = {n: declared.get(n, 0) for n in bucketer.names if n in declared
                                            or n != buckets.NO_EXPRESSION}
        splits[SPLIT_TRAIN].bucket_frames = {n: splits[SPLIT_TRAIN].bucket_frames.get(n, 0)
                                             for n in splits[SPLIT_TRAIN].bucket_clips}
    if num_validation_shards:
        val = [as_codec(c) for c in clips_for(SPLIT_VALIDATION, {n: num_validation_clips_per_class
                                                                  for n in expression_names})]
        val_shards = _write_shards(root, name, SPLIT_VALIDATION, None, val, num_validation_shards)
        splits[SPLIT_VALIDATION] = split_info_of(val, val_shards, None, label_names, tasks)

    info = DatasetInfo(
        name=name,
        tasks=[t for t in TASKS if t in tasks],
        label_names=label_names,
        bucket_by=bucket_by,
        bucket_names=list(bucketer.names),
        crop_size=crop_size,
        clip_length=clip_length,
        splits=splits,
        options={"generator": "tests/trainer_data.py", "seed": seed, "codec": codec},
    )
    info.check()
    write_dataset_info(info, root)
    return info


def corrupt_shard(path: str, offset: int | None = None) -> None:
    """Flips bytes inside a shard (in the middle of a record's payload by default); size is unchanged."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        at = len(data) // 2 if offset is None else offset
        for i in range(at, min(at + 16, len(data))):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))


def truncate_shard(path: str, keep_fraction: float = 0.6) -> None:
    """Cuts a shard short, as an interrupted copy would."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


def shard_path(root, info: DatasetInfo, split: str, index: int = 0, bucket: str | None = "__any__") -> str:
    """Absolute path of the ``index``-th shard of ``split`` (optionally of one bucket)."""
    shards = info.splits[split].shards
    if bucket != "__any__":
        shards = [s for s in shards if s.bucket == bucket]
    return os.path.join(str(root), shards[index].path)


def run_train(args: list[str]) -> tuple[int, str]:
    """Runs ``trainer.train.run(args)`` quietly; returns its exit code and what it wrote to stderr (its log)."""
    from trainer import train

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = train.run(args)
    return rc, err.getvalue()
