"""What a job's checkpoints were trained on: the data and the options that shape the model.

A resumed job must go on with the same data and the same model, or it silently trains (and exports, with
the new data's ``model_info.json``) something else. :func:`job_fingerprint` describes both:

* ``dataset``: a hash of ``dataset_info.json`` without its timing fields
  (:data:`tfrecords_schema.dataset_info.RUN_TIMING_FIELDS`), so a byte-identical reconversion keeps it, and
  any other change of the data (crop size, clips, shards, labels, options) changes it;
* the options that shape the model or its targets: crop size, label names, task and heads, stage,
  backbone, CNN width, feature size, temporal head and sizes, sequence length, and the export a stage starts
  from (``init_backbone``: the sequence stage's ``--features_from``, a fine-tuned ``--init_from``) with the layer
  cut and the class map (recorded only when set, so older checkpoints keep their fingerprint);
* :data:`RUN_OPTIONS`, compared only when the checkpoint records them (older ones go on resuming): the optimizer's
  options (:data:`OPTIMIZER_OPTIONS`), the split the best epoch is selected on (the best score so far was taken there)
  and the steps of an epoch (epochs are counted in them; both follow the data when not given). ``--allow_data_change``
  passes a change of any of them but one the optimizer's checkpointed variables cannot take (:func:`unrestorable`:
  another optimizer, a learning-rate schedule where there was a constant rate or the other way, loss scaling on or
  off), which failed in the restore with a message about tensor shapes or dtypes.

:class:`trainer.training.state.TrainState` stores it in every checkpoint and refuses to resume under another one
(:func:`differences` names each differing value on both sides) unless ``--allow_data_change``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from tfrecords_schema.dataset_info import RUN_TIMING_FIELDS

# Options whose change the optimizer's checkpointed state cannot take (its slots, its schedule, the loss scale), and
# those the run's epoch bookkeeping depends on (see the module docstring).
OPTIMIZER_OPTIONS = ("optimizer", "lr_schedule", "warmup_steps", "precision")
RUN_OPTIONS = (*OPTIMIZER_OPTIONS, "select_split", "steps_per_epoch")


def dataset_fingerprint(info) -> str:
    """SHA-256 (first 16 hex digits) of the dataset info without the fields that time the conversion run."""
    raw = json.loads(info.to_json())
    raw["run"] = {k: v for k, v in raw.get("run", {}).items() if k not in RUN_TIMING_FIELDS}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of a file (local or a tf.io.gfile URL), read in chunks."""
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def job_fingerprint(config, info, heads: Sequence[str], *, init_backbone: str | None = None,
                    select_split: str | None = None, steps_per_epoch: int | None = None) -> dict:
    """The fingerprint of a job (see the module docstring): a flat, JSON-ready dict.

    Args:
        config: The training options (:class:`trainer.training.config.TrainConfig`).
        info: The dataset info.
        heads: The trained heads.
        init_backbone: SHA-256 of the export the stage starts from, else None.
        select_split, steps_per_epoch: The plan's (recorded when given).
    """
    per_frame = config.stage == "frames"
    extra = {}
    if not per_frame and config.temporal in ("tcn", "transformer"):
        extra["temporal_options"] = [config.temporal_width, config.temporal_layers, config.max_window]
    if config.feature_layer:
        extra["feature_layer"] = config.feature_layer
    if config.class_map:
        extra["class_map"] = config.class_map
    return {**extra,
        "dataset": dataset_fingerprint(info),
        "crop_size": info.crop_size,
        "label_names": {h: list(info.label_names.get(h, [])) for h in heads},
        "task": config.task,
        "heads": list(heads),
        "stage": config.stage,
        "backbone": config.backbone,
        "cnn_width": config.cnn_width,
        "feature_dim": config.feature_dim,
        "rnn": None if per_frame else config.temporal,  # the temporal head (the key keeps its first name)
        "rnn_units": [] if per_frame else list(config.rnn_units),
        "seq_len": config.seq_len,
        "init_backbone": init_backbone,
        **{name: getattr(config, name) for name in OPTIMIZER_OPTIONS},
        **({"select_split": select_split} if select_split is not None else {}),
        **({"steps_per_epoch": steps_per_epoch} if steps_per_epoch is not None else {}),
    }


def differing(stored: dict, current: dict) -> list[str]:
    """The names whose values differ (sorted), :data:`RUN_OPTIONS` only where ``stored`` records them."""
    return [name for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)
            and not (name in RUN_OPTIONS and name not in stored)]  # (Checkpoints from before they were kept.)


def _optimizer_layout(fingerprint: dict) -> dict[str, object]:
    """Per option of :data:`OPTIMIZER_OPTIONS`, what of it shapes the optimizer's checkpointed variables: the optimizer
    (its slots); whether the learning rate is a schedule (a constant rate without warm-up is a variable of the
    optimizer, a schedule none: :func:`trainer.training.schedules.learning_rate`); whether the loss is scaled (the
    loss-scale optimizer's own variables: ``mixed_float16`` only)."""
    from trainer.common.choices import PRECISION_FLOAT16

    schedule = fingerprint.get("lr_schedule") != "constant" or bool(fingerprint.get("warmup_steps"))
    return {"optimizer": fingerprint.get("optimizer"), "lr_schedule": schedule, "warmup_steps": schedule,
            "precision": fingerprint.get("precision") == PRECISION_FLOAT16}


def unrestorable(stored: dict, current: dict) -> list[str]:
    """The :data:`OPTIMIZER_OPTIONS` among :func:`differing` whose change the checkpointed optimizer cannot take
    (:func:`_optimizer_layout`): refused even with ``--allow_data_change``. Another warm-up length, cosine decay for a
    warmed-up constant rate, or ``float32`` for ``mixed_bfloat16`` restore the same variables."""
    before, now = _optimizer_layout(stored), _optimizer_layout(current)
    return [name for name in differing(stored, current) if name in OPTIMIZER_OPTIONS and before[name] != now[name]]


def unrecorded_selection(stored: dict, current: dict) -> str | None:
    """A warning for a checkpoint written before the selection split was recorded, else None.

    Such a job may have selected its best epoch so far on another split (an ``--eval_split test`` job without a
    ``selection`` split selected on test; the default is validation now), and :func:`differing` cannot tell: the best
    score so far and the epochs scored from now on may then be on different splits.
    """
    if "select_split" not in current or "select_split" in stored:
        return None
    return (f"the checkpoint does not record the split its best epoch so far was selected on (written by an older "
            f"version); epochs from now on are selected on {current['select_split']!r}, and the best score so far "
            "may be another split's: use a new --job_dir to select on one split throughout")


# What the fingerprint's hashes stand for: two hashes alone do not tell a user which of their files changed.
HASH_MEANINGS = {
    "dataset": "the hash of --data's dataset_info.json: the data was converted again or changed",
    "init_backbone": "the SHA-256 of the model.keras of the --init_from/--features_from export: it is another export, "
                     "or it was trained further or replaced since",
}


def differences(stored: dict, current: dict) -> list[str]:
    """``"name: <stored> in the checkpoint, <current> now"`` for every value that differs (sorted by name), a hash
    followed by what it stands for (:data:`HASH_MEANINGS`)."""
    return [f"{name}: {json.dumps(stored.get(name))} in the checkpoint, {json.dumps(current.get(name))} now"
            + (f" ({HASH_MEANINGS[name]})" if name in HASH_MEANINGS else "") for name in differing(stored, current)]
