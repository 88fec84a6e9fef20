"""The export of a training job: ``model.keras``, a SavedModel, ``serving.tflite`` and ``model_info.json``.

``model_info.json`` is what a user of the model needs: the task and heads, label names, the input format
and preprocessing, the face stage that made the crops (``face_stage``: the
:class:`beam_jobs.faces.stage.FaceStageConfig` of the conversion, from which ``affectstream predict`` rebuilds
the same stage), the exported epoch, its score and the split that selected it, the training stage, the
backbone weights it started from (``weights``; for ``--stage sequence`` also ``init_from``) and the data
fingerprint (:mod:`trainer.training.fingerprint`), and ``tflite``: the TF Lite copy that ``predict`` runs on a CPU
(:mod:`trainer.model.lite`), or why there is none. A two-stage job exports one end-to-end model (CNN + recurrent
stack) with the same input and outputs as any other.

The export is a transaction (:func:`tfrecords_schema.transaction.output_transaction`): it is written into a staging
folder inside ``JOB/export`` and swapped in entry by entry (``model_info.json`` out first and in last) only when
the folder holds nothing but a previous export (:func:`foreign_entries`). Files that appear there during the
training keep both exports side by side and raise :class:`tfrecords_schema.transaction.SwapRefused`, naming both;
nothing is deleted.

Loading::

    import keras
    import trainer  # registers the custom layers
    model = keras.models.load_model("JOB/export/model.keras", compile=False)
    served = tf.saved_model.load("JOB/export/saved_model")  # served.serve(frames)
    # serving.tflite: beam_jobs.faces.tflite.LiteInterpreter (or tf.lite.Interpreter); model_info.json["tflite"] gives
    # its fixed input shape and the head of each output tensor, in order
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import tempfile

from tfrecords_schema import join_path, storage
from tfrecords_schema.atomic import INCOMPLETE_MARK
from tfrecords_schema.filesystems import missing_hint

log = logging.getLogger("trainer.train")

EXPORT_DIRNAME = "export"
CHECKPOINTS_DIRNAME = "checkpoints"  # A training job's checkpoints (trainer.training.state writes them).
MODEL_FILENAME = "model.keras"
SAVED_MODEL_DIRNAME = "saved_model"
MODEL_INFO_FILENAME = "model_info.json"
TFLITE_FILENAME = "serving.tflite"  # trainer.model.lite's copy
EXPORT_ENTRIES = (MODEL_FILENAME, SAVED_MODEL_DIRNAME, TFLITE_FILENAME, MODEL_INFO_FILENAME)  # what an export holds


# What model.export() writes under saved_model/ (TensorFlow's SavedModel layout).
_SAVED_MODEL_FILE = re.compile(r"^(saved_model\.pb|fingerprint\.pb|keras_metadata\.pb|variables/variables\.index|"
                               r"variables/variables\.data-\d+-of-\d+|assets/.*|variables/)$")  # (x/: empty folder)


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


def servable(model_info: dict) -> bool:
    """Whether ``model_info`` says what ``predict`` feeds the model: the crop size and a window."""
    return "crop_size" in model_info and ("seq_len" in model_info or is_per_frame(model_info))


class ExportError(ValueError):
    """A folder that holds no export, or an export that cannot be read."""


def _list_tree(folder: str) -> list[str]:
    """Every file (and empty folder, as ``name/``) under ``folder``, relative, with ``/``; ``[]`` when missing."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(folder):
        return []
    from tfrecords_schema.transaction import own_entries

    own = set(own_entries(folder))  # A running export's staging folder: not part of the export.
    found = []
    for root, dirs, files in tf.io.gfile.walk(folder):
        rel = root[len(folder.rstrip("/")):].replace(os.sep, "/").strip("/")
        found += [posixpath.join(rel, n) if rel else n for n in files if rel or n not in own]
        if rel and not dirs and not files:
            found.append(rel + "/")
    return sorted(f for f in found if f.split("/")[0] not in own)


def foreign_entries(export_dir: str) -> list[str]:
    """Entries under ``export_dir`` that an export does not write (relative paths; empty: all could be ours)."""
    ours = tuple(e for e in EXPORT_ENTRIES if e != SAVED_MODEL_DIRNAME)  # files; saved_model/'s are matched below

    def written_by_export(rel: str) -> bool:
        top, _, rest = rel.partition("/")
        if not rest:
            return top in ours or any(top.startswith(f".{name}{INCOMPLETE_MARK}") for name in ours)
        return top == SAVED_MODEL_DIRNAME and bool(_SAVED_MODEL_FILE.match(rest))

    return [rel for rel in _list_tree(export_dir) if not written_by_export(rel)]


def foreign_problem(export_dir: str) -> str | None:
    """Why ``export_dir`` may not be replaced by an export (the entries an export does not write), or None."""
    from tfrecords_schema.transaction import describe_foreign

    return describe_foreign(foreign_entries(export_dir), writer="an export")


def read_model_info(model_dir: str) -> dict:
    """``model_info.json`` of an export folder.

    Raises:
        ExportError: the file is missing, or is not a JSON object (the message names the file).
    """
    path = join_path(model_dir, MODEL_INFO_FILENAME)
    files = storage.gfile(path)
    if not files.exists(path):
        raise ExportError(f"{path} not found: not an export of this tool{missing_hint(path)}")
    try:
        with files.GFile(path, "r") as f:
            info = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); export the model again") from e
    if not isinstance(info, dict):
        raise ExportError(f"{path} must hold a JSON object, got {type(info).__name__}; export the model again")
    return info


def check_model_info_fields(model_info: dict, model_dir: str) -> None:
    """The fields of ``model_info.json`` that evaluate and predict read: ``task``, ``heads``, ``label_names``,
    ``crop_size`` and (unless the model is per-frame) ``seq_len``.

    Raises:
        ExportError: naming the file and each missing or malformed field.
    """
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    checks = {"task": lambda v: isinstance(v, str),
              "heads": lambda v: isinstance(v, list) and bool(v) and all(isinstance(h, str) for h in v),
              "label_names": lambda v: isinstance(v, dict) and all(isinstance(n, list) for n in v.values()),
              "crop_size": is_int}
    if not is_per_frame(model_info):
        checks["seq_len"] = is_int
    bad = [name + ("" if name in model_info else " (missing)") for name, ok in checks.items()
           if not (name in model_info and ok(model_info[name]))]
    if bad:
        raise ExportError(f"{join_path(model_dir, MODEL_INFO_FILENAME)} lacks or garbles {', '.join(bad)}: not an "
                          "export of this tool, or edited since; export (or import) the model again")


def load_export_model(model_path: str):
    """The export's ``model.keras`` (compile=False), checked by :func:`check_model_file` first.

    Raises:
        ExportError: the file is missing, or is not a whole ``.keras`` archive (Keras says "File not found" of both).
    """
    import keras

    from trainer.model import layers  # noqa: F401  (registers the custom layers for load_model)

    check_model_file(model_path)
    return keras.saving.load_model(model_path, compile=False)


def check_model_file(model_path: str) -> None:
    """Raises ExportError when the export's ``model.keras`` is missing or not a whole ``.keras`` archive."""
    import zipfile

    files = storage.gfile(model_path)
    if not files.exists(model_path):
        raise ExportError(f"{model_path} not found: the export is incomplete (its {MODEL_INFO_FILENAME} is there); "
                          "export the model again")
    with files.GFile(model_path, "rb") as f:
        whole = zipfile.is_zipfile(f)
    if not whole:
        raise ExportError(f"{model_path} cannot be loaded: not a complete .keras archive (truncated or corrupt?); copy "
                          "or export the model again")


def export_model(model, export_dir: str, model_info: dict, locked: bool = False) -> dict[str, str]:
    """Writes ``model.keras``, ``saved_model/``, ``serving.tflite`` (when ``model_info`` says the crop size and window,
    and the model converts: :mod:`trainer.model.lite`) and ``model_info.json`` to ``export_dir`` as one transaction.

    Everything is written into a staging folder and swapped in only once complete (see the module docstring):
    a folder holding ``model_info.json`` holds a complete model, and a previous export is replaced only when the
    folder holds nothing else. With ``locked`` (the caller holds the lock of the folder's job, so no other export
    into it runs anywhere) what killed exports left is finished or removed first.

    Returns:
        ``{"model_keras": path, "saved_model": path, "model_info": path}`` (and ``"tflite"`` when written).

    Raises:
        tfrecords_schema.transaction.SwapRefused: files that an export does not write appeared in ``export_dir``;
            the new export is kept beside the previous one (the message names both).
    """
    import tensorflow as tf

    from tfrecords_schema.atomic import write_json
    from tfrecords_schema.transaction import output_transaction, remove_leftovers
    from trainer.model.lite import write_serving_copy

    # An export killed (kill -9, a lost machine) left its staging folder, a whole model, in export/ (beside it on
    # object stores), and every such kill one more; one killed in its swap left it half swapped. Finished or removed
    # here (only our marked folders), as `convert` does with its output, under the job's lock: another host's live
    # export cannot be told from a dead one.
    if locked and (storage.is_url(export_dir) or storage.gfile(export_dir).isdir(export_dir)):
        for done in remove_leftovers(export_dir, finish_with=(MODEL_INFO_FILENAME,)):
            log.warning("%s: a killed export's leftover: %s", export_dir, done)
    with output_transaction(export_dir, replace=True, finish_with=(MODEL_INFO_FILENAME,),
                            check_swap=foreign_problem) as staging:
        with tempfile.TemporaryDirectory(prefix="affectstream_export_") as local_dir:
            local = os.path.join(local_dir, MODEL_FILENAME)  # Keras wants the .keras suffix
            model.save(local)
            tf.io.gfile.copy(local, join_path(staging, MODEL_FILENAME), overwrite=True)
            if servable(model_info):
                lite = os.path.join(local_dir, TFLITE_FILENAME)
                block = write_serving_copy(model, serving_window(model_info), int(model_info["crop_size"]), lite)
                if "error" not in block:
                    tf.io.gfile.copy(lite, join_path(staging, TFLITE_FILENAME), overwrite=True)
                    block = {"file": TFLITE_FILENAME, **block}
                model_info = {**model_info, "tflite": block}
        model.export(join_path(staging, SAVED_MODEL_DIRNAME), verbose=False)
        write_json(join_path(staging, MODEL_INFO_FILENAME), model_info)
    paths = {"model_keras": join_path(export_dir, MODEL_FILENAME),
             "saved_model": join_path(export_dir, SAVED_MODEL_DIRNAME),
             "model_info": join_path(export_dir, MODEL_INFO_FILENAME)}
    if "file" in model_info.get("tflite", {}):
        paths["tflite"] = join_path(export_dir, TFLITE_FILENAME)
    return paths


def resolve_model_dir(path: str, option: str = "--model") -> str:
    """The export directory: ``path`` itself, or ``path/export`` for a job directory (``option``: the option that
    gave it, for the message)."""
    for candidate in (path, join_path(path, "export")):
        if storage.gfile(candidate).exists(join_path(candidate, MODEL_INFO_FILENAME)):
            return candidate
    gfile = storage.gfile(path)
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."
    # A job's checkpoint folder, or one checkpoint (JOB/checkpoints/ckpt-N, a prefix of files): the job is what to
    # give. Known by TensorFlow's own files, not by the name alone: users keep Keras files in folders so named.
    grandparent = parent.rsplit("/", 1)[0] if "/" in parent else "."
    one = re.fullmatch(r"ckpt-\d+", path.rstrip("/").rsplit("/", 1)[-1]) is not None
    for job, folder in ((parent, path), *(((grandparent, parent),) if one else ())):
        if folder.rstrip("/").rsplit("/", 1)[-1] != CHECKPOINTS_DIRNAME:
            continue  # (The name first: each look at the store below is a request on gs:// and s3://.)
        if gfile.exists(join_path(folder, "checkpoint")) or (one and gfile.exists(path.rstrip("/") + ".index")):
            raise ExportError(f"{option} {path} is a training job's checkpoint, not an export: give {option} the job "
                              f"folder {job} (its {EXPORT_DIRNAME}/ is made when its training ends)")
    if not gfile.exists(path):  # (It said "holds no model_info.json" of a typo.)
        raise ExportError(f"{option} {path} does not exist{missing_hint(path)}")
    if path.rstrip("/") != parent and gfile.exists(join_path(parent, MODEL_INFO_FILENAME)):
        raise ExportError(f"{option} {path} is a file of the export {parent}: give {option} {parent}")
    kind = ("a Keras model" if path.lower().endswith((".keras", ".h5", ".hdf5")) and not gfile.isdir(path)
            else "a SavedModel folder" if gfile.exists(join_path(path, "saved_model.pb")) else None)
    if kind:
        raise ExportError(f"{option} {path} is {kind}, not an export: make one with `affectstream import-model "
                          f"--keras {path} ...` (docs/pretrained.md) and give its --output here")
    # A job killed (or still running) before it exported: checkpoints/ and no export.
    if gfile.isdir(join_path(path, CHECKPOINTS_DIRNAME)):
        raise ExportError(
            f"{option} {path} is a training job that has not exported a model yet ({CHECKPOINTS_DIRNAME}/, no "
            f"{EXPORT_DIRNAME}/{MODEL_INFO_FILENAME}): its training did not finish; the same `affectstream train "
            f"--job_dir {path} ...` command resumes from its last checkpoint and exports when it ends"
        )
    raise ExportError(
        f"{option} {path!r} holds no {MODEL_INFO_FILENAME}: pass the export/ directory of a training job (or the "
        "job dir)"
    )
