"""``predict --workers``: several videos at once against the 2-process decode-only rate of the same files.

Material: ``megamind_native`` (``bench/videos.py``: the real Megamind trailer at its native 720x528, looped, MPEG-4
Part 2), one ``--video_seconds`` video copied under ``--videos`` names (the job predicts each on its own; a
file met twice under two names would be predicted once). The model is light, so that on a CPU the model is not the limit: 32² crops and a ``simple_cnn`` of
width 0.25 with a GRU, trained for a few steps on a conversion of the first 10 seconds of the same footage (what it
predicts does not matter here, only what it costs).

Figures, in frames per second of wall clock (and the CPU seconds of every process involved):

* ``decode only``: 2 processes (started before the clock) decoding every frame of the same files: the practical
  limit on these cores (``bench/convert.py``'s measure);
* ``predict --workers W``: the whole command in a fresh process, from interpreter start to exit (the imports,
  the model load, the workers' start-up and every output file included), for each ``W`` of ``--workers``;
* ``steady state``: the same on as many ``--short_seconds`` videos (default: a third of ``--video_seconds``), and
  the marginal rate ``(frames_long - frames_short) / (seconds_long - seconds_short)``, which cancels the start-up
  (``bench/convert.py``'s measure), against decode-only's marginal rate.

The run checks that every output file is byte for byte the same for each ``W`` and prints the aim: ``--workers 2``
>= 0.3x the decode-only rate (one process measured ~0.17x before ``--workers`` existed).

Example::

    python bench/predict.py                                  # 4 x 60 s, --workers 1 and 2
    python bench/predict.py --videos 2 --video_seconds 20    # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import convert as bench_convert  # bench/convert.py and bench/videos.py: this script's folder is on the path.
import videos as bench_videos

from beam_jobs import convert
from tfrecords_schema.prediction_files import LEDGER_FILENAME, parse_ledger
from trainer import train
from trainer.prediction.ownership import SUMMARY_FILENAME

MATERIAL = "megamind_native"
LIGHT_CONVERT = ("--crop_size", "32", "--clip_length", "32", "--bucket_by", "none")
LIGHT_TRAIN = ("--task", "expr", "--batch_size", "8", "--seq_len", "8", "--cnn_width", "0.25", "--backbone",
               "simple_cnn", "--rnn", "gru", "--epochs", "1", "--steps_per_epoch", "5", "--log_every", "100",
               "--seed", "0", "--eval_split", "train")
AIM = 0.3


def light_model(video: str, root: pathlib.Path) -> str:
    """The export of a light model trained a few steps on ``video``'s frames (see the module docstring)."""
    ann, vdir, _ = bench_convert.build_layout(video, 1, root / "layout")
    records, job = root / "records", root / "job"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run(["--videos", str(vdir), "--annotations", str(ann), "--output", str(records), *LIGHT_CONVERT,
                          "--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"])
        rc = rc or train.run(["--data", str(records), "--job_dir", str(job), *LIGHT_TRAIN])
    if rc != 0:
        raise SystemExit(f"training the light model failed with exit status {rc}")
    return str(job / "export")


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Records the CPU seconds (user + system) of ``root`` and every process below it, read from ``/proc``.

    The workers are children of multiprocessing's fork server, which nobody waits for: their CPU never reaches
    ``RUSAGE_CHILDREN``, so the tree is sampled while it runs (each process's last reading counts).
    """
    tick = os.sysconf("SC_CLK_TCK")
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    below = {root}
    for pid in sorted(parents):  # children have larger pids here, except after pid wrap-around
        if parents[pid][0] in below:
            below.add(pid)
    for pid in below & parents.keys():
        seen[pid] = parents[pid][1]


def predict_run(model: str, videos: list[str], output: pathlib.Path, workers: int, batch_size: int) -> dict:
    """One ``affectstream predict`` in a fresh process; wall seconds from start to exit, and the CPU seconds of its
    process tree (sampled every 0.1 s: a process's last 0.1 s may be missed)."""
    command = [sys.executable, "-m", "trainer.prediction.predict", "--model", model, "--videos", *videos,
               "--output", str(output), "--workers", str(workers), "--batch_size", str(batch_size),
               "--progress_every", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    seen: dict[int, float] = {}
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as process:
        while process.poll() is None:
            _tree_cpu(process.pid, seen)
            time.sleep(0.1)
        wall = time.perf_counter() - start
        err = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"predict --workers {workers} failed ({process.returncode}): {err[-2000:]}")
    summary = json.loads((output / SUMMARY_FILENAME).read_text())
    return {"frames": sum(v["frames"] for v in summary["videos"]), "seconds": wall, "cpu_seconds": sum(seen.values())}


def same_files(a: pathlib.Path, b: pathlib.Path) -> list[str]:
    """Output files that differ between two runs. The run summary is left out (it names its own folder and times),
    and predict's list of the files it wrote is compared by the files it lists (it also holds their times)."""
    names = sorted({p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
                   | {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()})
    differ = [n for n in names if n not in (SUMMARY_FILENAME, LEDGER_FILENAME)
              and not ((a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, shallow=False))]
    listed = [sorted(parse_ledger(ledger.read_text()) or {}) if ledger.is_file() else None
              for ledger in (a / LEDGER_FILENAME, b / LEDGER_FILENAME)]
    return differ + ([LEDGER_FILENAME] if listed[0] != listed[1] else [])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--video_seconds", type=float, default=60.0)
    p.add_argument("--short_seconds", type=float, default=None,
                   help="the same number of videos this long, for the steady-state (marginal) rate (default: a "
                        "third of --video_seconds, whole seconds)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.short_seconds is None:
        args.short_seconds = float(max(1, round(args.video_seconds / 3)))
    if not 0 < args.short_seconds < args.video_seconds:
        p.error("--short_seconds must be more than 0 and less than --video_seconds (the steady state is the rate "
                "between the two lengths)")
    return args


def copies(video: str, count: int, folder: pathlib.Path) -> list[str]:
    """``count`` copies of ``video`` (predict would predict a file it meets twice under two names once)."""
    folder.mkdir()
    for k in range(count):
        shutil.copyfile(video, folder / f"v{k}.mp4")
    return [str(folder / f"v{k}.mp4") for k in range(count)]


def rate(run: dict) -> float:
    return run["frames"] / run["seconds"]


def main(argv=None) -> int:
    args = parse_args(argv)
    video, short_video = bench_videos.make_videos(MATERIAL, args.video_seconds, args.short_seconds, args.cache_dir)
    _, first = bench_videos.make_videos(MATERIAL, args.video_seconds, 10.0, args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = pathlib.Path(tmp)
        print(f"material: {bench_videos.describe(MATERIAL)}; {args.videos} x {args.video_seconds:g} s "
              f"(and {args.videos} x {args.short_seconds:g} s for the steady state)", flush=True)
        model = light_model(first, root)
        paths = {"long": copies(video, args.videos, root / "long"), "short": copies(short_video, args.videos,
                                                                                  root / "short")}
        decode = {length: bench_convert.decode_only(paths[length], 2) for length in paths}
        runs = {length: {w: predict_run(model, paths[length], root / f"out-{length}-{w}", w, args.batch_size)
                         for w in args.workers} for length in paths}
        differing = {w: same_files(root / f"out-long-{args.workers[0]}", root / f"out-long-{w}")
                     for w in args.workers[1:]}
    decode_rate, decode_steady = rate(decode["long"]), bench_convert.marginal(decode["short"], decode["long"])
    figures = {"material": bench_videos.describe(MATERIAL), "videos": args.videos, "video_seconds": args.video_seconds,
               "short_seconds": args.short_seconds, "load_average": os.getloadavg()[0],
               "decode_only_2_processes": decode, "predict": runs, "differing_files": differing}
    print(f"decode only, 2 processes: {decode['long']['frames']} frames in {decode['long']['seconds']:.1f} s = "
          f"{decode_rate:.0f} f/s (CPU {decode['long']['cpu_seconds']:.1f} s); steady state {decode_steady:.0f} f/s")
    for w in args.workers:
        long, short = runs["long"][w], runs["short"][w]
        steady = bench_convert.marginal(short, long)
        figures[f"ratio_workers_{w}"] = rate(long) / decode_rate
        figures[f"steady_ratio_workers_{w}"] = steady / decode_steady
        print(f"predict --workers {w}: {long['frames']} frames in {long['seconds']:.1f} s = {rate(long):.0f} f/s "
              f"wall, start to exit (CPU {long['cpu_seconds']:.1f} s) -> {figures[f'ratio_workers_{w}']:.2f}x "
              f"decode-only" + (f" (aim >= {AIM}x)" if w == 2 else "")
              + f"; steady state {steady:.0f} f/s -> {figures[f'steady_ratio_workers_{w}']:.2f}x")
    for w, names in differing.items():
        print(f"outputs of --workers {w} vs {args.workers[0]}: " + ("identical" if not names else f"differ: {names}"))
    print(f"load average {figures['load_average']:.1f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1))
    return 1 if any(differing.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
