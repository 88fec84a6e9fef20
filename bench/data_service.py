"""Training input through a tf.data service against the same input in process.

Measures frames per second (and per CPU-second of the whole machine's share used by this process) of
:func:`trainer.input.pipeline.make_train_dataset` read directly, and read from a local tf.data service (a dispatcher
and ``--workers`` workers started in this process with :func:`trainer.input.data_service.start_local`, so their
CPU time is counted too), in alternating rounds (each with a fresh iterator), median of each. On one machine the service adds no CPU: the
figure is its overhead (serialising every uint8 batch and sending it over loopback gRPC). Its gain comes
when the workers run on other machines: then the trainer host only receives batches, and the input scales
with the workers.

By default it writes its own data (112-pixel crops with a JPEG size like real ones)::

    .venv/bin/python bench/data_service.py --clips 200 --seconds 20
    .venv/bin/python bench/data_service.py --data /tmp/converted --workers 4
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfrecords_schema import read_dataset_info  # noqa: E402
from trainer.input import data_service  # noqa: E402
from trainer.input import pipeline as trainer_input  # noqa: E402


def _free_port_run(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def _rate(iterator, frames_per_batch: int, seconds: float) -> tuple[float, float]:
    frames, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        frames += frames_per_batch
    return frames / (time.perf_counter() - start), frames / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="an existing conversion output (default: generated)")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time of each way")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="affectstream-bench-service-")
    local = None
    try:
        if args.data:
            data_dir = args.data
            info = read_dataset_info(data_dir)
        else:
            from tests.trainer_data import write_dataset

            data_dir = os.path.join(workdir, "converted")
            weights = np.array([177, 17, 11, 9, 95, 79, 32], np.float64)  # the ABAW imbalance, roughly
            counts = np.maximum(1, np.round(args.clips * weights / weights.sum())).astype(int).tolist()
            names = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
            info = write_dataset(data_dir, num_clips_per_class=dict(zip(names, counts)), clip_length=32,
                                 short_clip_every=0, crop_size=112, num_validation_shards=0, num_shards_per_bucket=2,
                                 texture=0.1)
        local = data_service.start_local(_free_port_run(args.workers + 1), args.workers)
        kwargs = {"task": "expr", "seq_len": args.seq_len, "batch_size": args.batch_size}
        ways = {
            "in process": lambda: trainer_input.make_train_dataset(data_dir, info, **kwargs),
            f"tf.data service ({args.workers} workers)": lambda: trainer_input.make_train_dataset(
                data_dir, info, data_service=local.address, **kwargs),
        }
        frames_per_batch = args.batch_size * args.seq_len
        rounds = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, make in ways.items():
                # A fresh iterator per round, dropped after it: no way keeps producing in the other's round
                # (prefetch buffers, service workers running ahead), which would skew both.
                iterator = iter(make())
                for _ in range(3):
                    next(iterator)
                rounds[name].append(_rate(iterator, frames_per_batch, args.seconds / args.rounds))
                del iterator
                gc.collect()
        print(f"{info.splits['train'].num_clips} train clips, crop {info.crop_size}px, batches "
              f"{args.batch_size}x{args.seq_len} uint8, {os.cpu_count()} CPUs visible; median of {args.rounds} "
              "alternating rounds")
        print(f"{'input':32s} {'frames/s':>10s} {'frames/CPU-s':>13s}")
        results = {}
        for name, values in rounds.items():
            results[name] = [float(np.median([v[k] for v in values])) for k in (0, 1)]
            print(f"{name:32s} {results[name][0]:10.0f} {results[name][1]:13.0f}")
        (_, a), (_, b) = results.items()
        print(f"service / in process: {b[0] / a[0]:.2f} (wall clock), {b[1] / a[1]:.2f} (CPU time)")
    finally:
        if local is not None:
            local.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
