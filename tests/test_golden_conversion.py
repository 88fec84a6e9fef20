"""Golden conversion: the bytes of the shards, dead letters and ``dataset_info.json`` are frozen.

Two small conversions, made on the fly from drawn-face videos, cover every step of the job:
decoded video with the face stage (one and two subjects, several tasks and buckets, a track
without media, annotation lines beyond the video end, an adapter that fails on one track) and
provided crops (an unreadable and a missing crop, ``va_grid`` buckets, empty shards completing a
shard set). The SHA-256 of every file they write is compared with :data:`GOLDEN`, recorded from
the code before the restructuring of issue 10, and again for schema version 2 (issue 6: keypoint
lists in every record; the BlazeFace detector, aligned crops and the cut-aware hold as the default
face stage; the ``faces`` block of each split). ``dataset_info.json`` is hashed without its run
timing fields (:data:`tfrecords_schema.RUN_TIMING_FIELDS`), which differ on every run.

The hashes hold for one OpenCV/libjpeg build (the videos and JPEG crops are encoded by it); the
project pins its dependencies, so CI and every developer machine share that build.

When the output format changes ON PURPOSE (a schema version bump, new records, new options
recorded), regenerate the hashes and paste them over :data:`GOLDEN`::

    .venv/bin/python tests/test_golden_conversion.py

and say in the commit why the bytes changed. Never regenerate to silence an unexplained change.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Helpers of tests/ when run as a script.

import abaw_layout as abaw
import video_fixtures as vf

from beam_jobs import convert
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import DATASET_INFO_FILENAME
from tfrecords_schema.dataset_info import RUN_TIMING_FIELDS

COMMON = ["--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"]

GOLDEN = {
    "crops": {
        "dataset_info.json": "c927041409a763f28088f665df858b8890711a1477460be5698352f00c281a6f",
        "errors/dead_letters.jsonl": "9f2d16fec240f5bd54777818355e31e5d7e71de43355b768629e523a12c172ec",
        "train/abaw-train-no_va.tfrecord-00000-of-00002": "74aed73df4b441aba14769c5a982e29a57829bcf4d70dfba93d994b3bd25113f",
        "train/abaw-train-no_va.tfrecord-00001-of-00002": "11f0dda564cc173770d5664cba1d896bae060f232b6ff089547e11f0a4c14257",
        "validation/abaw-validation.tfrecord-00000-of-00002": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "validation/abaw-validation.tfrecord-00001-of-00002": "2fdd4e7f550f6902d101d62d9588451c7543cda256db16b7e7ca1699a9c665bb"
    },
    "video": {
        "dataset_info.json": "731d51b4c9fc5ab9961547f559aaabd31b89b78ce742330f5260207874b3e6a2",
        "errors/dead_letters.jsonl": "e2ecda8c14e172af392730252fb4e59c577df89148fd766e2c6cb3157d34e99e",
        "train/abaw-train-Anger.tfrecord-00000-of-00001": "f928c0d11a29099bbbe44fdd61e2e88e3aa99b8d0ed5bc827f5c691bb2a372ad",
        "train/abaw-train-Fear.tfrecord-00000-of-00001": "24f55dd9bd7fc3394aef672a1832548a6d2a693308d88dc2082f0ba9dfe1979b",
        "train/abaw-train-Happiness.tfrecord-00000-of-00001": "50a02eb822567ae1285d1700ce7e28e62902efa00adf30e5c12fff69e47ff3b5",
        "train/abaw-train-Neutral.tfrecord-00000-of-00001": "70319e806f61ae49b7034e7908497350091ebd930fab4f835420181dfe9d1425",
        "train/abaw-train-Sadness.tfrecord-00000-of-00001": "31d8722820584a1d4f721099c837426324f31480cf18259b3dd21bb5fc39e501",
        "validation/abaw-validation.tfrecord-00000-of-00001": "83311835ecc1794c3af343038530769cd1a114eb11550f1ef87292d19c05adcb"
    }
}


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


def _hashes(output: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file under ``output``; ``dataset_info.json`` without its run timing fields."""
    out = {}
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == DATASET_INFO_FILENAME:
            info = json.loads(data)
            info["run"] = {k: v for k, v in info["run"].items() if k not in RUN_TIMING_FIELDS}
            data = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8")
        out[path.relative_to(output).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def _convert(argv: list[str], source=None) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = convert.run(argv + COMMON, source=source)
    if rc != 0:
        raise RuntimeError(f"conversion failed ({rc}): {err.getvalue()}")


def convert_video_case() -> dict[str, str]:
    """Decoded video: expression buckets, clips of 4, detection on every frame (in the current folder)."""
    _make_video_dataset()
    _convert(["--videos", "videos", "--annotations", "annotations", "--output", "out", "--clip_length", "4",
              "--detect_every", "1", "--max_hold", "0"], source=_BrokenLabelsSource("annotations", "videos"))
    return _hashes(pathlib.Path("out"))


def convert_crops_case() -> dict[str, str]:
    """Provided crops: ``va_grid`` buckets, 2 shards per set (some empty), crop size 48 (in the current folder)."""
    _make_crops_dataset()
    _convert(["--cropped_aligned", "crops", "--annotations", "annotations", "--output", "out", "--clip_length", "4",
              "--bucket_by", "va_grid", "--min_shards", "2", "--crop_size", "48"])
    return _hashes(pathlib.Path("out"))


CASES = {"video": convert_video_case, "crops": convert_crops_case}


def test_decoded_video_conversion_writes_the_golden_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Relative paths: the options recorded in dataset_info.json do not hold tmp_path.
    assert convert_video_case() == GOLDEN["video"]


def test_provided_crops_conversion_writes_the_golden_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert convert_crops_case() == GOLDEN["crops"]


def main() -> None:
    """Prints fresh hashes for :data:`GOLDEN` (run from the repository root)."""
    import tempfile

    golden = {}
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                golden[name] = case()
            finally:
                os.chdir(cwd)
    print(json.dumps(golden, indent=4, sort_keys=True))


if __name__ == "__main__":
    main()
