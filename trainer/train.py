"""Train the end-to-end CNN+RNN on a `beam_jobs.convert` output; resumable, distributable.

Example (tiny, CPU)::

    python -m trainer.train --data /tmp/affectstream_out --task expr --job_dir /tmp/affectstream_job \\
        --epochs 2 --steps_per_epoch 20 --batch_size 8 --seq_len 8 --sampling balanced \\
        --backbone simple_cnn --cnn_width 0.25 --rnn_units 32,16

or with the same options from a JSON file: ``python -m trainer.train --config job.json`` (flags override it).

What a job does:

* streams rebalanced training clips from ``trainer.input.make_train_dataset`` through one custom
  training step run with ``strategy.run`` (:func:`trainer.step.make_train_step`: the same path for one
  device, several GPUs and several workers);
* saves ``tf.train.CheckpointManager`` checkpoints (model, optimizer, step, evaluated epochs, best
  score) in ``--job_dir/checkpoints`` every ``--checkpoint_every`` steps and at every epoch end. Run the
  same command again after a crash or kill: it restores the latest checkpoint and ends at the same
  total step count (``epochs × steps_per_epoch``). The tf.data iterator is not checkpointed (its
  shuffle buffers would make checkpoints large): a resumed run reseeds the input stream with
  ``seed + step``, so it does not replay the clips it has already seen;
* after every epoch evaluates the whole ``--select_split`` (default: the ``--eval_split``, validation;
  every labelled frame once, frames without a face included), logs TensorBoard summaries to
  ``--job_dir/logs`` (:mod:`trainer.tensorboard`: metrics, validation loss, learning rate, per-class F1,
  the confusion-matrix picture) and keeps the best epoch (by macro-F1 / mean CCC / mean AU F1, summed for ``multi``)
  in ``--job_dir/best`` (:mod:`trainer.state`: that checkpoint stores its own epoch and score, so the
  reported best epoch always matches the exported model). The training loss leaves frames without a
  face out; the metrics score them (:mod:`trainer.frames`);
* logs the requested bucket weights next to the empirical bucket mix of the first batches (and the
  largest deviation) at start-up;
* trains one stage (``--stage``, :mod:`trainer.stages`): ``end_to_end`` (default), or the paper's two
  stages, ``frames`` (the CNN per frame) then ``sequence --init_from JOB`` (the recurrent stack on the frozen
  CNN's features, computed once into ``--job_dir/features``; the export joins both into one model);
  ``--weights imagenet|none|PATH`` and ``--freeze_backbone_epochs`` start from a pretrained backbone;
  ``--lr_schedule constant|cosine`` with ``--warmup_steps`` and ``--early_stopping PATIENCE``
  (:mod:`trainer.schedules`);
* resumes only on the data and model options it was trained with: checkpoints carry a fingerprint
  (:mod:`trainer.fingerprint`); another one is refused, naming both values, unless ``--allow_data_change``;
* XLA (``--jit_compile``): ``auto`` compiles the training step only with a GPU and a single-device
  strategy; under ``mirrored`` / ``multi_worker`` it stays off unless ``--jit_compile on``;
* at the end exports the best model to ``--job_dir/export/`` (``model.keras``, SavedModel in
  ``saved_model/``, ``model_info.json`` with the face stage; :mod:`trainer.export`), evaluates it on
  ``--eval_split`` and writes ``--job_dir/metrics.json`` (its ``selected_on`` names the split that picked
  the epoch) and ``--job_dir/reports/`` (``per_video.csv`` and the pictures of :mod:`trainer.reports`:
  confusion matrix PNG + JSON, valence/arousal density, per-AU F1).

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

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence

from trainer import errors, filesystems
from trainer.config import ConfigError, TrainConfig, parse_train_config, to_dict
from trainer.errors import TrainingError

log = logging.getLogger("trainer.train")

CLASS_MIX_BATCHES = 4
TRAIN_CONFIG_FILENAME = "train_config.json"
LOGS_DIRNAME = "logs"
REPORTS_DIRNAME = "reports"


def _setup_logging() -> None:
    """INFO logging to stderr unless the caller configured logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ==================================================================================================
# Options resolved against the data.


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


def bucket_mix_report(config: TrainConfig, info, input_seed: int, skipped=None) -> dict:
    """Requested bucket weights next to the empirical bucket mix of the first training batches.

    The empirical mix counts the bucket of each of the first ``CLASS_MIX_BATCHES x batch_size`` clips of
    the (single-pipeline) training stream with ``input_seed`` (:func:`trainer.input.empirical_bucket_mix`).

    Args:
        config: The training options (data, task, sampling, batch size).
        info: The dataset info.
        input_seed: The seed of the training stream.
        skipped: The job's :class:`trainer.records.SkippedRecords` under ``--skip_corrupt``, else None.

    Returns:
        ``{"clips": n, "requested": {bucket: weight}, "empirical": {bucket: share},
        "max_abs_deviation": float, "max_deviation_bucket": name}``.
    """
    from trainer import sampling
    from trainer.input import empirical_bucket_mix

    requested = sampling.bucket_weights(info, config.sampling, config.task)
    num_clips = CLASS_MIX_BATCHES * config.batch_size
    empirical = empirical_bucket_mix(config.data, info, task=config.task, sampling=config.sampling,
                                     num_clips=num_clips, seed=input_seed, skipped=skipped)
    worst = max(requested, key=lambda b: abs(empirical[b] - requested[b]))
    return {
        "clips": num_clips,
        "requested": {b: round(w, 4) for b, w in requested.items()},
        "empirical": {b: round(empirical[b], 4) for b in requested},
        "max_abs_deviation": round(abs(empirical[worst] - requested[worst]), 4),
        "max_deviation_bucket": worst,
    }


def frame_mix_setup(config: TrainConfig, plan, seq_len: int, input_seed: int, skipped, log_mix: bool) -> None:
    """``--balance_frames``: sets ``plan.class_weights``; with ``log_mix`` logs the frame class mix of the first batches.

    The weights are measured on the stream of ``config.seed`` (not the resume seed), so a resumed job gets
    the same ones (:func:`trainer.input.balanced_frame_weights`). The logged mix is the expression class
    share of the loss weight in the first ``CLASS_MIX_BATCHES`` batches (:func:`trainer.input.frame_mix_report`).
    """
    from tfrecords_schema import HEAD_EXPRESSION
    from trainer.input import balanced_frame_weights, frame_mix_report

    if config.balance_frames:
        plan.class_weights = balanced_frame_weights(config.data, plan.info, task=config.task, seq_len=seq_len,
                                                    sampling=config.sampling, seed=config.seed, skipped=skipped)
    if log_mix and HEAD_EXPRESSION in plan.heads:
        report = frame_mix_report(config.data, plan.info, task=config.task, sampling=config.sampling, seq_len=seq_len,
                                  batch_size=config.batch_size, num_batches=CLASS_MIX_BATCHES, seed=input_seed,
                                  class_weights=plan.class_weights, skipped=skipped)
        log.info("frame class mix of the first %d batches (%s sampling%s): %s", CLASS_MIX_BATCHES, config.sampling,
                 ", --balance_frames" if config.balance_frames else "", json.dumps(report, sort_keys=True))


# ==================================================================================================
# The job's parts: its plan, its evaluation datasets, its logs.


@dataclasses.dataclass
class JobPlan:
    """What a job does, resolved from its options, the data and the strategy (see :func:`plan_job`)."""

    info: object
    heads: tuple[str, ...]
    steps_per_epoch: int
    total_steps: int
    jit: bool
    select_split: str
    eval_split: str
    class_weights: object = None  # --balance_frames: expression class weights (see frame_mix_setup)


def plan_job(config: TrainConfig, strategy, role) -> JobPlan:
    """Reads the dataset info and checks the options against it and the strategy; logs the plan.

    Raises:
        TrainingError: a split that the data lacks, a batch size that the replicas do not divide.
    """
    from tfrecords_schema import read_dataset_info
    from trainer import distribution, sampling
    from trainer.input import heads_for_task
    from trainer.step import resolve_jit_compile

    info = read_dataset_info(config.data)
    heads = heads_for_task(info, config.task)
    select_split = config.select_split or config.eval_split
    for flag, split in (("--eval_split", config.eval_split), ("--select_split", select_split)):
        if split not in info.splits:
            raise TrainingError(f"{flag} {split!r} is not in {config.data} (splits: {sorted(info.splits)})")
    num_replicas = strategy.num_replicas_in_sync
    if config.batch_size % num_replicas:
        raise TrainingError(
            f"--batch_size {config.batch_size} must be a multiple of the {num_replicas} replicas in sync"
        )
    steps_per_epoch = resolve_steps_per_epoch(config, info)
    use_gpu = distribution.has_gpu()
    plan = JobPlan(info=info, heads=heads, steps_per_epoch=steps_per_epoch,
                   total_steps=steps_per_epoch * config.epochs, jit=resolve_jit_compile(config.jit_compile, strategy,
                                                                                        use_gpu),
                   select_split=select_split, eval_split=config.eval_split)
    if config.mixed_precision and not use_gpu:
        log.warning("--mixed_precision without a GPU: float16 on CPU is slow")
    log.info("strategy %s: %s (%d replicas), chief=%s, heads %s, %d steps/epoch x %d epochs = %d steps, XLA %s",
             config.strategy, type(strategy).__name__, num_replicas, role.is_chief, list(heads), steps_per_epoch,
             config.epochs, plan.total_steps, plan.jit)
    log.info("requested bucket weights (%s): %s", config.sampling,
             json.dumps(sampling.bucket_weights(info, config.sampling, config.task), sort_keys=True))
    log.info("best epoch selected on %r, final report on %r", select_split, config.eval_split)
    return plan


class Evaluator:
    """The job's evaluation datasets, each built once (which checks its shards before the first step).

    Args:
        config: The training options.
        plan: The job plan (its selection and report splits).
        skipped: The job's corrupt-record counter, or None.
        make_dataset: ``split -> dataset`` of the same frames in another form (the sequence stage's
            features); None: the clips (:func:`trainer.input.make_eval_dataset`).
    """

    def __init__(self, config: TrainConfig, plan: JobPlan, skipped, make_dataset=None):
        from trainer.input import make_eval_dataset

        def clips(split: str):
            return make_eval_dataset(config.data, plan.info, split=split, task=config.task, seq_len=config.seq_len,
                                     batch_size=config.eval_batch_size or config.batch_size, skipped=skipped)

        self._plan = plan
        self._datasets = {split: (make_dataset or clips)(split)
                          for split in dict.fromkeys((plan.select_split, plan.eval_split))}
        self._predict = None  # (model, its traced predict function): traced once, reused every epoch

    def predictions(self, model, split: str, observers=()):
        """Every scored frame of ``split`` (:func:`trainer.evaluate.collect_predictions`, with its ``observers``)."""
        from trainer.evaluate import collect_predictions, predict_function

        if self._predict is None or self._predict[0] is not model:
            self._predict = (model, predict_function(model))
        return collect_predictions(model, self._datasets[split], self._plan.heads, self._plan.info,
                                   self._predict[1], observers)


def _open_writers(config: TrainConfig, plan: JobPlan, role, log_bucket_mix: bool, input_seed: int, skipped):
    """``(train_writer, eval_writer)``; on the chief also writes ``train_config.json`` and logs the bucket mix."""
    import tensorflow as tf

    from tfrecords_schema import join_path
    from trainer import tensorboard
    from trainer.reports import write_json

    if not role.is_chief:
        return tf.summary.create_noop_writer(), tf.summary.create_noop_writer()
    tf.io.gfile.makedirs(join_path(config.job_dir, LOGS_DIRNAME))
    write_json(join_path(config.job_dir, TRAIN_CONFIG_FILENAME), to_dict(config))
    if log_bucket_mix:
        log.info("bucket mix of the first %d batches (%s sampling): %s", CLASS_MIX_BATCHES, config.sampling,
                 json.dumps(bucket_mix_report(config, plan.info, input_seed, skipped), sort_keys=True))
    return (tf.summary.create_file_writer(join_path(config.job_dir, LOGS_DIRNAME, tensorboard.TRAIN_RUN)),
            tf.summary.create_file_writer(join_path(config.job_dir, LOGS_DIRNAME,
                                                    tensorboard.evaluation_run(plan.select_split))))


# ==================================================================================================
# Training: the epoch loop, its evaluations, the final export and report.


def _evaluate_epoch(epoch: int, model, eval_model, evaluator: Evaluator, plan: JobPlan, state, eval_writer) -> dict:
    """Scores ``epoch`` on the selection split with the float32 copy; saves ``best/`` when it is the best.

    Logs the epoch to TensorBoard (:func:`trainer.tensorboard.log_epoch`: metrics, validation loss, per-class
    F1, the confusion-matrix picture).
    """
    from trainer import reports, tensorboard

    eval_model.set_weights(model.get_weights())
    validation_loss = tensorboard.ValidationLoss()
    result = evaluator.predictions(eval_model, plan.select_split, observers=[validation_loss]).result()
    tensorboard.log_epoch(eval_writer, epoch, result, validation_loss=validation_loss.result(),
                          expression_names=plan.info.expression_names,
                          context=reports.ReportContext(plan.info.name, plan.select_split, eval_model.name, epoch))
    log.info("epoch %d %s: score %.4f, loss %s\n%s", epoch, plan.select_split, result["score"],
             json.dumps({k: round(v, 4) for k, v in validation_loss.result().items()}), reports.format_metrics(result))
    if state.record_epoch(epoch, result["score"]):
        log.info("new best epoch %d (score %.4f)", epoch, result["score"])
    return result


def _check_and_log_step(done: int, total_steps: int, values: dict, rate: float, train_writer) -> None:
    """Logs a step's losses (console and TensorBoard); raises TrainingError on a non-finite one."""
    import tensorflow as tf

    values = {k: float(v) for k, v in values.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise TrainingError(f"non-finite loss at step {done}: {values}")
    log.info("step %d/%d %s (%.2f steps/s)", done, total_steps, " ".join(f"{k}={v:.4f}" for k, v in values.items()),
             rate)
    with train_writer.as_default(step=done):
        for k, v in values.items():
            tf.summary.scalar(f"loss/{k}", v)


def _run_epochs(config: TrainConfig, plan: JobPlan, strategy, stage, train_step, start_step: int, input_seed: int,
                skipped, end_of_epoch, state, train_writer) -> None:
    """Steps from ``start_step`` to the end; ``end_of_epoch(epoch)`` after every epoch (True: stop early),
    checkpoints between."""
    import tensorflow as tf

    from trainer import data_service
    from trainer.input import make_train_dataset

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        if stage.trains_on_features:  # the sequence stage (trainer.stages)
            return stage.train_dataset(input_context.get_per_replica_batch_size(config.batch_size), input_seed,
                                       input_context, skipped)
        return make_train_dataset(
            config.data, plan.info, task=config.task, seq_len=stage.train_seq_len,
            batch_size=input_context.get_per_replica_batch_size(config.batch_size), sampling=config.sampling,
            loss_weighting=config.loss_weighting, class_weights=plan.class_weights, seed=input_seed,
            augment=config.augment, input_context=input_context, skipped=skipped, data_service=config.data_service,
            data_service_job=data_service.job_name(config.job_dir, input_seed) if config.data_service else None,
        )

    if config.data_service and not stage.trains_on_features:
        log.info("training batches from the tf.data service %s (job %s)", config.data_service,
                 data_service.job_name(config.job_dir, input_seed))
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    t0, last_log_step = time.time(), start_step
    for s in range(start_step, plan.total_steps):
        try:
            values = train_step(iterator)
        except tf.errors.OutOfRangeError as e:
            raise TrainingError(
                f"the training stream ended at step {s}: a bucket's shards yielded no records (every record "
                "unreadable under --skip_corrupt?); check the data with beam_jobs.inspect_dataset") from e
        done = s + 1
        state.step.assign(done)
        if done % config.log_every == 0 or done == plan.total_steps:
            rate = (done - last_log_step) / max(time.time() - t0, 1e-9)
            t0, last_log_step = time.time(), done
            _check_and_log_step(done, plan.total_steps, values, rate, train_writer)
        if done % plan.steps_per_epoch == 0:
            stop = end_of_epoch(done // plan.steps_per_epoch)
            state.save(done)
            if stop:
                break
        elif done % config.checkpoint_every == 0:
            state.save(done)
    train_writer.flush()


def _export_and_report(config: TrainConfig, plan: JobPlan, stage, eval_model, evaluator: Evaluator, best_dir: str,
                       skipped) -> dict:
    """Restores the best epoch into the float32 model, exports it, scores it on the report split, writes reports.

    The epoch and score reported are the ones stored in the best checkpoint itself, so the export and
    the report always describe the same model. The exported model is the stage's (:meth:`Stage.export_model`:
    for the sequence stage the CNN joined to the trained stack), scored on the clips.
    """
    import tensorflow as tf

    from tfrecords_schema import join_path
    from trainer import plots, reports
    from trainer.export import EXPORT_DIRNAME, export_model, model_info_payload
    from trainer.state import read_best_checkpoint

    stored = read_best_checkpoint(best_dir)
    if stored is None:
        raise TrainingError(f"no best checkpoint in {best_dir}: no epoch was evaluated")
    best_epoch, best_score, best = stored
    tf.train.Checkpoint(model=eval_model).restore(best).assert_existing_objects_matched().expect_partial()
    eval_model = stage.export_model(eval_model)
    paths = export_model(eval_model, join_path(config.job_dir, EXPORT_DIRNAME),
                         model_info_payload(config, plan.info, plan.heads, best_epoch=best_epoch,
                                            best_score=best_score, selected_on=plan.select_split,
                                            extras=stage.model_info()))

    va_density = plots.VADensity()
    predictions = evaluator.predictions(eval_model, plan.eval_split, observers=[va_density])
    result = predictions.result()
    result.update({"best_epoch": best_epoch, "split": plan.eval_split, "selected_on": plan.select_split})
    if skipped is not None:
        result["skipped_corrupt_records"] = skipped.total
    paths.update(reports.write_reports(
        result, predictions.per_video(), plan.info.expression_names,
        metrics_path=join_path(config.job_dir, reports.METRICS_FILENAME),
        report_dir=join_path(config.job_dir, REPORTS_DIRNAME), va_density=va_density,
        context=reports.ReportContext(plan.info.name, plan.eval_split, f"{eval_model.name} selected on "
                                      f"{plan.select_split}", best_epoch)))
    print(f"best epoch {best_epoch} (selected on {plan.select_split}), scored on {plan.eval_split}:")
    print(reports.format_metrics(result))
    for name, path in sorted(paths.items()):
        print(f"{name}: {path}")
    sys.stdout.flush()
    return result


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
    from trainer import distribution

    # 1. The strategy, before any other TensorFlow op (MultiWorkerMirroredStrategy needs that).
    strategy, role = distribution.make_strategy(config.strategy)

    import keras

    from trainer import tensorboard
    from trainer.records import SkippedRecords
    from trainer.stages import make_stage
    from trainer.state import TrainState
    from trainer.step import build_model_and_optimizer, make_train_step

    # 2. The plan, the stage (trainer.stages; the sequence stage takes its backbone options from
    #    --init_from), and the evaluation datasets (built once; their shards are checked before training).
    plan = plan_job(config, strategy, role)
    skipped = SkippedRecords() if config.skip_corrupt else None
    stage = make_stage(config, plan)
    config = stage.config
    evaluator = Evaluator(config, plan, skipped)

    # 3. Models and state: the training model in the strategy, a float32 copy outside it that evaluates
    #    and exports (weights copied in; no distributed reads). Checkpoints carry the job's fingerprint.
    keras.utils.set_random_seed(config.seed)
    spec = stage.model_spec()
    eval_model = stage.build(spec)
    model, optimizer = build_model_and_optimizer(config, spec, strategy, total_steps=plan.total_steps,
                                                 builder=stage.build)
    state = TrainState(model, optimizer, config.job_dir, role, config.keep_checkpoints,
                       fingerprint=stage.fingerprint(), allow_data_change=config.allow_data_change)

    # 4. Resume (refused on other data or options): a resumed run reseeds the input with seed + step (the
    #    tf.data iterator is not saved). Then the stage's own preparation (the sequence stage's features).
    start_step = state.restore(plan.total_steps)
    input_seed = config.seed + start_step
    stage.prepare(role, skipped)
    epoch_evaluator = (Evaluator(config, plan, skipped, stage.eval_dataset_fn(skipped)) if stage.trains_on_features
                       else evaluator)
    train_writer, eval_writer = _open_writers(config, plan, role, start_step < plan.total_steps, input_seed,
                                              skipped)
    if not stage.trains_on_features:
        frame_mix_setup(config, plan, stage.train_seq_len, input_seed, skipped,
                        role.is_chief and start_step < plan.total_steps)
    train_step = make_train_step(model, optimizer, strategy, global_frames=config.batch_size * stage.train_seq_len,
                                 mixed_precision=config.mixed_precision, jit=plan.jit,
                                 frozen_layers=stage.frozen_layers(model))

    def end_of_epoch(epoch: int) -> bool:
        """Evaluates ``epoch``, unfreezes the backbone after its frozen epochs; True when the job stops early."""
        _evaluate_epoch(epoch, model, eval_model, epoch_evaluator, plan, state, eval_writer)
        tensorboard.log_learning_rate(train_writer, epoch * plan.steps_per_epoch, optimizer)
        train_step.freeze_for_epoch(epoch, config.freeze_backbone_epochs)
        return state.stops_early(config.early_stopping)

    # 5. A checkpoint at an epoch boundary whose evaluation had not run yet: evaluate it first.
    epoch_at_start = start_step // plan.steps_per_epoch
    if start_step and start_step % plan.steps_per_epoch == 0 and int(state.epochs_done.numpy()) < epoch_at_start:
        end_of_epoch(epoch_at_start)
        state.save(start_step)

    # 6. The epoch loop (not after an early stop, also one the restored state had reached).
    train_step.freeze_for_epoch(start_step // plan.steps_per_epoch, config.freeze_backbone_epochs)
    if start_step < plan.total_steps and not state.stops_early(config.early_stopping):
        _run_epochs(config, plan, strategy, stage, train_step, start_step, input_seed, skipped, end_of_epoch, state,
                    train_writer)
    log.info("training finished at step %d, weights sha256 %s (trainable %s)", int(state.step.numpy()),
             distribution.weights_checksum(model), distribution.weights_checksum(model, trainable_only=True))
    if skipped is not None:
        log.warning("--skip_corrupt: %d unreadable record(s) skipped in this process (counted per pass over a "
                    "corrupt shard)", skipped.total)

    # 7. The chief exports the best epoch and reports it.
    final = (_export_and_report(config, plan, stage, eval_model, evaluator, state.best_dir, skipped)
             if role.is_chief else {})
    state.close()
    stage.close(role)
    return final


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
