"""How well training batches mix: videos per draw, the frame class mix, and every task's class mix before and after.

1. **Videos per batch.** Records inside a shard used to be sorted by ``example_id`` (``split/video/frame``),
   so a bucket stream's shuffle buffer held a few videos at a time; the converter now orders them by a
   hash of the id (:func:`beam_jobs.pipeline.shards.shard_order_key`). For the same records in both orders, this
   measures the mean number of distinct videos among 8 consecutive draws from one bucket of the trainer's
   real stream (:func:`tests.mixing_data.distinct_videos_per_draws`), next to uniform sampling.
2. **Frame class mix.** Under ``balanced`` sampling every expression class (a clip's *majority* class) is drawn
   equally often, but the frames are not balanced; it prints the expression class shares of the training
   frames without and with ``--balance_frames`` (weights measured on seed 0, mix measured on seed 1).
3. **Every task, before and after.** The same Aff-Wild2-like clips
   (:func:`tests.mixing_data.write_affwild_layout`: the EXPR, VA and AU video sets overlap in part, half the EXPR
   frames Neutral, most VA frames in one quarter, Aff-Wild2's AU rates) converted with expression buckets
   (before: the version-2 default) and composite buckets (after: ``--bucket_by tasks``). For every task and
   sampling mode, on the first ``--task_batches`` batches of the trainer's stream (labels only): the largest
   deviation of the delivered clip class mix from the mode's class targets (a clip's class: its majority over
   the clip; AU: the largest deviation of the delivered per-AU positive rate from the data's), the labelled
   fraction of the delivered frames, and the records read per delivered clip that carries the task's labels.
   ``multi``: per head, the deviation from that head's own single-task target (the multi-task draw mixes
   the tasks' draws on purpose) and the labelled fraction.
4. **Rare AUs** (``--parts 4``, off by default: about a minute per run on a 2-core CPU). A frames-stage job
   per ``--au_positive_weight`` on synthetic clips whose AU rates are Aff-Wild2's rare ones; prints each AU's
   validation F1 (threshold 0.5).

By default it generates the layouts (1: 8 buckets x 20 videos x 100 consecutive clips, 4 shards per bucket);
``--data`` takes an existing conversion output for parts 1-2 instead (its shards are rewritten in both orders
into a temporary folder)::

    .venv/bin/python bench/mixing.py
    .venv/bin/python bench/mixing.py --data demo_output/records --seq_len 4 --batch_size 16 --parts 1,2
    .venv/bin/python bench/mixing.py --parts 3,4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import numpy as np
import tensorflow as tf
from mixing_data import distinct_videos_per_draws, write_affwild_layout, write_layout

from beam_jobs.pipeline.shards import shard_order_key
from tfrecords_schema import (
    DATASET_INFO_FILENAME,
    HEAD_ACTION_UNITS,
    HEAD_OF_TASK,
    SPLIT_TRAIN,
    TASK_OF_HEAD,
    buckets,
    decode_clip,
    join_path,
    read_dataset_info,
)
from trainer.input import mixing as stream_mix
from trainer.input import pipeline as trainer_input
from trainer.input import records, sampling

TASK_MODES = ("natural", "balanced", "sqrt", "downsample")


def reorder_copy(data_dir: str, out_dir: str, order: str) -> None:
    """Copies the train shards of ``data_dir`` to ``out_dir`` with the records of each shard in ``order``."""
    info = read_dataset_info(data_dir)
    os.makedirs(os.path.join(out_dir, SPLIT_TRAIN), exist_ok=True)
    shutil.copy(os.path.join(data_dir, DATASET_INFO_FILENAME), os.path.join(out_dir, DATASET_INFO_FILENAME))
    for shard in info.splits[SPLIT_TRAIN].shards:
        items = [(decode_clip(r.numpy()).example_id, r.numpy())
                 for r in tf.data.TFRecordDataset(join_path(data_dir, shard.path))]
        items.sort(key=(lambda kv: kv[0]) if order == "id" else (lambda kv: shard_order_key(kv[0])))
        with tf.io.TFRecordWriter(os.path.join(out_dir, shard.path)) as writer:
            for _, record in items:
                writer.write(record)


def frame_mix(data_dir: str, seq_len: int, batch_size: int, batches: int) -> dict:
    """Requested, natural and --balance_frames frame class mixes under balanced sampling."""
    info = read_dataset_info(data_dir)
    kwargs = {"task": "expr", "seq_len": seq_len, "batch_size": batch_size, "num_batches": batches,
              "sampling": "balanced", "seed": 1}
    requested = stream_mix.frame_mix_targets(info, "balanced", "expr")
    natural = stream_mix.empirical_frame_mix(data_dir, info, **kwargs)
    weights = stream_mix.balanced_frame_weights(data_dir, info, task="expr", seq_len=seq_len,
                                                sampling="balanced", seed=0)
    balanced = stream_mix.empirical_frame_mix(data_dir, info, class_weights=weights, **kwargs)

    def worst(mix):
        return round(max(abs(mix[c] - requested[c]) for c in requested), 4)

    return {"requested": {c: round(v, 4) for c, v in requested.items()},
            "balanced sampling": {c: round(v, 4) for c, v in natural.items()}, "max deviation": worst(natural),
            "--balance_frames weights": {c: round(float(w), 3) for c, w in zip(info.expression_names, weights)},
            "with --balance_frames": {c: round(v, 4) for c, v in balanced.items()},
            "max deviation with --balance_frames": worst(balanced)}


def clip_classes(data_dir: str) -> dict[bytes, dict[str, str]]:
    """``{example id: {task: class}}`` of a composite-bucket output's train clips (their buckets' classes)."""
    info = read_dataset_info(data_dir)
    out = {}
    for shard in info.splits[SPLIT_TRAIN].shards:
        for record in tf.data.TFRecordDataset(join_path(data_dir, shard.path)):
            clip = decode_clip(record.numpy())
            out[clip.example_id.encode()] = buckets.bucket_classes(info.bucket_by, info.bucket_names[clip.bucket_index],
                                                                   info.tasks)
    return out


def task_mix(data_dir: str, classes_of: dict, targets_info, task: str, mode: str, *, batches: int, batch_size: int,
             seq_len: int, seed: int = 0) -> dict:
    """The trainer's stream for ``task`` / ``mode`` on ``data_dir``, labels only: per trained head its largest
    class-mix deviation (from ``targets_info``'s class targets; AU: positive rates against the data's) and labelled
    fraction, and the reads per delivered clip with a label of the task."""
    info = read_dataset_info(data_dir)
    draw = sampling.bucket_draw(info, mode, task)
    shard_sets = records.train_shard_sets(data_dir, info, draw, None, None)
    heads = trainer_input.heads_for_task(info, task)
    stream = records.explicitly_seeded(lambda worker: trainer_input.train_batches(
        info, shard_sets, heads=heads, seq_len=seq_len, batch_size=batch_size, draw=draw, class_weights=None,
        seed=seed, decode=False, input_context=None, skipped=None, worker=worker))
    clips, useful, frames = 0, 0, 0
    labelled = dict.fromkeys(heads, 0)
    delivered = {h: {} for h in heads}
    au_positives = 0
    for targets, weights, window in stream.take(batches).as_numpy_iterator():
        ok = {h: weights[h] > 0 for h in heads}  # every frame of this layout has a face: weight > 0 = labelled
        clips += len(window["bucket"])
        frames += int(window["num_valid"].sum())
        useful += int(np.any([ok[h].any(axis=1) for h in heads], axis=0).sum())
        for h in heads:
            labelled[h] += int(ok[h].sum())
            if h == HEAD_ACTION_UNITS:
                au_positives += (targets[h][ok[h]] == 1).sum(axis=0)
                continue
            unlabelled = buckets.UNLABELLED_CLASS[TASK_OF_HEAD[h]]
            for example_id in window["example_id"]:
                c = classes_of[example_id][TASK_OF_HEAD[h]]
                if c != unlabelled:
                    delivered[h][c] = delivered[h].get(c, 0) + 1
    out = {"reads_per_clip": round(clips / max(useful, 1), 3)}
    for h in heads:
        if h == HEAD_ACTION_UNITS:
            rates = sampling.au_positive_rates(targets_info)
            got = au_positives / max(labelled[h], 1)
            deviation = max(abs(g - rates[n]) for n, g in zip(info.action_unit_names, got))
        else:
            target = sampling.class_targets(targets_info, mode, TASK_OF_HEAD[h])
            total = sum(delivered[h].values()) or 1
            deviation = max(abs(delivered[h].get(c, 0) / total - t) for c, t in target.items())
        out[h] = {"class_mix_deviation": round(float(deviation), 4),
                  "labelled_fraction": round(labelled[h] / max(frames, 1), 3)}
    return out


def tasks_before_after(workdir: str, *, batches: int, batch_size: int, seq_len: int, videos: int) -> dict:
    """Part 3: every task and sampling mode on expression buckets (before) and composite buckets (after)."""
    roots = {name: os.path.join(workdir, f"affwild-{name}") for name in ("before", "after")}
    write_affwild_layout(roots["before"], bucket_by=buckets.BUCKET_BY_EXPRESSION, videos=videos)
    after = write_affwild_layout(roots["after"], bucket_by=buckets.BUCKET_BY_TASKS, videos=videos)
    classes_of = clip_classes(roots["after"])  # the same clips (ids, labels) in both outputs
    split = after.splits[SPLIT_TRAIN]
    print(f"Aff-Wild2-like layout: {split.num_clips} train clips of {after.clip_length} frames; labelled frames per "
          f"task {split.task_frames}; Neutral {split.class_frames['expr']['Neutral'] / split.task_frames['expr']:.0%}"
          f" of the EXPR frames; {len(split.bucket_clips)} composite buckets (expression buckets: 9)")
    results = {}
    for task in ("expr", "va", "au", "multi"):
        for mode in TASK_MODES:
            for name, root in roots.items():
                results[f"{task} {mode} {name}"] = task_mix(root, classes_of, after, task, mode, batches=batches,
                                                            batch_size=batch_size, seq_len=seq_len)
    return results


def print_task_table(results: dict) -> None:
    print("task  mode        head             deviation before -> after   labelled before -> after   "
          "reads/clip before -> after")
    for key, after in results.items():
        if not key.endswith(" after"):
            continue
        task, mode, _ = key.split()
        before = results[f"{task} {mode} before"]
        for head in [h for h in after if h != "reads_per_clip"]:
            print(f"{task:5s} {mode:11s} {head:16s} {before[head]['class_mix_deviation']:>8.3f} -> "
                  f"{after[head]['class_mix_deviation']:<8.3f}          {before[head]['labelled_fraction']:>5.2f} -> "
                  f"{after[head]['labelled_fraction']:<5.2f}              {before['reads_per_clip']:>5.2f} -> "
                  f"{after['reads_per_clip']:.2f}")


# Part 4: rare AUs: AU2-AU4 at Aff-Wild2's AU15, AU23 and AU24 rates, next to a common AU1.
AU_RATES = (0.30, 0.05, 0.03, 0.026)


def au_training(workdir: str, steps: int, texture: float, seeds: list[int]) -> dict:
    """A frames-stage AU job per --au_positive_weight and seed on clips with rare AUs; per-AU validation F1."""
    from trainer_data import run_train, write_dataset

    data = os.path.join(workdir, "rare-au")
    write_dataset(data, num_clips_per_class={"A": 40, "B": 40}, num_validation_clips_per_class=20, crop_size=32,
                  clip_length=16, tasks=("au",), au_rates=AU_RATES, texture=texture, seed=0)
    out = {}
    for weighting, seed in [(w, s) for s in seeds for w in sampling.AU_POSITIVE_WEIGHTINGS]:
        job = os.path.join(workdir, f"au-{weighting}-{seed}")
        started = time.time()
        rc, log = run_train(["--data", data, "--job_dir", job, "--task", "au", "--stage", "frames", "--epochs", "1",
                             "--steps_per_epoch", str(steps), "--batch_size", "32", "--augment", "false",
                             "--cnn_width", "0.25", "--feature_dim", "32", "--seed", str(seed),
                             "--au_positive_weight", weighting])
        if rc != 0:
            raise RuntimeError(log[-2000:])
        with open(os.path.join(job, "metrics.json")) as f:
            metrics = json.load(f)[HEAD_OF_TASK["au"]]
        out[f"{weighting} seed {seed}"] = {"mean_f1": round(metrics["mean_f1"], 3),
                                           "seconds": round(time.time() - started, 1),
                                           **{au: round(v["f1"], 3) for au, v in metrics["per_au"].items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="an existing conversion output (default: a generated layout)")
    parser.add_argument("--videos", type=int, default=20, help="videos per bucket (generated layout)")
    parser.add_argument("--clips_per_video", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4, help="shards per bucket (generated layout)")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--clips", type=int, default=4096, help="clips of the stream to measure")
    parser.add_argument("--seq_len", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200, help="batches for the frame class mix")
    parser.add_argument("--parts", default="1,2,3", help="parts to run (see above; 4: rare AUs, about a minute "
                                                          "per --au_positive_weight)")
    parser.add_argument("--task_batches", type=int, default=100, help="batches per task and mode (part 3)")
    parser.add_argument("--task_batch_size", type=int, default=32)
    parser.add_argument("--task_videos", type=int, default=200, help="videos of the Aff-Wild2-like layout")
    parser.add_argument("--au_steps", type=int, default=400)
    parser.add_argument("--au_texture", type=float, default=0.0,
                        help="noise on the AU clips' crops (trainer_data texture): harder cues")
    parser.add_argument("--au_seeds", default="1", help="comma-separated training seeds (part 4)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))

    workdir = tempfile.mkdtemp(prefix="affectstream-mixing-")
    try:
        if parts & {"1", "2"}:
            videos_and_frames(args, workdir)
        if "3" in parts:
            started = time.time()
            results = tasks_before_after(workdir, batches=args.task_batches, batch_size=args.task_batch_size,
                                         seq_len=8, videos=args.task_videos)
            print(f"every task, {args.task_batches} batches of {args.task_batch_size} x 8 frames, expression "
                  f"buckets (before) -> composite buckets (after), {time.time() - started:.0f} s:")
            print_task_table(results)
        if "4" in parts:
            print(f"rare AUs: validation F1 per AU after {args.au_steps} frames-stage steps (rates {AU_RATES}, "
                  f"texture {args.au_texture}):")
            seeds = [int(x) for x in args.au_seeds.split(",")]
            print(json.dumps(au_training(workdir, args.au_steps, args.au_texture, seeds), indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def videos_and_frames(args, workdir: str) -> None:
    """Parts 1 and 2: distinct videos per draws in both record orders, and the frame class mix."""
    results = {}
    for order in ("id", "hash"):
        root = os.path.join(workdir, order)
        if args.data:
            reorder_copy(args.data, root, order)
            info = read_dataset_info(root)
        else:
            info = write_layout(root, videos_per_bucket=args.videos, clips_per_video=args.clips_per_video,
                                shards_per_bucket=args.shards, order=order)
        results[order] = distinct_videos_per_draws(root, info, draws=args.draws, num_clips=args.clips)
    split = info.splits[SPLIT_TRAIN]
    print(f"{split.num_clips} train clips in {len(split.shards)} shards, {len(info.bucket_names)} buckets")
    if not args.data:
        v = args.videos
        print(f"uniform sampling from {v} videos: {v * (1 - (1 - 1 / v) ** args.draws):.2f} distinct per "
              f"{args.draws} draws")
    for order, value in results.items():
        print(f"records in {order} order: {value:.2f} distinct videos per {args.draws} draws from one bucket")
    report = frame_mix(args.data or os.path.join(workdir, "hash"), args.seq_len, args.batch_size, args.batches)
    print("frame class mix under balanced sampling (seed 1, "
          f"{args.batches} batches of {args.batch_size} x {args.seq_len}):")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
