"""The export of a training job: ``model.keras``, a SavedModel and ``model_info.json``.

``model_info.json`` is what a user of the model needs: the task and heads, label names, the input format
and preprocessing, the face stage that made the crops (``face_stage``: the
:class:`beam_jobs.faces.stage.FaceStageConfig` of the conversion, from which ``affectstream predict`` rebuilds
the same stage), the exported epoch, its score and the split that selected it, the training stage, the
backbone weights it started from (``weights``; for ``--stage sequence`` also ``init_from``) and the data
fingerprint (:mod:`trainer.training.fingerprint`). A two-stage job exports one end-to-end model (CNN + recurrent
stack) with the same input and outputs as any other.

Loading::

    import keras
    import trainer  # registers the custom layers
    model = keras.models.load_model("JOB/export/model.keras", compile=False)
    served = tf.saved_model.load("JOB/export/saved_model")  # served.serve(frames)
"""

from __future__ import annotations

import os
import tempfile

from tfrecords_schema import join_path

EXPORT_DIRNAME = "export"
MODEL_FILENAME = "model.keras"
SAVED_MODEL_DIRNAME = "saved_model"
MODEL_INFO_FILENAME = "model_info.json"


# Frames per window when serving a per-frame model (no temporal window): each frame is predicted on its own, so the
# window only sets how many frames go into a model call (x the windows per call) and how much of the last one is
# padding; 8 frames x predict's 16 windows = 128 crops a call.
PER_FRAME_WINDOW = 8


def is_per_frame(model_info: dict) -> bool:
    """Whether an export predicts every frame on its own: an imported model, or a ``--stage frames`` job's."""
    return bool(model_info.get("per_frame")) or model_info.get("stage") == "frames"


def serving_window(model_info: dict) -> int:
    """Frames per window when evaluating or serving an export: its training ``seq_len``, or for a per-frame model
    (which has none) :data:`PER_FRAME_WINDOW`."""
    return PER_FRAME_WINDOW if is_per_frame(model_info) else int(model_info["seq_len"])


class ExportError(ValueError):
    """A folder that holds no export, or an export that cannot be read."""


def export_model(model, export_dir: str, model_info: dict) -> dict[str, str]:
    """Writes ``model.keras``, ``saved_model/`` and ``model_info.json`` to ``export_dir``.

    ``model.keras`` and ``model_info.json`` appear whole or not at all (the Keras file is saved locally,
    then copied in through :func:`tfrecords_schema.atomic.incomplete_file`); ``model_info.json`` is written
    last, so an export folder holding it holds a complete model.

    Returns:
        ``{"model_keras": path, "saved_model": path, "model_info": path}``.
    """
    import tensorflow as tf

    from tfrecords_schema.atomic import incomplete_file, write_json

    tf.io.gfile.makedirs(export_dir)
    keras_path = join_path(export_dir, MODEL_FILENAME)
    saved_model_path = join_path(export_dir, SAVED_MODEL_DIRNAME)
    with tempfile.TemporaryDirectory(prefix="affectstream_export_") as local_dir:
        local = os.path.join(local_dir, MODEL_FILENAME)  # Keras wants the .keras suffix
        model.save(local)
        with incomplete_file(keras_path) as partial:
            tf.io.gfile.copy(local, partial, overwrite=True)
    model.export(saved_model_path, verbose=False)
    info_path = write_json(join_path(export_dir, MODEL_INFO_FILENAME), model_info)
    return {"model_keras": keras_path, "saved_model": saved_model_path, "model_info": info_path}


def resolve_model_dir(path: str) -> str:
    """The export directory: ``path`` itself, or ``path/export`` for a job directory."""
    import tensorflow as tf

    for candidate in (path, join_path(path, "export")):
        if tf.io.gfile.exists(join_path(candidate, MODEL_INFO_FILENAME)):
            return candidate
    raise ExportError(
        f"--model {path!r} holds no {MODEL_INFO_FILENAME}: pass the export/ directory of a training job (or the "
        "job dir)"
    )
