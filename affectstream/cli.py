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
    affectstream evaluate --model JOB/export --data OUT
    affectstream predict --model JOB/export --videos VIDEOS --output PREDICTIONS
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module with run(argv) -> int, one-line help)
COMMANDS = {
    "convert": ("beam_jobs.convert", "Beam job: labelled videos -> sharded TFRecord clips + dataset_info.json"),
    "inspect": ("beam_jobs.inspect_dataset", "summarise a conversion output; --verify re-counts its shards"),
    "train": ("trainer.train", "train the CNN+RNN on a conversion output (local, gs://, s3://)"),
    "data-service": ("trainer.data_service", "tf.data service dispatcher + workers for `train --data_service`"),
    "evaluate": ("trainer.evaluate", "whole-set metrics and confusion matrix of an exported model"),
    "predict": ("trainer.predict", "per-frame predictions (CSV, ABAW files) of an exported model on new videos"),
    "demo": ("affectstream.demo", "generate the demo dataset, convert, inspect, train, evaluate, report"),
    "make-demo-data": ("affectstream.demo_data", "write the demo dataset (ABAW layout) to a folder"),
}


# Every command takes this flag: TensorFlow's C++ log (CUDA factory registration, oneDNN, XLA start-up lines)
# at TensorFlow's own level instead of quiet.
VERBOSE_FLAG = "--verbose"
TF_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
TF_LOG_QUIET = "3"  # Hides TensorFlow's C++ INFO, WARNING and ERROR lines; FATAL still prints.
_OFF_WORDS = ("0", "false", "no", "off")  # A --verbose value that turns it off.


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """Adds ``--verbose`` to a command's parser (the flag acts in :func:`quiet_tensorflow`, before TF loads)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help=f"show TensorFlow's C++ log (quiet unless this or {TF_LOG_LEVEL_VARIABLE} is set)")


def verbose_requested(argv: list[str]) -> bool:
    """Whether ``argv`` turns ``--verbose`` on; the last one counts, as in argparse.

    ``--verbose`` alone is on; a value (``affectstream train`` takes one: ``--verbose false``,
    ``--verbose=off``) is off when it is 0, false, no or off.
    """
    verbose = False
    for i, arg in enumerate(argv):
        if arg == VERBOSE_FLAG:
            verbose = (argv[i + 1] if i + 1 < len(argv) else "").strip().lower() not in _OFF_WORDS
        elif arg.startswith(VERBOSE_FLAG + "="):
            verbose = arg.split("=", 1)[1].strip().lower() not in _OFF_WORDS
    return verbose


def quiet_tensorflow(argv: list[str]) -> None:
    """Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it or passed ``--verbose`` (then TF's default, 0).

    Must run before TensorFlow is imported: its C++ log reads the variable once, at load time. Without it a
    machine with no GPU prints a screen of CUDA "Unable to register ... factory" errors on every command.
    """
    if not verbose_requested(argv):
        os.environ.setdefault(TF_LOG_LEVEL_VARIABLE, TF_LOG_QUIET)


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
    code = int(module.run(rest) or 0)
    filesystems = sys.modules.get("trainer.filesystems")
    if filesystems is not None:
        # tensorflow-io's S3 file system aborts the interpreter at exit: leave early once it was used.
        code = filesystems.exit_hard_if_needed(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
