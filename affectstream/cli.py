"""The `affectstream` command: one entry point for every job.

Each subcommand only forwards its arguments to the module that does the work,
imported on demand so that `affectstream inspect` does not pay for TensorFlow
training code and `affectstream train` does not load Apache Beam. No command module
imports TensorFlow, Keras, Apache Beam or OpenCV before its arguments are parsed, so
`affectstream COMMAND --help` answers at once.

Example:
    affectstream demo --output demo_output
    affectstream convert --dataset abaw --videos V --annotations A --output OUT --runner DirectRunner
    affectstream inspect OUT --verify
    affectstream train --data OUT --task expr --job_dir JOB
    affectstream input-rate --data OUT --task expr --batch_size 64 --seq_len 16 --seconds 30
    affectstream evaluate --model JOB/export --data OUT
    affectstream predict --model JOB/export --videos VIDEOS --output PREDICTIONS
    affectstream score --predictions PREDICTIONS --annotations ANNOTATIONS
    affectstream import-model --keras FER.hdf5 --class_names angry,...,neutral --pixel_range=-1,1 --output EXPORT
"""

from __future__ import annotations

import importlib
import sys

from tfrecords_schema.cli import (
    TF_LOG_LEVEL_VARIABLE,
    VERBOSE_FLAG,
    interruption,
    quiet_tensorflow,
    set_command,
    sigterm_unwinds,
)

# subcommand -> (module with run(argv) -> int, one-line help)
COMMANDS = {
    "convert": ("beam_jobs.convert", "Beam job: labelled videos -> sharded TFRecord clips + dataset_info.json"),
    "inspect": ("beam_jobs.inspect_dataset", "summarise a conversion output; --verify re-counts its shards"),
    "train": ("trainer.train", "train the CNN+RNN on a conversion output (local, gs://, s3://)"),
    "input-rate": ("trainer.training.input_rate", "frames/s and frames per CPU-second of the training stream a job "
                   "with these train options would consume"),
    "data-service": ("trainer.input.data_service", "tf.data service dispatcher + workers for `train --data_service`"),
    "evaluate": ("trainer.evaluation.evaluate", "whole-set metrics and confusion matrix of an exported model"),
    "predict": ("trainer.prediction.predict", "per-frame predictions (CSV, ABAW files) of an exported model on new videos"),
    "score": ("trainer.prediction.score", "score a folder of ABAW prediction files (several predict runs) against "
              "ABAW annotations"),
    "import-model": ("trainer.training.import_model", "a face model trained elsewhere (.keras, .h5, SavedModel) "
                     "-> an export"),
    "demo": ("affectstream.demo", "generate the demo dataset, convert, inspect, train, evaluate, report"),
    "make-demo-data": ("affectstream.demo_data", "write the demo dataset (ABAW layout) to a folder"),
}


def _usage() -> str:
    lines = ["usage: affectstream COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<15} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `affectstream COMMAND --help` for the arguments of one command. Every command takes "
              f"{VERBOSE_FLAG}", "(TensorFlow's C++ log; it is quiet otherwise, unless "
              f"{TF_LOG_LEVEL_VARIABLE} is set)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; returns its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"affectstream: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    quiet_tensorflow(rest)
    module = importlib.import_module(COMMANDS[command][0])
    set_command(f"affectstream {command}")
    try:
        # SIGTERM (`kill PID`, a scheduler) unwinds every command as Ctrl-C does, so the command's clean-up runs: by
        # default it ended the process where it stood, leaving e.g. import-model's staging folder in --output (which
        # the next run then refused) and predict's render folder in the temp folder.
        with sigterm_unwinds():
            code = int(module.run(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: the command's clean-up (staged outputs, locks, temp folders) ran as the interrupt unwound it; the
        # traceback would only bury that.
        how, code = interruption()
        print(f"affectstream {command}: {how}", file=sys.stderr)
    finally:
        set_command(None)
    filesystems = sys.modules.get("tfrecords_schema.filesystems")
    if filesystems is not None:
        # tensorflow-io's S3 file system aborts the interpreter at exit: leave early once it was used.
        code = filesystems.exit_hard_if_needed(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
