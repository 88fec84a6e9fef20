"""What the trainer's entry points share: their logging, and how they report an expected failure (one clear line and
exit status 1)."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr() -> None:
    """INFO logging to stderr with :data:`LOG_FORMAT`, unless the caller (a test, the demo) set logging up already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def tensorflow_errors() -> tuple[type[BaseException], ...]:
    """``(tf.errors.OpError,)`` when this process imported TensorFlow, else ``()``: its errors can only come from a
    process that imported it (``predict`` on TF Lite may never have), and asking must not import it."""
    tf = sys.modules.get("tensorflow")
    return (tf.errors.OpError,) if tf is not None else ()


def report_failure(error: Exception, expected: tuple[type[BaseException], ...]) -> int:
    """Prints ``error: <Type>: <message>`` to stderr and returns 1; re-raises anything not ``expected``.

    TensorFlow's ``OpError`` (corrupt or missing files, bad URLs) always counts as expected.

    Args:
        error: The exception being handled.
        expected: Exception types that are the user's input or environment, not a bug.
    """
    op_error = tensorflow_errors()
    if not isinstance(error, (*expected, *op_error)):
        raise error
    if op_error and isinstance(error, op_error):
        from tfrecords_schema.cli import tidy_tf_message

        message = tidy_tf_message(error.message)
    else:
        message = str(error)
    print(f"error: {type(error).__name__}: {message}", file=sys.stderr)
    return 1


class TrainingError(RuntimeError):
    """A training job that cannot go on (reported with its message, exit code 1)."""
