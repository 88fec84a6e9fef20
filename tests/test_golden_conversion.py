"""Golden conversion: the bytes of the shards, dead letters and ``dataset_info.json`` are frozen.

Two small conversions, made on the fly from drawn-face videos, cover every step of the job:
decoded video with the face stage (one and two subjects, several tasks and buckets, a track
without media, annotation lines beyond the video end, an adapter that fails on one track) and
provided crops (an unreadable and a missing crop, ``va_grid`` buckets, empty shards completing a
shard set). The SHA-256 of every file they write is compared with :data:`GOLDEN`, recorded from
the code before the restructuring of issue 10. ``dataset_info.json`` is hashed without its run
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
        "dataset_info.json": "8862f77cca2a6f45a3e99445d82c0258814c984c128a7456ffe877dd3f3a203c",
        "errors/dead_letters.jsonl": "9f2d16fec240f5bd54777818355e31e5d7e71de43355b768629e523a12c172ec",
        "train/abaw-train-no_va.tfrecord-00000-of-00002": "0367ef436456e079180be8231e330bc7a5903775b3db5b59785d19259f3d794f",
        "train/abaw-train-no_va.tfrecord-00001-of-00002": "2f2aaf7488a876eea4b49acdd0eebf9ab394cf3b0464f50e87ae3a6f80cff78d",
        "validation/abaw-validation.tfrecord-00000-of-00002": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "validation/abaw-validation.tfrecord-00001-of-00002": "f164ffcea0cd2083f3818dd20243b0420ead4fbd36226733a35afb5a90ba7b18"
    },
    "video": {
        "dataset_info.json": "df588770f1728060b2b4055a6edf1827bd4b1a5909bbcf7f0409a04db7907cb0",
        "errors/dead_letters.jsonl": "e2ecda8c14e172af392730252fb4e59c577df89148fd766e2c6cb3157d34e99e",
        "train/abaw-train-Anger.tfrecord-00000-of-00001": "bf61aaccf7f510becd254fca8e5684f34574c9bb4c8b54f00f311b957c2f0db8",
        "train/abaw-train-Fear.tfrecord-00000-of-00001": "15be821623b55f4400e2c67d3f87b0c1a62f8c0434fd11b84cad3adccbe44459",
        "train/abaw-train-Happiness.tfrecord-00000-of-00001": "b254d939ebb461671765b5a0235e494e9194433b96250cc6d94ec6b26206db37",
        "train/abaw-train-Neutral.tfrecord-00000-of-00001": "94c6874b8a3a0bc35cdb46ba8c82cfcb4687bf581bdc19f30549baf9b0caeb22",
        "train/abaw-train-Sadness.tfrecord-00000-of-00001": "b32945b5c3e3a158ea4c0533bdf57c4e2bb93d1564f0d2cf6afafd82a2d2d5b3",
        "validation/abaw-validation.tfrecord-00000-of-00001": "83adfa71a165344637389244b6175715951a60a04ff550a9307fd949c99e93f6"
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
