"""How well training batches mix: distinct videos per draws from one bucket, and the frame class mix.

1. **Videos per batch.** Records inside a shard used to be sorted by ``example_id`` (``split/video/frame``),
   so a bucket stream's shuffle buffer held a few videos at a time; the converter now orders them by a
   hash of the id (:func:`beam_jobs.pipeline.shards.shard_order_key`). For the same records in both orders, this
   measures the mean number of distinct videos among 8 consecutive draws from one bucket of the trainer's
   real stream (:func:`tests.mixing_data.distinct_videos_per_draws`), next to uniform sampling.
2. **Frame class mix.** Under ``balanced`` sampling every bucket (a clip's *majority* class) is drawn
   equally often, but the frames are not balanced; it prints the expression class shares of the training
   frames without and with ``--balance_frames`` (weights measured on seed 0, mix measured on seed 1).

By default it generates an Aff-Wild2-like layout (8 buckets x 20 videos x 100 consecutive clips, 4 shards per
bucket); ``--data`` takes an existing conversion output instead (its shards are rewritten in both orders
into a temporary folder)::

    .venv/bin/python bench/mixing.py
    .venv/bin/python bench/mixing.py --data demo_output/records --seq_len 4 --batch_size 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import tensorflow as tf
from mixing_data import distinct_videos_per_draws, write_layout

from beam_jobs.pipeline.shards import shard_order_key
from tfrecords_schema import DATASET_INFO_FILENAME, SPLIT_TRAIN, decode_clip, join_path, read_dataset_info
from trainer.input import mixing as stream_mix


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
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="affectstream-mixing-")
    try:
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
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
