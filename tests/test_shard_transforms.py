"""Spill files and shards, each step alone in a TestPipeline on in-memory clips: EncodeClips, AssignShard,
WriteShards, CompleteShardSets, FinalizeShards; and shard names read back with parse_shard_basename."""

from __future__ import annotations

import apache_beam as beam
import beam_runs
import conversion_fixtures as cf
import pytest
import tensorflow as tf
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from beam_jobs.pipeline import shards, spill
from beam_jobs.pipeline.clips import stable_shard
from tfrecords_schema import DatasetInfo, ShardInfo, SplitInfo, encode_clip, shard_basename
from tfrecords_schema.dataset_info import ShardName, parse_shard_basename


def tfrecords(path) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def test_encode_clips_spills_each_record_and_passes_on_its_location_and_statistics(tmp_path):
    config = cf.config(tmp_path / "out")
    clips = [("train", cf.clip("train", "a", [4, 4, 1])), ("train", cf.clip("train", "b", [1, 1])),
             ("validation", cf.clip("validation", "c", [5]))]
    expected = {c.example_id: encode_clip(c) for _, c in clips}

    def spilled_bytes_match(records):
        got = dict(zip((r.example_id for r in records), spill.read_spilled(records)))
        if got != expected:
            raise BeamAssertException(f"spilled bytes differ for {sorted(set(got) ^ set(expected))}")

    with beam_runs.unit_pipeline() as p:
        out = p | beam.Create(clips) | beam.ParDo(spill.EncodeClipsFn(config)).with_outputs(
            spill.TAG_STATS, main="records")
        assert_that(out.records, spilled_bytes_match, label="bytes")
        assert_that(out.records | beam.Map(lambda r: (r.example_id, r.split, r.bucket, r.frames,
                                                      r.path.startswith(config.tmp_dir))),
                    equal_to([("train/a/000001", "train", "Happiness", 3, True),
                              ("train/b/000001", "train", "Anger", 2, True),
                              ("validation/c/000001", "validation", None, 1, True)]), label="records")
        assert_that(out[spill.TAG_STATS] | beam.Map(lambda kv: (kv[0], kv[1].num_clips, kv[1].bucket_clips,
                                                                kv[1].class_frames)),
                    equal_to([("train", 1, {"Happiness": 1}, {"expr": {"Happiness": 2, "Anger": 1}}),
                              ("train", 1, {"Anger": 1}, {"expr": {"Anger": 2}}),
                              ("validation", 1, {"Sadness": 1}, {"expr": {"Sadness": 1}})]), label="stats")


def test_spill_reader_refuses_a_short_spill_file(tmp_path):
    config = cf.config(tmp_path / "out")
    record = cf.spill_clip(config, "train", cf.clip("train", "a", [4]))
    short = spill.SpilledRecord(record.split, record.bucket, record.example_id, record.path, record.offset,
                                record.length + 1, record.frames)
    with pytest.raises(OSError, match="is short"):
        list(spill.read_spilled([short]))


def test_assign_shard_keys_each_record_by_a_stable_hash_of_its_id(tmp_path):
    config = cf.config(tmp_path / "out", min_shards=3)
    records = [cf.spill_clip(config, "validation", cf.clip("validation", name, [4])) for name in "abcdef"]
    with beam_runs.unit_pipeline() as p:
        set_bytes = p | "Bytes" >> beam.Create([(("validation", None), 10)])
        keyed = (p | beam.Create(records)
                 | beam.ParDo(shards.AssignShardFn(config), beam.pvalue.AsDict(set_bytes))
                 | beam.Map(lambda kv: (kv[0], kv[1].example_id)))
        assert_that(keyed, equal_to([(("validation", None, stable_shard(r.example_id, 3), 3), r.example_id)
                                     for r in records]))


def _spilled(config, clips):
    writer = spill.SpillWriter(config.tmp_dir + "/spill")
    records = [cf.spill_clip(config, c.example_id.split("/")[0], c, writer) for c in clips]
    writer.close()
    return records


def _tfrecord_size(records: list[bytes]) -> int:
    return sum(8 + 4 + len(r) + 4 for r in records)  # Length, its CRC, the data, its CRC.


def test_write_shards_writes_each_shard_set_with_records_sorted_by_id(tmp_path):
    config = cf.config(tmp_path / "out")
    b, a, c = cf.clip("train", "b", [4, 4]), cf.clip("train", "a", [4]), cf.clip("validation", "c", [1])
    with beam_runs.unit_pipeline() as p:
        written = p | beam.Create(_spilled(config, [b, a, c])) | shards.WriteShards(config)
        assert_that(written, equal_to([
            ShardInfo(path="train/abaw-train-Happiness.tfrecord-00000-of-00001", bucket="Happiness", num_records=2,
                      num_frames=3, num_bytes=_tfrecord_size([encode_clip(a), encode_clip(b)])),
            ShardInfo(path="validation/abaw-validation.tfrecord-00000-of-00001", bucket=None, num_records=1,
                      num_frames=1, num_bytes=_tfrecord_size([encode_clip(c)])),
        ]))
    tmp = tmp_path / "out" / ".tmp-convert"
    assert tfrecords(tmp / "train" / "abaw-train-Happiness.tfrecord-00000-of-00001") == [encode_clip(a), encode_clip(b)]
    assert tfrecords(tmp / "validation" / "abaw-validation.tfrecord-00000-of-00001") == [encode_clip(c)]


def test_write_shards_sizes_a_shard_set_by_its_bytes(tmp_path):
    config = cf.config(tmp_path / "out", shard_bytes=1000)
    clips = [cf.clip("validation", name, [1, 1, 1, 1]) for name in "abcd"]
    records = _spilled(config, clips)
    n = shards.num_shards(sum(r.length for r in records), 1, 1000)
    assert n > 1
    expected = {}
    for r in records:
        path = "validation/" + shard_basename("abaw", "validation", None, stable_shard(r.example_id, n), n)
        expected[path] = expected.get(path, 0) + 1
    with beam_runs.unit_pipeline() as p:
        written = p | beam.Create(records) | shards.WriteShards(config)
        assert_that(written | beam.Map(lambda s: (s.path, s.num_records)), equal_to(sorted(expected.items())))


def test_complete_shard_sets_adds_the_missing_indices_as_empty_shards(tmp_path):
    config = cf.config(tmp_path / "out")
    have = ShardInfo(path="train/" + shard_basename("abaw", "train", "Fear", 1, 3), bucket="Fear", num_records=2,
                     num_frames=8, num_bytes=100)
    with beam_runs.unit_pipeline() as p:
        every = p | beam.Create([None]) | beam.ParDo(shards.CompleteShardSetsFn(config),
                                                     beam.pvalue.AsList(p | "Shards" >> beam.Create([have])))
        assert_that(every, equal_to([have] + [
            ShardInfo(path="train/" + shard_basename("abaw", "train", "Fear", i, 3), bucket="Fear", num_records=0,
                      num_frames=0, num_bytes=0) for i in (0, 2)]))
    empty = tmp_path / "out" / ".tmp-convert" / "train" / "abaw-train-Fear.tfrecord-00002-of-00003"
    assert empty.exists() and tfrecords(empty) == []


def test_finalize_shards_renames_every_shard_into_place(tmp_path):
    config = cf.config(tmp_path / "out")
    names = ["train/abaw-train-Fear.tfrecord-00000-of-00001", "validation/abaw-validation.tfrecord-00000-of-00001"]
    for name in names:
        shards.write_tfrecord(str(tmp_path / "out" / ".tmp-convert" / name), [name.encode()])
    info = DatasetInfo(name="abaw", tasks=["expr"], label_names={}, bucket_by="expression", bucket_names=["Fear"],
                       crop_size=16, clip_length=4, splits={
                           split: SplitInfo(shards=[ShardInfo(path=name, bucket=None, num_records=1, num_frames=1,
                                                              num_bytes=1)])
                           for split, name in zip(("train", "validation"), names)})
    with beam_runs.unit_pipeline() as p:
        assert_that(p | beam.Create([info]) | beam.ParDo(shards.FinalizeShardsFn(config)), equal_to([info]))
    for name in names:
        assert tfrecords(tmp_path / "out" / name) == [name.encode()]
        assert not (tmp_path / "out" / ".tmp-convert" / name).exists()


def test_num_shards_is_enough_for_the_target_size_and_at_least_the_minimum():
    assert shards.num_shards(0, 1, 100) == 1
    assert shards.num_shards(250, 1, 100) == 3
    assert shards.num_shards(250, 5, 100) == 5


@pytest.mark.parametrize("prefix, split, bucket, index, n", [
    ("abaw", "train", "Fear", 0, 2), ("abaw", "validation", None, 4, 5), ("manifest", "train", "v0_a3", 12, 100_000),
])
def test_parse_shard_basename_inverts_shard_basename(prefix, split, bucket, index, n):
    name = shard_basename(prefix, split, bucket, index, n)
    assert parse_shard_basename(name) == ShardName(prefix, split, bucket, index, n)
    assert parse_shard_basename(name, prefix) == ShardName(prefix, split, bucket, index, n)


def test_parse_shard_basename_takes_a_dashed_prefix_when_given_and_refuses_other_names():
    name = shard_basename("my-data", "train", "no_va", 0, 1)
    assert parse_shard_basename(name, "my-data") == ShardName("my-data", "train", "no_va", 0, 1)
    for bad in ("abaw-train.tfrecord-00002-of-00002", "abaw-train.tfrecord-1-of-00002", "dataset_info.json",
                "abaw-train-a-b.tfrecord-00000-of-00001", name):
        with pytest.raises(ValueError, match="shard name"):
            parse_shard_basename(bad)
    with pytest.raises(ValueError, match="not a shard name of 'other'"):
        parse_shard_basename(name, "other")
