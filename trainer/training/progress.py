"""How the training loop shows its progress: a bar per epoch on a terminal, a log line every N steps otherwise.

* stdout is a terminal (``sys.stdout.isatty()``): one ``keras.utils.Progbar`` per epoch, after an
  ``epoch E/N`` line: steps done of the epoch, time per step, ETA, and the losses and steps/s of the last
  logged step;
* anything else (a file, a pipe, a notebook's captured output, a batch system's log): the plain line
  ``step 120/600 loss=... (3.10 steps/s)`` on the ``trainer.train`` logger every ``--log_every`` steps,
  which stays readable in a log file where a bar's carriage returns would not.

Either way the losses are read from the device only every ``--log_every`` steps (and at the last step):
reading them forces the host to wait for the step, so the bar moves every step but its losses change at
that pace. Those steps also check the losses are finite (:class:`trainer.common.errors.TrainingError` otherwise)
and write them to TensorBoard.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from trainer.common.errors import TrainingError

log = logging.getLogger("trainer.train")

RATE_NAME = "steps/s"  # the rate's name among the bar's values


class StepProgress:
    """Shows and checks the progress of the steps from ``start_step`` to ``total_steps``.

    Args:
        total_steps: The job's last step (epochs x steps per epoch).
        steps_per_epoch: Steps per epoch (one bar each).
        log_every: Steps between reads of the losses (and plain log lines).
        train_writer: The TensorBoard writer of the training losses.
        start_step: The step the run starts from (a resumed run starts mid-job).
        interactive: Draw bars (True) or log lines (False); None: whether stdout is a terminal.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, log_every: int, train_writer, start_step: int = 0,
                 interactive: bool | None = None):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.log_every = log_every
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._writer = train_writer
        self._bar = None
        self._t0, self._last_step = time.time(), start_step

    def step_done(self, done: int, values: dict) -> None:
        """Records step ``done`` (1-based) with its losses ``values`` (tensors; read only on logged steps).

        Raises:
            TrainingError: a loss is not finite.
        """
        in_epoch = (done - 1) % self.steps_per_epoch + 1
        if self.interactive and self._bar is None:
            self._bar = self._new_bar(done, values)
        shown = None
        if done % self.log_every == 0 or done == self.total_steps:
            shown = self._check_and_log(done, values)
        if self._bar is not None:
            self._bar.update(in_epoch, values=shown)
            if in_epoch == self.steps_per_epoch or done == self.total_steps:
                self._bar = None  # the bar of the next epoch starts with its first step

    def _new_bar(self, done: int, values: dict):
        import keras

        epoch = (done - 1) // self.steps_per_epoch + 1
        print(f"epoch {epoch}/{math.ceil(self.total_steps / self.steps_per_epoch)}", flush=True)
        # Every value as it was last read, never averaged: each name the bar shows is stateful. Not
        # stateless_metrics=[]: Keras 3.12, the last for Python 3.10, has no such argument.
        bar = keras.utils.Progbar(self.steps_per_epoch, unit_name="step", stateful_metrics=[*values, RATE_NAME])
        start_in_epoch = (done - 1) % self.steps_per_epoch
        if start_in_epoch:  # a resumed run starts mid-epoch
            bar.update(start_in_epoch)
        return bar

    def _check_and_log(self, done: int, values: dict) -> list[tuple[str, float]]:
        """Reads the losses, checks them, logs them to TensorBoard (and as a line without a bar)."""
        import tensorflow as tf

        values = {k: float(v) for k, v in values.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingError(f"non-finite loss at step {done}: {values}")
        now = time.time()
        rate = (done - self._last_step) / max(now - self._t0, 1e-9)
        self._t0, self._last_step = now, done
        if not self.interactive:
            log.info("step %d/%d %s (%.2f steps/s)", done, self.total_steps,
                     " ".join(f"{k}={v:.4f}" for k, v in values.items()), rate)
        with self._writer.as_default(step=done):
            for k, v in values.items():
                tf.summary.scalar(f"loss/{k}", v)
        return [*values.items(), (RATE_NAME, rate)]
