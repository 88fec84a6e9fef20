"""`dataset_info.json` is not trusted too far (issue 11 point 5): each bad case is a DatasetInfoError naming the
file and the field, before any shard is opened."""

from __future__ import annotations

import copy
import json

import pytest

from tfrecords_schema import Accounting, DatasetInfo, DatasetInfoError, ShardInfo, SplitInfo, read_dataset_info

SOURCE = "/data/out/dataset_info.json"


def _info() -> DatasetInfo:
    """Two train buckets (Fear's set has an empty shard, as --min_shards 2 writes it), a declared-empty bucket,
    each bucket's class and histograms per task (schema 3), and an unbucketed validation split."""
    train = SplitInfo(
        num_clips=3, num_frames=12, bucket_clips={"Fear": 1, "Happiness": 2, "Sadness": 0},
        bucket_frames={"Fear": 4, "Happiness": 8, "Sadness": 0},
        shards=[ShardInfo("train/abaw-train-Fear.tfrecord-00000-of-00002", "Fear", 1, 4, 100),
                ShardInfo("train/abaw-train-Fear.tfrecord-00001-of-00002", "Fear", 0, 0, 0),
                ShardInfo("train/abaw-train-Happiness.tfrecord-00000-of-00001", "Happiness", 2, 8, 200)],
        accounting=Accounting(13, 11, 1, {"beyond_video_end": 1}),
        class_frames={"expr": {"Fear": 4, "Happiness": 8}}, task_frames={"expr": 12},
        bucket_classes={"Fear": {"expr": "Fear"}, "Happiness": {"expr": "Happiness"}},
        bucket_class_frames={"Fear": {"expr": {"Fear": 4}}, "Happiness": {"expr": {"Happiness": 8}}},
        bucket_task_frames={"Fear": {"expr": 4}, "Happiness": {"expr": 8}})
    validation = SplitInfo(
        num_clips=1, num_frames=4, bucket_clips={"Fear": 1},
        shards=[ShardInfo("validation/abaw-validation.tfrecord-00000-of-00001", None, 1, 4, 100)],
        accounting=Accounting(4, 4, 0, {}))
    return DatasetInfo(name="abaw", tasks=["expr"], label_names={"expression": ["Fear", "Happiness", "Sadness"]},
                       bucket_by="expression", bucket_names=["Fear", "Happiness", "Sadness"], crop_size=48,
                       clip_length=4, splits={"train": train, "validation": validation})


def _raw() -> dict:
    return json.loads(_info().to_json())


def _parse(raw: dict) -> DatasetInfo:
    return DatasetInfo.from_json(json.dumps(raw), source=SOURCE)


def test_a_consistent_info_with_empty_shards_and_a_declared_empty_bucket_reads():
    assert _parse(_raw()) == _info()


def _without_accounting(raw):
    del raw["splits"]["validation"]["accounting"]


def _without_a_count(raw):
    del raw["splits"]["train"]["accounting"]["written_frames_without_face"]


def _without_dropped(raw):
    del raw["splits"]["train"]["accounting"]["dropped"]


def _without_shards(raw):
    del raw["splits"]["train"]["shards"]


def _path(value):
    def change(raw):
        raw["splits"]["train"]["shards"][0]["path"] = value
    return change


def _zero_records_in_a_bucket(raw):
    raw["splits"]["train"]["shards"][2]["num_records"] = 0  # Happiness's only shard: its 2 clips would vanish.
    raw["splits"]["train"]["num_clips"] = 1


def _zero_records_unbucketed(raw):
    raw["splits"]["validation"]["shards"][0]["num_records"] = 0


def _records_disagree_with_the_bucket(raw):
    raw["splits"]["train"]["shards"][1]["num_records"] = 1  # Fear: 2 records in shards, bucket_clips says 1.
    raw["splits"]["train"]["num_clips"] = 4


def _split_name(raw):
    raw["splits"]["../x"] = raw["splits"].pop("validation")


def _set(path, value):
    def change(raw):
        *parents, last = path
        node = raw
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return change


TRAIN = ("splits", "train")


@pytest.mark.parametrize("change, field, problem", [
    (_without_accounting, "splits.validation", r"lacks required field\(s\) \['accounting'\]"),
    (_without_a_count, "splits.train.accounting", r"lacks required field\(s\) \['written_frames_without_face'\]"),
    (_without_dropped, "splits.train.accounting", r"lacks required field\(s\) \['dropped'\]"),
    (_without_shards, "splits.train", r"lacks required field\(s\) \['shards'\]"),
    (_path("/etc/hostname"), r"splits.train.shards\[0\].path", "'/etc/hostname' is absolute"),
    (_path("train/../../etc/hostname"), r"splits.train.shards\[0\].path", r"has an empty, '\.' or '\.\.' part"),
    (_path("../out2/train/x.tfrecord"), r"splits.train.shards\[0\].path", r"'\.\.' part"),
    (_path("train\\..\\..\\secret"), r"splits.train.shards\[0\].path", "backslash"),
    (_path("C:/data/train/x"), r"splits.train.shards\[0\].path", "is absolute"),
    (_path("gs://other-bucket/train/x"), r"splits.train.shards\[0\].path", "is absolute"),
    (_path("train//x"), r"splits.train.shards\[0\].path", "empty"),
    (_path("validation/abaw-train-Fear.tfrecord-00000-of-00002"), r"splits.train.shards\[0\].path",
     "is not 'train/<shard file>'"),
    (_path("train/sub/x"), r"splits.train.shards\[0\].path", "is not 'train/<shard file>'"),
    (_zero_records_in_a_bucket, r"splits.train.shards\[2\] \(bucket 'Happiness'\)",
     r"all have num_records 0 but the bucket is not declared empty \(splits.train.bucket_clips.Happiness is 2\)"),
    (_zero_records_unbucketed, "splits.validation.shards", "hold 0 records in all but splits.validation.num_clips is 1"),
    (_records_disagree_with_the_bucket, r"splits.train.shards\[0, 1\] \(bucket 'Fear'\)",
     "hold 2 records but splits.train.bucket_clips.Fear is 1"),
    (_split_name, "splits.../x", "is not a usable split name"),
    (_set(("bucket_by",), "colour"), "bucket_by", "is 'colour', not one of"),
    (_set((*TRAIN, "bucket_classes"), None), "splits.train", r"lacks required field\(s\) \['bucket_classes'\]"),
    (_set((*TRAIN, "bucket_classes", "Fear", "expr"), "Happiness"), "splits.train.bucket_classes.Fear",
     "is {'expr': 'Happiness'} but bucket_by 'expression' names it {'expr': 'Fear'}"),
    (_set((*TRAIN, "bucket_classes", "Anger"), {"expr": "Anger"}), "splits.train.bucket_classes",
     r"no other \(unknown \['Anger'\], missing \[\]\)"),
    (_set((*TRAIN, "bucket_task_frames", "Happiness"), None), "splits.train.bucket_task_frames",
     r"missing \['Happiness'\]"),
    (_set((*TRAIN, "bucket_class_frames", "Fear", "expr", "Fear"), 3), "splits.train.bucket_class_frames",
     "of task 'expr' add up to {'Fear': 3, 'Happiness': 8} but splits.train.class_frames.expr is"),
    (_set((*TRAIN, "bucket_task_frames", "Fear", "expr"), 5), "splits.train.bucket_task_frames",
     "add up to {'expr': 13} but splits.train.task_frames is {'expr': 12}"),
    (_set((*TRAIN, "bucket_class_frames", "Fear", "expr"), {"Fear": -1}),
     "splits.train.bucket_class_frames.Fear.expr.Fear", "must be an integer >= 0"),
])
def test_each_untrustworthy_field_is_an_error_naming_the_file_and_the_field(change, field, problem):
    raw = _raw()
    change(raw)
    with pytest.raises(DatasetInfoError, match=f"{SOURCE} .*{field} .*{problem}"):
        _parse(raw)


def test_a_missing_accounting_is_not_read_as_zeros_by_the_trainer_side_reader(tmp_path):
    raw = _raw()
    del raw["splits"]["train"]["accounting"]
    (tmp_path / "dataset_info.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetInfoError, match=r"dataset_info.json .*splits.train lacks required field\(s\) "
                                               r"\['accounting'\]"):
        read_dataset_info(str(tmp_path))


def test_an_unbucketed_split_with_no_clip_may_list_empty_shards():
    raw = _raw()
    raw["splits"]["validation"].update(num_clips=0, num_frames=0, bucket_clips={})
    raw["splits"]["validation"]["shards"][0].update(num_records=0, num_frames=0, num_bytes=0)
    raw["splits"]["validation"]["accounting"] = {"labelled_frames": 4, "written_frames_with_face": 0,
                                                 "written_frames_without_face": 0, "dropped": {"no_media": 4}}
    info = _parse(copy.deepcopy(raw))
    assert info.splits["validation"].shards[0].num_records == 0


def test_a_version_2_file_without_the_per_bucket_task_blocks_still_reads():
    raw = _raw()
    raw["schema_version"] = 2
    for split in raw["splits"].values():
        for name in ("task_frames", "bucket_classes", "bucket_class_frames", "bucket_task_frames"):
            del split[name]
    info = _parse(raw)
    assert info.schema_version == 2 and info.splits["train"].bucket_classes == {}
