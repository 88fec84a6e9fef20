"""One training step for every strategy, and the model and optimizer it updates.

:func:`make_train_step` is the job's one step: ``strategy.run`` of a replica step on ``next(iterator)``,
the same path for one device, several GPUs and several workers (Keras 3 ``model.fit`` is avoided: it fails
under MultiWorkerMirroredStrategy on TF 2.17, keras-team/keras#20585). Used by :mod:`trainer.train` and
``bench/train_step.py``.

Freezing (``--freeze_backbone_epochs``): :meth:`TrainStep.set_frozen` flips ``trainable`` on the pretrained
backbone layers and re-traces the step, because the variables a ``tf.function`` differentiates are fixed when
it is traced. The optimizer is built over every variable before anything is frozen, so its slots exist for
the backbone too: a frozen epoch updates the other variables only, an unfrozen one all of them, and the
checkpoint layout is the same either way (Keras 3 optimizers accept any subset of their built variables,
also inside ``strategy.run``).
"""

from __future__ import annotations

import logging

from trainer.training.config import TrainConfig

log = logging.getLogger("trainer.train")


def build_model_and_optimizer(config: TrainConfig, spec, strategy, *, total_steps: int | None = None,
                              builder=None):
    """The training model and its optimizer, built in ``strategy.scope()`` (at ``--precision``; a loss-scaling
    optimizer for ``mixed_float16``, whose small gradients would underflow float16; bfloat16 has float32's range).

    Args:
        config: The training options (``precision``, ``optimizer``, ``learning_rate``,
            ``lr_schedule``, ``warmup_steps``).
        spec: The :class:`trainer.model.spec.ModelSpec`.
        strategy: The training strategy.
        total_steps: Steps of the whole job (the end of a cosine schedule); None: ``epochs x
            steps_per_epoch`` (``steps_per_epoch`` must then be set).
        builder: ``builder(spec, precision=...)`` making the model; default
            :func:`trainer.model.build.build_model` (the sequence stage passes ``build_sequence_model``).
    """
    import keras

    from trainer.model.build import build_model
    from trainer.training import schedules

    if total_steps is None:
        if config.steps_per_epoch is None and config.lr_schedule != "constant":
            raise ValueError(f"--lr_schedule {config.lr_schedule} needs the job's total steps (total_steps, or "
                             "steps_per_epoch in the config)")
        total_steps = config.epochs * (config.steps_per_epoch or 1)
    learning_rate = schedules.learning_rate(config.lr_schedule, config.learning_rate, total_steps,
                                            config.warmup_steps)
    with strategy.scope():
        model = (builder or build_model)(spec, precision=config.precision)
        if config.optimizer == "adam":
            optimizer = keras.optimizers.Adam(learning_rate)
        else:
            optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
        if loss_scaled(config.precision):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def loss_scaled(precision: str) -> bool:
    """Whether training at ``precision`` scales the loss (float16 only: its gradients underflow without it)."""
    from trainer.common.choices import PRECISION_FLOAT16

    return precision == PRECISION_FLOAT16


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

    from trainer.common.choices import JIT_CHOICES

    if mode not in JIT_CHOICES:
        raise ValueError(f"unknown jit_compile {mode!r}; valid values: {', '.join(JIT_CHOICES)}")
    if mode != "auto":
        return mode == "on"
    return gpu and isinstance(strategy, tf.distribute.OneDeviceStrategy)


def batchnorm_statistics(model) -> list[tuple[object, object, float]]:
    """``(moving_mean, moving_variance, momentum)`` of every BatchNormalization layer of ``model`` (nested too)."""
    import keras

    return [(layer.moving_mean, layer.moving_variance, float(layer.momentum))
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.built]


class TrainStep:
    """The one training step for every strategy: ``strategy.run`` of a replica step on ``next(iterator)``.

    Losses are scaled by the global batch (:func:`trainer.model.losses.compute_losses`; the VA loss all-reduces
    its sums, so it is the CCC of the global batch) and the optimizer all-reduces (sums) the gradients across
    replicas, so the step equals one step on the global batch. Calling it maps a distributed iterator to the
    replica-summed losses.

    XLA (``jit``): with one replica the whole replica step is compiled (no collective runs in it). With several,
    only the model's forward pass is (its gradient is compiled with it): the losses, whose VA sums are
    all-reduced, and the update run around it, so no collective sits inside an XLA cluster.

    BatchNorm: Keras updates each replica's moving statistics from that replica's part of the batch; after every
    step they are combined over the replicas into what one device on the global batch would hold
    (:meth:`_sync_statistics`).

    Args:
        model: The training model (built in the strategy's scope).
        optimizer: Its optimizer, built over all of its variables.
        strategy: The training strategy.
        global_frames: Global batch size x training sequence length.
        loss_scale: Scale the loss (the LossScaleOptimizer of ``mixed_float16``, :func:`loss_scaled`).
        jit: XLA-compile the replica step (see above).
        frozen_layers: The layers :meth:`set_frozen` freezes and unfreezes (the pretrained backbone).
        au_positive_weights: Per-AU weights of the positive frames in the AU loss, or None.
    """

    def __init__(self, model, optimizer, strategy, *, global_frames: int, loss_scale: bool, jit: bool,
                 frozen_layers=(), au_positive_weights=None):
        self._model, self._optimizer, self._strategy = model, optimizer, strategy
        self._global_frames, self._loss_scale, self._jit = global_frames, loss_scale, jit
        self._frozen_layers = list(frozen_layers)
        self._au_positive_weights = au_positive_weights
        self._step = self._trace()

    @property
    def frozen(self) -> bool:
        """Whether the freezable layers are frozen now."""
        return bool(self._frozen_layers) and not any(layer.trainable for layer in self._frozen_layers)

    def set_frozen(self, frozen: bool) -> bool:
        """Freezes (or unfreezes) the freezable layers; re-traces the step when that changes. Returns whether it did."""
        if not self._frozen_layers or frozen == self.frozen:
            return False
        for layer in self._frozen_layers:
            layer.trainable = not frozen
        self._step = self._trace()
        return True

    def freeze_for_epoch(self, epochs_done: int, freeze_epochs: int) -> None:
        """Frozen while fewer than ``freeze_epochs`` epochs are done (``--freeze_backbone_epochs``); logs a change."""
        if self.set_frozen(epochs_done < freeze_epochs):
            log.info("backbone %s for epoch %d (--freeze_backbone_epochs %d)",
                     "frozen" if self.frozen else "unfrozen", epochs_done + 1, freeze_epochs)

    def __call__(self, iterator):
        return self._step(iterator)

    def _trace(self):
        import tensorflow as tf

        from trainer.model.losses import compute_losses

        model, optimizer, strategy = self._model, self._optimizer, self._strategy
        num_replicas = strategy.num_replicas_in_sync
        global_frames, loss_scale = self._global_frames, self._loss_scale
        au_positive_weights = self._au_positive_weights
        # Several replicas under XLA: compile the forward pass only (the VA loss all-reduces, see the class docstring).
        forward = (tf.function(lambda images: model(images, training=True), jit_compile=True, autograph=False)
                   if self._jit and num_replicas > 1 else lambda images: model(images, training=True))

        def step_fn(images, targets, weights):
            variables = model.trainable_variables  # read at trace time: what is frozen now stays out
            with tf.GradientTape() as tape:
                outputs = forward(images)
                losses = compute_losses(targets, outputs, weights, global_frames, num_replicas, au_positive_weights)
                total = tf.add_n(list(losses.values()))
                scaled = optimizer.scale_loss(total) if loss_scale else total
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return {"loss": total, **losses}

        replica_step = (tf.function(step_fn, jit_compile=True, autograph=False) if self._jit and num_replicas == 1
                        else step_fn)
        sync_fn = self._sync_statistics() if num_replicas > 1 else None  # None: nothing to synchronise

        @tf.function(autograph=False)
        def train_step(iterator):
            images, targets, weights = next(iterator)
            per_replica = strategy.run(replica_step, args=(images, targets, weights))
            if sync_fn is not None:
                strategy.run(sync_fn)
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        return train_step

    def _sync_statistics(self):
        """The replica function that makes every replica's non-trainable statistics those of the global batch.

        Keras' BatchNormalization updates its moving statistics on each replica from that replica's batch alone,
        with no cross-replica aggregation, so replicas (and workers) would drift apart and the export would keep
        only the first one's. Once per step, in grouped all-reduces:

        1. every non-trainable float variable becomes the mean over the replicas (a BatchNorm moving mean is
           then the global batch's: ``m = momentum * m_old + (1 - momentum) * mean(mu_r)``, the replicas' batches
           being equal in size);
        2. each BatchNorm moving variance then gets the spread of the replicas' means added: the global batch's
           variance is the mean of the replicas' variances plus the variance of their means, and since every
           replica started the step from the same ``m_old``, ``m_r - m = (1 - momentum) * (mu_r - mean(mu))``, so
           the term the moving variance lacks is ``(1 - momentum) * var(mu_r) = var(m_r) / (1 - momentum)``.

        It runs as its own replica function, never inside the XLA-compiled step.
        """
        import tensorflow as tf

        model = self._model
        # The TensorFlow variables behind the Keras ones (mirrored: one copy per replica).
        synced = [v.value for v in model.non_trainable_variables if tf.as_dtype(v.dtype).is_floating]
        position = {id(v): i for i, v in enumerate(synced)}
        pairs = [(position[id(mean.value)], variance.value, momentum)
                 for mean, variance, momentum in batchnorm_statistics(model)
                 if id(mean.value) in position and id(variance.value) in position]

        def reduce_into(variables, values, update):
            def merge(strategy, *per_replica):
                # The variables are the reduction's destinations (as an optimizer's update does): a tensor read
                # without a device (one device per worker under multi_worker) would leave the all-reduce none.
                means = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.MEAN,
                                                          list(zip(per_replica, variables)))
                for variable, mean in zip(variables, means):
                    strategy.extended.update(variable, update, args=(mean,))

            tf.distribute.get_replica_context().merge_call(merge, args=tuple(values))

        if not synced:
            return None

        def sync_fn():
            local = [tf.identity(v) for v in synced]  # this replica's statistics
            reduce_into(synced, local, lambda v, m: v.assign(m))
            if pairs:  # read after the update above (automatic control dependencies order the variable's ops)
                spread = [tf.square(local[i] - synced[i].read_value()) / (1.0 - momentum) for i, _, momentum in pairs]
                reduce_into([variance for _, variance, _ in pairs], spread, lambda v, s: v.assign_add(s))

        return sync_fn


def make_train_step(model, optimizer, strategy, *, global_frames: int, loss_scale: bool, jit: bool,
                    frozen_layers=(), au_positive_weights=None) -> TrainStep:
    """The job's :class:`TrainStep` (a callable mapping a distributed iterator to the replica-summed losses)."""
    return TrainStep(model, optimizer, strategy, global_frames=global_frames, loss_scale=loss_scale,
                     jit=jit, frozen_layers=frozen_layers, au_positive_weights=au_positive_weights)
