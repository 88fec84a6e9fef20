"""One training step for every strategy, and the model and optimizer it updates.

:func:`make_train_step` is the job's one step: ``strategy.run`` of a replica step on ``next(iterator)``,
the same path for one device, several GPUs and several workers (Keras 3 ``model.fit`` is avoided: it fails
under MultiWorkerMirroredStrategy on TF 2.17, keras-team/keras#20585). Used by :mod:`trainer.train` and
``bench/train_step.py``.
"""

from __future__ import annotations

from trainer.config import TrainConfig


def build_model_and_optimizer(config: TrainConfig, spec, strategy):
    """The training model and its optimizer, built in ``strategy.scope()`` (mixed_float16 if asked).

    Args:
        config: The training options (``mixed_precision``, ``optimizer``, ``learning_rate``).
        spec: The :class:`trainer.model.ModelSpec`.
        strategy: The training strategy.
    """
    import keras

    from trainer.model import build_model

    with strategy.scope():
        model = build_model(spec, mixed_precision=config.mixed_precision)
        if config.optimizer == "adam":
            optimizer = keras.optimizers.Adam(config.learning_rate)
        else:
            optimizer = keras.optimizers.SGD(config.learning_rate, momentum=0.9)
        if config.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def resolve_jit_compile(mode: str, strategy, gpu: bool) -> bool:
    """Whether the replica training step is XLA-compiled for ``--jit_compile mode``.

    ``on``/``off`` as named. ``auto`` is on only with a GPU *and* a single-device strategy
    (``OneDeviceStrategy``, what ``--strategy auto`` picks for at most one GPU): XLA inside
    ``MirroredStrategy`` / ``MultiWorkerMirroredStrategy`` replica steps is untested here and has given
    NaN losses, so it stays off there unless asked for with ``on``.

    Args:
        mode: ``auto``, ``on`` or ``off``.
        strategy: The training strategy.
        gpu: Whether a GPU is present.

    Raises:
        ValueError: unknown mode (the message lists the valid values).
    """
    import tensorflow as tf

    from trainer.config import JIT_CHOICES

    if mode not in JIT_CHOICES:
        raise ValueError(f"unknown jit_compile {mode!r}; valid values: {', '.join(JIT_CHOICES)}")
    if mode != "auto":
        return mode == "on"
    return gpu and isinstance(strategy, tf.distribute.OneDeviceStrategy)


def make_train_step(model, optimizer, strategy, *, global_frames: int, mixed_precision: bool, jit: bool):
    """The one training step for every strategy: ``strategy.run`` of a replica step on ``next(iterator)``.

    Losses are scaled by the global batch (:func:`trainer.model.compute_losses`) and the optimizer
    all-reduces (sums) the gradients across replicas, so the step equals one step on the global batch.
    Returns a ``tf.function`` mapping a distributed iterator to the replica-summed losses.
    """
    import tensorflow as tf

    from trainer.model import compute_losses

    num_replicas = strategy.num_replicas_in_sync

    def step_fn(images, targets, weights):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            losses = compute_losses(targets, outputs, weights, global_frames, num_replicas)
            total = tf.add_n(list(losses.values()))
            scaled = optimizer.scale_loss(total) if mixed_precision else total
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": total, **losses}

    replica_step = tf.function(step_fn, jit_compile=True) if jit else step_fn

    @tf.function
    def train_step(iterator):
        images, targets, weights = next(iterator)
        per_replica = strategy.run(replica_step, args=(images, targets, weights))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return train_step
