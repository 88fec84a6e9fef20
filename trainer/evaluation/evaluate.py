"""Whole-split metrics of an exported model: every frame of the split once, reports and a confusion matrix.

Example::

    python -m trainer.evaluation.evaluate --model /tmp/affectstream_job/export --data /tmp/affectstream_out \\
        --split validation --report_dir /tmp/affectstream_eval

``--model`` is the ``export/`` directory of a training job (``model.keras`` + ``model_info.json``) or the
job directory itself; the model's outputs are checked against its ``model_info.json``, and its face stage against the
data's: a model scored on crops cut another way than ``predict`` serves it is scored with a warning, and
``metrics.json`` says what differs (``face_stage_differs``). Every labelled frame
of the split is scored, frames without a face included (predicted on their stored crop); each head's
metrics also come over the face frames only (``with_face``). Writes ``metrics.json``, ``per_video.csv`` and
the pictures (:mod:`trainer.evaluation.reports`: ``confusion_matrix.png`` / ``.json`` for expressions, ``va_density.png``
for valence/arousal, ``au_f1.png`` for action units) to ``--report_dir`` (default: ``evaluation/<split>/``
next to the export folder, i.e. in the job directory; ``evaluation/<name>/<split>/`` next to an export folder named
otherwise, an imported model's), prints the metrics and where the files went.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
from collections.abc import Sequence

from tfrecords_schema import filesystems, join_path
from tfrecords_schema.cli import add_verbose_flag, command_prog
from trainer.common import errors
from trainer.evaluation.collect import collect_predictions
from trainer.evaluation.coverage import format_coverage, split_coverage
from trainer.evaluation.reports import EVALUATION_DIRNAME
from trainer.model.export import (
    MODEL_FILENAME,
    MODEL_INFO_FILENAME,
    check_model_info_fields,
    load_export_model,
    read_model_info,
    resolve_model_dir,
    serving_window,
)

log = logging.getLogger("trainer.evaluation.evaluate")


class EvaluationError(ValueError):
    """A model or dataset that cannot be evaluated together."""


def default_report_dir(model_dir: str, split: str) -> str:
    """Where ``evaluate`` writes without ``--report_dir``: ``evaluation/<split>`` next to a job's ``export`` folder
    (``JOB/evaluation/<split>``), and ``evaluation/<name>/<split>`` next to an export named otherwise (an imported
    model's ``--output``: two of them in one folder must not write over each other's reports)."""
    from trainer.model.export import EXPORT_DIRNAME

    if "://" in model_dir:
        parent, name = posixpath.split(model_dir.rstrip("/"))
    else:
        parent, name = os.path.split(os.path.abspath(model_dir))
    return join_path(parent, EVALUATION_DIRNAME, *([] if name == EXPORT_DIRNAME else [name]), split)


def check_model_fits_data(model_info: dict, info, data_dir: str) -> list[str]:
    """The model's heads the data labels, which are scored (a multi-task model on a conversion of some of its tasks
    is scored on those).

    Raises:
        EvaluationError: the data labels no head of the model, label names or the crop size differ.
    """
    heads = [head for head in model_info["heads"] if info.label_names.get(head)]
    if not heads:
        raise EvaluationError(f"the model predicts {', '.join(model_info['heads'])} but {data_dir} has no labels for "
                              f"them (it has tasks {info.tasks})")
    for head in heads:
        trained, data = model_info["label_names"].get(head, []), info.label_names[head]
        if list(trained) != list(data):
            raise EvaluationError(f"label names of {head!r} differ: model {trained} vs data {data}")
    if model_info["crop_size"] != info.crop_size:
        raise EvaluationError(f"model crop size {model_info['crop_size']} != data crop size {info.crop_size}: convert "
                              f"with --crop_size {model_info['crop_size']} (or import or train the model at "
                              f"{info.crop_size})")
    return heads


def face_stage_warning(differs: dict, model_info: dict, model_dir: str, data_dir: str) -> str:
    """The warning line of a model scored on crops cut otherwise than the ones ``affectstream predict`` serves it.

    Args:
        differs: :func:`trainer.model.crop_source.face_stage_differences` (not empty).
        model_info: The export's ``model_info.json`` (an imported model is re-imported, a trained one retrained).
        model_dir: The export.
        data_dir: The evaluated conversion.
    """
    from beam_jobs.faces.provided import SOURCE_PROVIDED
    from trainer.model.crop_source import CROPS_SOURCE

    found = "; ".join(f"{name}: model {values['model']} vs data {values['data']}" for name, values in differs.items())
    if CROPS_SOURCE in differs:
        provided = differs[CROPS_SOURCE]["model"] == SOURCE_PROVIDED
        remedy = (f"evaluate on a conversion made {'with' if provided else 'without'} --cropped_aligned, as the "
                  "model's training data was")
    else:
        names = ", ".join(differs)
        give = ("re-import it with the data's (affectstream import-model)" if model_info.get("kind") == "imported"
                else "train it on this conversion, whose face stage its export then records")
        remedy = f"evaluate on a conversion made with the export's {names} (affectstream convert), or {give}"
    return (f"warning: {data_dir} was converted with another face stage than {model_dir} records ({found}): the "
            "figures score crops cut otherwise than the ones `affectstream predict` serves this model, and can be far "
            f"from what predict gives on the same videos; to make them agree, {remedy}")


def check_model_outputs(model, model_info: dict, model_path: str) -> None:
    """Checks the loaded model against ``model_info.json``: input crop size, one output per head, output sizes.

    Raises:
        EvaluationError: naming the head (or the input), the model's size and model_info.json's.
    """
    import numpy as np

    size = int(model_info["crop_size"])
    crop = tuple(model.input_shape[-3:-1])
    if crop != (size, size):
        raise EvaluationError(f"{model_path} takes {crop} crops but {MODEL_INFO_FILENAME} says crop_size {size}")
    outputs = model(np.zeros((1, 1, size, size, 3), np.float32), training=False)
    heads = list(model_info["heads"])
    if sorted(outputs) != sorted(heads):
        raise EvaluationError(f"{model_path} has outputs {sorted(outputs)} but {MODEL_INFO_FILENAME} lists heads "
                              f"{sorted(heads)}")
    for head in heads:
        expected = len(model_info["label_names"].get(head, []))
        got = int(outputs[head].shape[-1])
        if got != expected:
            raise EvaluationError(
                f"{model_path} has {got} {head} outputs but {MODEL_INFO_FILENAME} lists {expected} label names "
                f"({model_info['label_names'].get(head, [])}): the model and its model_info.json do not belong "
                "together")


def evaluate(model_dir: str, data_dir: str, split: str, report_dir: str | None, batch_size: int,
             skip_corrupt: bool = False) -> dict:
    """Loads an exported model, evaluates it on ``split`` of ``data_dir``, writes and prints the reports.

    Writes ``metrics.json``, ``per_video.csv`` and the pictures of the model's heads to ``report_dir``, by
    default :func:`default_report_dir`. Returns the metrics.
    """
    from tfrecords_schema import read_dataset_info, storage
    from tfrecords_schema.disk_space import check_output_place
    from trainer.evaluation import plots, reports
    from trainer.input.pipeline import make_eval_dataset
    from trainer.input.records import SkippedRecords
    from trainer.model import layers  # noqa: F401  (layers: registers the custom layers for load_model)
    from trainer.model.crop_source import face_stage_differences

    model_dir = resolve_model_dir(model_dir)
    model_info = read_model_info(model_dir)
    check_model_info_fields(model_info, model_dir)
    info = read_dataset_info(data_dir)
    if split not in info.splits:
        raise EvaluationError(f"--split {split!r} is not in {data_dir}; splits there: {sorted(info.splits)}")
    heads = check_model_fits_data(model_info, info, data_dir)
    report_dir = report_dir or default_report_dir(model_dir, split)
    # Before the split is scored: a bucket that does not exist, or a local folder under a file, failed only at the end.
    problem = (storage.url_write_problem(report_dir) if storage.is_url(report_dir)
               else check_output_place(report_dir).problem)
    if problem:
        raise EvaluationError(f"the reports cannot be written to {report_dir}: {problem}")
    unscored = [head for head in model_info["heads"] if head not in heads]
    if unscored:
        print(f"note: {data_dir} has no {', '.join(unscored)} labels: the model is scored on {', '.join(heads)}",
              file=sys.stderr, flush=True)
    # Before scoring: predict serves the export through its own face stage, so figures on crops cut another way are
    # not the model's figures on these videos (the audit saw macro-F1 0.105 here for 0.026 from predict).
    differs = face_stage_differences(model_info, info)
    if differs is None:
        print(f"note: {model_dir} records no face stage (an export made before it was): whether {data_dir}'s crops are "
              "cut as the model's were is not checked", file=sys.stderr, flush=True)
    elif differs:
        print(face_stage_warning(differs, model_info, model_dir, data_dir), file=sys.stderr, flush=True)
    model_path = join_path(model_dir, MODEL_FILENAME)
    model = load_export_model(model_path)
    check_model_outputs(model, model_info, model_path)
    skipped = SkippedRecords() if skip_corrupt else None
    ds = make_eval_dataset(data_dir, info, split=split, task=model_info["task"], seq_len=serving_window(model_info),
                           batch_size=batch_size, skipped=skipped)
    va_density = plots.VADensity()
    predictions = collect_predictions(model, ds, heads, info, observers=[va_density])
    coverage = split_coverage(info, split, predictions.scored_frames, predictions.labelled_frames_read,
                              skipped.total if skipped else 0)
    if not predictions.scored_frames:
        # Every head's figures would be 0 by convention (and the score 0.0): a metrics.json of nothing.
        raise EvaluationError(f"no frame of split {split!r} of {data_dir} was scored for {', '.join(heads)}: "
                              f"{format_coverage(coverage, split)}; no report written")
    result = predictions.result()
    result.update({"split": split, "model": model_dir, "best_epoch": model_info.get("best_epoch"),
                   **({"heads_not_scored": unscored} if unscored else {}),
                   # {option: {"model": x, "data": y}}; {}: the crops scored are the ones predict serves.
                   **({} if differs is None else {"face_stage_differs": differs}),
                   "selected_on": model_info.get("selected_on"),
                   "coverage": coverage})
    if skipped is not None:
        result["skipped_corrupt_records"] = skipped.total
    context = reports.ReportContext(info.name, split, reports.model_label(model.name, model_dir),
                                    model_info.get("best_epoch"))
    paths = reports.write_reports(result, predictions.per_video(), info.expression_names,
                                  metrics_path=join_path(report_dir, reports.METRICS_FILENAME),
                                  report_dir=report_dir, context=context, va_density=va_density)
    print(f"{model_dir} on {data_dir} [{split}]:")
    print(reports.format_metrics(result))
    print(f"reports written to {report_dir}:")
    for name, path in sorted(paths.items()):
        print(f"  {name}: {path}")
    sys.stdout.flush()
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m trainer.evaluation.evaluate``."""
    p = argparse.ArgumentParser(prog=command_prog("trainer.evaluation.evaluate"), description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="export/ directory of a training job (or the job directory)")
    p.add_argument("--data", required=True, help="conversion output directory or gs:// / s3:// URL")
    p.add_argument("--split", default="validation", help="the split to score (every labelled frame of it)")
    p.add_argument("--report_dir", default=None,
                   help="where metrics.json, per_video.csv and the pictures (confusion matrix, valence/arousal "
                   "density, per-AU F1) go (default: evaluation/SPLIT next to a job's export folder, "
                   "evaluation/NAME/SPLIT next to an export folder NAME)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--skip_corrupt", action="store_true", help="skip (and count) corrupt records")
    add_verbose_flag(p)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a reported error, 2 on invalid options."""
    errors.log_to_stderr()
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

        return errors.report_failure(e, (EvaluationError, DatasetInfoError, ValueError, OSError))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
