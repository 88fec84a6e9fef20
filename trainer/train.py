"""Train the end-to-end CNN+RNN on a `beam_jobs.convert` output; resumable, distributable.

Example (tiny, CPU)::

    python -m trainer.train --data /tmp/affectstream_out --task expr --job_dir /tmp/affectstream_job \\
        --epochs 2 --steps_per_epoch 20 --batch_size 8 --seq_len 8 --sampling balanced \\
        --backbone simple_cnn --cnn_width 0.25 --rnn_units 32,16

or with the same options from a JSON file: ``python -m trainer.train --config job.json`` (flags override it).

What a job does:

* streams rebalanced training clips from ``trainer.input.make_train_dataset`` through one custom
  training step run with ``strategy.run`` (the same path for one device, several GPUs and several
  workers; Keras 3 ``model.fit`` is avoided: it fails under MultiWorkerMirroredStrategy on TF 2.17,
  keras-team/keras#20585);
* saves ``tf.train.CheckpointManager`` checkpoints (model, optimizer, step, evaluated epochs, best
  score) in ``--job_dir/checkpoints`` every ``--checkpoint_every`` steps and at every epoch end. Run the
  same command again after a crash or kill: it restores the latest checkpoint and ends at the same
  total step count (``epochs × steps_per_epoch``). The tf.data iterator is not checkpointed (its
  shuffle buffers would make checkpoints large): a resumed run reseeds the input stream with
  ``seed + step``, so it does not replay the clips it has already seen;
* after every epoch evaluates the whole ``--eval_split`` (every frame once), logs TensorBoard summaries
  to ``--job_dir/logs`` and keeps the best epoch (by macro-F1 / mean CCC / mean AU F1, summed for
  ``multi``) in ``--job_dir/best``; that checkpoint stores its own epoch and score, and a resumed run
  (and the export) takes them from it, so a kill between saving ``best/`` and the next checkpoint
  cannot make the reported best epoch disagree with the exported model;
* logs the requested bucket weights next to the empirical bucket mix of the first batches (and the
  largest deviation) at start-up;
* XLA (``--jit_compile``): ``auto`` compiles the training step only with a GPU and a single-device
  strategy; under ``mirrored`` / ``multi_worker`` it stays off unless ``--jit_compile on``;
* at the end exports the best model to ``--job_dir/export/`` (``model.keras``, SavedModel in
  ``saved_model/``, ``model_info.json``), evaluates it once more and writes ``--job_dir/metrics.json``
  and ``--job_dir/reports/`` (confusion-matrix PNG + JSON, per-class metrics).

Multi-worker: set ``TF_CONFIG`` in every worker and pass ``--strategy multi_worker``; ``--job_dir`` must
be shared by the workers (a common disk, ``gs://`` or ``s3://``). Each worker reads its share of every
bucket's shard files (a clear error when a shard set has fewer files than workers). Only the chief writes
logs, the export and the reports; the other workers write their checkpoints to temporary directories.
Every worker evaluates the whole validation split itself, so all agree on the best epoch.

Object stores: ``--data``/``--job_dir`` may be ``gs://`` URLs (TensorFlow's own file system; credentials
from the environment, e.g. ``GOOGLE_APPLICATION_CREDENTIALS``) or ``s3://`` URLs (tensorflow-io; set
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and, for other S3-compatible servers,
``S3_ENDPOINT=http://host:port``, ``S3_USE_HTTPS=0``, ``S3_VERIFY_SSL=0``). After ``s3://`` the process
leaves through ``os._exit`` (tensorflow-io's S3 file system aborts at interpreter exit).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Sequence

from trainer import errors, filesystems
from trainer.config import ConfigError, TrainConfig, parse_train_config, to_dict

log = logging.getLogger("trainer.train")

CLASS_MIX_BATCHES = 4


class TrainingError(RuntimeError):
    """A training job that cannot go on (reported with its message, exit code 1)."""


def _setup_logging() -> None:
    """INFO logging to stderr unless the caller configured logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def resolve_steps_per_epoch(config: TrainConfig, info) -> int:
    """Steps per epoch: ``--steps_per_epoch``, or from the data.

    From the data: ``clips_per_epoch // batch_size`` for ``downsample``, else train clips // batch size
    (at least 1). With ``downsample`` a warning is logged when an epoch of steps is not exactly one
    minority-count block of the input (``clips_per_epoch`` clips), also for an explicit ``--steps_per_epoch``.

    Args:
        config: The training options.
        info: The dataset info.

    Returns:
        Steps per epoch (>= 1).
    """
    from trainer import sampling

    clips = sampling.clips_per_epoch(info, config.sampling, config.task)
    if config.steps_per_epoch:
        if clips is not None and config.steps_per_epoch * config.batch_size != clips:
            log.warning("downsample: --steps_per_epoch %d x --batch_size %d = %d clips per epoch, but a downsample "
                        "epoch is clips_per_epoch = %d clips (minority count x buckets); epochs will not hold "
                        "exactly the minority count of every bucket (leave --steps_per_epoch unset to use %d)",
                        config.steps_per_epoch, config.batch_size, config.steps_per_epoch * config.batch_size,
                        clips, max(1, clips // config.batch_size))
        return config.steps_per_epoch
    if clips is not None and clips % config.batch_size:
        log.warning("downsample: an epoch of %d clips is not a whole number of batches of %d; epochs will not "
                    "line up exactly with the input's minority-count blocks", clips, config.batch_size)
    if clips is None:
        clips = info.splits["train"].num_clips if "train" in info.splits else 0
    return max(1, clips // config.batch_size)


def model_spec_for(config: TrainConfig, info, heads: Sequence[str]):
    """The :class:`trainer.model.ModelSpec` of ``config`` for this data and these heads (any sequence length)."""
    from trainer.model import ModelSpec

    return ModelSpec(
        heads=heads,
        num_expression_classes=len(info.expression_names),
        num_action_units=info.num_action_units,
        crop_size=info.crop_size,
        seq_len=None,
        backbone=config.backbone,
        backbone_weights=config.backbone_weights,
        cnn_width=config.cnn_width,
        feature_dim=config.feature_dim,
        rnn=config.rnn,
        rnn_units=config.rnn_units,
        dropout=config.dropout,
    )


def model_info_payload(config: TrainConfig, info, heads: Sequence[str], best_epoch: int, best_score: float) -> dict:
    """What a user of the exported model needs: label names, task, input format, preprocessing.

    Args:
        config: The training options (stored as ``train_config``).
        info: The dataset info.
        heads: The trained heads.
        best_epoch: The exported epoch.
        best_score: Its validation score.

    Returns:
        The JSON-ready ``model_info.json`` payload.
    """
    from tfrecords_schema import SCHEMA_VERSION

    return {
        "task": config.task,
        "heads": list(heads),
        "label_names": {
            "expression": info.expression_names if "expression" in heads else [],
            "valence_arousal": ["valence", "arousal"] if "valence_arousal" in heads else [],
            "action_units": info.action_unit_names if "action_units" in heads else [],
        },
        "crop_size": info.crop_size,
        "seq_len": config.seq_len,
        "preprocessing": {
            "input": "float32 [batch, time, crop_size, crop_size, 3] RGB face crops scaled to [0, 1]",
            "crop": "the square face crops of beam_jobs.convert (same crop function at inference)",
            "time": "any number of frames; trained on windows of seq_len consecutive frames",
        },
        "outputs": {
            "expression": "softmax probabilities [batch, time, classes]",
            "valence_arousal": "tanh [batch, time, 2] (valence, arousal)",
            "action_units": "sigmoid probabilities [batch, time, AUs] (threshold 0.5)",
        },
        "backbone": config.backbone,
        "rnn": config.rnn,
        "rnn_units": list(config.rnn_units),
        "dataset": info.name,
        "schema_version": SCHEMA_VERSION,
        "best_epoch": best_epoch,
        "best_score": best_score,
        "train_config": to_dict(config),
    }


def bucket_mix_report(config: TrainConfig, info, input_seed: int) -> dict:
    """Requested bucket weights next to the empirical bucket mix of the first training batches.

    The empirical mix counts the bucket of each of the first ``CLASS_MIX_BATCHES x batch_size`` clips of
    the (single-pipeline) training stream with ``input_seed`` (:func:`trainer.input.empirical_bucket_mix`).

    Args:
        config: The training options (data, task, sampling, batch size).
        info: The dataset info.
        input_seed: The seed of the training stream.

    Returns:
        ``{"clips": n, "requested": {bucket: weight}, "empirical": {bucket: share},
        "max_abs_deviation": float, "max_deviation_bucket": name}``.
    """
    from trainer import sampling
    from trainer.input import empirical_bucket_mix

    requested = sampling.bucket_weights(info, config.sampling, config.task)
    num_clips = CLASS_MIX_BATCHES * config.batch_size
    empirical = empirical_bucket_mix(config.data, info, task=config.task, sampling=config.sampling,
                                     num_clips=num_clips, seed=input_seed, skip_corrupt=config.skip_corrupt)
    worst = max(requested, key=lambda b: abs(empirical[b] - requested[b]))
    return {
        "clips": num_clips,
        "requested": {b: round(w, 4) for b, w in requested.items()},
        "empirical": {b: round(empirical[b], 4) for b in requested},
        "max_abs_deviation": round(abs(empirical[worst] - requested[worst]), 4),
        "max_deviation_bucket": worst,
    }


def build_model_and_optimizer(config: TrainConfig, spec, strategy):
    """The training model and its optimizer, built in ``strategy.scope()`` (mixed_float16 if asked)."""
    import keras

    from trainer.model import build_model

    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = build_model(spec)
            if config.optimizer == "adam":
                optimizer = keras.optimizers.Adam(config.learning_rate)
            else:
                optimizer = keras.optimizers.SGD(config.learning_rate, momentum=0.9)
            if config.mixed_precision:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
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


def train(config: TrainConfig) -> dict:
    """Runs (or resumes) a training job (see the module docstring).

    Args:
        config: The validated training options.

    Returns:
        The final metrics of the exported best model on the chief; ``{}`` on other workers.

    Raises:
        TrainingError: the job cannot go on (bad split, batch size, checkpoint, non-finite loss...).
        DatasetInfoError, ValueError, CorruptShardError: bad data or options (clear messages).
    """
    import tensorflow as tf

    from trainer import distribution

    # The strategy must exist before other TensorFlow ops (MultiWorkerMirroredStrategy).
    strategy, role = distribution.make_strategy(config.strategy)

    import keras

    from tfrecords_schema import join_path, read_dataset_info
    from trainer import reports, sampling
    from trainer.evaluate import evaluate_model
    from trainer.input import heads_for_task, make_eval_dataset, make_train_dataset
    from trainer.model import build_model

    info = read_dataset_info(config.data)
    heads = heads_for_task(info, config.task)
    if config.eval_split not in info.splits:
        raise TrainingError(
            f"--eval_split {config.eval_split!r} is not in {config.data} (splits: {sorted(info.splits)})"
        )
    num_replicas = strategy.num_replicas_in_sync
    if config.batch_size % num_replicas:
        raise TrainingError(
            f"--batch_size {config.batch_size} must be a multiple of the {num_replicas} replicas in sync"
        )
    steps_per_epoch = resolve_steps_per_epoch(config, info)
    total_steps = steps_per_epoch * config.epochs
    use_gpu = distribution.has_gpu()
    jit = resolve_jit_compile(config.jit_compile, strategy, use_gpu)
    if config.mixed_precision and not use_gpu:
        log.warning("--mixed_precision without a GPU: float16 on CPU is slow")

    log.info("strategy %s: %s (%d replicas), chief=%s, heads %s, %d steps/epoch x %d epochs = %d steps, XLA %s",
             config.strategy, type(strategy).__name__, num_replicas, role.is_chief, list(heads), steps_per_epoch,
             config.epochs, total_steps, jit)
    log.info("requested bucket weights (%s): %s", config.sampling,
             json.dumps(sampling.bucket_weights(info, config.sampling, config.task), sort_keys=True))

    keras.utils.set_random_seed(config.seed)
    spec = model_spec_for(config, info, heads)
    # A float32 copy outside the strategy evaluates and exports (weights copied in; no distributed reads).
    keras.mixed_precision.set_global_policy("float32")
    eval_model = build_model(spec)
    model, optimizer = build_model_and_optimizer(config, spec, strategy)

    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
    best_score = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_score")
    best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, epochs_done=epochs_done,
                                     best_score=best_score, best_epoch=best_epoch)
    # The best checkpoint carries its own score and epoch: best/ is the truth for export and report.
    best_checkpoint = tf.train.Checkpoint(model=model, best_score=best_score, best_epoch=best_epoch)

    checkpoint_dir = join_path(config.job_dir, "checkpoints")
    best_dir = join_path(config.job_dir, "best")
    my_checkpoint_dir = distribution.write_dir(checkpoint_dir, role)
    my_best_dir = distribution.write_dir(best_dir, role)
    if role.is_chief:
        tf.io.gfile.makedirs(config.job_dir)
    manager = tf.train.CheckpointManager(checkpoint, my_checkpoint_dir, max_to_keep=config.keep_checkpoints)
    best_manager = tf.train.CheckpointManager(best_checkpoint, my_best_dir, max_to_keep=1)

    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise TrainingError(
                f"checkpoint {latest} does not fit this model/options ({type(e).__name__}: {e}); resume with the "
                "options of the original run or use a new --job_dir"
            ) from e
        log.info("resumed from %s at step %d (epochs evaluated %d, best score %.4f)", latest, int(step.numpy()),
                 int(epochs_done.numpy()), float(best_score.numpy()))
    stored_best = read_best_checkpoint(best_dir)
    if stored_best is not None and (stored_best[0], stored_best[1]) != (int(best_epoch.numpy()),
                                                                      float(best_score.numpy())):
        # A run killed between saving best/ and the next checkpoint: best/ holds a newer best epoch.
        log.info("best checkpoint %s holds epoch %d (score %.4f); the resumed run goes on from it", stored_best[2],
                 stored_best[0], stored_best[1])
        best_epoch.assign(stored_best[0])
        best_score.assign(stored_best[1])
    start_step = int(step.numpy())
    if start_step > total_steps:
        raise TrainingError(
            f"{checkpoint_dir} holds step {start_step} > epochs x steps_per_epoch = {total_steps}: "
            "use a new --job_dir or the options of the original run"
        )
    input_seed = config.seed + start_step

    if role.is_chief:
        tf.io.gfile.makedirs(join_path(config.job_dir, "logs"))
        with tf.io.gfile.GFile(join_path(config.job_dir, "train_config.json"), "w") as f:
            f.write(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
        train_writer = tf.summary.create_file_writer(join_path(config.job_dir, "logs", "train"))
        eval_writer = tf.summary.create_file_writer(join_path(config.job_dir, "logs", config.eval_split))
        if start_step < total_steps:
            log.info("bucket mix of the first %d batches (%s sampling): %s", CLASS_MIX_BATCHES, config.sampling,
                     json.dumps(bucket_mix_report(config, info, input_seed), sort_keys=True))
    else:
        train_writer = eval_writer = tf.summary.create_noop_writer()

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_train_dataset(
            config.data, info, task=config.task, seq_len=config.seq_len,
            batch_size=input_context.get_per_replica_batch_size(config.batch_size), sampling=config.sampling,
            loss_weighting=config.loss_weighting, seed=input_seed, augment=config.augment,
            input_context=input_context, skip_corrupt=config.skip_corrupt,
        )

    train_step = make_train_step(model, optimizer, strategy, global_frames=config.batch_size * config.seq_len,
                                 mixed_precision=config.mixed_precision, jit=jit)

    def evaluate_epoch(epoch: int) -> dict:
        eval_model.set_weights(model.get_weights())
        ds = make_eval_dataset(config.data, info, split=config.eval_split, task=config.task, seq_len=config.seq_len,
                               batch_size=config.eval_batch_size or config.batch_size,
                               skip_corrupt=config.skip_corrupt)
        result = evaluate_model(eval_model, ds, heads, info)
        with eval_writer.as_default(step=epoch):
            tf.summary.scalar("score", result["score"])
            for head, values in result.items():
                if isinstance(values, dict):
                    for name, value in values.items():
                        if isinstance(value, (int, float)) and name != "num_frames":
                            tf.summary.scalar(f"{head}/{name}", value)
        eval_writer.flush()
        log.info("epoch %d %s: score %.4f\n%s", epoch, config.eval_split, result["score"],
                 reports.format_metrics(result))
        if result["score"] > float(best_score.numpy()):
            best_score.assign(result["score"])
            best_epoch.assign(epoch)
            best_manager.save(checkpoint_number=epoch)
            log.info("new best epoch %d (score %.4f)", epoch, result["score"])
        epochs_done.assign(epoch)
        return result

    # A checkpoint at an epoch boundary whose evaluation had not run yet: evaluate first.
    if start_step and start_step % steps_per_epoch == 0 and int(epochs_done.numpy()) < start_step // steps_per_epoch:
        evaluate_epoch(start_step // steps_per_epoch)
        manager.save(checkpoint_number=start_step)

    if start_step < total_steps:
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        t0, last_log_step = time.time(), start_step
        for s in range(start_step, total_steps):
            try:
                values = train_step(iterator)
            except tf.errors.OutOfRangeError as e:
                raise TrainingError(
                    f"the training stream ended at step {s}: a bucket's shards yielded no records (every record "
                    "unreadable under --skip_corrupt?); check the data with beam_jobs.inspect_dataset") from e
            step.assign(s + 1)
            done = s + 1
            if done % config.log_every == 0 or done == total_steps:
                values = {k: float(v) for k, v in values.items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingError(f"non-finite loss at step {done}: {values}")
                rate = (done - last_log_step) / max(time.time() - t0, 1e-9)
                t0, last_log_step = time.time(), done
                log.info("step %d/%d %s (%.2f steps/s)", done, total_steps,
                         " ".join(f"{k}={v:.4f}" for k, v in values.items()), rate)
                with train_writer.as_default(step=done):
                    for k, v in values.items():
                        tf.summary.scalar(f"loss/{k}", v)
            if done % steps_per_epoch == 0:
                evaluate_epoch(done // steps_per_epoch)
                manager.save(checkpoint_number=done)
            elif done % config.checkpoint_every == 0:
                manager.save(checkpoint_number=done)
        train_writer.flush()
    log.info("training finished at step %d", int(step.numpy()))
    if config.skip_corrupt:
        from trainer.input import skipped_records

        log.warning("--skip_corrupt: %d unreadable record(s) skipped in this process (counted per pass over a "
                    "corrupt shard)", skipped_records())

    final: dict = {}
    if role.is_chief:
        final = _export_and_report(config, info, heads, eval_model, best_dir)
    distribution.remove_temp_dir(my_checkpoint_dir, role)
    distribution.remove_temp_dir(my_best_dir, role)
    return final


def read_best_checkpoint(best_dir: str) -> tuple[int, float, str] | None:
    """``(best_epoch, best_score, path)`` stored in the latest checkpoint of ``best_dir``; None if there is none.

    Raises:
        TrainingError: the best checkpoint does not hold its epoch and score (written by an older version).
    """
    import tensorflow as tf

    path = tf.train.latest_checkpoint(best_dir)
    if path is None:
        return None
    reader = tf.train.load_checkpoint(path)
    try:
        epoch = int(reader.get_tensor("best_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
        score = float(reader.get_tensor("best_score/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.NotFoundError, ValueError) as e:
        raise TrainingError(f"best checkpoint {path} holds no best_epoch/best_score (written by an older "
                            f"version?): use a new --job_dir") from e
    return epoch, score, path


def _export_and_report(config: TrainConfig, info, heads, eval_model, best_dir: str) -> dict:
    """Restores the best epoch into the float32 model, exports it, evaluates it, writes the reports.

    The epoch and score reported are the ones stored in the best checkpoint itself, so the export and
    the report always describe the same model.
    """
    import tensorflow as tf

    from tfrecords_schema import join_path
    from trainer import reports
    from trainer.evaluate import evaluate_model
    from trainer.input import make_eval_dataset

    stored = read_best_checkpoint(best_dir)
    if stored is None:
        raise TrainingError(f"no best checkpoint in {best_dir}: no epoch was evaluated")
    best_epoch, best_score, best = stored
    tf.train.Checkpoint(model=eval_model).restore(best).assert_existing_objects_matched().expect_partial()

    export_dir = join_path(config.job_dir, "export")
    tf.io.gfile.makedirs(export_dir)
    keras_path = join_path(export_dir, "model.keras")
    saved_model_path = join_path(export_dir, "saved_model")
    eval_model.save(keras_path)
    eval_model.export(saved_model_path, verbose=False)
    reports.write_json(join_path(export_dir, "model_info.json"),
                       model_info_payload(config, info, heads, best_epoch, best_score))

    ds = make_eval_dataset(config.data, info, split=config.eval_split, task=config.task, seq_len=config.seq_len,
                           batch_size=config.eval_batch_size or config.batch_size, skip_corrupt=config.skip_corrupt)
    result = evaluate_model(eval_model, ds, heads, info)
    result["best_epoch"] = best_epoch
    result["split"] = config.eval_split
    if config.skip_corrupt:
        from trainer.input import skipped_records

        result["skipped_corrupt_records"] = skipped_records()
    report_dir = join_path(config.job_dir, "reports")
    paths = reports.write_reports(result, info.expression_names, report_dir,
                                  title=f"{info.name} {config.eval_split}, best epoch {best_epoch}")
    reports.write_json(join_path(config.job_dir, "metrics.json"), result)
    paths.update({"metrics_json": join_path(config.job_dir, "metrics.json"), "model_keras": keras_path,
                  "saved_model": saved_model_path})
    print(f"best epoch {best_epoch} on {config.eval_split}:")
    print(reports.format_metrics(result))
    for name, path in sorted(paths.items()):
        print(f"{name}: {path}")
    sys.stdout.flush()
    return result


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point: parses ``argv`` (flags and/or ``--config``), trains, returns the exit code.

    0 on success, 1 when training fails with a reported error, 2 for invalid options.
    """
    _setup_logging()
    try:
        config = parse_train_config(argv)
    except SystemExit as e:  # argparse: --help or a usage error (already printed).
        return int(e.code or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        filesystems.register_filesystems(config.data, config.job_dir)
        train(config)
        return 0
    except Exception as e:  # noqa: BLE001 - report every failure as one clear line and an exit code.
        from tfrecords_schema import DatasetInfoError

        return errors.report_failure(
            e, (ConfigError, DatasetInfoError, TrainingError, ValueError, FileNotFoundError, ImportError))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
