"""Command-line conventions every AffectStream command shares, below both sides so each entry point can use them.

Every command takes ``--verbose`` (:func:`add_verbose_flag`): TensorFlow's C++ log at TensorFlow's own level instead
of quiet. ``affectstream`` (:mod:`affectstream.cli`) reads it before TensorFlow loads (:func:`quiet_tensorflow`).
TensorFlow code that logs through absl, which ignores that level, runs under :func:`native_log_at_tensorflow_level`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile

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


# Parts of TensorFlow that log through absl (TF Lite's converter, XLA) ignore TF_CPP_MIN_LOG_LEVEL. Their lines start
# with the severity letter (I, W, E, F) and the date; a line before absl is set up says that it goes to stderr.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def _shown(line: str, level: int) -> bool:
    """Whether an absl log line is at or above the TF_CPP_MIN_LOG_LEVEL ``level`` (any other line is shown)."""
    if line.startswith(_ABSL_PREAMBLE):
        return level <= _SEVERITY["W"]
    found = _ABSL_LINE.match(line)
    return found is None or _SEVERITY[found.group(1)] >= level


@contextlib.contextmanager
def native_log_at_tensorflow_level():
    """Holds back the native stderr of the block and passes on what TF_CPP_MIN_LOG_LEVEL lets through.

    For TensorFlow code that logs through absl and so ignores the variable (TF Lite's converter prints its
    "Ignored output_format" warnings and a GPU count on every export). Lines that are not absl's pass through, and
    everything passes through when the block raises. Without the variable (TensorFlow's default, 0) it does nothing.
    """
    try:
        level = int(os.environ.get(TF_LOG_LEVEL_VARIABLE, "0") or 0)
    except ValueError:  # not a level this can compare: everything passes, as without the variable
        level = 0
    if level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if failed or _shown(line, level))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
