"""Checks before the first step that the images and the models agree on the input size.

A wrong ``crop_size`` otherwise surfaces as an opaque TensorFlow shape error deep in the input pipeline
or the model (or, with a size-agnostic backbone, not at all: the job trains on images of another size
than its ``model_info.json`` claims). Each check fails with one line naming both sizes and what to do:

* :func:`check_data_crop_size`: the first frame of the first readable record of the splits the job reads
  is decoded; its size must be ``dataset_info.json``'s ``crop_size`` (an edited dataset_info.json, or
  shards of another conversion next to it);
* :func:`check_evaluated_shards`: every record of the shards of the splits the job evaluates is read once (checksums
  and counts, nothing decoded), so a corrupt validation shard fails before the first step, naming the shard, not
  after the first epoch's training (the cost is one evaluation's reading; the train split is read as it streams);
* :func:`check_weights_crop_size`: a ``--weights FILE`` of ``simple_cnn``, whose feature layer's input
  size follows from the crop size, must fit a model on the data's crops (the ``keras.applications``
  backbones pool globally, so their weights fit any crop size).

The other inputs carry their crop size: a resumed checkpoint's fingerprint (:mod:`trainer.training.fingerprint`,
checked by :class:`trainer.training.state.TrainState`) and ``--init_from``'s ``model_info.json``
(:class:`trainer.training.stages.SequenceStage`).
"""

from __future__ import annotations

import io
import logging
import zipfile

from tfrecords_schema.filesystems import is_within
from trainer.common.errors import TrainingError

log = logging.getLogger("trainer.train")

# Crop sizes tried to name the one a mismatching --weights file was saved at.
MIN_CROP, MAX_CROP, CROP_STEP = 16, 256, 8  # MIN_CROP: the smallest ModelSpec allows


def first_frame_size(data_dir: str, info, splits) -> tuple[int, int, str] | None:
    """``(height, width, shard path)`` of the first frame of the first readable record of ``splits``.

    Shards are tried in ``dataset_info.json`` order (empty ones skipped); a shard that cannot be read or
    whose first record does not parse is passed over (the input pipeline reports it with its own message).
    None when no shard gives a frame.
    """
    import tensorflow as tf

    from tfrecords_schema import decode_clip, join_path
    from tfrecords_schema.image_codec import crop_shape

    for split in splits:
        for shard in info.splits[split].shards if split in info.splits else ():
            if shard.num_records <= 0:
                continue
            path = join_path(data_dir, shard.path)
            try:
                for record in tf.data.TFRecordDataset(path).take(1):
                    clip = decode_clip(record.numpy())
                    if clip.images:
                        height, width = crop_shape(clip.images[0], clip.image_format)
                        return height, width, path
            except (tf.errors.OpError, ValueError) as e:
                log.debug("crop-size check: %s skipped (%s: %s)", path, type(e).__name__, e)
    return None


def check_data_crop_size(data_dir: str, info, splits) -> None:
    """Raises TrainingError when the data's frames are not ``info.crop_size`` square (see the module docstring)."""
    from tfrecords_schema import DATASET_INFO_FILENAME

    found = first_frame_size(data_dir, info, splits)
    if found is None:
        return
    height, width, path = found
    if (height, width) != (info.crop_size, info.crop_size):
        raise TrainingError(
            f"the frames in {path} are {width}x{height} px, but {DATASET_INFO_FILENAME} in {data_dir} says "
            f"crop_size {info.crop_size}: the shards and their {DATASET_INFO_FILENAME} do not belong together "
            f"(edited, or shards of another conversion); restore the {DATASET_INFO_FILENAME} written with these "
            f"shards, or convert the videos again (beam_jobs.convert --crop_size {info.crop_size})")


def check_evaluated_shards(data_dir: str, info, splits) -> None:
    """Reads every record of ``splits``' shards (see the module docstring); raises TrainingError on the first bad one.

    Without ``--skip_corrupt`` a corrupt shard would stop the job at its first evaluation; with it, the readers skip
    and count, so the caller does not check.
    """
    import tensorflow as tf

    from tfrecords_schema import join_path

    for split in splits:
        for shard in info.splits[split].shards if split in info.splits else ():
            path = join_path(data_dir, shard.path)
            try:
                count = int(tf.data.TFRecordDataset(path).reduce(
                    tf.constant(0, tf.int64), tf.autograph.experimental.do_not_convert(lambda n, _: n + 1)))
            except tf.errors.OpError as e:
                raise TrainingError(
                    f"{split} shard {path} is corrupt or unreadable ({type(e).__name__}: {e.message.splitlines()[0]}):"
                    f" the job would fail at its first evaluation; convert again, restore the shard, or pass "
                    f"--skip_corrupt to skip and count its unreadable records") from e
            if count != shard.num_records:
                raise TrainingError(f"{split} shard {path} holds {count} records but dataset_info.json lists "
                                    f"{shard.num_records}: truncated or rewritten; convert again or restore the shard")


def _weights_h5(path: str):
    """The h5py file of a Keras weights file (``.weights.h5``, or the weights inside a ``.keras`` archive)."""
    import h5py

    if h5py.is_hdf5(path):
        return h5py.File(path, "r")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" in archive.namelist():
                return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    return None


def _dense_inputs(path: str) -> int | None:
    """The input size of the one dense layer in the weights file ``path``; None when that is not its layout."""
    handle = _weights_h5(path)
    if handle is None:
        return None
    kernels = []
    with handle:
        handle.visititems(lambda name, obj: kernels.append(obj.shape) if (
            getattr(obj, "ndim", 0) == 2 and name.endswith("vars/0") and "dense" in name) else None)
    return kernels[0][0] if len(kernels) == 1 else None


def check_weights_crop_size(config, spec) -> None:
    """Raises TrainingError when ``--weights FILE`` does not fit a ``simple_cnn`` on the data's crops.

    Args:
        config: The training options (``weights``, ``backbone``, ``data``).
        spec: The :class:`trainer.model.spec.ModelSpec` of the job (its ``crop_size`` is the data's).
    """
    if config.backbone_weights in (None, "imagenet") or spec.backbone != "simple_cnn":
        return
    import dataclasses

    from trainer.model.backbones import build_backbone

    in_file = _dense_inputs(config.backbone_weights)
    if in_file is None:
        return  # not a layout read here: loading it reports any mismatch
    def feature_inputs(crop_size: int) -> int:
        cnn = build_backbone(dataclasses.replace(spec, crop_size=crop_size, backbone_weights=None))
        return int(cnn.get_layer("features").kernel.shape[0])

    needed = feature_inputs(spec.crop_size)
    if in_file == needed:
        return
    # Only on this error path: which crop sizes the file fits (the layer's input follows the pooled grid).
    fits = [s for s in range(MIN_CROP, MAX_CROP + 1, CROP_STEP) if feature_inputs(s) == in_file][:3]
    sizes = ", ".join(map(str, fits[:-1])) + " or " * (len(fits) > 1) + str(fits[-1]) if fits else ""
    saved_on = (f"it fits a simple_cnn on {sizes} px crops" if fits else
                f"no crop size up to {MAX_CROP} px fits it with --cnn_width {config.cnn_width}: saved with another "
                "width?")
    raise TrainingError(
        f"--weights {config.backbone_weights} does not fit a simple_cnn on the {spec.crop_size} px crops of "
        f"{config.data} ({saved_on}; its feature layer takes {in_file} values, {needed} on {spec.crop_size} px "
        f"crops): give weights saved from a simple_cnn on {spec.crop_size} px crops with the same --cnn_width, "
        f"convert the data at the file's crop size, or use --weights none")


def check_job_dir(job_dir: str, data: str | None = None) -> None:
    """Refuses, before any training, a ``--job_dir`` that is a file, one inside (or equal to) the ``data`` it trains on
    (checkpoints and reports would be mixed into a conversion output, whose next ``convert --overwrite`` then
    refuses to replace it), or whose ``export/`` holds files an export does not write: the export at the end would
    be refused then (hours later), with nothing written.

    Raises:
        TrainingError: either problem, in one line.
    """
    from tfrecords_schema import join_path, storage
    from trainer.model.export import EXPORT_DIRNAME, foreign_problem

    files = storage.gfile(job_dir)
    if files.exists(job_dir) and not files.isdir(job_dir):
        raise TrainingError(f"--job_dir {job_dir} is a file; give a folder (new, or a job's to resume)")
    if data is not None and is_within(job_dir, data):
        raise TrainingError(f"--job_dir {job_dir} is inside --data {data}: a job writes its checkpoints, logs and "
                            "export there, into the conversion output (whose next convert --overwrite would then "
                            "refuse to replace it); give a folder apart")
    taken = _entries_a_job_overwrites(job_dir)
    if taken:
        raise TrainingError(f"--job_dir {job_dir} is not a training job's folder, yet holds {', '.join(taken)}, which "
                            "a job writes over: give a new folder (or a job's to resume), or move them elsewhere first")
    export_dir = join_path(job_dir, EXPORT_DIRNAME)
    problem = foreign_problem(export_dir) if files.isdir(export_dir) else None  # What the export's swap would say.
    if problem:
        raise TrainingError(f"{export_dir}: {problem}; the export that ends this job would be refused: move them "
                            "elsewhere first")


def _entries_a_job_overwrites(job_dir: str) -> list[str]:
    """The entries of an existing ``job_dir`` that a job writes (its files, its folders' files) when the folder is not
    a job's: it holds neither ``checkpoints/`` nor a ``train_config.json`` of this tool (a job writes it before its
    first step). A user's own ``metrics.json``, ``reports/`` or ``logs/`` were otherwise silently replaced."""
    import tensorflow as tf

    from tfrecords_schema import join_path, storage
    from trainer.evaluation.reports import METRICS_FILENAME
    from trainer.input.input_mix import INPUT_MIX_FILENAME
    from trainer.model.export import CHECKPOINTS_DIRNAME
    from trainer.training.job_files import BEST_DIRNAME, LAST_EPOCH_FILENAME, LOGS_DIRNAME, REPORTS_DIRNAME
    from trainer.training.options_record import HISTORY_FILENAME, TRAIN_CONFIG_FILENAME, read_recorded

    files = storage.gfile(job_dir)
    if not files.isdir(job_dir):
        return []
    present = {name.rstrip("/") for name in files.listdir(job_dir)}
    if CHECKPOINTS_DIRNAME in present:
        return []
    if TRAIN_CONFIG_FILENAME in present:
        try:
            options = read_recorded(join_path(job_dir, TRAIN_CONFIG_FILENAME))
        except (OSError, tf.errors.OpError):  # (A folder of that name, no permission: not a job's file either.)
            options = None
        if isinstance(options, dict) and {"data", "job_dir", "task"} <= set(options):
            return []  # A job stopped before its first checkpoint.
    written = (METRICS_FILENAME, INPUT_MIX_FILENAME, LAST_EPOCH_FILENAME, TRAIN_CONFIG_FILENAME, HISTORY_FILENAME)
    # (export/ is checked on its own; features/ not: the sequence stage fills it before train_config.json is written,
    # so a job killed then has only it, and its shards' names are the data's.)
    folders = (LOGS_DIRNAME, REPORTS_DIRNAME, BEST_DIRNAME)
    # (A file where a job makes one of its folders is taken too: the job could not make it.)
    return [name + "/" if name in folders else name for name in sorted(present)
            if name in written or (name in folders and (not files.isdir(join_path(job_dir, name))
                                                        or files.listdir(join_path(job_dir, name))))]
