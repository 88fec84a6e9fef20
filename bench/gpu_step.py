"""Sizing a GPU training job: step time on real input against cached input, per backbone and codec, and the
projection of what one H100 would consume.

**Step time** (on whatever device TensorFlow sees; on a machine without a GPU the CPU, and the figures then say how
the model and the input share its cores, not what a GPU would do). For every backbone of
:data:`trainer.common.choices.BACKBONES` and each codec (a ``--codec jpeg`` and a ``--codec raw`` conversion of
the same real footage: by default ``megamind_native`` at 112², made here as ``bench/input_rate.py`` makes it), the
job's own pieces are built as ``affectstream train`` builds them -- the plan and stage
(:mod:`trainer.training.plan`, :mod:`trainer.training.stages`), the model and optimizer at ``--precision`` and the
one training step (:func:`trainer.training.step.make_train_step`, XLA as ``--jit_compile auto`` decides) -- and the
step is timed on two inputs, in alternating rounds:

1. ``real``: the stage's train stream (:meth:`trainer.training.stages.Stage.train_dataset`: read, mix, parse,
   decode by the codec, batch) through ``distribute_datasets_from_function``;
2. ``cached``: the same stream's first batch, ``take(1).cache().repeat()``: no read, parse or decode (the batch is
   still handed to the device every step, as the real one is).

``real / cached`` is the input-bound share of a step (1.0: the input keeps up). The model is built and its step
traced once per backbone; both codecs feed it (the crops have the same shape).

**Multiply-adds per frame**, measured from each backbone's per-frame CNN (the Keras model at the data's crop size,
batch 1, inference): TensorFlow's profiler (``float_operation`` over the frozen graph; its flops / 2, which also
counts element-wise ops) and a per-layer count of the convolutions and dense layers (``Conv2D``,
``DepthwiseConv2D``, ``Dense``: output positions x kernel x channels). The temporal head adds well under 1 M per
frame (the GRU 100,100,50 on 300 features: ~0.2 M) and is left out.

**Projection** (``--input_rate_json``: ``bench/input_rate.py --json``, or the JSON line ``affectstream input-rate``
prints last, measured at ``--crop_size``): frames per second one H100 SXM would consume (dense bf16
``--peak_tflops`` 989, at ``--utilisation``; a training step is ~3x the forward multiply-adds: forward, and the
gradients of activations and of weights) and the CPU cores that keep up with it for each codec: frames/s over the
measured frames per CPU-second of that codec's train stream (``jpeg w8``, ``raw w8``: with ``--windows_per_clip
8``).

Example::

    python bench/gpu_step.py --input_rate_json /tmp/input_rate.json           # CPU: small steps
    python bench/gpu_step.py --batch_size 64 --seq_len 16 --steps 50 --rounds 3 # on a GPU host
    python bench/gpu_step.py --macs_only --input_rate_json /tmp/input_rate.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_step import _time_steps  # bench/train_step.py: this script's folder is on the path.

from trainer.common.choices import BACKBONES, PRECISIONS

H100_DENSE_BF16_TFLOPS = 989.0  # H100 SXM, dense (no sparsity) bf16 tensor-core peak
TRAIN_OVER_FORWARD = 3.0  # forward + gradient w.r.t. activations + gradient w.r.t. weights
# The train streams of bench/input_rate.py whose frames per CPU-second size the host (column label: its name there).
PROJECTED_STREAMS = {"jpeg": "jpeg", "raw": "raw", "jpeg w8": "jpeg, 8 windows per clip",
                     "raw w8": "raw, 8 windows per clip", "raw 16": "raw, 16-frame records"}


def layer_macs(model) -> int:
    """Multiply-adds of the convolutions and dense layers of ``model`` (nested models too) for one input."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            out = layer.output.shape  # [1?, H, W, C] or [1?, C]
            positions = int(out[1]) * int(out[2]) if len(out) == 4 else 1
            kernel = layer.kernel.shape  # Conv2D: [kh, kw, in/groups, out]; depthwise: [kh, kw, in, mult]; Dense
            per_position = 1
            for n in kernel:
                per_position *= int(n)
            total += positions * per_position
    return total


def profiler_macs(cnn, crop_size: int) -> float:
    """TensorFlow profiler flops / 2 of ``cnn`` on one ``[S, S, 3]`` frame (frozen inference graph)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: cnn(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, crop_size, crop_size, 3], tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=convert_variables_to_constants_v2(function).graph, options=options)
    return profile.total_float_ops / 2


def measure_macs(crop_size: int, cnn_width: float, backbones=BACKBONES) -> dict:
    """Per backbone of ``backbones``: ``{"layers": ..., "profiler": ...}`` multiply-adds per frame of its per-frame
    CNN."""
    from trainer.model.backbones import build_backbone
    from trainer.model.spec import ModelSpec

    macs = {}
    for backbone in backbones:
        cnn = build_backbone(ModelSpec(heads=("expression",), num_expression_classes=8, crop_size=crop_size,
                                       backbone=backbone, cnn_width=cnn_width))
        macs[backbone] = {"layers": layer_macs(cnn), "profiler": profiler_macs(cnn, crop_size)}
    return macs


def input_rates(path: str, crop_size: int) -> dict:
    """``{label: frames per CPU-second}`` of the train streams measured in ``path``: ``bench/input_rate.py --json``
    (its :data:`PROJECTED_STREAMS`) or the JSON line ``affectstream input-rate`` prints last (its one stream).

    Raises:
        ValueError: a file of neither kind, or an input-rate line measured at crops other than ``crop_size`` (the
            multiply-adds are counted at ``crop_size``: cores from another size's rate would mean nothing).
    """
    try:
        measured = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--input_rate_json {path}: {e}") from e
    if isinstance(measured, dict) and isinstance(measured.get("figures"), dict):
        figures = measured["figures"]
        rates = {label: figures[name]["frames_per_cpu_second"] for label, name in PROJECTED_STREAMS.items()
                 if isinstance(figures.get(name), dict) and "frames_per_cpu_second" in figures[name]}
        if not rates:  # (Else the projection was left out without a word.)
            raise ValueError(f"--input_rate_json {path} holds no frames per CPU-second of the streams "
                             f"{', '.join(PROJECTED_STREAMS.values())}")
        return rates
    if isinstance(measured, dict) and {"codec", "windows_per_clip", "frames_per_cpu_second"} <= measured.keys():
        if measured.get("crop_size") != crop_size:
            measured_at = measured.get("crop_size", "(unrecorded)")
            raise ValueError(f"--input_rate_json {path} measured {measured_at}² crops, but the multiply-adds are "
                             f"counted at --crop_size {crop_size}: give --crop_size {measured_at}, or measure data "
                             f"converted at {crop_size}²")
        if measured.get("data_service"):
            raise ValueError(f"--input_rate_json {path} was measured through a tf.data service: its frames per "
                             "CPU-second leave out the reading and decoding on the service's workers; measure "
                             "without --data_service")
        windows = measured["windows_per_clip"]
        label = measured["codec"] if windows == 1 else f"{measured['codec']} w{windows}"
        return {label: measured["frames_per_cpu_second"]}
    raise ValueError(f"--input_rate_json {path} is neither bench/input_rate.py --json output nor the JSON line "
                     "`affectstream input-rate` prints last")


def check_conversions(data: dict, crop_size: int) -> None:
    """Refuses ``{codec: path}`` conversions that are not of that codec or not of ``crop_size`` (both feed one model,
    whose multiply-adds are counted at ``crop_size``).

    Raises:
        ValueError: the reason, naming the options (a DatasetInfoError, a ValueError, for a path without a conversion).
    """
    from tfrecords_schema import read_dataset_info

    infos = {codec: read_dataset_info(path) for codec, path in data.items()}
    for codec, info in infos.items():
        if info.codec != codec:  # its rows would be labelled with the other codec
            raise ValueError(f"--{codec} {data[codec]} holds {info.codec} crops: give it as --{info.codec}")
    if {info.crop_size for info in infos.values()} != {crop_size}:
        raise ValueError(f"--jpeg and --raw must hold crops of --crop_size {crop_size} (both feed one model, whose "
                         "multiply-adds are counted at that size): "
                         + ", ".join(f"--{codec} {info.crop_size}²" for codec, info in infos.items()))


def projection(macs: dict, rates: dict, peak_tflops: float, utilisation: float) -> dict:
    """Per backbone: frames/s one GPU consumes and, per codec, the cores that feed it (``rates``: frames per
    CPU-second of each codec's train stream)."""
    table = {}
    for backbone, counts in macs.items():
        train_macs = TRAIN_OVER_FORWARD * counts["layers"]
        frames = peak_tflops * 1e12 * utilisation / (2 * train_macs)  # a multiply-add is 2 flops
        table[backbone] = {"forward_macs": counts["layers"], "frames_per_second": frames,
                           "cores": {codec: frames / rate for codec, rate in rates.items()}}
    return table


def job_config(data: str, job_dir: str, backbone: str, args):
    """The :class:`trainer.training.config.TrainConfig` of a train job on ``data`` with this bench's options."""
    from trainer.training import config as config_lib

    argv = ["--data", data, "--job_dir", job_dir, "--task", "expr", "--backbone", backbone,
            "--cnn_width", str(args.cnn_width), "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len),
            "--precision", args.precision, "--steps_per_epoch", "1000"]
    return config_lib.config_from_args(config_lib.build_parser().parse_args(argv))


def time_backbone(backbone: str, data: dict, job_dir: str, args) -> dict:
    """``{codec: {"real": s, "cached": s}}``: the best round's seconds per step of each input."""
    import dataclasses

    from tfrecords_schema import SPLIT_TRAIN
    from trainer.training import distribution
    from trainer.training.plan import plan_job
    from trainer.training.stages import make_stage
    from trainer.training.step import build_model_and_optimizer, loss_scaled, make_train_step

    strategy, role = distribution.make_strategy("auto")
    train_step, iterators = None, {}
    for codec, path in data.items():
        # The footage has a train split only: nothing is evaluated here (as in affectstream input-rate).
        config = dataclasses.replace(job_config(path, job_dir, backbone, args), eval_split=SPLIT_TRAIN,
                                     select_split=None)
        plan = plan_job(config, strategy, role)
        stage = make_stage(config, plan)
        if train_step is None:  # one model and one traced step for both codecs: the batches have the same shape
            model, optimizer = build_model_and_optimizer(config, stage.model_spec(), strategy,
                                                         total_steps=plan.total_steps, builder=stage.build)
            train_step = make_train_step(model, optimizer, strategy,
                                         global_frames=config.batch_size * stage.train_seq_len,
                                         loss_scale=loss_scaled(config.precision), jit=plan.jit,
                                         au_positive_weights=plan.au_positive_weights)
            jit = plan.jit

        def real_fn(ctx, stage=stage, config=config):
            return stage.train_dataset(ctx.get_per_replica_batch_size(config.batch_size), config.seed, ctx, None)

        iterators[codec] = {
            "cached": iter(strategy.distribute_datasets_from_function(
                lambda ctx, real_fn=real_fn: real_fn(ctx).take(1).cache().repeat())),
            "real": iter(strategy.distribute_datasets_from_function(real_fn))}
    times = {codec: {"cached": [], "real": []} for codec in data}
    for _ in range(args.rounds):  # alternating, so that a burst of load elsewhere hits every input alike
        for codec, inputs in iterators.items():
            for name, iterator in inputs.items():
                times[codec][name].append(_time_steps(train_step, iterator, args.warmup, args.steps))
    return {"jit": jit, **{codec: {name: min(values) for name, values in t.items()} for codec, t in times.items()}}


def print_projection(table: dict, rates: dict, args) -> None:
    print(f"\nprojection (projected: one H100 SXM, {args.peak_tflops:g} TFLOPS dense bf16 at {args.utilisation:.0%}, "
          f"training = {TRAIN_OVER_FORWARD:g}x the forward multiply-adds; cores = frames/s over the measured frames "
          f"per CPU-second of each codec's train stream: " + ", ".join(f"{c} {r:,.0f}" for c, r in rates.items()) + ")")
    print(f"{'backbone':20s} {'M MACs/frame':>13s} {'frames/s':>11s} " + " ".join(f"{'cores ' + c:>11s}" for c in rates))
    for backbone, row in table.items():
        print(f"{backbone:20s} {row['forward_macs'] / 1e6:13.1f} {row['frames_per_second']:11,.0f} "
              + " ".join(f"{row['cores'][c]:11,.1f}" for c in rates))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jpeg", help="an existing --codec jpeg conversion (default: convert real footage here)")
    parser.add_argument("--raw", help="an existing --codec raw conversion of the same footage")
    parser.add_argument("--video_seconds", type=float, default=10.0, help="length of each of the two tracks made")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--cnn_width", type=float, default=1.0, help="of simple_cnn (1.0: the paper's)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=8)
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternating timing rounds per input (best kept)")
    parser.add_argument("--crop_size", type=int, default=112, help="of the conversion made and of the MAC count")
    parser.add_argument("--macs_only", action="store_true", help="count multiply-adds and project; time nothing")
    parser.add_argument("--input_rate_json",
                        help="bench/input_rate.py --json output, or the JSON line `affectstream input-rate` prints "
                        "last: frames per CPU-second of the train streams")
    parser.add_argument("--peak_tflops", type=float, default=H100_DENSE_BF16_TFLOPS)
    parser.add_argument("--utilisation", type=float, default=0.35, help="of the peak (0.35: 35 %%)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    backbones = [b for b in args.backbones.split(",") if b]
    if unknown := sorted(set(backbones) - set(BACKBONES)):
        parser.error(f"unknown backbone(s) {unknown}; valid: {', '.join(BACKBONES)}")
    if not 0 < args.utilisation <= 1:  # a fraction: 35 would project 35 times the GPU's peak
        parser.error(f"--utilisation is a fraction of the peak in (0, 1], e.g. 0.35 for 35 %, got {args.utilisation:g}")
    if bool(args.jpeg) != bool(args.raw) and not args.macs_only:  # one alone would be ignored for a new conversion
        parser.error("--jpeg and --raw go together (conversions of the same footage); give both or neither")

    rates = None
    if args.input_rate_json:  # read before the minutes of counting and timing: a wrong file is refused at once
        try:
            rates = input_rates(args.input_rate_json, args.crop_size)
        except ValueError as e:
            parser.error(str(e))

    if args.jpeg and args.raw and not args.macs_only:
        try:
            check_conversions({"jpeg": args.jpeg, "raw": args.raw}, args.crop_size)
        except ValueError as e:
            parser.error(str(e))

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU only ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    figures = {"device": device, "macs": measure_macs(args.crop_size, args.cnn_width, backbones)}
    print(f"multiply-adds per frame at {args.crop_size}² (measured: per-layer conv/dense count; TF profiler flops/2):")
    for backbone, counts in figures["macs"].items():
        print(f"  {backbone:20s} {counts['layers'] / 1e6:8.1f} M  ({counts['profiler'] / 1e6:.1f} M)")
    if rates:
        figures["projection"] = projection(figures["macs"], rates, args.peak_tflops, args.utilisation)
        print_projection(figures["projection"], rates, args)

    work = None
    if not args.macs_only:
        data = {"jpeg": args.jpeg, "raw": args.raw}
        if not (args.jpeg and args.raw):
            from input_rate import convert_codecs  # bench/input_rate.py

            work = pathlib.Path(tempfile.mkdtemp(prefix="bench-gpu-step-"))
            data = convert_codecs(args.video_seconds, args.cache_dir, work, crop_size=args.crop_size)
        job_dir = tempfile.mkdtemp(prefix="bench-gpu-step-job-")  # never written: no job runs
        try:
            frames = args.batch_size * args.seq_len
            print(f"\nstep time (measured) on {device}, precision {args.precision}, batch {args.batch_size} x "
                  f"{args.seq_len} frames, best of {args.rounds} round(s) of {args.steps} steps after {args.warmup}")
            print(f"{'backbone':20s} {'codec':5s} {'cached ms':>10s} {'real ms':>10s} {'real/cached':>12s} "
                  f"{'frames/s':>9s}  XLA")
            figures["steps"] = {}
            for backbone in backbones:
                timed = figures["steps"][backbone] = time_backbone(backbone, data, job_dir, args)
                for codec in data:
                    cached, real = timed[codec]["cached"], timed[codec]["real"]
                    print(f"{backbone:20s} {codec:5s} {cached * 1e3:10.1f} {real * 1e3:10.1f} {real / cached:12.3f} "
                          f"{frames / real:9.1f}  {timed['jit']}", flush=True)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
