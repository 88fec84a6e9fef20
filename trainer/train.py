"""``python -m trainer.train`` (and ``affectstream train``): the training job's command line.

Parses the options (flags and/or ``--config FILE.json``, :mod:`trainer.training.config`), sets up logging and runs
:func:`trainer.training.job.train`; every expected failure is one line and an exit code. What a job does:
:mod:`trainer.training.job`.

Example (tiny, CPU)::

    python -m trainer.train --data /tmp/affectstream_out --task expr --job_dir /tmp/affectstream_job \\
        --epochs 2 --steps_per_epoch 20 --batch_size 8 --seq_len 8 --sampling balanced \\
        --backbone simple_cnn --cnn_width 0.25 --rnn_units 32,16
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from tfrecords_schema import filesystems
from tfrecords_schema.cli import command_prog, interruption, sigterm_unwinds
from trainer.common import errors
from trainer.common.allocator import recycle_large_buffers
from trainer.common.choices import STRATEGY_MULTI_WORKER
from trainer.common.errors import TrainingError
from trainer.training.config import ConfigError, TrainConfig, parse_train_config
from trainer.training.export_source import check_init_from
from trainer.training.job_files import (  # noqa: F401 (the job's files)
    BEST_DIRNAME,
    LAST_EPOCH_FILENAME,
    LOGS_DIRNAME,
    REPORTS_DIRNAME,
)
from trainer.training.options_record import TRAIN_CONFIG_FILENAME  # noqa: F401 (the job's files)

# Loggers --verbose lowers to DEBUG (TensorFlow's and other libraries' stay as they are).
VERBOSE_LOGGERS = ("trainer", "tfrecords_schema")


# TensorFlow's errors when a peer of a multi-worker job is gone (killed, crashed, preempted, unreachable): the
# collectives and the coordination service answer with these. (Not a cancelled or timed-out call: a storage timeout
# is one too.)
PEER_LOST_ERRORS = ("UnavailableError", "AbortedError")


def _setup_logging(verbose: bool = False) -> None:
    """INFO logging to stderr unless the caller configured logging already; ``--verbose``: the project's DEBUG."""
    errors.log_to_stderr()
    project = logging.getLogger(VERBOSE_LOGGERS[0])
    if project.level == logging.NOTSET and project.getEffectiveLevel() > logging.INFO:
        # A caller (the demo, after Beam and absl set up logging at WARNING) would otherwise hide the progress lines.
        project.setLevel(logging.INFO)
    if verbose:
        for name in VERBOSE_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
    elif logging.getLogger("absl").level == logging.NOTSET:
        # TensorFlow's checkpointing logs through absl at INFO ("Sharding callback duration: 41" at every save).
        logging.getLogger("absl").setLevel(logging.WARNING)


def train(config: TrainConfig) -> dict:
    """Runs (or resumes) a training job: :func:`trainer.training.job.train`."""
    from trainer.training.job import train as train_job

    return train_job(config)


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point: parses ``argv`` (flags and/or ``--config``), trains, returns the exit code.

    0 on success, 1 when training fails with a reported error, 2 for invalid options (an ``--init_from`` export that
    cannot be fine-tuned included) or when files this tool did not write appeared in ``JOB/export`` during the run
    (the new export is kept beside the previous one).
    """
    _setup_logging()
    try:
        config = parse_train_config(argv)
    except SystemExit as e:  # argparse: --help or a usage error (already printed).
        return int(e.code or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _setup_logging(config.verbose)
    recycle_large_buffers()  # the input's large buffers (raw crops) reused, not mapped and zeroed afresh
    try:
        filesystems.register_filesystems(config.data, config.job_dir)
        check_init_from(config.init_from)  # before the job directory is touched
        # SIGTERM (a preempted VM, an evicted pod) unwinds as Ctrl-C does: the steps since the last checkpoint are
        # saved and the lock released (trainer.training.job); it killed the job at once, losing them.
        with sigterm_unwinds():
            train(config)
        return 0
    except KeyboardInterrupt:  # The steps reached were saved and the lock released as the interrupt unwound.
        how, code = interruption()
        print(f"{command_prog('trainer.train')}: {how}; the same command resumes from its last checkpoint",
              file=sys.stderr)
        return code
    except Exception as e:  # noqa: BLE001 - report every failure as one clear line and an exit code.
        from tfrecords_schema import DatasetInfoError
        from tfrecords_schema.locks import LockError
        from tfrecords_schema.transaction import SwapRefused

        if isinstance(e, (SwapRefused, ConfigError)):
            # Files appeared in JOB/export (both exports kept, named in the message), or options that do not fit
            # their files (an --init_from export that cannot be fine-tuned).
            print(f"error: {e}", file=sys.stderr)
            return 2

        code = errors.report_failure(
            e, (ConfigError, DatasetInfoError, LockError, TrainingError, ValueError, OSError, ImportError))
        if config.strategy == STRATEGY_MULTI_WORKER and type(e).__name__ in PEER_LOST_ERRORS:
            # TensorFlow's words ("Collective ops is aborted by ... heartbeat timeout", an op traceback) do not say
            # what happened to the job or what to do.
            print("error: a worker of this multi-worker job stopped or cannot be reached, so every worker stops; "
                  "start every worker again with the same command: the job resumes from its last checkpoint",
                  file=sys.stderr)
        return code


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
