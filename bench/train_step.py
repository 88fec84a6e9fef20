"""Training-step benchmark: step time with the real input pipeline over step time on one cached batch.

Both runs use the trainer's own training step (:func:`trainer.training.step.make_train_step`, the same
``strategy.run`` path as ``python -m trainer.train``) and the same model; only the input differs:

1. ``real``: :func:`trainer.input.pipeline.make_train_dataset` through ``distribute_datasets_from_function``
   (read, shuffle, mix buckets, parse, pick frames, decode JPEG, augment, batch, prefetch);
2. ``cached``: the same dataset's first batch, ``.take(1).cache().repeat()`` -- no input work at all.

``real / cached`` is the input-bound share of a step (aim <= 1.05: the input pipeline keeps up with the
model). On a CPU-only machine the input pipeline and the model share the same cores, so the ratio
there measures contention as much as input speed; the figure that matters is on a GPU.

By default it writes its own data (crops of ``--crop_size``) into a temporary directory::

    .venv/bin/python bench/train_step.py --clips 64 --steps 30
    .venv/bin/python bench/train_step.py --data /tmp/converted --task expr --batch_size 32 --seq_len 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfrecords_schema import read_dataset_info
from trainer.input.pipeline import heads_for_task, make_train_dataset
from trainer.training import distribution
from trainer.training.config import TrainConfig
from trainer.training.plan import model_spec_for
from trainer.training.step import build_model_and_optimizer, loss_scaled, make_train_step


def _time_steps(train_step, iterator, warmup: int, steps: int) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` (tracing, pipeline fill)."""
    for _ in range(warmup):
        train_step(iterator)["loss"].numpy()
    start = time.perf_counter()
    for _ in range(steps):
        values = train_step(iterator)
    values["loss"].numpy()  # wait for the last step
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="an existing conversion output (default: generate one in a temp dir)")
    p.add_argument("--clips", type=int, default=64, help="train clips per class when generating data")
    p.add_argument("--crop_size", type=int, default=64)
    p.add_argument("--task", default="expr")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=8)
    p.add_argument("--backbone", default="simple_cnn")
    p.add_argument("--cnn_width", type=float, default=0.5)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--precision", default="float32", help="float32, mixed_float16 or mixed_bfloat16")
    p.add_argument("--jit_compile", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per input (best kept)")
    args = p.parse_args(argv)

    strategy, _ = distribution.make_strategy(args.strategy)
    tmp = None
    data = args.data
    if data is None:
        from tests.trainer_data import write_dataset

        tmp = tempfile.mkdtemp(prefix="affectstream_bench_")
        data = os.path.join(tmp, "data")
        names = ["Neutral", "Happiness", "Sadness", "Fear"]
        write_dataset(data, num_clips_per_class={n: args.clips for n in names}, num_validation_clips_per_class=1,
                      crop_size=args.crop_size, clip_length=16, num_shards_per_bucket=4)
    try:
        info = read_dataset_info(data)
        config = TrainConfig(data=data, job_dir=tmp or "unused", task=args.task, batch_size=args.batch_size,
                             seq_len=args.seq_len, backbone=args.backbone, cnn_width=args.cnn_width,
                             precision=args.precision, jit_compile=args.jit_compile)
        heads = heads_for_task(info, args.task)
        model, optimizer = build_model_and_optimizer(config, model_spec_for(config, info, heads), strategy)
        jit = args.jit_compile == "on" or (args.jit_compile == "auto" and distribution.has_gpu())
        train_step = make_train_step(model, optimizer, strategy, global_frames=args.batch_size * args.seq_len,
                                     loss_scale=loss_scaled(args.precision), jit=jit)

        def real_fn(ctx):
            return make_train_dataset(data, info, task=args.task, seq_len=args.seq_len,
                                      batch_size=ctx.get_per_replica_batch_size(args.batch_size), input_context=ctx)

        def cached_fn(ctx):
            return real_fn(ctx).take(1).cache().repeat()

        # Alternate the two inputs over several rounds and keep each one's best round, so a burst of
        # load from other processes on shared cores does not decide the ratio.
        cached_iter = iter(strategy.distribute_datasets_from_function(cached_fn))
        real_iter = iter(strategy.distribute_datasets_from_function(real_fn))
        cached_times, real_times = [], []
        for _ in range(args.rounds):
            cached_times.append(_time_steps(train_step, cached_iter, args.warmup, args.steps))
            real_times.append(_time_steps(train_step, real_iter, args.warmup, args.steps))
        cached, real = min(cached_times), min(real_times)
        frames = args.batch_size * args.seq_len
        device = "GPU" if distribution.has_gpu() else f"CPU ({os.cpu_count()} cores)"
        print(f"device: {device}, strategy {type(strategy).__name__}, XLA {jit}, precision "
              f"{args.precision}")
        print(f"model: {args.backbone} (width {args.cnn_width}), batch {args.batch_size} x {args.seq_len} frames of "
              f"{info.crop_size}x{info.crop_size}")
        print(f"cached batch : {cached * 1000:8.1f} ms/step  {frames / cached:8.0f} frames/s  "
              f"(rounds: {', '.join(f'{t * 1000:.1f}' for t in cached_times)} ms)")
        print(f"real pipeline: {real * 1000:8.1f} ms/step  {frames / real:8.0f} frames/s  "
              f"(rounds: {', '.join(f'{t * 1000:.1f}' for t in real_times)} ms)")
        print(f"input-bound share (real / cached): {real / cached:.3f}  (aim <= 1.05)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
