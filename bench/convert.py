"""Conversion throughput: steady-state Beam job vs 2-process decode-only vs a naive converter, per-frame profile.

Example::

    python bench/convert.py --quick                     # ~3 min on 2 cores: 2 x 20 s vs 2 x 60 s of 720p
    python bench/convert.py                             # 2 x 1 min vs 2 x 3 min of 720p (Megamind looped)
    python bench/convert.py --material astronaut        # a real human face moving over a photo, with cuts
    python bench/convert.py --beam_args '--detect_every 10'
    python bench/convert.py --material megamind_native --short_seconds 60 --long_seconds 600 --rounds 3

Material (``bench/videos.py`` says exactly what it is, and the run prints it): 720p MPEG-4 Part 2
video built from footage that ships with our dependencies, cached under ``--cache_dir``. Each run
converts ``--videos_per_run`` tracks (the same video under different names, every frame labelled)
on the DirectRunner with ``--workers`` processes. Figures, in labelled frames per second:

* ``steady state``: two conversions with the same number of videos, short and long; the marginal
  rate ``(frames_long - frames_short) / (seconds_long - seconds_short)`` cancels everything that does
  not grow with video length (worker start-up, TensorFlow import, pipeline set-up, finalisation);
* ``decode only``: ``--workers`` processes (started before the clock) only decoding every frame of
  the same tracks, on both lengths (the marginal rate again): the practical limit on these cores. Measured
  twice: with FFmpeg's default decoding threads (the reference of the aims), and with one decoding thread per
  process, as the conversion's workers decode (cheaper in CPU time: the stricter reference);
* an untimed conversion of the short tracks runs first, so the runner's one-time set-up is not charged to the
  short run;
* ``--rounds N`` repeats the short and long runs and decode-only N times, in turn: one pair of runs is only as
  steady as the short run's start-up (on a shared 2-core machine the ratio moved from 0.43x to 0.50x between three
  runs of the same code). The report is the round with the median CPU-time ratio; every round's ratios are
  printed, with their median, least and greatest;
* ``naive``: one process decoding, running the Haar cascade on every full-resolution frame, cropping
  and JPEG-encoding, over the first ``--naive_frames`` frames of one long track; compared with the
  long run's end-to-end rate (start-up included);
* ``profile``: one process (one OpenCV thread, like a worker) timing each step on the first
  ``--profile_frames`` frames of one long track, in CPU time of the process: decode (FFmpeg's own
  threads included), detection (amortised over the frames, through a timing wrapper around the
  detector; the detection passes per frame are printed too), alignment/crop (the rest of the face
  stage: the crop, the shot-cut test, box tracking, shrinking the image handed to the detector),
  JPEG, and record encoding (``encode_clip`` per clip, amortised). What the steady-state CPU per
  frame holds beyond their sum is the Beam pipeline's own work (spill, shuffle, shard writing,
  accounting, the runner).

Every rate is given twice: wall clock (the aim's measure, meaningful when nothing else runs on the
machine) and CPU time (``workers`` / CPU seconds per frame of every process involved: the wall rate
the same work reaches on idle cores, and still meaningful when other work shares them). The load
average is printed with them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import math
import multiprocessing
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
import videos as bench_videos  # bench/videos.py: this script's folder is on the path.

from beam_jobs import convert
from beam_jobs.faces import options as face_options
from beam_jobs.faces import stage as faces
from beam_jobs.media.video import FrameStatus, VideoReader
from tfrecords_schema import ClipRecord, encode_clip, keys, read_dataset_info

EXPRESSION_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
PROFILE_STEPS = ("decode", "detection", "align_crop", "jpeg", "record")


def count_frames(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def _decode_count(path: str, threads: int | None = None) -> tuple[int, float]:
    """(frames, CPU seconds) of decoding every frame of ``path`` to BGR pixels (``threads``: FFmpeg's, None: default)."""
    started = time.process_time()
    cap = cv2.VideoCapture(path) if threads is None else cv2.VideoCapture(path, cv2.CAP_ANY,
                                                                           [cv2.CAP_PROP_N_THREADS, threads])
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, time.process_time() - started


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_only(paths: list[str], processes: int, threads: int | None = None) -> dict:
    """Decodes every frame of every track in ``processes`` parallel processes: the practical limit on these cores.

    ``threads``: FFmpeg's decoding threads per process (None: OpenCV's default, one per core; the conversion's
    workers decode with 1). The CPU seconds are those of the decoding calls in the workers (start-up left out,
    like the wall time).
    """
    cv2.setNumThreads(1)  # As in the Beam workers: one OpenCV thread per process.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(cv2.setNumThreads, [1] * processes, chunksize=1)  # Start the workers before the clock.
        start = time.perf_counter()
        counted = pool.starmap(_decode_count, [(path, threads) for path in paths], chunksize=1)
        wall = time.perf_counter() - start
    return {"frames": sum(n for n, _ in counted), "seconds": wall, "cpu_seconds": sum(c for _, c in counted)}


def naive(path: str, max_frames: int, crop_size: int = 112) -> dict:
    """One process: decode, Haar on every full-resolution frame, crop, JPEG, for the first ``max_frames``."""
    cv2.setNumThreads(1)
    detector = faces.HaarDetector()
    cap = cv2.VideoCapture(path)
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    while n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        box = faces.choose_face(detector.detect(gray), None, gray.shape[1])
        faces.encode_jpeg(faces.square_crop(frame, box, crop_size) if box else faces.blank_crop(crop_size))
        n += 1
    cap.release()
    return {"frames": n, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


# The profile counts CPU time, not wall time, so that other work on the machine does not inflate it: each step's
# CPU time on the calling thread, and for decode the rest of the process's (FFmpeg decodes ahead in its own
# threads while the calling thread runs the face stage, so their CPU time belongs to decode).
_clock = time.thread_time


class TimedCalls:
    """Wraps an object and adds up the CPU seconds spent in its methods (the detector, for the profile)."""

    def __init__(self, inner):
        self._inner = inner
        self.seconds = 0.0

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            started = _clock()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += _clock() - started

        return timed


def face_stage_config(beam_args: list[str]) -> tuple[faces.FaceStageConfig, int]:
    """The face stage and clip length the conversion uses with these extra flags (the CLI's own defaults).

    Raises:
        ValueError: a face-stage value the conversion refuses (its own check, before any video is made).
    """
    args, _ = convert.build_parser().parse_known_args(["--annotations", "-", "--output", "-", *beam_args])
    face_options.check_face_stage_options(args)
    return faces.FaceStageConfig.from_dict(vars(args)), args.clip_length


def profile(path: str, config: faces.FaceStageConfig, clip_length: int, max_frames: int) -> dict:
    """CPU seconds per frame of each conversion step, in one process with one OpenCV thread."""
    cv2.setNumThreads(1)
    detector = TimedCalls(config.build_detector())
    cropper = faces.FaceCropper.from_config(config, None, detector=detector)
    spent = collections.Counter()
    rows = []
    n = 0
    with VideoReader(path, threads=1) as video:  # One decoding thread, as in the conversion's workers.
        process_started = time.process_time()
        while n < max_frames:
            frame = video.next_frame()  # Its CPU time: what the other steps leave of the process's.
            if frame.status is FrameStatus.END:
                break
            if frame.status is FrameStatus.CORRUPT:
                continue
            n += 1
            t1 = _clock()
            face = cropper.process(frame.image)
            t2 = _clock()
            jpeg = faces.encode_jpeg(face.crop, config.jpeg_quality)
            t3 = _clock()
            spent["face_stage"] += t2 - t1
            spent["jpeg"] += t3 - t2
            rows.append((frame.index, frame.timestamp_us, jpeg, face.bbox, face.keypoints))
            if len(rows) == clip_length:
                spent["record"] += _encode_rows(rows, video.fps)
                rows = []
        if rows:
            spent["record"] += _encode_rows(rows, video.fps)
        process_total = time.process_time() - process_started
    spent["detection"] = detector.seconds
    spent["align_crop"] = spent.pop("face_stage") - detector.seconds
    spent["decode"] = process_total - sum(spent[step] for step in PROFILE_STEPS if step != "decode")
    return {"frames": n, "seconds_per_frame": {step: spent[step] / max(1, n) for step in PROFILE_STEPS},
            "detections_per_frame": cropper.detections_run / max(1, n)}


def _keypoint_rows(points: list) -> np.ndarray | None:
    """``[T, K, 2]`` with NaN rows for frames without keypoints, as the clip builder stores them."""
    sizes = {len(p) for p in points if p is not None}
    if not sizes:
        return None
    out = np.full((len(points), max(sizes), 2), np.nan, np.float32)
    for row, p in enumerate(points):
        if p is not None:
            out[row, :len(p)] = p
    return out


def _encode_rows(rows: list, fps: float) -> float:
    """Seconds to build and serialise one clip record of these frames (placeholder labels)."""
    started = _clock()
    t = len(rows)
    clip = ClipRecord(
        example_id=f"train/bench/{rows[0][0]:06d}", dataset_name="abaw", media_id="bench", data_path="bench.mp4",
        frame_rate=fps, bucket_index=0, images=[r[2] for r in rows], frame_index=[r[0] for r in rows],
        timestamp_us=[r[1] for r in rows],
        bbox=np.array([r[3] if r[3] is not None else (np.nan,) * 4 for r in rows], np.float32),
        keypoints=_keypoint_rows([r[4] for r in rows]),
        expression=np.zeros(t, np.int64), valence_arousal=np.full((t, 2), keys.VA_INVALID, np.float32),
        action_units=np.full((t, 12), keys.AU_INVALID, np.int64))
    encode_clip(clip)
    return _clock() - started


def build_layout(video: str, tracks: int, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
    """``tracks`` ABAW-layout tracks of one video, every frame labelled.

    The tracks are the same file under different names (the job converts each on its own), so the
    disk cache holds one copy.
    """
    vdir, adir = root / "videos", root / "annotations" / "EXPR_Classification_Challenge" / "Train_Set"
    vdir.mkdir(parents=True)
    adir.mkdir(parents=True)
    n = count_frames(video)
    linked = []
    for k in range(tracks):
        os.symlink(os.path.abspath(video), vdir / f"v{k}.mp4")
        lines = [EXPRESSION_HEADER] + [str((i // 50) % 8) for i in range(n)]
        (adir / f"v{k}.txt").write_text("\n".join(lines) + "\n")
        linked.append(str(vdir / f"v{k}.mp4"))
    return root / "annotations", vdir, linked


def beam(ann, vdir, output, workers: int, extra: list[str]) -> dict:
    """One conversion, end to end (worker start-up included)."""
    argv = ["--videos", str(vdir), "--annotations", str(ann), "--output", str(output), "--runner", "DirectRunner",
            "--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers),
            "--progress_every", "0", *extra]
    start, cpu = time.perf_counter(), cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run(argv)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if rc != 0:
        raise SystemExit(f"beam conversion failed with exit status {rc} ({' '.join(argv)})")
    info = read_dataset_info(str(output))
    accounting = [s.accounting for s in info.splits.values()]
    return {"frames": sum(a.written_frames for a in accounting), "seconds": wall, "cpu_seconds": cpu,
            "with_face": sum(a.written_frames_with_face for a in accounting)}


def marginal(short: dict, long: dict, clock: str = "seconds") -> float:
    """Frames per second of the extra frames of the long run: ``(f_long - f_short) / (t_long - t_short)``.

    NaN when the long run did not take longer (runs too short for their start-up's noise): no rate, rather than an
    absurd one.
    """
    extra = long[clock] - short[clock]
    return (long["frames"] - short["frames"]) / extra if extra > 0 else math.nan


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--material", default="megamind", choices=bench_videos.MATERIALS)
    parser.add_argument("--quick", action="store_true", help="20 s vs 60 s videos, fewer naive/profile frames")
    parser.add_argument("--short_seconds", type=float, default=None, help="short run video length (default 60)")
    parser.add_argument("--long_seconds", type=float, default=None, help="long run video length (default 180)")
    parser.add_argument("--videos_per_run", type=int, default=2, help="tracks per conversion (default 2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive_frames", type=int, default=None, help="frames for the naive baseline (default 150)")
    parser.add_argument("--profile_frames", type=int, default=None, help="frames for the profile (default 1500)")
    parser.add_argument("--beam_args", default="", help="extra convert flags, e.g. '--detect_every 10'")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the short and long runs (and decode-only) this many times; the figures are "
                             "the round with the median CPU-time ratio, every round's ratios are printed too")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.short_seconds = args.short_seconds or (20.0 if quick else 60.0)
    args.long_seconds = args.long_seconds or (60.0 if quick else 180.0)
    args.naive_frames = args.naive_frames or (60 if quick else 150)
    args.profile_frames = args.profile_frames or (600 if quick else 1500)
    if args.long_seconds <= args.short_seconds:
        parser.error("--long_seconds must be more than --short_seconds")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def steady_rates(workers: int, runs: dict, decode: dict) -> dict:
    """The steady-state (marginal) rates of one round: beam and decode-only, wall clock and CPU time."""
    return {
        "beam_steady_wall": marginal(runs["short"], runs["long"]),
        "decode_steady_wall": marginal(decode["short"], decode["long"]),
        "beam_steady_cpu": workers * marginal(runs["short"], runs["long"], "cpu_seconds"),
        "decode_steady_cpu": workers * marginal(decode["short"], decode["long"], "cpu_seconds"),
        "decode_1thread_steady_wall": marginal(decode["short_1thread"], decode["long_1thread"]),
        "decode_1thread_steady_cpu": workers * marginal(decode["short_1thread"], decode["long_1thread"], "cpu_seconds"),
    }


def steady_ratios(rates: dict) -> dict:
    """Beam against decode-only, from :func:`steady_rates`."""
    return {
        "steady_vs_decode_only_wall": rates["beam_steady_wall"] / rates["decode_steady_wall"],
        "steady_vs_decode_only_cpu": rates["beam_steady_cpu"] / rates["decode_steady_cpu"],
        "steady_vs_decode_only_1thread_wall": rates["beam_steady_wall"] / rates["decode_1thread_steady_wall"],
        "steady_vs_decode_only_1thread_cpu": rates["beam_steady_cpu"] / rates["decode_1thread_steady_cpu"],
    }


def round_ratios(workers: int, runs: dict, decode: dict) -> dict:
    """One round's ratios (:func:`steady_ratios`) and its beam rate in CPU time."""
    rates = steady_rates(workers, runs, decode)
    return {**steady_ratios(rates), "beam_steady_cpu": rates["beam_steady_cpu"]}


def print_rounds(ratios: list[dict], median: int) -> dict:
    """Prints every round's ratios and their spread; returns them."""
    for i, r in enumerate(ratios):
        print(f"  round {i + 1}{' (reported above)' if i == median else ''}: CPU time "
              f"{r['steady_vs_decode_only_cpu']:.2f}x, wall {r['steady_vs_decode_only_wall']:.2f}x, against 1 "
              f"decoding thread {r['steady_vs_decode_only_1thread_cpu']:.2f}x (beam {r['beam_steady_cpu']:.0f} f/s "
              f"of CPU time)")
    cpu = sorted(r["steady_vs_decode_only_cpu"] for r in ratios if not math.isnan(r["steady_vs_decode_only_cpu"]))
    if not cpu:
        print(f"over {len(ratios)} rounds: no steady-state rate (the long run never took longer: lengthen it)")
        return {"per_round": ratios, "median_round": median + 1}
    print(f"over {len(ratios)} rounds, ratio in CPU time: median {cpu[len(cpu) // 2]:.2f}x, {cpu[0]:.2f}-{cpu[-1]:.2f}x "
          f"(aim >= 0.5x)")
    return {"per_round": ratios, "median_round": median + 1}


def report(args, material: str, runs: dict, decode: dict, naive_run: dict, prof: dict) -> dict:
    """Prints the figures; returns them as a dict.

    Wall-clock rates are the aim's measure; the CPU-time ones (``workers`` / CPU seconds per frame, all
    processes counted) say the same on an idle machine and stay meaningful when other work shares the cores.
    """
    w = args.workers
    rates = {
        **steady_rates(w, runs, decode),
        "beam_end_to_end_long": runs["long"]["frames"] / runs["long"]["seconds"],
        "naive_wall": naive_run["frames"] / naive_run["seconds"],
        "naive_cpu": naive_run["frames"] / naive_run["cpu_seconds"],
    }
    ratios = {**steady_ratios(rates), "end_to_end_vs_naive_wall": rates["beam_end_to_end_long"] / rates["naive_wall"]}
    print(f"material: {material}")
    print(f"{args.videos_per_run} tracks per run, {w} workers, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; convert flags: {args.beam_args or 'defaults'}")
    for name in ("short", "long"):
        r, d = runs[name], decode[name]
        print(f"  {name}: beam {r['frames']} labelled frames in {r['seconds']:.1f} s wall / {r['cpu_seconds']:.1f} "
              f"CPU s (face on {r['with_face']}); decode only {d['frames']} frames in {d['seconds']:.1f} s wall / "
              f"{d['cpu_seconds']:.1f} CPU s")
    print(f"steady state (marginal), wall: beam {rates['beam_steady_wall']:.0f} f/s vs decode only "
          f"{rates['decode_steady_wall']:.0f} f/s -> {ratios['steady_vs_decode_only_wall']:.2f}x (aim >= 0.5x)")
    print(f"steady state (marginal), CPU time on {w} cores: beam {rates['beam_steady_cpu']:.0f} f/s vs decode only "
          f"{rates['decode_steady_cpu']:.0f} f/s -> {ratios['steady_vs_decode_only_cpu']:.2f}x")
    print(f"  against decode only with 1 FFmpeg thread per process (as the conversion's workers decode): wall "
          f"{rates['decode_1thread_steady_wall']:.0f} f/s -> {ratios['steady_vs_decode_only_1thread_wall']:.2f}x, "
          f"CPU time {rates['decode_1thread_steady_cpu']:.0f} f/s -> {ratios['steady_vs_decode_only_1thread_cpu']:.2f}x")
    print(f"naive (1 process, Haar on every full frame): {naive_run['frames']} frames in {naive_run['seconds']:.1f} s"
          f" = {rates['naive_wall']:.1f} f/s -> beam end to end (long run, start-up included) "
          f"{ratios['end_to_end_vs_naive_wall']:.1f}x naive (aim >= 10x)")
    per_frame = prof["seconds_per_frame"]
    total = sum(per_frame.values())
    budget = 1.0 / marginal(runs["short"], runs["long"], "cpu_seconds")
    print(f"per-frame CPU profile (1 process, {prof['frames']} frames), ms: " +
          ", ".join(f"{k} {v * 1e3:.3f}" for k, v in per_frame.items()) + f"; sum {total * 1e3:.3f}; "
          f"{prof['detections_per_frame']:.3f} detection passes per frame")
    print(f"  steady-state CPU per frame, all processes: {budget * 1e3:.3f} ms; beyond the profiled steps "
          f"(Beam spill/shuffle/shards, runner, accounting): {(budget - total) * 1e3:.3f} ms")
    return {"material": material, "workers": w, "videos_per_run": args.videos_per_run, "beam_args": args.beam_args,
            "load_average": os.getloadavg()[0], "runs": runs, "decode_only": decode, "naive": naive_run,
            "rates": rates, "ratios": ratios, "profile": prof, "steady_cpu_ms_per_frame": budget * 1e3}


def main(argv=None) -> int:
    args = parse_args(argv)
    extra = args.beam_args.split()
    config, clip_length = face_stage_config(extra)
    long_video, short_video = bench_videos.make_videos(args.material, args.long_seconds, args.short_seconds,
                                                       args.cache_dir)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        layouts = {name: build_layout(video, args.videos_per_run, work / name)
                   for name, video in (("short", short_video), ("long", long_video))}
        # An untimed conversion first: the runner process imports and sets up once (~3 CPU s), and that must not
        # be charged to the short run, which would make the marginal rate look faster than it is.
        beam(*layouts["short"][:2], work / "out-warmup", args.workers, extra)
        rounds = []
        for r in range(args.rounds):
            runs, decode = {}, {}
            for name, (ann, vdir, tracks) in layouts.items():
                decode[name] = decode_only(tracks, args.workers)
                decode[f"{name}_1thread"] = decode_only(tracks, args.workers, threads=1)
                runs[name] = beam(ann, vdir, work / f"out-{name}-{r}", args.workers, extra)
                shutil.rmtree(work / f"out-{name}-{r}", ignore_errors=True)  # (rounds must not pile up on disk)
            rounds.append((runs, decode))
        ratios = [round_ratios(args.workers, runs, decode) for runs, decode in rounds]
        # (A round without a rate, NaN, sorts last.)
        order = sorted(range(len(rounds)), key=lambda i: (math.isnan(ratios[i]["steady_vs_decode_only_cpu"]),
                                                           ratios[i]["steady_vs_decode_only_cpu"]))
        median = order[len(order) // 2]
        naive_run = naive(long_video, args.naive_frames, config.crop_size)
        prof = profile(long_video, config, clip_length, args.profile_frames)
        figures = report(args, bench_videos.describe(args.material), *rounds[median], naive_run, prof)
        if args.rounds > 1:
            figures["rounds"] = print_rounds(ratios, median)
        figures["face_stage"] = config.to_dict()
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
