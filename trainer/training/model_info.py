"""A training job's ``model_info.json``: what a user of its export needs to feed and read the model.

The task and heads, label names, the input format and preprocessing, what made the crops (``crops``: the
conversion's face stage, whose :class:`beam_jobs.faces.stage.FaceStageConfig` is ``face_stage`` and from which
``affectstream predict`` rebuilds the same stage, or the dataset's provided crops, with their size and how they were
prepared, which ``predict --cropped_aligned`` prepares the same way: :func:`trainer.model.crop_source.crops_of`), the
exported epoch, its score and the split that selected it, the training stage, the backbone weights it started from (``weights``; for ``--stage sequence`` also
``init_from``) and the data fingerprint (:mod:`trainer.training.fingerprint`). The files themselves are written by
:func:`trainer.model.export.export_model`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
from trainer.common.choices import RNNS


def weights_record(weights: str) -> dict:
    """How ``--weights`` initialised the backbone: ``{"source": "none"|"imagenet"|"file", "path", "sha256"}``."""
    if weights in ("none", "imagenet"):
        return {"source": weights}
    from trainer.training.fingerprint import file_sha256

    return {"source": "file", "path": weights, "sha256": file_sha256(weights)}


def model_info_payload(config, info, heads: Sequence[str], *, best_epoch: int, best_score: float,
                       selected_on: str, extras: dict | None = None) -> dict:
    """The JSON-ready ``model_info.json`` payload.

    Args:
        config: The training options (a :class:`trainer.training.config.TrainConfig`, stored as ``train_config``).
        info: The dataset info.
        heads: The trained heads.
        best_epoch: The exported epoch.
        best_score: Its score on ``selected_on``.
        selected_on: The split the epoch was selected on.
        extras: Fields that the training stage adds or overrides (:meth:`trainer.training.stages.Stage.model_info`).
    """
    from tfrecords_schema import SCHEMA_VERSION
    from trainer.model.crop_source import crops_of  # (the face stage's modules, only when an export is written)
    from trainer.training.config import to_dict
    from trainer.training.fingerprint import dataset_fingerprint

    return {
        "task": config.task,
        "heads": list(heads),
        "label_names": {
            HEAD_EXPRESSION: info.expression_names if HEAD_EXPRESSION in heads else [],
            HEAD_VALENCE_AROUSAL: ["valence", "arousal"] if HEAD_VALENCE_AROUSAL in heads else [],
            HEAD_ACTION_UNITS: info.action_unit_names if HEAD_ACTION_UNITS in heads else [],
        },
        "crop_size": info.crop_size,
        "seq_len": config.seq_len,
        "preprocessing": {
            "input": "uint8 [batch, time, crop_size, crop_size, 3] RGB face crops (0..255); the model's first layer "
                     "scales them, so feed the pixels as decoded (float input is cast to uint8)",
            "crop": "the square face crops of beam_jobs.convert (same crop function at inference)",
            "time": "any number of frames; trained on windows of seq_len consecutive frames",
        },
        **crops_of(info),
        "outputs": {
            HEAD_EXPRESSION: "softmax probabilities [batch, time, classes]",
            HEAD_VALENCE_AROUSAL: "tanh [batch, time, 2] (valence, arousal)",
            HEAD_ACTION_UNITS: "sigmoid probabilities [batch, time, AUs] (threshold 0.5)",
        },
        "stage": config.stage,
        "backbone": config.backbone,
        "weights": weights_record(config.weights),
        "rnn": config.temporal if config.temporal in RNNS else None,  # the recurrent head; "temporal": any head
        "rnn_units": list(config.rnn_units),
        "dataset": info.name,
        "data_fingerprint": dataset_fingerprint(info),
        "schema_version": SCHEMA_VERSION,
        "best_epoch": best_epoch,
        "best_score": best_score,
        "selected_on": selected_on,
        "train_config": to_dict(config),
        **(extras or {}),
    }
