"""Finishing steps, each alone in a TestPipeline on in-memory inputs: MergeSummaries, BuildDatasetInfo,
WriteDeadLetters, StageDatasetInfo; and the one writer of dataset_info.json."""

from __future__ import annotations

import json

import apache_beam as beam
import beam_runs
import conversion_fixtures as cf
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.pipeline import finalize
from beam_jobs.pipeline.clips import SplitSummary
from beam_jobs.sources.base import DeadLetter, SplitDrop
from tfrecords_schema import Accounting, DatasetInfo, ShardInfo, SplitInfo, read_dataset_info
from tfrecords_schema.dataset_info import sum_counts

TRAIN_SHARD = ShardInfo(path="train/abaw-train-Fear.tfrecord-00000-of-00001", bucket="Fear", num_records=2,
                        num_frames=8, num_bytes=100)


def _summary(**kwargs) -> SplitSummary:
    return SplitSummary(**kwargs)


def test_merge_summaries_adds_counts_histograms_and_accounting_per_split():
    summaries = [
        ("train", _summary(num_clips=1, num_frames=4, bucket_clips={"Fear": 1}, bucket_frames={"Fear": 4},
                           class_frames={"expr": {"Fear": 4}}, accounting=Accounting(4, 3, 1, {}), tracks=1, seconds=1.5)),
        ("train", _summary(num_clips=1, num_frames=4, bucket_clips={"Fear": 1}, bucket_frames={"Fear": 4},
                           class_frames={"expr": {"Fear": 2, "Anger": 2}},
                           accounting=Accounting(6, 4, 0, {"beyond_video_end": 2}), tracks=1, seconds=0.5)),
        ("validation", _summary(accounting=Accounting(3, 0, 0, {"no_media": 3}), tracks=1)),
    ]
    with beam_runs.unit_pipeline() as p:
        merged = p | beam.Create(summaries) | beam.CombinePerKey(finalize.MergeSummariesFn())
        assert_that(merged, equal_to([
            ("train", _summary(num_clips=2, num_frames=8, bucket_clips={"Fear": 2}, bucket_frames={"Fear": 8},
                               class_frames={"expr": {"Fear": 6, "Anger": 2}},
                               accounting=Accounting(10, 7, 1, {"beyond_video_end": 2}), tracks=2, seconds=2.0)),
            ("validation", _summary(accounting=Accounting(3, 0, 0, {"no_media": 3}), tracks=1)),
        ]))


def _build(p, config, shards, summaries, letters, splits=("train", "validation")):
    return p | beam.Create([None]) | beam.ParDo(
        finalize.BuildDatasetInfoFn(config, list(splits), {"clip_length": 4}, ["orphan.avi"]),
        beam.pvalue.AsList(p | "Shards" >> beam.Create(shards)),
        beam.pvalue.AsList(p | "Summaries" >> beam.Create(summaries)),
        beam.pvalue.AsList(p | "Letters" >> beam.Create(letters)))


def test_build_dataset_info_assembles_the_checked_info(tmp_path):
    config = cf.config(tmp_path / "out")
    letters = [finalize.dead_letter_dict(DeadLetter("v.avi", "beyond_video_end", "2 lines", 2), "train/v"),
               finalize.dead_letter_dict(DeadLetter("x.txt", "bad_header", "header", 0))]
    summaries = [
        ("train", _summary(num_clips=2, num_frames=8, bucket_clips={"Fear": 2}, bucket_frames={"Fear": 8},
                           class_frames={"expr": {"Fear": 8}}, accounting=Accounting(10, 7, 1, {"beyond_video_end": 2}),
                           tracks=1, seconds=1.25)),
        finalize.split_drop_summary(SplitDrop("train", "malformed_line", 3)),
    ]
    expected = DatasetInfo(
        name="abaw", tasks=["expr"], label_names=cf.LABEL_NAMES, bucket_by="expression",
        bucket_names=cf.LABEL_NAMES["expression"] + ["no_expression"], crop_size=16, clip_length=4,
        splits={
            "train": SplitInfo(num_clips=2, num_frames=8, bucket_clips={"Fear": 2}, bucket_frames={"Fear": 8},
                               class_frames={"expr": {"Fear": 8}}, shards=[TRAIN_SHARD],
                               accounting=Accounting(13, 7, 1, {"beyond_video_end": 2, "malformed_line": 3}),
                               bucket_classes={"Fear": {"expr": "Fear"}}),
            "validation": SplitInfo(),  # A split of the run with nothing in it still has its entry.
        },
        options={"clip_length": 4}, unused_media=["orphan.avi"],
        failures={"dead_letters": 2, "by_reason": {"bad_header": 1, "beyond_video_end": 1},
                  "files": ["errors/dead_letters.jsonl"]},
        run={"tracks": 1, "worker_seconds": 1.25},
    )
    with beam_runs.unit_pipeline() as p:
        assert_that(_build(p, config, [TRAIN_SHARD], summaries, letters), equal_to([expected]))


@pytest.mark.parametrize("accounting, shard_records, error", [
    (Accounting(10, 7, 1, {}), 2, "does not add up"),  # 2 labelled frames are nowhere.
    (Accounting(8, 7, 1, {}), 3, "3 records in shards but 2 clips encoded"),
])
def test_build_dataset_info_fails_the_run_when_frames_or_records_go_missing(tmp_path, accounting, shard_records,
                                                                            error):
    config = cf.config(tmp_path / "out")
    shard = ShardInfo(TRAIN_SHARD.path, "Fear", shard_records, 8, 100)
    with pytest.raises(Exception, match=error), beam_runs.unit_pipeline() as p:
        _build(p, config, [shard], [("train", _summary(num_clips=2, accounting=accounting))], [], ["train"])


def test_write_dead_letters_writes_them_sorted_and_nothing_when_there_is_none(tmp_path):
    config = cf.config(tmp_path / "out")
    letters = [finalize.dead_letter_dict(DeadLetter("b.avi", "unreadable_media", "zero-byte", 3), "train/b"),
               finalize.dead_letter_dict(DeadLetter("x.txt", "bad_header", "Happy,Sad", 0)),
               finalize.dead_letter_dict(DeadLetter("a.avi", "no_media", "vidéo", 1), "train/a")]
    with beam_runs.unit_pipeline() as p:
        written = p | beam.Create([None]) | beam.ParDo(
            finalize.WriteDeadLettersFn(config), beam.pvalue.AsList(p | "Letters" >> beam.Create(letters)))
        assert_that(written, equal_to(["errors/dead_letters.jsonl"]))
    lines = (tmp_path / "out" / "errors" / "dead_letters.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["track"] for line in lines] == ["", "train/a", "train/b"]
    assert "vidéo" in lines[1]  # Not escaped: readable as written.

    empty = cf.config(tmp_path / "empty")
    with beam_runs.unit_pipeline() as p:
        written = p | beam.Create([None]) | beam.ParDo(
            finalize.WriteDeadLettersFn(empty), beam.pvalue.AsList(p | "Letters" >> beam.Create([])))
        assert_that(written, equal_to([]))
    assert not (tmp_path / "empty").exists()


def _info(run: dict) -> DatasetInfo:
    return DatasetInfo(name="abaw", tasks=["expr"], label_names={"expression": ["Fear"]}, bucket_by="none",
                       bucket_names=["all"], crop_size=16, clip_length=4,
                       splits={"train": SplitInfo(num_clips=2, num_frames=8, shards=[TRAIN_SHARD])}, run=run)


def test_stage_dataset_info_leaves_the_info_in_the_temp_folder_for_the_driver(tmp_path):
    config = cf.config(tmp_path / "out")
    info = _info({"tracks": 1})
    with beam_runs.unit_pipeline() as p:
        staged = p | beam.Create([info]) | beam.ParDo(finalize.StageDatasetInfoFn(config))
        assert_that(staged, equal_to([str(tmp_path / "out" / ".tmp-convert" / "dataset_info.json")]))
    assert finalize.load_dataset_info(config.tmp_dir) == info
    assert not (tmp_path / "out" / "dataset_info.json").exists()


def test_save_dataset_info_writes_the_deterministic_json_the_trainer_reads(tmp_path):
    info = _info({"tracks": 1, "seconds": 2.5})
    path = finalize.save_dataset_info(info, str(tmp_path))
    assert path == str(tmp_path / "dataset_info.json")
    assert (tmp_path / "dataset_info.json").read_text() == info.to_json()
    assert read_dataset_info(str(tmp_path)) == info
    assert [p.name for p in tmp_path.iterdir()] == ["dataset_info.json"]  # No temporary file left.


def test_save_dataset_info_leaves_no_temporary_file_when_the_rename_fails(tmp_path):
    (tmp_path / "dataset_info.json").mkdir()  # A folder in the way: the rename fails.
    with pytest.raises(OSError):
        finalize.save_dataset_info(_info({"tracks": 1}), str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["dataset_info.json"]


def test_count_merges_keep_every_key_even_a_zero_count():
    assert sum_counts({"no_media": 2, "bad_header": 0}, {"no_media": 1}, {}) == {"no_media": 3, "bad_header": 0}
    merged = Accounting(5, 1, 0, {"no_media": 4, "out_of_range": 0}).merge(Accounting(2, 2, 0, {}))
    assert merged == Accounting(7, 3, 0, {"no_media": 4, "out_of_range": 0})


def test_dead_letters_sort_line_numbers_as_numbers():
    from beam_jobs.pipeline.finalize import sorted_dead_letters

    letters = [{"track": "t", "source": f"m.csv:line {n}", "reason": "r", "message": ""} for n in (16, 9, 15, 100)]
    assert [d["source"] for d in sorted_dead_letters(letters)] == [
        "m.csv:line 9", "m.csv:line 15", "m.csv:line 16", "m.csv:line 100"]  # (as text: 100, 15, 16, 9)
    odd = [{"track": "t", "source": f"clip1\u00b2{n}.csv:line 3", "reason": "r", "message": ""} for n in (2, 1)]
    assert [d["source"][6] for d in sorted_dead_letters(odd)] == ["1", "2"]  # a superscript is text, not a number
