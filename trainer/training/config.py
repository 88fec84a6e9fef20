"""Training options: defaults, a JSON config file, command-line flags (which override the file).

Every choice is validated when the :class:`TrainConfig` is built, with a message
listing the valid values. Example config file::

    {"data": "out/", "task": "expr", "job_dir": "jobs/run1", "epochs": 20,
     "batch_size": 32, "seq_len": 16, "sampling": "sqrt", "backbone": "simple_cnn"}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfrecords_schema.cli import command_prog
from tfrecords_schema.tasks import TASK_EXPRESSION, TASK_MULTI
from trainer.common.choices import (
    BACKBONES,
    JIT_CHOICES,
    OPTIMIZER_CHOICES,
    PRECISION_FLOAT16,
    PRECISION_FLOAT32,
    PRECISIONS,
    STAGE_END_TO_END,
    STAGE_FRAMES,
    STAGE_SEQUENCE,
    STAGES,
    TASK_CHOICES,
    TEMPORAL_HEADS,
    TEMPORAL_TRANSFORMER,
)
from trainer.common.choices import LR_SCHEDULES as LR_SCHEDULE_CHOICES
from trainer.common.choices import STRATEGIES as STRATEGY_CHOICES
from trainer.input.sampling import AU_POSITIVE_WEIGHT_MAX
from trainer.input.sampling import AU_POSITIVE_WEIGHTINGS as AU_POSITIVE_WEIGHT_CHOICES
from trainer.input.sampling import LOSS_WEIGHTINGS as LOSS_WEIGHTING_CHOICES
from trainer.input.sampling import SAMPLING_MODES as SAMPLING_CHOICES


class ConfigError(ValueError):
    """An invalid option or config file."""


@dataclasses.dataclass
class TrainConfig:
    """Every option of ``python -m trainer.train`` (see the module docstring of trainer.train).

    ``steps_per_epoch`` None means: ``clips_per_epoch // batch_size`` for ``downsample``
    sampling, otherwise train clips // batch_size (at least 1). ``select_split`` None means: the best
    epoch is selected on the data's ``selection`` split (a subject-disjoint slice of the train subjects, held out
    by the conversion), or on ``eval_split`` when the data has none (then the last epoch's score is reported too).
    """

    data: str = ""
    task: str = "expr"
    job_dir: str = ""
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 32
    eval_batch_size: int | None = None
    seq_len: int = 16
    sampling: str = "balanced"
    loss_weighting: str = "none"
    au_positive_weight: str = "sqrt"
    balance_frames: bool = False
    windows_per_clip: int = 1
    data_service: str | None = None
    backbone: str = "simple_cnn"
    weights: str = "none"
    freeze_backbone_epochs: int = 0
    stage: str = STAGE_END_TO_END
    init_from: str | None = None
    features_from: str | None = None
    feature_layer: str | None = None
    class_map: str | None = None
    cnn_width: float = 1.0
    feature_dim: int = 300
    dropout: float = 0.5
    temporal: str = "gru"
    rnn_units: list[int] = dataclasses.field(default_factory=lambda: [100, 100, 50])
    temporal_width: int = 64
    temporal_layers: int | None = None
    max_window: int = 256
    strategy: str = "auto"
    precision: str = PRECISION_FLOAT32
    mixed_precision: bool = False  # the old option: an alias of precision mixed_float16
    jit_compile: str = "auto"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    early_stopping: int = 0
    allow_data_change: bool = False
    seed: int = 0
    augment: bool = True
    eval_split: str = "validation"
    select_split: str | None = None
    skip_corrupt: bool = False
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    verbose: bool = False

    def __post_init__(self):
        self._check_types()  # First: a config file's "no" is a true string, and the lines below read the options.
        if self.mixed_precision:  # --mixed_precision, the option's old form: mixed_float16
            if self.precision not in (PRECISION_FLOAT32, PRECISION_FLOAT16):
                raise ConfigError(f"--mixed_precision means --precision {PRECISION_FLOAT16}; it contradicts "
                                  f"--precision {self.precision}")
            self.precision = PRECISION_FLOAT16
        self.mixed_precision = self.precision == PRECISION_FLOAT16
        if self.stage == STAGE_SEQUENCE and self.init_from and not self.features_from:
            # --init_from of the sequence stage, before --features_from generalised it: the same thing.
            self.features_from, self.init_from = self.init_from, None
        self.validate()

    def _check_types(self) -> None:
        """Raises ConfigError on a value of the wrong JSON type (flags arrive typed; a ``--config`` file's do not)."""
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.type
            if kind == "str | None" and value is None:
                continue
            if kind == "bool" and not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"--{field.name} must be true or false (a JSON true/false in a config file), "
                                  f"got {value!r}")
            if kind in ("str", "str | None"):
                if isinstance(value, os.PathLike):  # (A pathlib.Path from Python code.)
                    value = os.fspath(value)
                if not isinstance(value, str):
                    raise ConfigError(f"--{field.name} must be a string, got {value!r}")
            if kind == "int":
                if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
                    raise ConfigError(f"--{field.name} must be an integer, got {value!r}")
                value = int(value)
            if kind == "float":
                if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)) \
                        or not math.isfinite(value):
                    raise ConfigError(f"--{field.name} must be a finite number, got {value!r}")
                value = float(value)
            if kind == "list[int]":
                if not isinstance(value, (list, tuple)) or any(
                        not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)) for v in value):
                    raise ConfigError(f"--{field.name} must be a list of integers (a JSON array such as [100, 100, 50] "
                                      f"in a config file), got {value!r}")
                value = [int(v) for v in value]
            setattr(self, field.name, bool(value) if kind == "bool" else value)

    def validate(self) -> None:
        """Raises ConfigError on a missing or invalid option (listing the valid values)."""

        def choice(name: str, valid: Sequence[str]) -> None:
            value = getattr(self, name)
            if value not in valid:
                raise ConfigError(f"invalid --{name} {value!r}; valid values: {', '.join(valid)}")

        choice("task", TASK_CHOICES)
        choice("sampling", SAMPLING_CHOICES)
        choice("loss_weighting", LOSS_WEIGHTING_CHOICES)
        choice("au_positive_weight", AU_POSITIVE_WEIGHT_CHOICES)
        choice("backbone", BACKBONES)
        choice("temporal", TEMPORAL_HEADS)
        choice("strategy", STRATEGY_CHOICES)
        choice("jit_compile", JIT_CHOICES)
        choice("precision", PRECISIONS)
        choice("optimizer", OPTIMIZER_CHOICES)
        choice("lr_schedule", LR_SCHEDULE_CHOICES)
        choice("stage", STAGES)
        for name in ("freeze_backbone_epochs", "warmup_steps", "early_stopping"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"--{name} must be an integer >= 0, got {value!r}")
        for name in ("epochs", "batch_size", "seq_len", "checkpoint_every", "keep_checkpoints", "log_every",
                     "feature_dim", "temporal_width", "max_window", "windows_per_clip"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {value!r}")
        for name in ("steps_per_epoch", "eval_batch_size", "temporal_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"--{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.cnn_width > 0:
            raise ConfigError(f"--cnn_width must be > 0, got {self.cnn_width!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout!r}")
        if not self.rnn_units or any((not isinstance(u, int)) or u < 1 for u in self.rnn_units):
            raise ConfigError(f"--rnn_units must be positive integers, e.g. 100,100,50; got {self.rnn_units!r}")
        if self.temporal == TEMPORAL_TRANSFORMER and self.seq_len > self.max_window:
            raise ConfigError(f"--temporal transformer takes windows of up to --max_window {self.max_window} frames, "
                              f"got --seq_len {self.seq_len}")
        if not self.data:
            raise ConfigError("--data is required: the output directory (or gs:// / s3:// URL) of beam_jobs.convert")
        if not self.job_dir:
            raise ConfigError("--job_dir is required: where checkpoints, logs, the export and reports go")
        self._validate_input()
        self._validate_weights_and_stage()

    def _validate_weights_and_stage(self) -> None:
        if self.weights not in ("none", "imagenet") and not os.path.isfile(self.weights):
            raise ConfigError(f"--weights {self.weights!r}: valid values are imagenet, none or the path of a local "
                              "weights file (no such file)")
        if self.weights not in ("none", "imagenet") and not self.weights.lower().endswith((".h5", ".keras")):
            # (Keras reads weights from these only; any other file failed once the model was built, exit 1.)
            raise ConfigError(f"--weights {self.weights!r}: not a Keras weights file (.weights.h5, .h5 or .keras)")
        if self.weights == "imagenet" and self.backbone == "simple_cnn":
            raise ConfigError("--weights imagenet: simple_cnn has no ImageNet weights; valid with --backbone "
                              "mobilenet_v3_small or efficientnet_b0 (or pass a local weights file)")
        if self.freeze_backbone_epochs and self.weights == "none" and not self.init_from:
            raise ConfigError("--freeze_backbone_epochs needs a pretrained backbone (--weights imagenet or a file, or "
                              "--init_from EXPORT): freezing a random backbone trains nothing")
        if self.init_from and self.weights != "none":
            raise ConfigError("--init_from EXPORT starts the CNN from that export: leave --weights unset")
        if self.stage == STAGE_SEQUENCE:
            if not self.features_from:
                raise ConfigError("--stage sequence needs --features_from EXPORT: an export (a training job's, e.g. "
                                  "--stage frames, or an imported model) whose per-frame network makes the features")
            if self.weights != "none" or self.freeze_backbone_epochs:
                raise ConfigError("--stage sequence takes its (frozen) backbone from --features_from: leave --weights "
                                  "and --freeze_backbone_epochs unset")
        elif self.features_from:
            raise ConfigError(f"--features_from is for --stage sequence, not --stage {self.stage} (to fine-tune an "
                              "export's CNN: --init_from)")
        if self.feature_layer and not self.features_from:
            raise ConfigError("--feature_layer names a layer of the --features_from export (--stage sequence)")
        if self.class_map and not (self.stage == STAGE_FRAMES and self.init_from):
            raise ConfigError("--class_map maps the classes of an --init_from export's head onto the data's: it goes "
                              "with --stage frames --init_from EXPORT")
        if self.class_map and self.task not in (TASK_EXPRESSION, TASK_MULTI):
            raise ConfigError(f"--class_map maps expression classes, and --task {self.task} trains no expression head "
                              "(the map was ignored)")

    def _validate_input(self) -> None:
        """The training input's options: --balance_frames and --data_service."""
        from trainer.input.data_service import check_address

        if self.balance_frames and self.loss_weighting != "none":
            raise ConfigError(f"--balance_frames sets the expression class weights itself: leave --loss_weighting "
                              f"none (got {self.loss_weighting!r})")
        if self.loss_weighting != "none" and self.task not in (TASK_EXPRESSION, TASK_MULTI):
            raise ConfigError(f"--loss_weighting weighs the expression classes in the loss: use it with --task expr "
                              f"or multi, not {self.task!r} (it would be ignored)")
        if self.balance_frames and self.task not in (TASK_EXPRESSION, TASK_MULTI):
            raise ConfigError(f"--balance_frames weighs expression frames: use it with --task expr or multi, not "
                              f"{self.task!r}")
        if self.stage == STAGE_SEQUENCE and (self.balance_frames or self.data_service):
            raise ConfigError("--stage sequence reads precomputed features in process: --balance_frames and "
                              "--data_service apply to the clip stages (end_to_end, frames)")
        if self.data_service is not None:
            try:
                check_address(self.data_service)
            except ValueError as e:
                raise ConfigError(f"--data_service: {e}") from e
            if self.skip_corrupt:
                raise ConfigError("--skip_corrupt cannot count skipped records on tf.data service workers: verify "
                                  "the shards (affectstream inspect DATA --verify) or train without --data_service")

    @property
    def backbone_weights(self) -> str | None:
        """The backbone weights: None (random), ``"imagenet"`` or a local weights file."""
        return None if self.weights == "none" else self.weights


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 100,100,50, got {text!r}") from e


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser(job_dir_help: str = "checkpoints, logs, export and reports go here") -> argparse.ArgumentParser:
    """The command-line parser; every default is None so unset flags do not override the config file (``job_dir_help``:
    what ``--job_dir`` does in the command using it)."""
    p = argparse.ArgumentParser(
        prog=command_prog("trainer.train"),
        description="Train the AffectStream CNN+RNN on a beam_jobs.convert output.",
        argument_default=None,
    )
    p.add_argument("--config", help="JSON file with any of the options below (flags override it)")
    p.add_argument("--data", help="conversion output directory or gs:// / s3:// URL")
    p.add_argument("--task", help=f"one of {', '.join(TASK_CHOICES)}")
    p.add_argument("--job_dir", help=job_dir_help)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps_per_epoch", type=int)
    p.add_argument("--batch_size", type=int, help="global batch size (clips)")
    p.add_argument("--eval_batch_size", type=int)
    p.add_argument("--seq_len", type=int, help="frames per training sequence")
    p.add_argument("--sampling", help=f"one of {', '.join(SAMPLING_CHOICES)}: the trained task's class mix of the "
                   "drawn clips (balanced: uniform over its classes; for multi, each clip's task drawn in turn)")
    p.add_argument("--loss_weighting", help=f"one of {', '.join(LOSS_WEIGHTING_CHOICES)}")
    p.add_argument("--au_positive_weight",
                   help=f"one of {', '.join(AU_POSITIVE_WEIGHT_CHOICES)}: weight of each AU's positive frames in the "
                   "AU loss, from the train split's negatives per positive (sqrt: its square root, the default; "
                   f"inverse: itself), clipped to [1, {AU_POSITIVE_WEIGHT_MAX:g}], so rare AUs are not drowned")
    p.add_argument("--balance_frames", nargs="?", const=True, type=_bool,
                   help="per-class expression weights that give the training frames the class mix their buckets "
                   "are sampled at (a clip's bucket is its majority class, so its other frames skew the mix); "
                   "measured on the training stream at start-up; instead of --loss_weighting")
    p.add_argument("--windows_per_clip", type=int, metavar="K",
                   help="random windows taken from every training clip read (default 1): K > 1 is repeated sampling, "
                   "the record's reading, parsing and decoding shared by K windows (each its own offset and "
                   "stride; batch_size clips give K batches in a row); for raw crops (convert --codec raw) of "
                   "64-frame clips with --seq_len 16, K=4 windows take as many frames as a record holds and 8 (what "
                   "`affectstream input-rate` suggests) twice as many; an epoch is then K windows per clip")
    p.add_argument("--data_service", metavar="grpc://HOST:PORT",
                   help="run the training input on this tf.data service dispatcher's workers (e.g. from "
                   "`affectstream data-service`); they must reach --data at the same path")
    p.add_argument("--backbone", help=f"one of {', '.join(BACKBONES)}")
    p.add_argument("--weights",
                   help="backbone initialisation: none (random, default), imagenet (mobilenet_v3_small / "
                   "efficientnet_b0; Keras downloads and caches them, needs internet once) or the path of a local "
                   "weights file")
    p.add_argument("--freeze_backbone_epochs", type=int,
                   help="keep the pretrained backbone frozen for the first N epochs, then train it too (default 0)")
    p.add_argument("--stage", help=f"one of {', '.join(STAGES)}: end_to_end (default) trains CNN and temporal head "
                   "together; frames trains the CNN per frame (sequence length 1); sequence freezes the per-frame "
                   "network of --features_from, computes its features once and trains the temporal head on them")
    p.add_argument("--init_from", metavar="EXPORT",
                   help="start the CNN from an export (a job's export/ or job dir, or an imported model): --stage "
                   "frames fine-tunes it (keeping its head when the classes agree or --class_map maps them, else a "
                   "new head), end_to_end puts a new temporal head on it; with --stage sequence the same as "
                   "--features_from")
    p.add_argument("--features_from", metavar="EXPORT",
                   help="--stage sequence: the export (trained or imported) whose frozen per-frame network makes the "
                   "features, fed the data's crops through its own input specification")
    p.add_argument("--feature_layer", metavar="NAME",
                   help="with --features_from: cut the per-frame network at this layer (spatial maps averaged); "
                   "default: the features its heads read (an imported model's penultimate layer)")
    p.add_argument("--class_map", metavar="A=NAME,...",
                   help="--stage frames --init_from: map the export's classes onto the data's (its head kept)")
    p.add_argument("--cnn_width", type=float, help="filter multiplier of simple_cnn (1.0 = 64/128/256)")
    p.add_argument("--feature_dim", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--temporal", "--rnn", dest="temporal",
                   help=f"the temporal head, one of {', '.join(TEMPORAL_HEADS)}: gru (default; the paper's stack, "
                   "--rnn_units) or lstm, tcn (dilated causal convolutions), transformer (a small encoder with learned "
                   "positions); --rnn is its old name")
    p.add_argument("--rnn_units", type=_int_list, help="gru/lstm: comma-separated sizes, e.g. 100,100,50")
    p.add_argument("--temporal_width", type=int, help="tcn channels / transformer width (default 64)")
    p.add_argument("--temporal_layers", type=int,
                   help="tcn residual blocks (default 4: dilations 1-8, 61 frames seen) / transformer layers "
                   "(default 2)")
    p.add_argument("--max_window", type=int,
                   help="transformer: the longest window it takes, its learned positions (default 256)")
    p.add_argument("--strategy", help=f"one of {', '.join(STRATEGY_CHOICES)}")
    p.add_argument("--precision",
                   help=f"one of {', '.join(PRECISIONS)}: the Keras dtype policy of the model (16-bit compute, "
                   "float32 variables; losses, CCC and metrics in float32); mixed_float16 (GPUs) scales the loss, "
                   "mixed_bfloat16 (TPUs, GPUs from Ampere on, CPUs with AVX512-BF16 or AMX) needs no scaling "
                   "(default float32)")
    p.add_argument("--mixed_precision", nargs="?", const=True, type=_bool,
                   help="the old form of --precision mixed_float16")
    p.add_argument("--jit_compile",
                   help=f"XLA for the training step: one of {', '.join(JIT_CHOICES)} (auto = on only with a GPU "
                   "and a single-device strategy; off under mirrored / multi_worker)")
    p.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZER_CHOICES)}")
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--lr_schedule", help=f"one of {', '.join(LR_SCHEDULE_CHOICES)}: constant (default) or cosine "
                   "decay to 0 at the last step, both after --warmup_steps of linear warm-up")
    p.add_argument("--warmup_steps", type=int, help="steps of linear learning-rate warm-up (default 0)")
    p.add_argument("--early_stopping", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE evaluated epochs without a better selection score (default 0: off)")
    p.add_argument("--allow_data_change", nargs="?", const=True, type=_bool,
                   help="resume even when the data or the model-shaping options differ from the checkpoint's")
    p.add_argument("--seed", type=int)
    p.add_argument("--augment", type=_bool)
    p.add_argument("--eval_split", help="the split of the final report (default validation)")
    p.add_argument("--select_split",
                   help="the split evaluated after every epoch to select the best one (default: the data's "
                   "'selection' split, a subject-disjoint slice of the train subjects held out by the conversion, "
                   "so that --eval_split is touched only by the final evaluation; without one, validation when "
                   "--eval_split is another split, else --eval_split, and the report then also gives the last "
                   "epoch's score)")
    p.add_argument("--skip_corrupt", nargs="?", const=True, type=_bool,
                   help="skip (and count) corrupt records instead of failing")
    p.add_argument("--checkpoint_every", type=int, help="steps between checkpoints (also one per epoch end)")
    p.add_argument("--keep_checkpoints", type=int)
    p.add_argument("--log_every", type=int,
                   help="steps between log lines of the losses (default 10); on a terminal a progress bar per epoch "
                   "shows every step instead, its losses read at this pace")
    p.add_argument("--verbose", nargs="?", const=True, type=_bool,
                   help="DEBUG logging of the trainer; `affectstream train --verbose` also keeps TensorFlow's C++ log")
    return p


def load_config_file(path: str) -> dict[str, Any]:
    """Reads a JSON config file (local or gs:// / s3://) into a dict of known options."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise ConfigError(f"config file {path} not found")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            text = f.read()
    except (tf.errors.OpError, UnicodeDecodeError) as e:  # A folder, an unreadable or a binary file: not a traceback.
        raise ConfigError(f"config file {path} cannot be read as JSON text ({type(e).__name__}: "
                          f"{getattr(e, 'message', None) or e})") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    if "rnn" in raw and "temporal" not in raw:  # the option's old name
        raw["temporal"] = raw.pop("rnn")
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ConfigError(f"config file {path} has unknown options {unknown}; valid options: {sorted(valid)}")
    return raw


def parse_train_config(argv: Sequence[str] | None) -> TrainConfig:
    """defaults < ``--config FILE`` < command-line flags → a validated TrainConfig.

    Raises:
        ConfigError: invalid option values or config file.
        SystemExit: argparse errors (unknown flags, unparsable numbers).
    """
    return config_from_args(build_parser().parse_args(argv))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated TrainConfig of parsed options (:func:`build_parser`'s): defaults < ``--config FILE`` < flags.

    Raises:
        ConfigError: invalid option values or config file.
    """
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    for key, value in vars(args).items():
        if key != "config" and value is not None:
            values[key] = value
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(f"invalid options: {e}") from e


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """The options of ``config`` as a JSON-ready dict (what ``train_config.json`` holds)."""
    return dataclasses.asdict(config)
