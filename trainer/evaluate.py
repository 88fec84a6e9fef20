"""Whole-split metrics of an exported model: every frame of the split once, reports and a confusion matrix.

Example::

    python -m trainer.evaluate --model /tmp/affectstream_job/export --data /tmp/affectstream_out \\
        --split validation --report_dir /tmp/affectstream_eval

``--model`` is the ``export/`` directory of a training job (``model.keras`` + ``model_info.json``) or the
job directory itself. Writes ``metrics.json``, ``confusion_matrix.png`` and ``confusion_matrix.json``
(expression tasks) to ``--report_dir`` and prints the metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import weakref
from typing import Sequence

from trainer import errors, filesystems

log = logging.getLogger("trainer.evaluate")

_PREDICT_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class EvaluationError(ValueError):
    """A model or dataset that cannot be evaluated together."""


def evaluate_model(model, dataset, heads: Sequence[str], info) -> dict:
    """Runs ``model`` over a finite eval dataset and returns the whole-split metrics.

    Args:
        model: A Keras model mapping ``[B, T, S, S, 3]`` to ``{head: [B, T, ...]}``.
        dataset: ``trainer.input.make_eval_dataset`` output, ``(images, targets, weights)`` batches.
        heads: Heads to score.
        info: The dataset's ``DatasetInfo`` (label names).

    Returns:
        ``trainer.metrics.PredictionAccumulator.result()``: ``{head: metrics, "score": float}``.
    """
    import tensorflow as tf

    from trainer.metrics import PredictionAccumulator

    predict = _PREDICT_FUNCTIONS.get(model)
    if predict is None:
        # One traced function per model, reused over epochs; batch size and time left free.
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        _PREDICT_FUNCTIONS[model] = predict
    acc = PredictionAccumulator(heads, info.expression_names, info.action_unit_names)
    for images, targets, weights in dataset:
        outputs = predict(images)
        acc.update(
            {h: targets[h].numpy() for h in heads},
            {h: outputs[h].numpy() for h in heads},
            {h: weights[h].numpy() for h in heads},
        )
    return acc.result()


def resolve_model_dir(path: str) -> str:
    """The export directory: ``path`` itself, or ``path/export`` for a job directory."""
    import tensorflow as tf

    from tfrecords_schema import join_path

    for candidate in (path, join_path(path, "export")):
        if tf.io.gfile.exists(join_path(candidate, "model_info.json")):
            return candidate
    raise EvaluationError(
        f"--model {path!r} holds no model_info.json: pass the export/ directory of a training job (or the job dir)"
    )


def evaluate(model_dir: str, data_dir: str, split: str, report_dir: str | None, batch_size: int,
             skip_corrupt: bool = False) -> dict:
    """Loads an exported model, evaluates it on ``split`` of ``data_dir``, writes the reports."""
    import keras
    import tensorflow as tf

    from tfrecords_schema import join_path, read_dataset_info
    from trainer import reports
    from trainer import model as _model_layers  # noqa: F401  (registers PerFrame for load_model)
    from trainer.input import make_eval_dataset

    model_dir = resolve_model_dir(model_dir)
    with tf.io.gfile.GFile(join_path(model_dir, "model_info.json"), "r") as f:
        model_info = json.load(f)
    info = read_dataset_info(data_dir)
    if split not in info.splits:
        raise EvaluationError(f"--split {split!r} is not in {data_dir}; splits there: {sorted(info.splits)}")
    heads = list(model_info["heads"])
    for head in heads:
        trained = model_info["label_names"].get(head, [])
        data = info.label_names.get(head, [])
        if not data:
            raise EvaluationError(f"the model predicts {head!r} but {data_dir} has no {head} labels "
                                  f"(it has tasks {info.tasks})")
        if list(trained) != list(data):
            raise EvaluationError(f"label names of {head!r} differ: model {trained} vs data {data}")
    if model_info["crop_size"] != info.crop_size:
        raise EvaluationError(f"model crop size {model_info['crop_size']} != data crop size {info.crop_size}")
    model = keras.saving.load_model(join_path(model_dir, "model.keras"), compile=False)
    ds = make_eval_dataset(data_dir, info, split=split, task=model_info["task"], seq_len=int(model_info["seq_len"]),
                           batch_size=batch_size, skip_corrupt=skip_corrupt)
    result = evaluate_model(model, ds, heads, info)
    result["split"] = split
    print(f"{model_dir} on {data_dir} [{split}]:")
    print(reports.format_metrics(result))
    if report_dir:
        paths = reports.write_reports(result, info.expression_names, report_dir, title=f"{info.name} {split}")
        for name, path in sorted(paths.items()):
            print(f"{name}: {path}")
    sys.stdout.flush()
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m trainer.evaluate``."""
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="export/ directory of a training job (or the job directory)")
    p.add_argument("--data", required=True, help="conversion output directory or gs:// / s3:// URL")
    p.add_argument("--split", default="validation")
    p.add_argument("--report_dir", default=None, help="where metrics.json and the confusion matrix go")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--skip_corrupt", action="store_true", help="skip (and count) corrupt records")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a reported error, 2 on invalid options."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.batch_size < 1:
        print(f"error: --batch_size must be a positive integer, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        filesystems.register_filesystems(args.model, args.data, args.report_dir)
        evaluate(args.model, args.data, args.split, args.report_dir, args.batch_size, args.skip_corrupt)
        return 0
    except Exception as e:  # noqa: BLE001 - one clear line and an exit code for expected failures.
        from tfrecords_schema import DatasetInfoError

        return errors.report_failure(e, (EvaluationError, DatasetInfoError, ValueError, FileNotFoundError))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
