"""The learning-rate schedule and the early-stopping rule of a training job.

* ``--lr_schedule constant`` (default): ``--learning_rate`` at every step; with ``--warmup_steps W`` it
  first rises linearly over ``W`` steps.
* ``--lr_schedule cosine``: linear warm-up over ``--warmup_steps`` to ``--learning_rate``, then cosine decay
  to 0 at the job's last step (``epochs x steps_per_epoch``).

The schedule is a function of the optimizer's own step counter (``optimizer.iterations``), which the
checkpoint holds, so a resumed job continues the curve where it stopped.

Early stopping (``--early_stopping PATIENCE``): the job stops after ``PATIENCE`` evaluated epochs without a
better selection score. The count is ``epochs_done - best_epoch``, both variables of the checkpointed
state (:class:`trainer.training.state.TrainState`), so a job killed and resumed counts on from where it was, and a
job that stopped early and is run again does not train further.
"""

from __future__ import annotations

import math

import keras

from trainer.common.choices import LR_SCHEDULES


@keras.saving.register_keras_serializable(package="affectstream")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``.

    Step ``s`` (0-based, the optimizer's iterations) gets ``peak * (s + 1) / warmup_steps`` during the
    warm-up (so the first step already moves), then ``peak`` (constant) or
    ``peak * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2`` (cosine).

    Args:
        peak: The learning rate after the warm-up (``--learning_rate``).
        total_steps: Steps of the whole job.
        warmup_steps: Warm-up steps (0: none).
        kind: One of :data:`LR_SCHEDULES`.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine"):
        if kind not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {kind!r}; valid values: {', '.join(LR_SCHEDULES)}")
        if peak <= 0 or total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"need peak > 0, total_steps >= 1, warmup_steps >= 0; got {peak}, {total_steps}, "
                             f"{warmup_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.peak, "float32")
        if self.kind == "cosine":
            decay_steps = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
            lr = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps:
            warm = self.peak * ops.minimum((step + 1.0) / float(self.warmup_steps), 1.0)
            lr = ops.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind}


def learning_rate(kind: str, peak: float, total_steps: int, warmup_steps: int = 0):
    """What the optimizer gets: the float ``peak`` for a constant rate without warm-up, else a :class:`WarmupSchedule`.

    A plain float keeps the optimizer's checkpoint layout of jobs written before schedules existed.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; valid values: {', '.join(LR_SCHEDULES)}")
    if kind == "constant" and not warmup_steps:
        return float(peak)
    return WarmupSchedule(peak, total_steps, warmup_steps, kind)


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer uses at its next step (for logs and TensorBoard)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps the real one
    lr = inner.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def epochs_without_improvement(epochs_done: int, best_epoch: int) -> int:
    """Evaluated epochs since the best one (0 right after a new best)."""
    return max(0, int(epochs_done) - int(best_epoch))


def should_stop_early(patience: int, epochs_done: int, best_epoch: int) -> bool:
    """Whether ``--early_stopping patience`` ends the job now (never when ``patience`` is 0)."""
    return patience > 0 and epochs_done > 0 and epochs_without_improvement(epochs_done, best_epoch) >= patience
