"""The options each run of a training job was given: ``JOB/train_config.json`` (the last run's) and its history.

A resumed run may change options that leave the model and the checkpoint's optimizer state as they are (batch size,
sampling, learning rate, augmentation ...): the fingerprint lets those through (:mod:`trainer.training.fingerprint`).
The steps before the resume were still trained with the earlier values, so a resume that changes any of them says
which, and ``JOB/train_config_history.json`` keeps every run's options with the step it started from; before, the
new ``train_config.json`` replaced the old one and claimed the new values for the whole job.

Example::

    changed = record_run_options(config, start_step=120)   # {"batch_size": (8, 32), ...}
"""

from __future__ import annotations

import json
import logging

from tfrecords_schema import join_path
from tfrecords_schema.atomic import write_json
from trainer.training.config import TrainConfig, to_dict

log = logging.getLogger("trainer.train")

TRAIN_CONFIG_FILENAME = "train_config.json"
HISTORY_FILENAME = "train_config_history.json"
# Options that do not change what the steps learn: where things are, how often the job logs and checkpoints, the run's
# length (extending --epochs is how a job is trained further), and how it is run.
UNCOMPARED = ("data", "job_dir", "epochs", "early_stopping", "allow_data_change", "checkpoint_every",
              "keep_checkpoints", "log_every", "verbose", "data_service", "eval_batch_size", "strategy",
              "jit_compile", "skip_corrupt")


def read_recorded(path: str):
    """The JSON value of a recorded options file (``train_config.json`` or its history); None when it is missing or
    is not JSON (a binary file included). Other read errors (a folder of that name, no permission) are raised."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            return json.loads(f.read())
        except ValueError:
            return None  # (Damaged: replaced below; the history still records this run.)


def record_run_options(config: TrainConfig, start_step: int) -> dict[str, tuple]:
    """Writes this run's options (``train_config.json``, and an entry of the history); on a resume, warns of each
    option that changed since the last run. Returns ``{option: (last run's value, this run's)}``."""
    options = to_dict(config)
    path, history_path = join_path(config.job_dir, TRAIN_CONFIG_FILENAME), join_path(config.job_dir, HISTORY_FILENAME)
    previous = read_recorded(path) if start_step > 0 else None
    changed = {}
    if isinstance(previous, dict):
        changed = {k: (previous[k], v) for k, v in options.items()
                   if k not in UNCOMPARED and k in previous and previous[k] != v}
    if changed:
        listed = ", ".join(f"--{k} {old} -> {new}" for k, (old, new) in changed.items())
        log.warning("resumed at step %d with options changed since the last run: %s; the %d steps before were trained "
                    "with the earlier values (%s keeps each run's options)", start_step, listed, start_step,
                    HISTORY_FILENAME)
    history = read_recorded(history_path) if start_step > 0 else None
    if not isinstance(history, list):
        # A job from before the history: its last run's options open it, from an unknown step.
        history = [{"start_step": None, "options": previous}] if isinstance(previous, dict) else []
    history.append({"start_step": start_step, "options": options})
    write_json(path, options)  # First: it marks the folder as a job's (trainer.training.preflight).
    write_json(history_path, history)
    return changed
