"""Command-line conventions every AffectStream command shares, below both sides so each entry point can use them.

Every command takes ``--verbose`` (:func:`add_verbose_flag`): TensorFlow's C++ log at TensorFlow's own level instead
of quiet. ``affectstream`` (:mod:`affectstream.cli`) reads it before TensorFlow loads (:func:`quiet_tensorflow`).
"""

from __future__ import annotations

import argparse
import os

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
