"""Input-pipeline benchmark: the trainer's tf.data stream against the JPEG-decode limit and a paper-style loader.

On the same shards and the same cores, in one run, it measures frames per second of:

1. ``pipeline``: :func:`trainer.input.pipeline.make_train_dataset` (balanced sampling, random sub-clips, decoded,
   augmented, batched ``[B, T, S, S, 3]`` uint8 batches: the model scales them on the accelerator);
2. ``decode limit``: a parallel ``tf.data`` map of ``tf.io.decode_jpeg`` over the same frames' JPEG bytes,
   pre-extracted into memory (no reading, parsing, augmentation or batching into clips);
3. ``baseline``: the paper's way -- a Python generator reading one crop file at a time from a folder of
   JPEG files (``cropped_aligned/<track>/00001.jpg`` ...) with OpenCV, scaling to [0, 1] and batching
   sequences in Python;

and prints ``pipeline / decode limit`` (aim >= 0.8) and ``pipeline / baseline`` (aim >= 10). The pipeline and
the decode limit are measured in alternating rounds (``--rounds``) and each loader's median round is used, so
load from other processes on a shared machine hits both alike.

By default it writes its own data (larger crops so decoding matters) into a temporary directory::

    .venv/bin/python bench/input.py --clips 200
    .venv/bin/python bench/input.py --data /tmp/converted --seconds 20   # an existing conversion output
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from tfrecords_schema import SPLIT_TRAIN, decode_clip, join_path, read_dataset_info  # noqa: E402
from tfrecords_schema.image_codec import JPEG_DCT_METHOD  # noqa: E402
from trainer.input import pipeline as trainer_input  # noqa: E402


def _frames_per_second(iterator, frames_per_batch: int, seconds: float) -> tuple[float, float]:
    """Iterates ``iterator`` for about ``seconds``.

    Returns frames per wall-clock second and frames per CPU-second of this process (all its threads): the
    second is what the loader costs, and stays meaningful on a machine shared with other work.
    """
    frames, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        frames += frames_per_batch
    return frames / (time.perf_counter() - start), frames / (time.process_time() - cpu_start)


def _train_clips(data_dir: str, info) -> list:
    clips = []
    for shard in info.splits[SPLIT_TRAIN].shards:
        for record in tf.data.TFRecordDataset(join_path(data_dir, shard.path)):
            clips.append(decode_clip(record.numpy()))
    return clips


def _write_crop_folders(clips, root: str) -> list[list[str]]:
    """Writes every frame as ``root/<track>/<frame:05d>.jpg`` (the challenge's cropped_aligned layout)."""
    tracks = []
    for clip in clips:
        folder = os.path.join(root, clip.example_id.replace("/", "_"))
        os.makedirs(folder, exist_ok=True)
        paths = []
        for frame, jpeg in zip(clip.frame_index, clip.images):
            path = os.path.join(folder, f"{int(frame):05d}.jpg")
            with open(path, "wb") as f:
                f.write(jpeg)
            paths.append(path)
        tracks.append(paths)
    return tracks


def _baseline_batches(tracks: list[list[str]], seq_len: int, batch_size: int, seed: int):
    """Paper-style loader: random track and offset, read crops one by one with OpenCV, batch in Python."""
    rng = np.random.default_rng(seed)
    while True:
        batch = []
        for _ in range(batch_size):
            paths = tracks[rng.integers(len(tracks))]
            start = rng.integers(max(len(paths) - seq_len, 0) + 1)
            frames = []
            for path in paths[start:start + seq_len]:
                image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                frames.append(image.astype(np.float32) / 255.0)
            while len(frames) < seq_len:
                frames.append(np.zeros_like(frames[0]))
            batch.append(np.stack(frames))
        yield np.stack(batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=200, help="train clips to generate (without --data)")
    parser.add_argument("--clip_length", type=int, default=32)
    parser.add_argument("--crop_size", type=int, default=112)
    parser.add_argument("--data", default=None, help="an existing conversion output instead of generated data")
    parser.add_argument("--seq_len", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time of each loader")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of pipeline and decode limit")
    parser.add_argument("--sampling", default="balanced")
    parser.add_argument("--texture", type=float, default=0.1,
                        help="noise pattern in generated crops (0: flat colours; 0.1: JPEG sizes of real crops)")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="affectstream-bench-")
    try:
        if args.data:
            data_dir = args.data
            info = read_dataset_info(data_dir)
        else:
            from tests.trainer_data import write_dataset

            data_dir = os.path.join(workdir, "converted")
            classes = {name: 0 for name in ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")}
            weights = np.array([177, 17, 11, 9, 95, 79, 32], np.float64)  # the ABAW imbalance, roughly
            counts = np.maximum(1, np.round(args.clips * weights / weights.sum())).astype(int)
            classes = dict(zip(classes, counts.tolist()))
            t = time.perf_counter()
            info = write_dataset(data_dir, num_clips_per_class=classes, clip_length=args.clip_length,
                                 short_clip_every=0, crop_size=args.crop_size, num_validation_shards=0,
                                 num_shards_per_bucket=2, texture=args.texture)
            print(f"generated {sum(classes.values())} clips x {args.clip_length} frames of "
                  f"{args.crop_size}x{args.crop_size} in {time.perf_counter() - t:.1f}s under {data_dir}")

        clips = _train_clips(data_dir, info)
        jpegs = [jpeg for clip in clips for jpeg in clip.images]
        mean_bytes = np.mean([len(j) for j in jpegs])
        print(f"{len(clips)} train clips, {len(jpegs)} frames, {mean_bytes / 1024:.1f} KiB per JPEG, "
              f"crop {info.crop_size}px, {os.cpu_count()} CPUs visible")
        frames_per_batch = args.batch_size * args.seq_len

        pipeline = trainer_input.make_train_dataset(data_dir, info, task="expr", seq_len=args.seq_len,
                                                    batch_size=args.batch_size, sampling=args.sampling)
        decode = (tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
                  .map(lambda b: tf.io.decode_jpeg(b, channels=3, dct_method=JPEG_DCT_METHOD),
                       num_parallel_calls=tf.data.AUTOTUNE)
                  .batch(frames_per_batch).prefetch(tf.data.AUTOTUNE))
        tracks = _write_crop_folders(clips, os.path.join(workdir, "cropped_aligned"))
        baseline = _baseline_batches(tracks, args.seq_len, args.batch_size, seed=0)
        loaders = [
            ("pipeline", pipeline, 5, f"make_train_dataset: read, parse, sub-clip, decode, augment, "
                                      f"batch {args.batch_size}x{args.seq_len} uint8"),
            ("decode limit", decode, 5, "parallel tf.data decode_jpeg of the same JPEGs held in memory"),
            ("baseline", baseline, 2, "Python generator, one cv2.imread per crop file, batching in NumPy"),
        ]
        iterators = {}
        for name, batches, warmup, _ in loaders:
            iterators[name] = iter(batches)
            for _ in range(warmup):
                next(iterators[name])
        rounds = {name: [] for name in iterators}
        for _ in range(args.rounds):  # alternate, so that the machine's load hits every loader alike
            for name in ("pipeline", "decode limit"):
                rounds[name].append(_frames_per_second(iterators[name], frames_per_batch, args.seconds / args.rounds))
        rounds["baseline"].append(_frames_per_second(iterators["baseline"], frames_per_batch, args.seconds))
        results = {name: tuple(float(np.median([r[k] for r in values])) for k in (0, 1))
                   for name, values in rounds.items()}
        print(f"{'loader':14s} {'frames/s':>10s} {'frames/CPU-s':>13s}   (median of {args.rounds} alternating rounds)")
        for name, _, _, what in loaders:
            print(f"{name:14s} {results[name][0]:10.0f} {results[name][1]:13.0f}   ({what})")

        for basis, k in (("wall clock", 0), ("CPU time", 1)):
            p, d, b = (results[n][k] for n in ("pipeline", "decode limit", "baseline"))
            print(f"[{basis:10s}] pipeline / decode limit = {p / d:.2f} (aim >= 0.8); "
                  f"pipeline / baseline = {p / b:.1f}x (aim >= 10x)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
