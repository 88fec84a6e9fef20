"""Per-frame cost of feature extraction (``train --stage sequence --features_from``), against decoding alone.

The sequence stage runs an export's frozen per-frame network once over every clip of the splits it reads
(:func:`trainer.training.features.extract_features`: the evaluation pipeline's batches, ``512 // clip_length`` clips
a call). This bench times exactly that loop on one split of a conversion, for each ``--model``, next to the same
pipeline read and decoded without a model (the baseline, measured in the same run). The runs are interleaved and
repeated (``--repeats``); the best of each is kept. Per frame: wall-clock milliseconds, CPU milliseconds (every
thread of the process), and the network's own share (total minus the baseline). Writes ``--out`` (JSON)::

    .venv/bin/python bench/features.py --data /tmp/demo_records --model fer=models/fer --model cnn=JOB/export
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dataset(data: str, split: str):
    from tfrecords_schema import TASK_MULTI, read_dataset_info
    from trainer.input.pipeline import make_eval_dataset
    from trainer.training.features import EXTRACT_FRAMES_PER_BATCH

    info = read_dataset_info(data)
    return info, make_eval_dataset(data, info, split=split, task=TASK_MULTI, seq_len=info.clip_length,
                                   batch_size=max(1, EXTRACT_FRAMES_PER_BATCH // info.clip_length))


def _extractor(export: str, crop_size: int):
    import keras
    import tensorflow as tf

    import trainer  # noqa: F401  (registers the custom layers)
    from trainer.model.build import frame_features_model
    from trainer.model.export import MODEL_FILENAME, resolve_model_dir
    from trainer.model.pretrained import export_cnn

    model = keras.saving.load_model(os.path.join(resolve_model_dir(export), MODEL_FILENAME), compile=False)
    extractor = frame_features_model(export_cnn(model), crop_size)
    spec = tf.TensorSpec([None, None, crop_size, crop_size, 3], tf.uint8)
    return tf.function(lambda x: extractor(x, training=False), input_signature=[spec]), int(extractor.output.shape[-1])


def _timed(dataset, run=None) -> dict:
    frames = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for images, _, _, ids in dataset:
        if run is not None:
            run(images).numpy()
        frames += int((ids["frame_index"].numpy() >= 0).sum())  # padding frames carry -1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames": frames, "wall_s": wall, "cpu_s": cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a conversion output")
    p.add_argument("--split", default="validation")
    p.add_argument("--model", action="append", required=True, metavar="NAME=EXPORT",
                   help="an export (a job's or an imported model's) whose per-frame network is timed; repeatable")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="features_bench.json")
    args = p.parse_args(argv)

    info, dataset = _dataset(args.data, args.split)
    models = dict(spec.split("=", 1) for spec in args.model)
    extractors = {name: _extractor(path, info.crop_size) for name, path in models.items()}
    for run, _ in extractors.values():  # trace once, outside the timings
        for images, *_ in dataset.take(1):
            run(images)
    best: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, run in [("decode only", None), *((n, r) for n, (r, _) in extractors.items())]:
            result = _timed(dataset, run)
            if name not in best or result["wall_s"] < best[name]["wall_s"]:
                best[name] = result
        load.append(os.getloadavg()[0])
    base = best["decode only"]
    rows = []
    for name, result in best.items():
        per_frame = {k: 1000 * result[k] / result["frames"] for k in ("wall_s", "cpu_s")}
        row = {"name": name, "frames": result["frames"], "wall_ms_per_frame": round(per_frame["wall_s"], 3),
               "cpu_ms_per_frame": round(per_frame["cpu_s"], 3),
               "network_wall_ms_per_frame": round(per_frame["wall_s"] - 1000 * base["wall_s"] / base["frames"], 3),
               "x_decode_only": round(result["wall_s"] / base["wall_s"], 2),
               "frames_per_s": round(result["frames"] / result["wall_s"], 1)}
        if name in extractors:
            row.update({"export": models[name], "feature_dim": extractors[name][1]})
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"data": args.data, "split": args.split, "crop_size": info.crop_size, "repeats": args.repeats,
               "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in load], "results": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
