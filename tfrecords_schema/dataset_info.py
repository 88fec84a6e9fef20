"""`dataset_info.json`: what a conversion wrote, read back by the trainer and `inspect`.

The file sits at the root of a conversion output and describes the splits, the
rebalancing buckets, the class histograms, every shard with its record count and
the frame accounting. Paths inside it are relative to that root, so an output can
be copied to `gs://` or `s3://` unchanged. The strict checks of a file being read
live in :mod:`tfrecords_schema.dataset_info_checks`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Any, NamedTuple

from tfrecords_schema.dataset_info_checks import checked_fields
from tfrecords_schema.filesystems import missing_hint
from tfrecords_schema.image_codec import DEFAULT_CODEC
from tfrecords_schema.output_layout import CONVERT_TMP_DIRNAME, DATASET_INFO_FILENAME  # noqa: F401 (re-exported)
from tfrecords_schema.split_info import (  # noqa: F401 (re-exported: the parts of a dataset's info)
    Accounting,
    DatasetInfoError,
    ShardInfo,
    SplitInfo,
    sum_counts,
)
from tfrecords_schema.tasks import TASK_ACTION_UNITS, TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASKS  # noqa: F401 (re-exported)
from tfrecords_schema.version import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION

# Keys of ``DatasetInfo.run`` that measure the run rather than describe the data: they differ between
# two conversions of the same input with the same options. Everything else in the file is the same
# byte for byte (compare or fingerprint outputs without these).
RUN_TIMING_FIELDS = ("seconds", "frames_per_second", "worker_seconds", "worker_processes")
MEDIA_KEY = "media"  # ``DatasetInfo.run[MEDIA_KEY]``: videos turned upright, of variable frame rate, truncated.


# Splits a conversion can write.
SPLIT_TRAIN = "train"
SPLIT_VALIDATION = "validation"
SPLIT_TEST = "test"  # Held-out data (manifest and folder adapters): written like validation, never trained on.
SPLITS = (SPLIT_TRAIN, SPLIT_VALIDATION, SPLIT_TEST)  # The splits a dataset names.
# A subject-disjoint slice of the train subjects, held out by the conversion (--select_fraction) and written like
# validation: the trainer selects its best epoch on it, so validation is touched only by the final evaluation.
SPLIT_SELECTION = "selection"


@dataclasses.dataclass
class DatasetInfo:
    """The contents of ``dataset_info.json``.

    Attributes:
        name: Dataset adapter name (also the shard file prefix), e.g. ``"abaw"``.
        tasks: Tasks with labels in the output, a subset of :data:`TASKS`.
        label_names: ``{"expression": [...], "valence_arousal": ["valence", "arousal"],
            "action_units": ["AU1", ...]}`` (empty lists for absent tasks).
        bucket_by: ``"tasks"`` (composite buckets: the clip's class for every task), ``"expression"``,
            ``"va_grid"`` or ``"none"`` (:mod:`tfrecords_schema.buckets`).
        bucket_names: Bucket names; a clip's ``clip/label/index`` indexes this list.
        crop_size: Side of the square face crops, pixels.
        clip_length: Frames per clip (the last clip of a track may be shorter).
        splits: ``{split: SplitInfo}``.
        options: The conversion options used.
        failures: ``{"dead_letters": n, "by_reason": {...}, "files": [...]}``.
        unused_media: Media files under ``--videos`` with no annotation.
        run: The run: ``tracks`` (subject tracks finished) and the timing fields
            :data:`RUN_TIMING_FIELDS`: ``seconds`` (wall time of the conversion in the driver),
            ``frames_per_second`` (labelled frames written per wall second), ``worker_seconds``
            (worker time spent decoding and cropping, summed over tracks) and ``worker_processes``
            (processes that converted tracks); ``media`` when decoding found videos worth naming:
            ``{"rotated": {media: clockwise degrees}, "variable_frame_rate": [media], "truncated": {media:
            {"declared_frames", "decoded_frames"}}}`` (phone video turned upright, timestamps from presentation
            times, fewer frames than the container declares). Only the timing fields differ between two runs of
            the same input and options.
        schema_version: Version of the records and of this file.
    """

    name: str
    tasks: list[str]
    label_names: dict[str, list[str]]
    bucket_by: str
    bucket_names: list[str]
    crop_size: int
    clip_length: int
    splits: dict[str, SplitInfo]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    failures: dict[str, Any] = dataclasses.field(default_factory=dict)
    unused_media: list[str] = dataclasses.field(default_factory=list)
    run: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def expression_names(self) -> list[str]:
        return list(self.label_names.get("expression", []))

    @property
    def action_unit_names(self) -> list[str]:
        return list(self.label_names.get("action_units", []))

    @property
    def num_action_units(self) -> int:
        return len(self.action_unit_names)

    @property
    def codec(self) -> str:
        """How the records store the crops (``options.codec``: ``jpeg`` or ``raw``; older conversions: ``jpeg``)."""
        return self.options.get("codec", DEFAULT_CODEC)

    def check(self) -> None:
        """Raises DatasetInfoError unless every split's accounting adds up."""
        for split, info in self.splits.items():
            info.accounting.check(split)

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "dataset_info.json") -> DatasetInfo:
        """Parses and validates JSON text.

        Every field is checked: its type (strings, integers >= 0, lists of strings), the shape of the
        nested objects (splits, shards, accounting, histograms) and unknown or missing fields. Each split
        must have its ``accounting`` (every count); shard paths are ``<split>/<file>``, relative, inside
        the data folder; the shards hold ``num_clips`` records, and a bucket whose listed shards all hold
        0 records must be declared empty (``bucket_clips[bucket] == 0``, or ``num_clips == 0`` unbucketed).

        Args:
            text: The JSON text.
            source: Where it came from; every error message names it.

        Raises:
            DatasetInfoError: malformed JSON, missing, unknown or mistyped fields (the message names
                ``source`` and the field, e.g. ``splits.train.shards[0].num_records``), or another schema
                version.
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetInfoError(f"{source} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise DatasetInfoError(f"{source} must hold a JSON object, got {type(raw).__name__}")
        version = raw.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > max(READABLE_SCHEMA_VERSIONS):
            raise DatasetInfoError(
                f"{source} has schema version {version}, newer than this AffectStream reads (versions "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}): it was written by a newer AffectStream; upgrade "
                "AffectStream to read it."
            )
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            raise DatasetInfoError(
                f"{source} has schema version {version!r}; this AffectStream reads versions "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}. Convert the data again with this version of "
                "beam_jobs.convert."
            )
        return cls._from_raw(raw, source)

    @classmethod
    def _from_raw(cls, raw: dict, source: str) -> DatasetInfo:
        """Builds a DatasetInfo from parsed JSON, checking every field's type and nested shape."""
        return cls(**checked_fields(raw, {f.name for f in dataclasses.fields(cls)}, source))


def bucket_token(name: str) -> str:
    """A bucket name made safe for file names (letters, digits, '_' and '.')."""
    token = re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_")
    if not token:
        raise ValueError(f"bucket name {name!r} has no file-safe characters")
    return token


def shard_basename(prefix: str, split: str, bucket: str | None, index: int, num_shards: int) -> str:
    """``<prefix>-<split>[-<bucket>].tfrecord-SSSSS-of-NNNNN`` (TFDS style); :func:`parse_shard_basename` reads it."""
    stem = f"{prefix}-{split}" + (f"-{bucket_token(bucket)}" if bucket is not None else "")
    return f"{stem}.tfrecord-{index:05d}-of-{num_shards:05d}"


class ShardName(NamedTuple):
    """The parts of a shard file name (see :func:`shard_basename`).

    Attributes:
        prefix: The dataset name.
        split: The split.
        bucket_token: The file-safe bucket token (:func:`bucket_token`), None for an unbucketed set.
        index: The shard's index in its set.
        num_shards: Shards in the set.
    """

    prefix: str
    split: str
    bucket_token: str | None
    index: int
    num_shards: int


_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.tfrecord-(?P<index>\d{5,})-of-(?P<num_shards>\d{5,})$")


def parse_shard_basename(name: str, prefix: str | None = None) -> ShardName:
    """The inverse of :func:`shard_basename`: ``shard_basename(*parse_shard_basename(n)) == n``.

    Split names and bucket tokens hold no ``-``; a prefix may, when it is given.

    Args:
        name: A shard file name (no folder).
        prefix: The dataset name, when known; without it the prefix is the text before the first ``-``.

    Raises:
        ValueError: ``name`` is not a shard name (of ``prefix``), or its index is not below its count.
    """
    match = _SHARD_NAME.match(name)
    stem = match.group("stem") if match else ""
    if prefix is not None:
        if not stem.startswith(prefix + "-"):
            raise ValueError(f"{name!r} is not a shard name of {prefix!r}")
        parts = [prefix] + stem[len(prefix) + 1:].split("-")
    else:
        parts = stem.split("-")
    if not match or len(parts) not in (2, 3):
        raise ValueError(f"{name!r} is not a shard name <prefix>-<split>[-<bucket>].tfrecord-SSSSS-of-NNNNN")
    parsed = ShardName(parts[0], parts[1], parts[2] if len(parts) == 3 else None,
                       int(match.group("index")), int(match.group("num_shards")))
    if parsed.index >= parsed.num_shards or shard_basename(*parsed) != name:
        raise ValueError(f"{name!r} is not a well-formed shard name (index {parsed.index} of {parsed.num_shards})")
    return parsed


def shard_path(split: str, basename: str) -> str:
    """A shard's path relative to the dataset root, as :attr:`ShardInfo.path` holds it."""
    return f"{split}/{basename}"


def join_path(root: str, *parts: str) -> str:
    """Joins path parts under a local directory or a URL (``gs://``, ``s3://``)."""
    if "://" in root:
        return posixpath.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)


def info_path(data_dir: str) -> str:
    """Path of the dataset_info.json of a conversion output."""
    return join_path(data_dir, DATASET_INFO_FILENAME)


def read_dataset_info(data_dir: str) -> DatasetInfo:
    """Reads ``<data_dir>/dataset_info.json`` from local disk, ``gs://`` or ``s3://``.

    Raises:
        DatasetInfoError: the file is missing, malformed or of another schema version.
    """
    import tensorflow as tf  # Late import: the Beam side writes with Beam's file systems.

    path = info_path(data_dir)
    if not tf.io.gfile.exists(path):
        hint = _unfinished_hint(data_dir) or missing_hint(path)
        raise DatasetInfoError(f"{path} not found: the data folder must be the output directory of "
                               f"beam_jobs.convert{hint}")
    with tf.io.gfile.GFile(path, "r") as f:
        return DatasetInfo.from_json(f.read(), source=path)


def _unfinished_hint(path: str) -> str:
    """``"; `COMMAND` (pid N) is running and holds PATH ..."`` (or: stopped before it finished) when ``path`` holds a
    run's lock or transaction folders: why it has no ``dataset_info.json`` yet, for a reader's "not found" (``""``
    otherwise, also when ``path`` cannot be looked at). The run is named by its command (a conversion's output and
    a training's job folder hold the same lock file). Local folders only: on an object store each look is a request,
    and one that cannot be answered (refused credentials) takes tensorflow-io a minute of retries."""
    from tfrecords_schema import storage

    if storage.is_url(path):
        return ""
    import socket

    import tensorflow as tf

    from tfrecords_schema.locks import LockError, output_lock_path, read_lock_file
    from tfrecords_schema.transaction import find_leftovers

    try:
        leftovers = find_leftovers(path)
        holder = read_lock_file(output_lock_path(path))
    except (LockError, OSError, tf.errors.OpError):
        return ""
    runs = [(holder.command, holder.pid, holder.host)] if holder is not None else []
    runs += [(item.info.get("command", ""), item.info.get("pid"), item.info.get("host")) for item in leftovers]
    if not runs:
        return ""
    command, pid, host = runs[0]
    named = f"`{command[:120]}` (pid {pid})" if command else f"a run (pid {pid})"
    if (holder is not None and not holder.is_dead_here()) or any(item.alive for item in leftovers):
        where = "is running" if host == socket.gethostname() else f"may be running on {host}"
        return f"; {named} {where} and holds {path}: read it once that run has finished"
    return (f"; {named} stopped before it finished writing {path} (`affectstream inspect {path}` says what it left): "
            "run it again, and it tidies up what the stopped run left")


def write_dataset_info(info: DatasetInfo, data_dir: str) -> str:
    """Writes ``info`` to ``<data_dir>/dataset_info.json`` atomically with tf.io.gfile; returns the path.

    For tools and tests on the TensorFlow side; the conversion writes its file through Beam's file
    systems (``beam_jobs.pipeline.finalize.save_dataset_info``), which carry the job's storage options.
    """
    from tfrecords_schema.atomic import write_atomically

    return write_atomically(info_path(data_dir), info.to_json())
