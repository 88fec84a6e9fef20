"""A training job: the end-to-end CNN+RNN (or one stage of the paper's two) on a `beam_jobs.convert` output.

Resumable and distributable; the command line is :mod:`trainer.train`.

Example (tiny, CPU)::

    python -m trainer.train --data /tmp/affectstream_out --task expr --job_dir /tmp/affectstream_job \\
        --epochs 2 --steps_per_epoch 20 --batch_size 8 --seq_len 8 --sampling balanced \\
        --backbone simple_cnn --cnn_width 0.25 --rnn_units 32,16

or with the same options from a JSON file: ``python -m trainer.train --config job.json`` (flags override it).

What a job does:

* locks ``--job_dir`` (the chief; :func:`tfrecords_schema.locks.lock_folder`): a second training into the
  same folder exits 1 naming the holder's pid, host and start time, and writes nothing; a lock whose
  process is gone (same host) is taken over with a warning. Before that, the data's frames must have the
  ``crop_size`` of ``dataset_info.json``, and a ``--weights`` file must fit it (:mod:`trainer.training.preflight`);
* streams rebalanced training clips from ``trainer.input.pipeline.make_train_dataset`` through one custom
  training step run with ``strategy.run`` (:func:`trainer.training.step.make_train_step`: the same path for one
  device, several GPUs and several workers);
* saves ``tf.train.CheckpointManager`` checkpoints (model, optimizer, step, evaluated epochs, best
  score) in ``--job_dir/checkpoints`` every ``--checkpoint_every`` steps and at every epoch end. Run the
  same command again after a crash or kill: it restores the latest checkpoint and ends at the same
  total step count (``epochs × steps_per_epoch``). The tf.data iterator is not checkpointed (its
  shuffle buffers would make checkpoints large): a resumed run reseeds the input stream with
  ``seed + step``, so it does not replay the clips it has already seen;
* after every epoch evaluates the whole ``--select_split`` (default: the data's ``selection`` split, a
  subject-disjoint slice of the train subjects held out by the conversion; without one the ``--eval_split``, validation;
  every labelled frame once, frames without a face included), logs TensorBoard summaries to
  ``--job_dir/logs`` (:mod:`trainer.evaluation.tensorboard`: metrics, validation loss, learning rate, per-class F1,
  the confusion-matrix picture) and keeps the best epoch (by macro-F1 / mean CCC / mean AU F1, summed for ``multi``)
  in ``--job_dir/best`` (:mod:`trainer.training.state`: that checkpoint stores its own epoch and score, so the
  reported best epoch always matches the exported model). The training loss leaves frames without a
  face out; the metrics score them (:mod:`trainer.input.frames`);
* shows a progress bar per epoch (steps, losses, steps/s, ETA) when stdout is a terminal, else logs the
  losses every ``--log_every`` steps (:mod:`trainer.training.progress`);
* draws each training clip by the trained task's classes (``--sampling``; :mod:`trainer.input.sampling`), and
  writes what the first 100 batches hold for every head (target and delivered class mix, labelled fraction,
  AU positive rates) to ``--job_dir/input_mix.json`` at start-up, with one summary line in the log
  (:mod:`trainer.input.input_mix`); warns once when the data's buckets cannot balance a trained task;
* trains one stage (``--stage``, :mod:`trainer.training.stages`): ``end_to_end`` (default), or the paper's two
  stages, ``frames`` (the CNN per frame) then ``sequence --init_from JOB`` (the recurrent stack on the frozen
  CNN's features, computed once into ``--job_dir/features``; the export joins both into one model);
  ``--weights imagenet|none|PATH`` and ``--freeze_backbone_epochs`` start from a pretrained backbone;
  ``--lr_schedule constant|cosine`` with ``--warmup_steps`` and ``--early_stopping PATIENCE``
  (:mod:`trainer.training.schedules`);
* resumes only on the data and model options it was trained with: checkpoints carry a fingerprint
  (:mod:`trainer.training.fingerprint`); another one is refused, naming both values, unless ``--allow_data_change``;
* XLA (``--jit_compile``): ``auto`` compiles the training step only with a GPU and a single-device
  strategy; under ``mirrored`` / ``multi_worker`` it stays off unless ``--jit_compile on``;
* at the end exports the best model to ``--job_dir/export/`` (``model.keras``, SavedModel in
  ``saved_model/``, ``model_info.json`` with the face stage; :mod:`trainer.model.export`), evaluates it on
  ``--eval_split`` and writes ``--job_dir/metrics.json`` (its ``selected_on`` names the split that picked
  the epoch) and ``--job_dir/reports/`` (``per_video.csv`` and the pictures of :mod:`trainer.evaluation.reports`:
  confusion matrix PNG + JSON, valence/arousal density, per-AU F1).

Multi-worker: set ``TF_CONFIG`` in every worker and pass ``--strategy multi_worker``; ``--job_dir`` must
be shared by the workers (a common disk, ``gs://`` or ``s3://``). Each worker reads its share of every
bucket's shard files (a shard set with fewer files than workers is read whole by every worker, each in its own
order; README, "multi_worker"). Only the chief writes
logs, the export and the reports; the other workers write their checkpoints to temporary directories.
Every worker evaluates the whole validation split itself, so all agree on the best epoch.

Object stores: ``--data``/``--job_dir`` may be ``gs://`` URLs (TensorFlow's own file system; credentials
from the environment, e.g. ``GOOGLE_APPLICATION_CREDENTIALS``) or ``s3://`` URLs (tensorflow-io; set
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and, for other S3-compatible servers,
``S3_ENDPOINT=http://host:port``, ``S3_USE_HTTPS=0``, ``S3_VERIFY_SSL=0``). After ``s3://`` the process
leaves through ``os._exit`` (tensorflow-io's S3 file system aborts at interpreter exit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

from trainer.common.choices import PRECISION_FLOAT32
from trainer.common.errors import TrainingError
from trainer.training.config import TrainConfig, to_dict
from trainer.training.job_files import LAST_EPOCH_FILENAME, LOGS_DIRNAME, REPORTS_DIRNAME
from trainer.training.options_record import record_run_options
from trainer.training.plan import JobPlan, frame_mix_setup, plan_job, write_input_mix

log = logging.getLogger("trainer.train")


# ==================================================================================================
# The job's parts: its evaluation datasets, its logs, its lock.


class Evaluator:
    """The job's evaluation datasets, each built once (which checks its shards before the first step).

    Args:
        config: The training options.
        plan: The job plan (its selection and report splits).
        skipped: The job's corrupt-record counter, or None.
        make_dataset: ``split -> dataset`` of the same frames in another form (the sequence stage's
            features); None: the clips (:func:`trainer.input.pipeline.make_eval_dataset`).
    """

    def __init__(self, config: TrainConfig, plan: JobPlan, skipped, make_dataset=None):
        from trainer.input.pipeline import make_eval_dataset

        def clips(split: str):
            return make_eval_dataset(config.data, plan.info, split=split, task=config.task, seq_len=config.seq_len,
                                     batch_size=config.eval_batch_size or config.batch_size, skipped=skipped)

        self._plan = plan
        self._datasets = {split: (make_dataset or clips)(split)
                          for split in dict.fromkeys((plan.select_split, plan.eval_split))}
        self._predict = None  # (model, its traced predict function): traced once, reused every epoch

    def predictions(self, model, split: str, observers=()):
        """Every scored frame of ``split`` (:func:`trainer.evaluation.collect.collect_predictions`, with its ``observers``)."""
        from trainer.evaluation.collect import collect_predictions, predict_function

        if self._predict is None or self._predict[0] is not model:
            self._predict = (model, predict_function(model))
        return collect_predictions(model, self._datasets[split], self._plan.heads, self._plan.info,
                                   self._predict[1], observers)


def _open_writers(config: TrainConfig, plan: JobPlan, role, start_step: int):
    """``(train_writer, eval_writer)``; on the chief also records the run's options (``train_config.json``)."""
    import tensorflow as tf

    from tfrecords_schema import join_path
    from trainer.evaluation import tensorboard

    if not role.is_chief:
        return tf.summary.create_noop_writer(), tf.summary.create_noop_writer()
    tf.io.gfile.makedirs(join_path(config.job_dir, LOGS_DIRNAME))
    record_run_options(config, start_step)
    return (tf.summary.create_file_writer(join_path(config.job_dir, LOGS_DIRNAME, tensorboard.TRAIN_RUN)),
            tf.summary.create_file_writer(join_path(config.job_dir, LOGS_DIRNAME,
                                                    tensorboard.evaluation_run(plan.select_split))))



def _job_lock(config: TrainConfig, role):
    """The ``--job_dir`` lock of the chief (:func:`tfrecords_schema.locks.lock_folder`); other workers take none.

    Workers of one multi-worker job share the job directory, so only the chief locks it. A second training
    into the folder raises :class:`tfrecords_schema.locks.LockHeldError` naming the holder; a lock whose
    process is gone (same host) is taken over with a warning.
    """
    if not role.is_chief:
        return contextlib.nullcontext()
    from tfrecords_schema.locks import lock_folder

    return lock_folder(config.job_dir)

# ==================================================================================================
# Training: the epoch loop, its evaluations, the final export and report.


def divergence_message(epoch: int, split: str, precision: str, best_epoch: int, best_dir: str, error) -> str:
    """The error of an epoch whose outputs are not finite: what to change, and where the best epoch so far is (when
    one has been kept: none before the first evaluation)."""
    fix = "lower --learning_rate" + (", or train in float32" if precision != PRECISION_FLOAT32 else "")
    kept = (f"the best epoch so far ({best_epoch}) is in {best_dir}" if best_epoch > 0
            else "no epoch has been kept yet")
    return f"epoch {epoch}: the model's outputs are not finite on {split} (training diverged: {fix}); {kept}. ({error})"


def _evaluate_epoch(epoch: int, model, eval_model, evaluator: Evaluator, plan: JobPlan, state, eval_writer,
                    precision: str) -> dict:
    """Scores ``epoch`` on the selection split with the float32 copy; saves ``best/`` when it is the best.

    Logs the epoch to TensorBoard (:func:`trainer.evaluation.tensorboard.log_epoch`: metrics, validation loss, per-class
    F1, the confusion-matrix picture).
    """
    from trainer.evaluation import reports, tensorboard
    from trainer.evaluation.collect import NonFiniteOutputError

    eval_model.set_weights(model.get_weights())
    validation_loss = tensorboard.ValidationLoss(au_positive_weights=plan.au_positive_weights)
    try:
        result = evaluator.predictions(eval_model, plan.select_split, observers=[validation_loss]).result()
    except NonFiniteOutputError as e:
        raise TrainingError(divergence_message(epoch, plan.select_split, precision, int(state.best_epoch.numpy()),
                                               state.best_dir, e)) from e
    tensorboard.log_epoch(eval_writer, epoch, result, validation_loss=validation_loss.result(),
                          expression_names=plan.info.expression_names,
                          context=reports.ReportContext(plan.info.name, plan.select_split, eval_model.name, epoch))
    log.info("epoch %d %s: score %.4f, loss %s\n%s", epoch, plan.select_split, result["score"],
             json.dumps({k: round(v, 4) for k, v in validation_loss.result().items()}), reports.format_metrics(result))
    if state.record_epoch(epoch, result["score"]):
        log.info("new best epoch %d (score %.4f)", epoch, result["score"])
    return result


def _run_epochs(config: TrainConfig, plan: JobPlan, strategy, stage, train_step, start_step: int, input_seed: int,
                skipped, end_of_epoch, state, train_writer) -> None:
    """Steps from ``start_step`` to the end; ``end_of_epoch(epoch)`` after every epoch (True: stop early),
    checkpoints between."""
    import tensorflow as tf

    from trainer.training.progress import StepProgress

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return stage.train_dataset(input_context.get_per_replica_batch_size(config.batch_size), input_seed,
                                   input_context, skipped)

    from_service = bool(config.data_service) and not stage.trains_on_features
    if from_service:
        log.info("training batches from the tf.data service %s (job %s)", config.data_service,
                 stage.data_service_job(config.batch_size // strategy.num_replicas_in_sync, input_seed))
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    progress = StepProgress(plan.total_steps, plan.steps_per_epoch, config.log_every, train_writer, start_step)
    watch = None  # (The service's first batch: said when it does not come.)
    if from_service:  # Started where the loop's `finally` cancels it: an input that fails to build leaves no timer.
        from trainer.input import data_service

        watch = data_service.watch_first_batch(config.data_service, config.data)
    saved = start_step
    try:
        for s in range(start_step, plan.total_steps):
            try:
                values = train_step(iterator)
            except tf.errors.OutOfRangeError as e:
                raise TrainingError(
                    f"the training stream ended at step {s}: a bucket's shards yielded no records (every record "
                    "unreadable under --skip_corrupt?); check the data with affectstream inspect --verify") from e
            finally:
                if watch is not None:  # (Once: the first step has its batch, or failed.)
                    watch.cancel()
                    watch = None
            done = s + 1
            state.step.assign(done)
            progress.step_done(done, values)
            if done % plan.steps_per_epoch == 0:
                stop = end_of_epoch(done // plan.steps_per_epoch)
                state.save(done)
                saved = done
                if stop:
                    break
            elif done % config.checkpoint_every == 0:
                state.save(done)
                saved = done
    except KeyboardInterrupt:
        _save_on_interrupt(state, saved, strategy)
        raise
    train_writer.flush()


def _save_on_interrupt(state, saved: int, strategy) -> None:
    """After Ctrl-C or SIGTERM in the step loop: a checkpoint of the step reached, when it is past the last one saved,
    so that the rerun goes on from there (a preempted machine's SIGTERM otherwise lost up to ``--checkpoint_every``
    steps). The step counter is set after each step's update, so an interrupt between the two saves one step's update
    under the step before: the rerun then draws one batch more, nothing is lost. Not under ``multi_worker``: saving is
    a collective of every worker, and a signal reaches one."""
    import tensorflow as tf

    step = int(state.step.numpy())
    if step <= saved or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    state.save(step)
    log.warning("stopping: saved a checkpoint at step %d (run the same command to go on from it)", step)


def _read_last_epoch(job_dir: str, epochs_done: int) -> dict:
    """The job's :data:`LAST_EPOCH_FILENAME` when it is of the epoch the checkpoint ended with, else ``{}``."""
    from tfrecords_schema import join_path, storage

    path = join_path(job_dir, LAST_EPOCH_FILENAME)
    if not epochs_done or not storage.gfile(path).exists(path):
        return {}
    try:
        with storage.gfile(path).GFile(path, "r") as f:
            payload = json.load(f)
    except (ValueError, OSError):
        return {}
    return dict(payload) if isinstance(payload, dict) and payload.get("epoch") == epochs_done else {}


def _export_and_report(config: TrainConfig, plan: JobPlan, stage, eval_model, evaluator: Evaluator, best_dir: str,
                       skipped, last_epoch: dict) -> dict:
    """Restores the best epoch into the float32 model, exports it, scores it on the report split, writes reports.

    The epoch and score reported are the ones stored in the best checkpoint itself, so the export and
    the report always describe the same model. The exported model is the stage's (:meth:`Stage.export_model`:
    for the sequence stage the CNN joined to the trained stack), scored on the clips. When the best epoch was
    selected on the report split itself, ``last_epoch`` (the last epoch this process evaluated: ``{"epoch",
    "score"}``) is reported next to it: the figure that was not picked for being high.
    """
    import tensorflow as tf

    from tfrecords_schema import join_path
    from trainer.evaluation import plots, reports
    from trainer.evaluation.coverage import split_coverage
    from trainer.model.export import EXPORT_DIRNAME, export_model
    from trainer.training.model_info import model_info_payload
    from trainer.training.state import read_best_checkpoint

    stored = read_best_checkpoint(best_dir)
    if stored is None:
        raise TrainingError(f"no best checkpoint in {best_dir}: no epoch was evaluated, or best/ was lost and no "
                            "epoch was evaluated since (raise --epochs to evaluate more)")
    best_epoch, best_score, best = stored
    tf.train.Checkpoint(model=eval_model).restore(best).assert_existing_objects_matched().expect_partial()
    eval_model = stage.export_model(eval_model)
    paths = export_model(eval_model, join_path(config.job_dir, EXPORT_DIRNAME),
                         model_info_payload(config, plan.info, plan.heads, best_epoch=best_epoch,
                                            best_score=best_score, selected_on=plan.select_split,
                                            extras=stage.model_info()), locked=True)

    va_density = plots.VADensity()
    skipped_before = skipped.total if skipped is not None else 0
    predictions = evaluator.predictions(eval_model, plan.eval_split, observers=[va_density])
    result = predictions.result()
    skipped_here = (skipped.total - skipped_before) if skipped is not None else 0  # by this evaluation's reads
    result.update({"best_epoch": best_epoch, "split": plan.eval_split, "selected_on": plan.select_split,
                   "coverage": split_coverage(plan.info, plan.eval_split, predictions.scored_frames,
                                               predictions.labelled_frames_read, skipped_here)})
    if skipped is not None:
        result["skipped_corrupt_records"] = skipped.total
    if plan.select_split == plan.eval_split and last_epoch:
        result["last_epoch"] = dict(last_epoch)
    paths.update(reports.write_reports(
        result, predictions.per_video(), plan.info.expression_names,
        metrics_path=join_path(config.job_dir, reports.METRICS_FILENAME),
        report_dir=join_path(config.job_dir, REPORTS_DIRNAME), va_density=va_density,
        context=reports.ReportContext(plan.info.name, plan.eval_split, f"{eval_model.name} selected on "
                                      f"{plan.select_split}", best_epoch)))
    print(f"best epoch {best_epoch} (selected on {plan.select_split}), scored on {plan.eval_split}:")
    print(reports.format_metrics(result))
    if "last_epoch" in result:
        print(f"selected on the split it is scored on, so the score above is optimistic; the last epoch "
              f"({result['last_epoch']['epoch']}) scored {result['last_epoch']['score']:.4f} on {plan.eval_split}")
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
        TrainingError: the job cannot go on (bad split, batch size, crop size, checkpoint, non-finite loss...).
        DatasetInfoError, ValueError, CorruptShardError: bad data or options (clear messages).
        tfrecords_schema.locks.LockHeldError: another training holds ``--job_dir``.
    """
    from tfrecords_schema import SPLIT_TRAIN
    from trainer.training import distribution
    from trainer.training.preflight import check_data_crop_size, check_evaluated_shards, check_job_dir

    # 1. The strategy, before any other TensorFlow op (MultiWorkerMirroredStrategy needs that).
    strategy, role = distribution.make_strategy(config.strategy)
    distribution.check_same_options(strategy, role, to_dict(config))  # the workers of one job agree (one all-gather)

    # 2. The plan, checked against the data before anything is written (trainer.training.preflight: the frames
    #    have the size dataset_info.json says).
    plan = plan_job(config, strategy, role)
    if role.is_chief:  # The chief writes the export.
        check_job_dir(config.job_dir, config.data)
    check_data_crop_size(config.data, plan.info, dict.fromkeys((SPLIT_TRAIN, plan.select_split, plan.eval_split)))
    if role.is_chief and not config.skip_corrupt:  # The chief evaluates: a corrupt shard fails now, not after epoch 1.
        check_evaluated_shards(config.data, plan.info, dict.fromkeys((plan.select_split, plan.eval_split)))

    # 3. The job directory's lock (chief only): a second training into it stops here, naming the holder.
    #    A non-chief worker's scratch folders (its checkpoints, its features) go however the job ends, an error included.
    # A local --job_dir this run creates (with its lock) and that a failure leaves empty is removed: nothing to resume.
    created = role.is_chief and "://" not in config.job_dir and not os.path.lexists(config.job_dir)
    try:
        with _job_lock(config, role), contextlib.ExitStack() as cleanup:
            return _train_planned(config, strategy, role, plan, cleanup)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(config.job_dir)  # (Only when empty.)
        raise


def _train_planned(config: TrainConfig, strategy, role, plan: JobPlan, cleanup: contextlib.ExitStack) -> dict:
    """The planned job, under its lock: stage, models, resume, the epoch loop, the export (see :func:`train`).

    ``cleanup`` closes the stage and the training state when the job ends, whether or not it raised.
    """
    import keras

    from trainer.evaluation import tensorboard
    from trainer.input.records import SkippedRecords
    from trainer.training import distribution
    from trainer.training.preflight import check_weights_crop_size
    from trainer.training.stages import make_stage
    from trainer.training.state import TrainState
    from trainer.training.step import build_model_and_optimizer, loss_scaled, make_train_step

    # 4. The stage (trainer.training.stages; the sequence stage takes its backbone options from --init_from, and
    #    checks its crop size), and the evaluation datasets (built once; their shards are checked here).
    skipped = SkippedRecords() if config.skip_corrupt else None
    stage = make_stage(config, plan)
    cleanup.callback(stage.close, role)
    config = stage.config
    evaluator = Evaluator(config, plan, skipped)

    # 5. Models and state: the training model in the strategy, a float32 copy outside it that evaluates
    #    and exports (weights copied in; no distributed reads). Checkpoints carry the job's fingerprint
    #    (with the crop size: a resume on other crops is refused); a --weights file must fit the crops.
    keras.utils.set_random_seed(config.seed)
    spec = stage.model_spec()
    check_weights_crop_size(config, spec)
    eval_model = stage.build(spec)
    model, optimizer = build_model_and_optimizer(config, spec, strategy, total_steps=plan.total_steps,
                                                 builder=stage.build)
    state = TrainState(model, optimizer, config.job_dir, role, config.keep_checkpoints,
                       fingerprint=stage.fingerprint(), allow_data_change=config.allow_data_change)
    cleanup.callback(state.close)

    # 6. Resume (refused on other data or options): a resumed run reseeds the input with seed + step (the
    #    tf.data iterator is not saved). Then the stage's own preparation (the sequence stage's features).
    start_step = state.restore(plan.total_steps)
    input_seed = config.seed + start_step
    stage.prepare(role, skipped)
    epoch_evaluator = (Evaluator(config, plan, skipped, stage.eval_dataset_fn(skipped)) if stage.trains_on_features
                       else evaluator)
    train_writer, eval_writer = _open_writers(config, plan, role, start_step)
    if not stage.trains_on_features:
        starting = role.is_chief and start_step < plan.total_steps
        if starting:  # JOB/input_mix.json: what the first batches hold for every head (labels only)
            write_input_mix(config, plan, stage.train_seq_len, input_seed, skipped)
        frame_mix_setup(config, plan, stage.train_seq_len, input_seed, skipped, starting)
    train_step = make_train_step(model, optimizer, strategy, global_frames=config.batch_size * stage.train_seq_len,
                                 loss_scale=loss_scaled(config.precision), jit=plan.jit,
                                 frozen_layers=stage.frozen_layers(model),
                                 au_positive_weights=plan.au_positive_weights)

    # The last epoch evaluated (by this run, or the one the checkpoint ended): reported when selection and report
    # share a split.
    last_epoch = _read_last_epoch(config.job_dir, int(state.epochs_done.numpy()))

    def end_of_epoch(epoch: int) -> bool:
        """Evaluates ``epoch``, unfreezes the backbone after its frozen epochs; True when the job stops early."""
        result = _evaluate_epoch(epoch, model, eval_model, epoch_evaluator, plan, state, eval_writer,
                                 config.precision)
        last_epoch.update(epoch=epoch, score=result["score"])
        if role.is_chief:
            from tfrecords_schema import join_path
            from tfrecords_schema.atomic import write_json

            write_json(join_path(config.job_dir, LAST_EPOCH_FILENAME), last_epoch)
        tensorboard.log_learning_rate(train_writer, epoch * plan.steps_per_epoch, optimizer)
        train_step.freeze_for_epoch(epoch, config.freeze_backbone_epochs)
        return state.stops_early(config.early_stopping)

    # 7. A checkpoint at an epoch boundary whose evaluation had not run yet: evaluate it first.
    epoch_at_start = start_step // plan.steps_per_epoch
    if start_step and start_step % plan.steps_per_epoch == 0 and int(state.epochs_done.numpy()) < epoch_at_start:
        end_of_epoch(epoch_at_start)
        state.save(start_step)

    # 8. The epoch loop (not after an early stop, also one the restored state had reached).
    train_step.freeze_for_epoch(start_step // plan.steps_per_epoch, config.freeze_backbone_epochs)
    if start_step < plan.total_steps and not state.stops_early(config.early_stopping):
        _run_epochs(config, plan, strategy, stage, train_step, start_step, input_seed, skipped, end_of_epoch, state,
                    train_writer)
    log.info("training finished at step %d, weights sha256 %s (trainable %s)", int(state.step.numpy()),
             distribution.weights_checksum(model), distribution.weights_checksum(model, trainable_only=True))

    # 9. The chief exports the best epoch and reports it. (The skipped count is logged after: its final evaluation
    #    reads the shards once more.)
    final = (_export_and_report(config, plan, stage, eval_model, evaluator, state.best_dir, skipped, last_epoch)
             if role.is_chief else {})
    if skipped is not None:
        log.warning("--skip_corrupt: %d unreadable record(s) skipped in this process (counted per pass over a "
                    "corrupt shard)", skipped.total)
    return final
