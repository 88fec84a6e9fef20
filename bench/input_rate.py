"""Training input rate by codec on real footage: ``affectstream input-rate`` on a JPEG and a raw conversion.

Material: ``megamind_native`` (``bench/videos.py``: the real Megamind trailer at its native 720x528, looped), two
tracks of ``--video_seconds`` each (every frame labelled), converted twice with the default face stage at 112² crops
and clips of 64 frames: ``--codec jpeg`` and ``--codec raw``. Then, in ``--rounds`` alternating rounds, each in a
fresh process (so no other pipeline shares it), ``affectstream input-rate`` with the train defaults (``--batch_size
32 --seq_len 16``, balanced sampling) on:

* ``jpeg``: the JPEG conversion (the stream as it has always been: one random window per clip read);
* ``raw``: the raw conversion, the same stream;
* ``raw, 4 windows per clip``: the raw conversion with ``--windows_per_clip 4`` (repeated sampling: every byte of a
  64-frame record read once for its four 16-frame windows);
* ``jpeg, 4 windows per clip``: the same for JPEG (decoding, not reading, is its cost: 64 decodes per record for 64
  window frames, as with one window per record);
* ``8 windows per clip``: both again with ``--windows_per_clip 8`` (each frame of a record in two windows on
  average; a JPEG record's 64 crops are decoded once for its 128 window frames);
* ``16-frame records``: the same footage converted again by each codec with ``--clip_length 16``, read with the
  train defaults (one window a clip: every byte of a record read serves the window).

It prints each one's median frames per second and frames per CPU-second (this process's CPU, every thread), the
bytes per frame on disk, the encoding CPU per crop at conversion (JPEG q90 against raw, on the same crops) and the
aims: raw >= 4x JPEG frames per CPU-second and >= 20,000. ``--json`` writes the figures.

Example::

    python bench/input_rate.py                          # 2 x 60 s of 720x528, 3 rounds of 15 s each
    python bench/input_rate.py --video_seconds 30 --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import convert as bench_convert  # bench/convert.py and bench/videos.py: this script's folder is on the path.
import numpy as np
import videos as bench_videos

from tfrecords_schema import decode_clip, read_dataset_info

# (name, conversion, windows per clip). A conversion is ``codec`` (clips of 64 frames, the default) or ``codec16``
# (clips of 16 frames: one 16-frame window reads a whole record).
VARIANTS = (("jpeg", "jpeg", 1), ("raw", "raw", 1), ("jpeg, 4 windows per clip", "jpeg", 4),
            ("raw, 4 windows per clip", "raw", 4), ("jpeg, 8 windows per clip", "jpeg", 8),
            ("raw, 8 windows per clip", "raw", 8), ("jpeg, 16-frame records", "jpeg16", 1),
            ("raw, 16-frame records", "raw16", 1))
SHORT_CLIP = 16


def input_rate(data: str, args, windows: int) -> dict:
    """One ``affectstream input-rate`` run in a fresh process; its JSON line."""
    command = [sys.executable, "-m", "trainer.training.input_rate", "--data", data, "--task", "expr",
               "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len), "--seconds", str(args.seconds),
               "--windows_per_clip", str(windows), "--warmup_batches", "20"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"input-rate failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def encode_cost(data: str, frames: int = 600) -> dict:
    """CPU ms per crop of encoding the same crops (BGR, as the face stage cuts them) as JPEG q90 and as raw."""
    import tensorflow as tf

    from beam_jobs.faces.align import encode_crop

    info = read_dataset_info(data)
    crops = []
    for shard in info.splits["train"].shards:
        for record in tf.data.TFRecordDataset(os.path.join(data, shard.path)):
            clip = decode_clip(record.numpy())
            crops += [np.frombuffer(c, np.uint8).reshape(info.crop_size, info.crop_size, 3)[..., ::-1].copy()
                      for c in clip.images]
            if len(crops) >= frames:
                break
        if len(crops) >= frames:
            break
    cost = {}
    for codec in ("jpeg", "raw"):
        started = time.process_time()
        for crop in crops:
            encode_crop(crop, codec, 90)
        cost[codec] = (time.process_time() - started) / len(crops) * 1e3
    return cost


def bytes_per_frame(data: str) -> float:
    info = read_dataset_info(data)
    shards = [s for split in info.splits.values() for s in split.shards]
    return sum(s.num_bytes for s in shards) / max(1, sum(s.num_frames for s in shards))


def convert_codecs(video_seconds: float, cache_dir: str, work: pathlib.Path, material: str = "megamind_native",
                   crop_size: int = 112, short_clips: bool = False) -> dict:
    """Two tracks of ``video_seconds`` of ``material`` converted into ``work/jpeg`` and ``work/raw`` (and, with
    ``short_clips``, ``work/jpeg16`` and ``work/raw16``: clips of :data:`SHORT_CLIP` frames); their paths."""
    video, _ = bench_videos.make_videos(material, video_seconds, video_seconds / 2, cache_dir)
    ann, vdir, _ = bench_convert.build_layout(video, 2, work / "layout")
    data = {}
    for clip in ("", str(SHORT_CLIP)) if short_clips else ("",):
        for codec in ("jpeg", "raw"):
            data[codec + clip] = str(work / (codec + clip))
            extra = ["--codec", codec, "--crop_size", str(crop_size)] + (["--clip_length", clip] if clip else [])
            run = bench_convert.beam(ann, vdir, data[codec + clip], 2, extra)
            print(f"converted {run['frames']} frames ({codec}, clips of {clip or 64}) in {run['seconds']:.0f} s, "
                  f"{bytes_per_frame(data[codec + clip]):.0f} bytes per frame on disk", flush=True)
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video_seconds", type=float, default=60.0, help="length of each of the two tracks")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time of each input-rate run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=16)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for option, value in (("--video_seconds", args.video_seconds), ("--seconds", args.seconds),
                          ("--rounds", args.rounds)):
        if not 0 < value < math.inf:  # (Found only after minutes of converting, by the median of no round.)
            parser.error(f"{option} must be a finite number > 0, got {value:g}")

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-input-rate-"))
    try:
        data = convert_codecs(args.video_seconds, args.cache_dir, work, short_clips=True)
        rounds = {name: [] for name, _, _ in VARIANTS}
        for r in range(args.rounds):  # alternating, so that the machine's load hits every variant alike
            for name, codec, windows in VARIANTS:
                rounds[name].append(input_rate(data[codec], args, windows))
                print(f"round {r + 1} {name}: {rounds[name][-1]['frames_per_cpu_second']:.0f} frames/CPU-s, "
                      f"{rounds[name][-1]['frames_per_second']:.0f} frames/s", flush=True)
        figures = {name: {key: statistics.median(run[key] for run in runs)
                          for key in ("frames_per_second", "frames_per_cpu_second")} for name, runs in rounds.items()}
        encode = encode_cost(data["raw"])
        sizes = {codec: bytes_per_frame(data[codec]) for codec in ("jpeg", "raw")}
        print(f"\nmaterial: {bench_videos.describe('megamind_native')}; 2 tracks x {args.video_seconds:g} s; crops 112², "
              f"clips of 64 (and 16 where named); batch {args.batch_size} x {args.seq_len}; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}; median of {args.rounds} rounds of {args.seconds:g} s")
        print(f"{'stream':28s} {'frames/s':>10s} {'frames/CPU-s':>13s}")
        for name, values in figures.items():
            print(f"{name:28s} {values['frames_per_second']:10.0f} {values['frames_per_cpu_second']:13.0f}")
        jpeg = figures["jpeg"]["frames_per_cpu_second"]
        for windows in ("", ", 4 windows per clip", ", 8 windows per clip", ", 16-frame records"):
            rate = figures["raw" + windows]["frames_per_cpu_second"]
            same = figures["jpeg" + windows]["frames_per_cpu_second"]
            print(f"raw{windows}: {rate / jpeg:.2f}x the JPEG stream's frames per CPU-second, {rate / same:.2f}x JPEG "
                  f"read the same way (aim >= 4x); {rate:.0f} frames per CPU-second (aim >= 20,000)")
        print(f"bytes per frame on disk: jpeg {sizes['jpeg']:.0f}, raw {sizes['raw']:.0f} ({sizes['raw'] / sizes['jpeg']:.1f}x); "
              f"encoding CPU per crop at conversion: jpeg {encode['jpeg']:.3f} ms, raw {encode['raw']:.3f} ms")
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"figures": figures, "rounds": rounds, "bytes": sizes,
                                                           "encode_ms": encode, "load": os.getloadavg()[0]},
                                                          indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
