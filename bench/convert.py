"""Conversion throughput: the Beam job vs a naive sequential converter vs decode-only, on the same videos.

Example::

    python bench/convert.py                                  # Megamind.avi from the OpenCV docs, 4 tracks
    python bench/convert.py --videos a.mp4 b.avi --copies 1  # your own videos
    python bench/convert.py --synthetic 2 --synthetic_seconds 20   # plus generated 720p videos

Every video becomes an ABAW-layout track labelled on every frame (``--copies`` tracks per
file, so the two DirectRunner workers have tracks to share). Three measurements, in labelled
frames per second:

* ``beam``: ``beam_jobs.convert`` end to end (DirectRunner, multi_processing, ``--workers``
  processes, start-up included) -- the headline; its start-up-free rate (frames / (DecodeAndCrop
  seconds / workers)) is printed for reference only;
* ``naive``: one process decoding every frame, running the Haar cascade on every
  full-resolution frame, cropping and JPEG-encoding, over every frame of one copy of each video
  (``--naive_frames N`` caps it at the first N frames of each video);
* ``decode``: ``--workers`` processes (started before the clock) only decoding every frame of
  every track: the practical limit on these cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time

import cv2

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from affectstream import real_videos  # noqa: E402
from beam_jobs import convert, faces  # noqa: E402
from tfrecords_schema import read_dataset_info  # noqa: E402


def count_frames(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def _decode_count(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return n


def decode_only(paths: list[str], processes: int) -> tuple[int, float]:
    """Decodes every frame of every track in ``processes`` parallel processes: the practical limit on these cores."""
    cv2.setNumThreads(1)  # As in the Beam workers: one decoding thread per process.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(cv2.setNumThreads, [1] * processes, chunksize=1)  # Start the workers before the clock.
        start = time.perf_counter()
        n = sum(pool.map(_decode_count, paths, chunksize=1))
        return n, time.perf_counter() - start


def naive(paths: list[str], max_frames: int, crop_size: int = 112) -> tuple[int, float]:
    """One process: decode every frame, Haar on every full-resolution frame, crop, JPEG (``max_frames`` 0: all)."""
    detector = faces.HaarDetector()
    start, n = time.perf_counter(), 0
    for path in paths:
        cap = cv2.VideoCapture(path)
        for _ in itertools.count() if max_frames <= 0 else range(max_frames):
            ok, frame = cap.read()
            if not ok:
                break
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            box = faces.choose_face(detector.detect(gray), None, gray.shape[1])
            faces.encode_jpeg(faces.square_crop(frame, box, crop_size) if box else faces.blank_crop(crop_size))
            n += 1
        cap.release()
    return n, time.perf_counter() - start


def synthetic_video(path: pathlib.Path, seconds: float, fps: float = 30.0) -> None:
    from affectstream.synthetic_faces import FaceSpec, render_frame, write_video

    n = int(seconds * fps)

    def frames():
        for i in range(n):
            x = 640 + 300 * ((i % 120) / 120.0 - 0.5)
            yield render_frame(720, 1280, [FaceSpec(cx=x, cy=360, size=320, expression=(i // 90) % 8)], noise_seed=i)

    write_video(str(path), frames(), fps)


def build_layout(videos: list[str], copies: int, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
    """Links each video ``copies`` times under ``root/videos`` with a fully labelled expression file."""
    vdir, adir = root / "videos", root / "annotations" / "EXPR_Classification_Challenge" / "Train_Set"
    vdir.mkdir(parents=True)
    adir.mkdir(parents=True)
    linked = []
    for k, src in enumerate(videos):
        n = count_frames(src)
        for c in range(copies):
            name = f"v{k}_{c}{pathlib.Path(src).suffix.lower()}"
            os.symlink(os.path.abspath(src), vdir / name)
            lines = ["Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"]
            lines += [str((i // 50) % 8) for i in range(n)]
            (adir / f"v{k}_{c}.txt").write_text("\n".join(lines) + "\n")
            linked.append(str(vdir / name))
    return root / "annotations", vdir, linked


def beam(ann, vdir, output, workers: int, extra: list[str]) -> tuple[int, float, float]:
    argv = ["--videos", str(vdir), "--annotations", str(ann), "--output", str(output), "--runner", "DirectRunner",
            "--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers),
            "--progress_every", "0", *extra]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run(argv)
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"beam conversion failed with exit status {rc}")
    info = read_dataset_info(str(output))
    frames = sum(s.accounting.written_frames for s in info.splits.values())
    with_face = sum(s.accounting.written_frames_with_face for s in info.splits.values())
    return frames, wall, float(info.run["worker_seconds"]), with_face


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", nargs="*", default=None, help="video files (default: Megamind.avi from opencv-doc)")
    parser.add_argument("--copies", type=int, default=4, help="tracks per video file (default 4)")
    parser.add_argument("--synthetic", type=int, default=0, help="also generate N 720p videos")
    parser.add_argument("--synthetic_seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive_frames", type=int, default=0,
                        help="frames per video for the naive baseline (default 0: all, one copy of each video)")
    parser.add_argument("--beam_args", default="", help="extra convert flags, e.g. '--detect_every 10'")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    videos = list(args.videos) if args.videos else []
    if args.videos is None:
        try:
            videos = real_videos.opencv_sample_videos()
        except real_videos.RealVideoUnavailable as e:
            raise SystemExit(f"no real sample video ({e}); pass --videos")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        for i in range(args.synthetic):
            path = work / f"synthetic{i}.mp4"
            synthetic_video(path, args.synthetic_seconds)
            videos.append(str(path))
        ann, vdir, tracks = build_layout(videos, args.copies, work / "data")
        d_frames, d_sec = decode_only(tracks, args.workers)
        n_frames, n_sec = naive(videos, args.naive_frames)
        b_frames, b_sec, worker_sec, b_faces = beam(ann, vdir, work / "out", args.workers, args.beam_args.split())
        rates = {
            "beam_end_to_end": b_frames / b_sec,
            "beam_steady_state": b_frames / (worker_sec / args.workers),
            "naive": n_frames / n_sec,
            "decode_only": d_frames / d_sec,
        }
        print(f"videos: {len(videos)} files x {args.copies} copies = {len(tracks)} tracks, {d_frames} frames; "
              f"{os.cpu_count()} cores")
        print(f"beam ({args.workers} workers, {args.beam_args or 'default options'}): {b_frames} labelled frames in "
              f"{b_sec:.1f} s = {rates['beam_end_to_end']:.1f} frames/s end to end, start-up included; "
              f"face found on {b_faces}/{b_frames} frames")
        print(f"  (for reference, start-up excluded: {rates['beam_steady_state']:.1f} frames/s from "
              f"{worker_sec:.1f} s of DecodeAndCrop time over {args.workers} workers)")
        print(f"naive sequential (1 process, every frame of one copy of each video): {n_frames} frames in "
              f"{n_sec:.1f} s = {rates['naive']:.1f} frames/s")
        print(f"decode only ({args.workers} processes, every track): {d_frames} frames in {d_sec:.1f} s = "
              f"{rates['decode_only']:.1f} frames/s")
        ratios = {
            "beam_vs_naive": rates["beam_end_to_end"] / rates["naive"],
            "beam_vs_decode_only": rates["beam_end_to_end"] / rates["decode_only"],
            "beam_steady_vs_decode_only": rates["beam_steady_state"] / rates["decode_only"],
        }
        print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) +
              "  (aims: beam_vs_naive >= 5x, beam_vs_decode_only >= 0.5x)")
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"rates": rates, "ratios": ratios, "videos": videos,
                                                           "copies": args.copies, "workers": args.workers,
                                                           "beam_args": args.beam_args}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
