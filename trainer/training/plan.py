"""A training job's plan: its options resolved against the data and the strategy, before any model exists.

* :func:`plan_job` reads ``dataset_info.json``, checks the splits and the batch size against the data and the
  replicas, and resolves the steps (:func:`resolve_steps_per_epoch`) and XLA into a :class:`JobPlan`;
* :func:`model_spec_for` is the :class:`trainer.model.spec.ModelSpec` the options describe on this data;
* :func:`write_input_mix` measures what the first training batches hold for every head and writes
  ``JOB/input_mix.json`` (:mod:`trainer.input.input_mix`), with one summary line in the log;
* :func:`frame_mix_setup`: ``--balance_frames`` sets the plan's class weights from the stream's frame class mix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence

from tfrecords_schema import HEAD_EXPRESSION, SPLIT_SELECTION, SPLIT_TRAIN, SPLIT_VALIDATION, TASK_EXPRESSION
from trainer.common.choices import PRECISION_BFLOAT16, PRECISION_FLOAT32, STAGE_FRAMES
from trainer.common.errors import TrainingError
from trainer.training.config import ConfigError, TrainConfig

log = logging.getLogger("trainer.train")

CLASS_MIX_BATCHES = 4  # training batches whose expression frame class mix --balance_frames logs at start-up


# ==================================================================================================
# Options resolved against the data.


def resolve_steps_per_epoch(config: TrainConfig, info) -> int:
    """Steps per epoch: ``--steps_per_epoch``, or from the data.

    From the data: ``clips_per_epoch // batch_size`` for ``downsample``, else train clips // batch size
    (at least 1), times ``--windows_per_clip`` (an epoch holds that many windows of every clip). With ``downsample`` a warning is logged when an epoch of steps is not exactly one
    minority-count block of the input (``clips_per_epoch`` clips), also for an explicit ``--steps_per_epoch``.

    Args:
        config: The training options.
        info: The dataset info.

    Returns:
        Steps per epoch (>= 1).
    """
    from trainer.input import sampling

    clips = sampling.clips_per_epoch(info, config.sampling, config.task)
    if clips is not None:
        clips *= config.windows_per_clip  # windows per epoch
    if config.steps_per_epoch:
        if clips is not None and config.steps_per_epoch * config.batch_size != clips:
            log.warning("downsample: --steps_per_epoch %d x --batch_size %d = %d clips per epoch, but a downsample "
                        "epoch is clips_per_epoch = %d clips (the minority count of every class); epochs will not "
                        "hold exactly the minority count of every class (leave --steps_per_epoch unset to use %d)",
                        config.steps_per_epoch, config.batch_size, config.steps_per_epoch * config.batch_size,
                        clips, max(1, clips // config.batch_size))
        return config.steps_per_epoch
    if clips is not None and clips % config.batch_size:
        log.warning("downsample: an epoch of %d clips is not a whole number of batches of %d; epochs will not "
                    "line up exactly with the input's minority-count blocks", clips, config.batch_size)
    if clips is None:
        clips = (info.splits["train"].num_clips if "train" in info.splits else 0) * config.windows_per_clip
    return max(1, clips // config.batch_size)


def model_spec_for(config: TrainConfig, info, heads: Sequence[str]):
    """The :class:`trainer.model.spec.ModelSpec` of ``config`` for this data and these heads (any sequence length)."""
    from trainer.model.spec import ModelSpec

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
        temporal=config.temporal,
        rnn_units=config.rnn_units,
        temporal_width=config.temporal_width,
        temporal_layers=config.temporal_layers,
        max_window=config.max_window,
        dropout=config.dropout,
        augment=config.augment,
    )


def write_input_mix(config: TrainConfig, plan, seq_len: int, input_seed: int, skipped) -> dict:
    """Measures the first training batches for every head, writes ``JOB/input_mix.json``, logs one line.

    The stream is the job's (its task, sampling, batch size and ``input_seed``; one pipeline), labels only: no
    JPEG is decoded (:func:`trainer.input.input_mix.measure_input_mix`).

    Returns:
        The report written.
    """
    from tfrecords_schema import join_path
    from tfrecords_schema.atomic import write_json
    from trainer.input.input_mix import INPUT_MIX_BATCHES, INPUT_MIX_FILENAME, measure_input_mix, summary_line

    report = measure_input_mix(config.data, plan.info, task=config.task, sampling=config.sampling, seq_len=seq_len,
                               batch_size=config.batch_size, num_batches=INPUT_MIX_BATCHES, seed=input_seed,
                               au_positive_weights=plan.au_positive_weights, skipped=skipped)
    path = join_path(config.job_dir, INPUT_MIX_FILENAME)
    write_json(path, report)
    log.info("%s (%s)", summary_line(report), path)
    return report


def frame_mix_setup(config: TrainConfig, plan, seq_len: int, input_seed: int, skipped, log_mix: bool) -> None:
    """``--balance_frames``: sets ``plan.class_weights`` and, with ``log_mix``, logs the frame class mix it gives.

    The weights are measured on the stream of ``config.seed`` (not the resume seed), so a resumed job gets
    the same ones (:func:`trainer.input.mixing.balanced_frame_weights`). The logged mix is the expression class
    share of the loss weight in the first ``CLASS_MIX_BATCHES`` batches (:func:`trainer.input.mixing.frame_mix_report`).
    """
    from trainer.input.mixing import balanced_frame_weights, frame_mix_report

    if config.balance_frames:
        plan.class_weights = balanced_frame_weights(config.data, plan.info, task=config.task, seq_len=seq_len,
                                                    sampling=config.sampling, seed=config.seed, skipped=skipped)
    if log_mix and config.balance_frames and HEAD_EXPRESSION in plan.heads:
        report = frame_mix_report(config.data, plan.info, task=config.task, sampling=config.sampling, seq_len=seq_len,
                                  batch_size=config.batch_size, num_batches=CLASS_MIX_BATCHES, seed=input_seed,
                                  class_weights=plan.class_weights, skipped=skipped)
        log.info("frame class mix of the first %d batches (%s sampling%s): %s", CLASS_MIX_BATCHES, config.sampling,
                 ", --balance_frames" if config.balance_frames else "", json.dumps(report, sort_keys=True))


def default_select_split(config: TrainConfig, info) -> str:
    """The split the best epoch is selected on: ``--select_split``, else the data's ``selection`` split (a
    subject-disjoint slice of the train subjects, :mod:`beam_jobs.sources.selection`), else ``validation`` when the
    report split is another (``--eval_split test``: a test figure must not pick the epoch it reports), else the
    report split."""
    if config.select_split:
        return config.select_split
    if SPLIT_SELECTION in info.splits:
        return SPLIT_SELECTION
    if config.eval_split != SPLIT_VALIDATION and SPLIT_VALIDATION in info.splits:
        return SPLIT_VALIDATION
    return config.eval_split


# ==================================================================================================
# The plan.


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
    au_positive_weights: object = None  # --au_positive_weight: per-AU weights of the positives in the AU loss


def _check_labelled_heads(info, heads: tuple[str, ...], select_split: str | None, config: TrainConfig) -> None:
    """Refuses heads that no train frame labels (a multi-task job would export an untrained head) and a selection
    split that labels none of the heads (every epoch would score 0 and the first would stay the best); warns of a head
    the selection split does not label, which the selection score then leaves out (:func:`primary_score`). Data
    written before the conversion counted labelled frames per task (no ``task_frames``) is not checked."""
    from tfrecords_schema import TASK_OF_HEAD

    def unlabelled(split: str | None) -> list[str] | None:
        if split not in info.splits:
            return None
        frames = info.splits[split].task_frames
        if not frames and info.splits[split].accounting.written_frames:  # Counted before task_frames existed.
            return None
        return [h for h in heads if not frames.get(TASK_OF_HEAD[h], 0)]

    untrained = unlabelled(SPLIT_TRAIN)
    if untrained:
        trainable = [TASK_OF_HEAD[h] for h in heads if h not in untrained]
        raise TrainingError(f"no train frame of {config.data} is labelled for {', '.join(untrained)}: that head would "
                            "be exported untrained; "
                            + (f"train --task {' or '.join(trainable)}" if trainable else "convert train labels first"))
    unscored = unlabelled(select_split)
    if unscored and len(unscored) == len(heads):
        raise TrainingError(f"the {select_split!r} split of {config.data} labels no frame for {', '.join(heads)}: "
                            "no epoch could be told better than another; give --select_split a split that does")
    if unscored:
        log.warning("the %r split labels no frame for %s: the best epoch is selected on the other heads only",
                    select_split, ", ".join(unscored))
    if HEAD_EXPRESSION in heads:
        _warn_of_untrainable_classes(info, select_split, config)


def _warn_of_untrainable_classes(info, select_split: str | None, config: TrainConfig) -> None:
    """Warns of expression classes the train split has no frame of: the model can never predict them, yet an
    evaluated split that holds them scores them (an F1 of 0 each in its macro-F1), and a train split of one class
    trains a constant. Data counted before per-class frames were recorded (no ``class_frames``) is not checked, nor
    data without a train split (refused later, in its own words). ``select_split`` None: nothing is evaluated
    (``input-rate``), only the train split is looked at."""
    if SPLIT_TRAIN not in info.splits:
        return
    train = info.splits[SPLIT_TRAIN].class_frames.get(TASK_EXPRESSION)
    if not train:
        return
    trained = [name for name, n in train.items() if n]
    if len(trained) == 1:
        log.warning("every labelled train frame of %s is of one expression class (%s): the model can only learn to "
                    "answer it", config.data, trained[0])
    evaluated = (select_split, config.eval_split) if select_split is not None else ()
    for split in dict.fromkeys(s for s in evaluated if s in info.splits):
        frames = info.splits[split].class_frames.get(TASK_EXPRESSION, {})
        missing = {name: n for name, n in frames.items() if n and not train.get(name)}
        if missing:
            log.warning("the %r split has frames of expression class(es) no train frame is labelled with (%s): the "
                        "model cannot predict them, and their F1 of 0 counts in that split's macro-F1", split,
                        ", ".join(f"{name}: {n} frames" for name, n in missing.items()))


def plan_job(config: TrainConfig, strategy, role, evaluates: bool = True) -> JobPlan:
    """Reads the dataset info and checks the options against it and the strategy; logs the plan.

    ``evaluates=False`` (``input-rate``, which only reads the train stream) leaves out the lines about the split the
    best epoch is selected on, which would describe a selection that never happens.

    Raises:
        TrainingError: a split that the data lacks, a batch size that the replicas do not divide.
    """
    from tfrecords_schema import HEAD_ACTION_UNITS, read_dataset_info
    from trainer.input import sampling
    from trainer.input.pipeline import heads_for_task
    from trainer.training import distribution
    from trainer.training.step import resolve_jit_compile

    info = read_dataset_info(config.data)
    try:
        heads = heads_for_task(info, config.task)
    except ValueError as e:  # --task the data has no labels for: an option that does not fit the data (exit 2)
        raise ConfigError(f"--task {config.task}: {e}") from e
    select_split = default_select_split(config, info)
    for flag, split in (("--eval_split", config.eval_split), ("--select_split", select_split)):
        if split not in info.splits:
            raise TrainingError(f"{flag} {split!r} is not in {config.data} (splits: {sorted(info.splits)})")
    _check_labelled_heads(info, heads, select_split if evaluates else None, config)
    if config.loss_weighting != "none" and HEAD_EXPRESSION not in heads:  # (--task multi on data without them.)
        raise TrainingError(f"--loss_weighting {config.loss_weighting} weighs the expression classes, and "
                            f"{config.data} has no expression labels: leave it out")
    if config.loss_weighting != "none" and config.sampling != "natural" and sampling.expected_class_mix(
            info, sampling.bucket_weights(info, config.sampling, config.task), TASK_EXPRESSION) is not None:
        # The weights come from the train frames' class counts: on a draw that already evens the classes out they
        # count the rare ones twice (an audit measured Disgust at 25 % of the loss and Neutral at 4 %).
        raise TrainingError(f"--loss_weighting {config.loss_weighting} weights the expression classes by their "
                            f"train-frame counts, and --sampling {config.sampling} already draws the clips of rare "
                            "classes more often: together they count the rare classes twice. Use --loss_weighting "
                            "with --sampling natural, or leave it out (--balance_frames evens the frame mix the "
                            "draw gives)")
    if config.balance_frames:  # Refused now rather than once the model is built (frame_mix_setup).
        from trainer.input.mixing import frame_mix_targets

        try:
            frame_mix_targets(info, config.sampling, config.task)
        except ValueError as e:
            raise TrainingError(str(e)) from e
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
    if config.stage != STAGE_FRAMES and config.seq_len > info.clip_length:  # (The frames stage reads single frames.)
        log.warning("--seq_len %d is longer than the clips of %s (%d frames): every window is at least %d%% padding, "
                    "which the model is fed and input-rate counts as frames; convert with --clip_length %d or more, or "
                    "lower --seq_len", config.seq_len, config.data, info.clip_length,
                    100 * (config.seq_len - info.clip_length) // config.seq_len, config.seq_len)
    if config.precision != PRECISION_FLOAT32 and not use_gpu and not (
            config.precision == PRECISION_BFLOAT16 and distribution.cpu_has_bfloat16()):
        log.warning("--precision %s without a GPU: 16-bit arithmetic on this CPU is emulated and slow (a check, "
                    "not a speed-up)", config.precision)
    log.info("strategy %s: %s (%d replicas), chief=%s, heads %s, %d steps/epoch x %d epochs = %d steps, XLA %s",
             config.strategy, type(strategy).__name__, num_replicas, role.is_chief, list(heads), steps_per_epoch,
             config.epochs, plan.total_steps, plan.jit)
    unbalanced = sampling.unbalanced_tasks(info, config.task)
    if unbalanced:
        log.warning("the train buckets of %s (bucket_by %s) do not name the class of task(s) %s: %s sampling cannot "
                    "balance them, their clips are drawn by the buckets as they are; convert again with "
                    "--bucket_by tasks", config.data, info.bucket_by, ", ".join(unbalanced), config.sampling)
    if HEAD_ACTION_UNITS in heads:
        plan.au_positive_weights = sampling.au_positive_weights(info, config.au_positive_weight)
        if plan.au_positive_weights is not None:
            log.info("AU positive weights (--au_positive_weight %s, from the train split's AU rates): %s",
                     config.au_positive_weight, json.dumps({n: round(float(w), 3) for n, w in
                                                            zip(info.action_unit_names, plan.au_positive_weights)}))
    if evaluates:
        _log_selection(config, select_split)
    return plan


def _log_selection(config: TrainConfig, select_split: str) -> None:
    """The split the best epoch is selected on, and warnings where that score flatters the model."""
    log.info("best epoch selected on %r, final report on %r", select_split, config.eval_split)
    if select_split == SPLIT_TRAIN and config.select_split:
        log.warning("--select_split %s selects the best epoch on the frames it trains on: the score rewards fitting "
                    "them, not generalising (the data's 'selection' or 'validation' split is the usual choice)",
                    SPLIT_TRAIN)
    if select_split == config.eval_split:
        log.warning("the best epoch is selected on %r, the split it is reported on: that score is optimistic (the "
                    "last epoch's score is reported next to it)%s", select_split,
                    "" if config.select_split or select_split == SPLIT_SELECTION else
                    f"; {config.data} has no {SPLIT_SELECTION!r} split (convert with --select_fraction > 0 and "
                    "enough train subjects for one)")
