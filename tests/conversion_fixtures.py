"""In-memory inputs for the conversion's single-step tests: tracks, labels, clips, configs, spilled records.

Nothing here decodes video. Every helper builds real objects of the job (``TrackSpec``,
``TrackLabels``, ``ClipRecord`` through ``ClipBuilder``), so a step tested on them sees exactly
what the pipeline would hand it.

Example::

    import conversion_fixtures as cf   # tests/ is on sys.path under pytest

    config = cf.config(tmp_path)
    clip = cf.clip("train", "vid1", [4, 4, 1])          # one ClipRecord, frames 1..3
    record = cf.spill_clip(config, "train", clip)       # a SpilledRecord whose bytes are on disk
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

from beam_jobs.faces import stage as faces
from beam_jobs.pipeline.clips import ClipBuilder
from beam_jobs.pipeline.config import ConvertConfig
from beam_jobs.pipeline.spill import SpilledRecord, SpillWriter
from beam_jobs.sources.base import TrackLabels, TrackSpec
from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    TASK_EXPRESSION,
    ClipRecord,
    encode_clip,
    join_path,
    keys,
)
from tfrecords_schema.buckets import BUCKET_BY_EXPRESSION

LABEL_NAMES = {HEAD_EXPRESSION: ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"],
               HEAD_VALENCE_AROUSAL: ["valence", "arousal"], HEAD_ACTION_UNITS: []}
JPEG = faces.encode_jpeg(np.full((8, 8, 3), 128, np.uint8))


def config(output, **kwargs) -> ConvertConfig:
    """Worker options writing under ``output``: expression buckets, clips of 4, crops of 16."""
    values = {"dataset_name": "abaw", "output": str(output), "label_names": LABEL_NAMES, "tasks": (TASK_EXPRESSION,),
              "clip_length": 4, "face": faces.FaceStageConfig(crop_size=16), "bucket_by": BUCKET_BY_EXPRESSION}
    return ConvertConfig(**{**values, **kwargs})


def labels(expression: list[int], rejected: dict[int, str] | None = None) -> TrackLabels:
    """Expression labels (-1: unlabelled); ``rejected`` marks frames (1-based) rejected with a reason."""
    n = len(expression)
    marks = np.array([""] * n, dtype=object)
    for frame, reason in (rejected or {}).items():
        marks[frame - 1] = reason
    return TrackLabels(
        expression=np.array(expression, np.int64),
        valence_arousal=np.full((n, 2), keys.VA_INVALID, np.float32),
        action_units=np.zeros((n, 0), np.int64),
        rejected=marks.astype(str),
    )


def track(split: str, media_id: str, **kwargs) -> TrackSpec:
    """A track of one expression annotation file (the file need not exist)."""
    return TrackSpec(media_id=media_id, split=split, annotation_files=((TASK_EXPRESSION, f"/nowhere/{media_id}.txt"),),
                     **kwargs)


def clip(split: str, media_id: str, expression: list[int], first_frame: int = 1,
         cfg: ConvertConfig | None = None) -> ClipRecord:
    """One ClipRecord of frames ``first_frame..`` with those labels, a face on every frame."""
    cfg = cfg or config("/unused")
    padded = [-1] * (first_frame - 1) + list(expression)
    builder = ClipBuilder(track(split, media_id), labels(padded), len(padded), cfg.dataset_name, 10.0, cfg.bucketer())
    out = None
    for index in range(first_frame, len(padded) + 1):
        out = builder.add(index, (index - 1) * 100_000, JPEG, (0.1, 0.2, 0.9, 0.8))  # Fills at the last frame.
    assert out is not None, "a clip needs a valid label"
    return out


def spill_clip(cfg: ConvertConfig, split: str, record: ClipRecord, writer: SpillWriter | None = None) -> SpilledRecord:
    """Writes an encoded clip to a spill file under ``cfg``'s temp folder; returns where it is."""
    own = writer is None
    writer = writer or SpillWriter(join_path(cfg.tmp_dir, "spill"))
    data = encode_clip(record)
    path, offset = writer.append(data)
    if own:
        writer.close()
    bucketer = cfg.bucketer()
    bucket = bucketer.shard_bucket(split, bucketer.names[record.bucket_index])
    return SpilledRecord(split, bucket, record.example_id, path, offset, len(data), record.num_frames)


def write_crops(folder: pathlib.Path, frames: dict[int, bytes | None]) -> pathlib.Path:
    """Provided crops ``{i:05d}.jpg``: a grey face-sized image for None, else the bytes given."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in frames.items():
        path = folder / f"{index:05d}.jpg"
        if data is None:
            cv2.imwrite(str(path), np.full((40, 32, 3), 90, np.uint8))
        else:
            path.write_bytes(data)
    return folder
