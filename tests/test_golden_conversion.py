"""Golden conversion: what two small conversions write is frozen, exactly where it is exact, within stated
tolerances where float kernels differ between CPU kinds.

Two small conversions, made on the fly from drawn-face videos, cover every step of the job: decoded video with the
face stage (one and two subjects, several tasks and buckets, a track without media, annotation lines beyond the video
end, an adapter that fails on one track) and provided crops (an unreadable and a missing crop, ``va_grid`` buckets,
empty shards completing a shard set).

What must not move is compared **exactly** with the recorded content (``tests/golden/<case>.json``): the shard
layout and every record's place in it, ids, media ids, buckets, frame indexes, timestamps, labels, which frames have a
face and keypoints, crop sizes, the dead letters, and ``dataset_info.json`` (accounting, counters, histograms, face
statuses, options) without its run timing fields and the shards' byte sizes. What float noise may move is compared
within the tolerances below: BlazeFace runs on TF Lite's XNNPACK kernels, whose float rounding differs between CPU
kinds (AVX2, AVX-512), so boxes, keypoints and crop pixels differ in their last bits from machine to machine, and the
JPEG bytes (and so the shard sizes) with them.

Byte identity holds per machine: :func:`test_a_rerun_writes_the_same_bytes` converts twice and compares every file's
hash. :func:`test_the_comparison_holds_with_the_detectors_float_path_perturbed` converts with XNNPACK switched off
(TF Lite's reference kernels round differently, as another CPU does) and checks that the bytes move while the
comparison still passes.

When the output changes ON PURPOSE (a schema version bump, a new face-stage rule, new options recorded), write the
golden content again and say in the commit why it changed::

    .venv/bin/python tests/test_golden_conversion.py

Never regenerate to silence an unexplained change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Helpers of tests/ when run as a script.

import abaw_layout as abaw
import video_fixtures as vf

from beam_jobs import convert
from beam_jobs.faces import detectors
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import DATASET_INFO_FILENAME, decode_clip
from tfrecords_schema.dataset_info import RUN_TIMING_FIELDS

COMMON = ["--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"]
GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"

# Tolerances of what float noise may move. Measured (XNNPACK off against on, an x86-64 host): boxes and keypoints
# moved by < 1e-6 of the frame side, the crops' 8x8 grey thumbnails by < 0.01 grey level on average and 0.11 at most,
# shard sizes by < 0.05 %. The tolerances leave two orders of magnitude for other CPUs and still catch a real change:
# a frame cut one frame early or late, or a crop off by a few percent of the face, moves them far more (the drawn
# face changes between frames, and a shifted crop moves every thumbnail cell).
BOX_TOLERANCE = 0.01  # Box corners, as a fraction of the frame side.
KEYPOINT_TOLERANCE = 0.01  # Keypoints, as a fraction of the frame side.
CROP_MEAN_TOLERANCE = 4.0  # Mean absolute difference of a crop's 8x8 grey thumbnail, grey levels (0-255).
CROP_MAX_TOLERANCE = 24.0  # Largest difference of one thumbnail cell, grey levels.
SHARD_BYTES_TOLERANCE = 0.05  # A shard's size (JPEG bytes of its crops), as a fraction of the recorded size.
THUMBNAIL = 8


class _BrokenLabelsSource(AbawSource):
    """The ABAW adapter failing on one track's labels (an adapter bug): the unreadable-labels path."""

    def read_labels(self, track):
        if track.media_id == "broken":
            raise KeyError("adapter bug")
        return super().read_labels(track)


def _make_video_dataset() -> None:
    """Under the current folder: ``annotations/`` and ``videos/``."""
    ann, videos = pathlib.Path("annotations"), pathlib.Path("videos")
    vf.write_face_video(videos / "vid1.avi", [0, 0, 4, 4, 4, 1, 1, None, 5, 5])
    abaw.write_annotation(ann, "expr", "train", "vid1", [0, 0, 4, 4, 4, 1, 1, 0, 5, 5])
    abaw.write_annotation(ann, "va", "validation", "vid1", [(0.5, -0.5)] * 12)  # 2 lines beyond the end.
    vf.write_two_face_video(videos / "sub" / "duo.avi", 6)
    abaw.write_annotation(ann, "expr", "train", "duo_left", [vf.LEFT_EXPRESSION] * 6)
    abaw.write_annotation(ann, "expr", "train", "duo_right", [vf.RIGHT_EXPRESSION] * 6)
    vf.write_face_video(videos / "vid2.mp4", [3] * 6)
    abaw.write_annotation(ann, "expr", "train", "vid2", [-1, -1, -1, -1, 3, 3])
    abaw.write_annotation(ann, "au", "train", "vid2", [[-1] * 12] * 4 + [[1] + [0] * 11] * 2)
    abaw.write_annotation(ann, "expr", "train", "ghost", [1] * 5)  # No media.
    vf.write_face_video(videos / "broken.avi", [2] * 3)
    abaw.write_annotation(ann, "expr", "train", "broken", [2] * 3)
    abaw.write_annotation(ann, "va", "train", "broken", [(0.1, 0.2)] * 4)


def _make_crops_dataset() -> None:
    """Under the current folder: ``annotations/`` and ``crops/`` (provided crops, one unreadable, one missing)."""
    ann, crops = pathlib.Path("annotations"), pathlib.Path("crops")
    abaw.write_annotation(ann, "expr", "train", "c1", [4, 4, 4, 1, 1, 1])
    abaw.write_annotation(ann, "va", "validation", "c1", [(0.5, -0.5), (-0.5, 0.5), (0.1, 0.1), (0.9, 0.9)])
    folder = abaw.write_crops_dir(crops, "c1")
    face = vf.face_frame(4)[10:110, 30:130]
    for i in (1, 2, 4, 6):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), face)
    (folder / "00003.jpg").write_bytes(b"\xff\xd8 broken jpeg")  # 00005.jpg is missing.


def _convert(argv: list[str], source=None) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = convert.run(argv + COMMON, source=source)
    if rc != 0:
        raise RuntimeError(f"conversion failed ({rc}): {err.getvalue()}")


def convert_video_case() -> pathlib.Path:
    """Decoded video: expression buckets, clips of 4, detection on every frame (in the current folder)."""
    _make_video_dataset()
    _convert(["--videos", "videos", "--annotations", "annotations", "--output", "out", "--clip_length", "4",
              "--detect_every", "1", "--max_hold", "0"], source=_BrokenLabelsSource("annotations", "videos"))
    return pathlib.Path("out")


def convert_crops_case() -> pathlib.Path:
    """Provided crops: ``va_grid`` buckets, 2 shards per set (some empty), crop size 48 (in the current folder)."""
    _make_crops_dataset()
    _convert(["--cropped_aligned", "crops", "--annotations", "annotations", "--output", "out", "--clip_length", "4",
              "--bucket_by", "va_grid", "--min_shards", "2", "--crop_size", "48"])
    return pathlib.Path("out")


CASES = {"video": convert_video_case, "crops": convert_crops_case}


# --------------------------------------------------------------------------------------------------
# What an output holds.


def file_hashes(output: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file under ``output``; ``dataset_info.json`` without its run timing fields."""
    out = {}
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == DATASET_INFO_FILENAME:
            data = json.dumps(_info_without_timing(json.loads(data)), sort_keys=True).encode("utf-8")
        out[path.relative_to(output).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def _info_without_timing(info: dict) -> dict:
    info["run"] = {k: v for k, v in info["run"].items() if k not in RUN_TIMING_FIELDS}
    return info


def _thumbnail(jpeg: bytes) -> list[float]:
    """The crop's 8x8 grey block means, rounded to 0.01 grey level."""
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(grey.astype(np.float32), (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)
    return np.round(small, 2).ravel().tolist()


def _record(serialized: bytes) -> dict:
    """One record: ``exact`` fields (ids, labels, which frames have a face) and ``float`` ones (boxes, crops)."""
    clip = decode_clip(serialized)
    shapes = [list(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR).shape) for j in clip.images]
    face, points = clip.has_face, clip.has_keypoints
    return {
        "exact": {
            "example_id": clip.example_id, "dataset_name": clip.dataset_name, "media_id": clip.media_id,
            "data_path": clip.data_path, "frame_rate": clip.frame_rate, "bucket_index": clip.bucket_index,
            "frame_index": clip.frame_index.tolist(), "timestamp_us": clip.timestamp_us.tolist(),
            "expression": clip.expression.tolist(), "valence_arousal": clip.valence_arousal.tolist(),
            "action_units": clip.action_units.tolist(), "has_face": face.tolist(), "has_keypoints": points.tolist(),
            "keypoints_per_frame": int(clip.keypoints.shape[1]), "crop_shapes": shapes,
        },
        "float": {
            "boxes": [box.tolist() if f else None for box, f in zip(clip.bbox, face)],
            "keypoints": [kp.tolist() if p else None for kp, p in zip(clip.keypoints, points)],
            "crops": [_thumbnail(j) for j in clip.images],
        },
    }


def output_content(output: pathlib.Path) -> dict:
    """Everything a comparison needs from a conversion output (see the module docstring)."""
    import tensorflow as tf

    info = _info_without_timing(json.loads((output / DATASET_INFO_FILENAME).read_text()))
    shard_bytes = {}
    for split in info["splits"].values():
        for shard in split["shards"]:
            shard_bytes[shard["path"]] = shard.pop("num_bytes")
    shards = {}
    for path in sorted(p for p in output.rglob("*.tfrecord-*") if p.is_file()):
        name = path.relative_to(output).as_posix()
        shards[name] = [_record(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    return {"dataset_info": info, "shard_bytes": shard_bytes, "shards": shards,
            "dead_letters": (output / "errors" / "dead_letters.jsonl").read_text()}


# --------------------------------------------------------------------------------------------------
# The comparison.


def _float_differences(where: str, got: dict, want: dict) -> list[str]:
    problems = []
    for kind, tolerance in (("boxes", BOX_TOLERANCE), ("keypoints", KEYPOINT_TOLERANCE)):
        for frame, (a, b) in enumerate(zip(got[kind], want[kind])):
            if (a is None) != (b is None):
                problems.append(f"{where} frame {frame}: {kind} {a} != {b}")
            elif a is not None and np.max(np.abs(np.subtract(a, b))) > tolerance:
                problems.append(f"{where} frame {frame}: {kind} moved by {np.max(np.abs(np.subtract(a, b))):.4f} "
                                f"> {tolerance}")
    for frame, (a, b) in enumerate(zip(got["crops"], want["crops"])):
        diff = np.abs(np.subtract(a, b))
        if diff.mean() > CROP_MEAN_TOLERANCE or diff.max() > CROP_MAX_TOLERANCE:
            problems.append(f"{where} frame {frame}: crop thumbnail differs by {diff.mean():.2f} on average, "
                            f"{diff.max():.2f} at most (tolerances {CROP_MEAN_TOLERANCE}, {CROP_MAX_TOLERANCE})")
    return problems


def compare(got: dict, want: dict) -> list[str]:
    """Every difference beyond what float noise may move, one line each (empty: the outputs agree)."""
    problems = []
    if got["dataset_info"] != want["dataset_info"]:
        problems.append("dataset_info.json differs (beyond its timing fields and shard sizes):\n"
                        + json.dumps(got["dataset_info"], indent=1, sort_keys=True))
    if got["dead_letters"] != want["dead_letters"]:
        problems.append(f"dead letters differ:\n{got['dead_letters']}")
    if sorted(got["shard_bytes"]) != sorted(want["shard_bytes"]):
        problems.append(f"shard layout differs: {sorted(got['shard_bytes'])} != {sorted(want['shard_bytes'])}")
    for path, size in want["shard_bytes"].items():
        have = got["shard_bytes"].get(path)
        if have is not None and abs(have - size) > SHARD_BYTES_TOLERANCE * size:
            problems.append(f"{path}: {have} bytes, recorded {size} (tolerance {SHARD_BYTES_TOLERANCE:.0%})")
    if sorted(got["shards"]) != sorted(want["shards"]):
        problems.append(f"shard files differ: {sorted(got['shards'])} != {sorted(want['shards'])}")
    for path, records in want["shards"].items():
        have = got["shards"].get(path, [])
        if [r["exact"] for r in have] != [r["exact"] for r in records]:
            problems.append(f"{path}: records differ in what must not move:\n"
                            + json.dumps([r["exact"] for r in have], sort_keys=True))
            continue
        for record, (a, b) in enumerate(zip(have, records)):
            problems += _float_differences(f"{path} record {record}", a["float"], b["float"])
    return problems


def golden(case: str) -> dict:
    return json.loads((GOLDEN_DIR / f"{case}.json").read_text())


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The conversion runs in a fresh folder with relative paths: dataset_info.json records no tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", sorted(CASES))
def test_conversion_writes_the_golden_content(case, in_tmp):
    assert compare(output_content(CASES[case]()), golden(case)) == []


def test_a_rerun_writes_the_same_bytes(in_tmp):
    first = file_hashes(convert_video_case())
    os.rename("out", "first")
    assert file_hashes(convert_video_case()) == first


def test_the_comparison_holds_with_the_detectors_float_path_perturbed(in_tmp, monkeypatch):
    default = file_hashes(convert_video_case())
    os.rename("out", "default")
    monkeypatch.setattr(detectors._BlazeNet, "xnnpack", False)
    output = convert_video_case()
    if file_hashes(output) == default:
        pytest.skip("TF Lite's reference kernels round as XNNPACK does on this CPU: nothing was perturbed")
    assert compare(output_content(output), golden("video")) == []


def test_the_comparison_catches_a_moved_crop_and_a_changed_label(in_tmp):
    """The tolerances are not so wide that a real change passes."""
    want = golden("video")
    got = json.loads(json.dumps(want))
    shard = next(iter(got["shards"]))
    crops = got["shards"][shard][0]["float"]["crops"]
    crops[0] = [v + 10 for v in crops[0]]  # A crop 10 grey levels brighter: a different cut or another frame.
    assert any("crop thumbnail" in p for p in compare(got, want))
    got = json.loads(json.dumps(want))
    got["shards"][shard][0]["exact"]["expression"][0] += 1
    assert any("must not move" in p for p in compare(got, want))


def main() -> None:
    """Writes fresh golden content for every case (run from the repository root)."""
    import tempfile

    GOLDEN_DIR.mkdir(exist_ok=True)
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                content = output_content(case())
            finally:
                os.chdir(cwd)
        (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN_DIR / f'{name}.json'}")


if __name__ == "__main__":
    main()
