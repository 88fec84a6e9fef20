"""The strict checks of a parsed `dataset_info.json`: every field's type and the nested objects' shape.

:meth:`tfrecords_schema.DatasetInfo.from_json` runs them. They turn the JSON into the checked
:class:`~tfrecords_schema.dataset_info.SplitInfo`, :class:`~tfrecords_schema.dataset_info.ShardInfo` and
:class:`~tfrecords_schema.dataset_info.Accounting` objects, and refuse what would make a reader go wrong
quietly: a shard path leading outside the data folder, a split without its accounting, a missing count
read as 0, shards that do not hold the split's clips.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

from tfrecords_schema import buckets
from tfrecords_schema.image_codec import CODECS, DEFAULT_CODEC
from tfrecords_schema.split_info import Accounting, DatasetInfoError, ShardInfo, SplitInfo, sum_counts

# Fields of dataset_info.json (and of its nested objects) that may be left out.
_OPTIONAL_INFO_FIELDS = {"options", "failures", "unused_media", "run", "schema_version"}
_SPLIT_COUNTS = ("num_clips", "num_frames")
_SHARD_COUNTS = ("num_records", "num_frames", "num_bytes")
_ACCOUNTING_COUNTS = ("labelled_frames", "written_frames_with_face", "written_frames_without_face")


def _fail(source: str, where: str, problem: str) -> DatasetInfoError:
    return DatasetInfoError(f"{source} is missing or has malformed fields: {where or 'top level'} {problem}")


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _check_keys(raw: dict, allowed: set[str], required: set[str], source: str, where: str) -> None:
    missing = sorted(required - set(raw))
    if missing:
        raise _fail(source, where, f"lacks required field(s) {missing}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DatasetInfoError(f"{source} has unknown fields {unknown}" + (f" in {where}" if where else "")
                               + f"; valid fields: {sorted(allowed)}")


def _check_str(value: Any, source: str, where: str) -> None:
    if not isinstance(value, str):
        raise _fail(source, where, f"must be a string, got {_kind(value)}")


def _check_int(value: Any, source: str, where: str, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(source, where, f"must be an integer >= {minimum}, got {_kind(value)}")


def _check_dict(value: Any, source: str, where: str) -> None:
    if not isinstance(value, dict):
        raise _fail(source, where, f"must be a JSON object, got {_kind(value)}")


def _check_str_list(value: Any, source: str, where: str) -> None:
    if not isinstance(value, list):
        raise _fail(source, where, f"must be a list of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        _check_str(item, source, f"{where}[{i}]")


def _check_counts(value: Any, source: str, where: str) -> None:
    """``{name: integer >= 0}``."""
    _check_dict(value, source, where)
    for key, count in value.items():
        _check_int(count, source, f"{where}.{key}")


# Split fields every writer writes: a missing one is an error, never read as zeros.
_REQUIRED_SPLIT_FIELDS = {"num_clips", "num_frames", "shards", "accounting"}
# The per-bucket task blocks, written from schema version 3 on (required there).
_TASK_BLOCKS = {"task_frames", "bucket_classes", "bucket_class_frames", "bucket_task_frames"}
_TASK_BLOCKS_SINCE = 3
_ABSOLUTE = re.compile(r"^([A-Za-z]:|[A-Za-z][A-Za-z0-9+.-]*://)")  # A drive letter or a URL scheme.


def _check_split_name(split: str, source: str, where: str) -> None:
    """A split name is one plain folder name: shard paths start with it."""
    if split in ("", ".", "..") or "/" in split or "\\" in split or _ABSOLUTE.match(split):
        raise _fail(source, where, f"is not a usable split name {split!r} (it becomes a folder of the data folder)")


def _split_from_raw(raw: Any, source: str, where: str, split: str, version: int) -> SplitInfo:
    _check_split_name(split, source, where)
    _check_dict(raw, source, where)
    allowed = {f.name for f in dataclasses.fields(SplitInfo)}
    required = _REQUIRED_SPLIT_FIELDS | (_TASK_BLOCKS if version >= _TASK_BLOCKS_SINCE else set())
    _check_keys(raw, allowed, required, source, where)
    for name in _SPLIT_COUNTS:
        if name in raw:
            _check_int(raw[name], source, f"{where}.{name}")
    for name in ("bucket_clips", "bucket_frames", "faces"):
        if name in raw:
            _check_counts(raw[name], source, f"{where}.{name}")
    if "class_frames" in raw:
        _check_dict(raw["class_frames"], source, f"{where}.class_frames")
        for task, histogram in raw["class_frames"].items():
            _check_counts(histogram, source, f"{where}.class_frames.{task}")
    _check_task_blocks(raw, source, where)
    shards = raw["shards"]
    if not isinstance(shards, list):
        raise _fail(source, f"{where}.shards", f"must be a list of shard objects, got {_kind(shards)}")
    info = SplitInfo(**{
        **raw,
        "shards": [_shard_from_raw(shard, source, f"{where}.shards[{i}]", split) for i, shard in enumerate(shards)],
        "accounting": _accounting_from_raw(raw["accounting"], source, f"{where}.accounting"),
    })
    _check_shard_records(info, source, where)
    _check_bucket_sums(info, source, where)
    return info


def _check_task_blocks(raw: dict, source: str, where: str) -> None:
    """The shapes of the per-bucket task blocks (schema version 3)."""
    if "task_frames" in raw:
        _check_counts(raw["task_frames"], source, f"{where}.task_frames")
    for name in ("bucket_classes", "bucket_class_frames", "bucket_task_frames"):
        if name in raw:
            _check_dict(raw[name], source, f"{where}.{name}")
    for bucket, classes in raw.get("bucket_classes", {}).items():
        _check_dict(classes, source, f"{where}.bucket_classes.{bucket}")
        for task, name in classes.items():
            _check_str(name, source, f"{where}.bucket_classes.{bucket}.{task}")
    for bucket, histograms in raw.get("bucket_class_frames", {}).items():
        _check_dict(histograms, source, f"{where}.bucket_class_frames.{bucket}")
        for task, histogram in histograms.items():
            _check_counts(histogram, source, f"{where}.bucket_class_frames.{bucket}.{task}")
    for bucket, counts in raw.get("bucket_task_frames", {}).items():
        _check_counts(counts, source, f"{where}.bucket_task_frames.{bucket}")


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _check_bucket_sums(info: SplitInfo, source: str, where: str) -> None:
    """The per-bucket blocks cover every bucket with clips, name no other, and add up to the split's counts.

    An empty block is one that was not written (a version 1-2 file, or a writer without buckets).
    """
    with_clips = {b for b, n in info.bucket_clips.items() if n > 0}
    for name in ("bucket_classes", "bucket_class_frames", "bucket_task_frames"):
        block = getattr(info, name)
        if not block:
            continue
        unknown, missing = sorted(set(block) - set(info.bucket_clips)), sorted(with_clips - set(block))
        if unknown or missing:
            raise _fail(source, f"{where}.{name}", f"must have an entry for every bucket with clips in "
                                                   f"{where}.bucket_clips and no other (unknown {unknown}, "
                                                   f"missing {missing})")
    if info.bucket_class_frames:
        tasks = sorted(set(info.class_frames) | {t for h in info.bucket_class_frames.values() for t in h})
        for task in tasks:
            summed = sum_counts(*(h.get(task, {}) for h in info.bucket_class_frames.values()))
            if _nonzero(summed) != _nonzero(info.class_frames.get(task, {})):
                raise _fail(source, f"{where}.bucket_class_frames", f"of task {task!r} add up to {_nonzero(summed)}"
                                                                   f" but {where}.class_frames.{task} is "
                                                                   f"{_nonzero(info.class_frames.get(task, {}))}")
    if info.bucket_task_frames:
        summed = sum_counts(*info.bucket_task_frames.values())
        if _nonzero(summed) != _nonzero(info.task_frames):
            raise _fail(source, f"{where}.bucket_task_frames", f"add up to {_nonzero(summed)} but "
                                                              f"{where}.task_frames is {_nonzero(info.task_frames)}")


def _check_bucket_classes(splits: dict[str, SplitInfo], bucket_by: str, tasks: list[str], source: str) -> None:
    """Each bucket's recorded classes are the ones its name says (:func:`tfrecords_schema.buckets.bucket_classes`)."""
    for split, info in splits.items():
        for bucket, classes in info.bucket_classes.items():
            try:
                expected = buckets.bucket_classes(bucket_by, bucket, tasks)
            except ValueError as e:
                raise _fail(source, f"splits.{split}.bucket_classes.{bucket}", str(e)) from e
            if classes != expected:
                raise _fail(source, f"splits.{split}.bucket_classes.{bucket}",
                            f"is {classes} but bucket_by {bucket_by!r} names it {expected}")


def _check_shard_path(path: str, split: str, source: str, where: str) -> None:
    """``<split>/<file>``, relative: a shard path never leads outside the data folder."""
    parts = path.split("/")
    if "\\" in path or "\0" in path:
        problem = "holds a backslash or a NUL character"
    elif path.startswith("/") or _ABSOLUTE.match(path):
        problem = "is absolute"
    elif any(p in ("", ".", "..") for p in parts):
        problem = "has an empty, '.' or '..' part"
    elif len(parts) != 2 or parts[0] != split:
        problem = f"is not '{split}/<shard file>'"
    else:
        return
    raise _fail(source, f"{where}.path", f"{path!r} {problem}: shard paths are relative to the data folder, "
                                         f"'<split>/<file>', and stay inside it")


def _check_shard_records(info: SplitInfo, source: str, where: str) -> None:
    """The shards hold the split's clips; a bucket whose shards hold no record must be declared empty.

    ``--min_shards`` gives a small shard set empty shards beside full ones, so a zero-record shard is fine
    in a bucket that has records. A bucket (``None``: an unbucketed split) is declared empty by
    ``bucket_clips[bucket] == 0`` (``num_clips == 0``); with records, the counts must agree.
    """
    total = sum(s.num_records for s in info.shards)
    if total != info.num_clips:
        raise _fail(source, f"{where}.shards", f"hold {total} records in all but {where}.num_clips is {info.num_clips}")
    by_bucket: dict[str | None, list[int]] = collections.defaultdict(list)
    for i, shard in enumerate(info.shards):
        by_bucket[shard.bucket].append(i)
    for bucket, indices in by_bucket.items():
        records = sum(info.shards[i].num_records for i in indices)
        declared_where = f"{where}.num_clips" if bucket is None else f"{where}.bucket_clips.{bucket}"
        declared = info.num_clips if bucket is None else info.bucket_clips.get(bucket)
        listed = f"{where}.shards{indices}" + ("" if bucket is None else f" (bucket {bucket!r})")
        if records == 0 and declared != 0:
            raise _fail(source, listed, f"all have num_records 0 but the bucket is not declared empty ({declared_where}"
                                        f" is {declared}); its clips would be silently skipped")
        if declared is not None and records != declared:
            raise _fail(source, listed, f"hold {records} records but {declared_where} is {declared}")


def _shard_from_raw(raw: Any, source: str, where: str, split: str) -> ShardInfo:
    _check_dict(raw, source, where)
    names = {f.name for f in dataclasses.fields(ShardInfo)}
    _check_keys(raw, names, names, source, where)
    _check_str(raw["path"], source, f"{where}.path")
    _check_shard_path(raw["path"], split, source, where)
    if raw["bucket"] is not None:
        _check_str(raw["bucket"], source, f"{where}.bucket")
    for name in _SHARD_COUNTS:
        _check_int(raw[name], source, f"{where}.{name}")
    return ShardInfo(**raw)


def _accounting_from_raw(raw: Any, source: str, where: str) -> Accounting:
    """Every count is required: a missing one would read as 0 and make a wrong accounting add up."""
    _check_dict(raw, source, where)
    names = {f.name for f in dataclasses.fields(Accounting)}
    _check_keys(raw, names, names, source, where)
    for name in _ACCOUNTING_COUNTS:
        _check_int(raw[name], source, f"{where}.{name}")
    _check_counts(raw["dropped"], source, f"{where}.dropped")
    return Accounting(**raw)


def checked_fields(raw: dict, fields: set[str], source: str) -> dict[str, Any]:
    """The constructor arguments of a :class:`DatasetInfo` from parsed JSON, every field checked.

    Args:
        raw: The parsed JSON object (schema version already checked).
        fields: The names of DatasetInfo's fields.
        source: Where the JSON came from; every error message names it.

    Raises:
        DatasetInfoError: a missing, unknown or mistyped field, or nested objects of the wrong shape.
    """
    _check_keys(raw, fields, set(fields) - _OPTIONAL_INFO_FIELDS, source, "")
    _check_str(raw["name"], source, "name")
    _check_str_list(raw["tasks"], source, "tasks")
    _check_dict(raw["label_names"], source, "label_names")
    for task, names in raw["label_names"].items():
        _check_str_list(names, source, f"label_names.{task}")
    _check_str(raw["bucket_by"], source, "bucket_by")
    if raw["bucket_by"] not in buckets.BUCKET_BY:
        raise _fail(source, "bucket_by", f"is {raw['bucket_by']!r}, not one of {list(buckets.BUCKET_BY)}")
    _check_str_list(raw["bucket_names"], source, "bucket_names")
    _check_int(raw["crop_size"], source, "crop_size", minimum=1)
    _check_int(raw["clip_length"], source, "clip_length", minimum=1)
    for name in ("options", "failures", "run"):
        if name in raw:
            _check_dict(raw[name], source, name)
    codec = raw.get("options", {}).get("codec", DEFAULT_CODEC)
    if codec not in CODECS:
        raise _fail(source, "options.codec", f"is {codec!r}, not one of {list(CODECS)}")
    if "unused_media" in raw:
        _check_str_list(raw["unused_media"], source, "unused_media")
    _check_dict(raw["splits"], source, "splits")
    version = raw.get("schema_version", 1)
    splits = {split: _split_from_raw(s, source, f"splits.{split}", split, version)
              for split, s in raw["splits"].items()}
    _check_bucket_classes(splits, raw["bucket_by"], raw["tasks"], source)
    return {**raw, "splits": splits}
