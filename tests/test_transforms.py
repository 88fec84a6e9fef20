"""The first steps of the conversion, each alone in a TestPipeline: ReadLabels, CountUnreadableLabels,
DecodeAndCrop, and ConvertTracks end to end on provided crops (no video decoded, except where named)."""

from __future__ import annotations

import json

import abaw_layout as abaw
import apache_beam as beam
import beam_runs
import conversion_fixtures as cf
import pytest
import video_fixtures as vf
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.faces import stage as faces
from beam_jobs.pipeline import finalize, transforms
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import decode_clip

TAGS = (transforms.TAG_ACCOUNTING, transforms.TAG_DEAD_LETTERS)


def accounting_rows(summaries):
    """(split, SplitSummary) → comparable rows."""
    return summaries | beam.Map(lambda kv: (kv[0], kv[1].accounting.labelled_frames,
                                            kv[1].accounting.written_frames_with_face,
                                            kv[1].accounting.written_frames_without_face,
                                            dict(kv[1].accounting.dropped), kv[1].tracks))


@pytest.fixture
def abaw_crops(tmp_path):
    """An ABAW annotation tree with provided crops: track c1 (train, 6 frames; crop 3 broken, crop 5 missing)."""
    ann, crops = tmp_path / "annotations", tmp_path / "crops"
    abaw.write_annotation(ann, "expr", "train", "c1", [4, 4, 4, 1, 1, 1])
    cf.write_crops(crops / "c1", {1: None, 2: None, 3: b"\xff\xd8 broken", 4: None, 6: None})
    source = AbawSource(str(ann), cropped_aligned=str(crops))
    return source, source.discover()


def test_read_labels_pairs_each_track_with_its_parsed_labels(abaw_crops):
    source, discovery = abaw_crops
    with beam_runs.unit_pipeline() as p:
        labelled = (p | beam.Create(discovery.tracks) | beam.ParDo(transforms.ReadLabelsFn(source))
                    | beam.Map(lambda e: (e[0].track_id, e[1].expression.tolist())))
        assert_that(labelled, equal_to([("train/c1", [4, 4, 4, 1, 1, 1])]))


def test_count_unreadable_labels_counts_the_lines_as_dropped_with_a_dead_letter(abaw_crops, tmp_path):
    source, discovery = abaw_crops
    (track,) = discovery.tracks
    error = (KeyError, "KeyError('adapter bug')", "traceback")
    with beam_runs.unit_pipeline() as p:
        out = (p | beam.Create([(track, error)])
               | beam.ParDo(transforms.CountUnreadableLabelsFn(source, cf.config(tmp_path / "out"))).with_outputs(
                   transforms.TAG_ACCOUNTING, main="dead_letters"))
        assert_that(out.dead_letters, equal_to([{
            "source": "train/c1", "reason": "read_labels_error", "frames": 6, "track": "train/c1",
            "message": "annotations could not be read: KeyError('adapter bug'); 6 annotation lines counted as dropped",
        }]), label="letters")
        assert_that(accounting_rows(out[transforms.TAG_ACCOUNTING]),
                    equal_to([("train", 6, 0, 0, {"read_labels_error": 6}, 1)]), label="accounting")


def _decode(p, elements, config):
    out = p | beam.Create(elements) | beam.ParDo(transforms.DecodeAndCropFn(config)).with_outputs(*TAGS, main="clips")
    clips = out.clips | beam.Map(lambda kv: (kv[0], kv[1].example_id, kv[1].frame_index.tolist(),
                                             kv[1].has_face.tolist(), len(kv[1].images)))
    letters = out[transforms.TAG_DEAD_LETTERS] | beam.Map(lambda d: (d["reason"], d["source"].rsplit("/", 1)[-1],
                                                                     d["frames"], d["track"]))
    return clips, letters, accounting_rows(out[transforms.TAG_ACCOUNTING])


def test_decode_and_crop_on_provided_crops_writes_every_frame_and_reports_bad_crops(abaw_crops, tmp_path):
    source, discovery = abaw_crops
    (track,) = discovery.tracks
    with beam_runs.unit_pipeline() as p:
        clips, letters, accounting = _decode(p, [(track, source.read_labels(track))], cf.config(tmp_path / "out"))
        assert_that(clips, equal_to([("train", "train/c1/000001", [1, 2, 3, 4], [True, True, False, True], 4),
                                     ("train", "train/c1/000005", [5, 6], [False, True], 2)]), label="clips")
        assert_that(letters, equal_to([("unreadable_crop", "00003.jpg", 0, "train/c1")]), label="letters")
        assert_that(accounting, equal_to([("train", 6, 4, 2, {}, 1)]), label="accounting")


def test_decode_and_crop_counts_tracks_without_media_and_rejected_lines(tmp_path):
    ghost = cf.track("train", "ghost")  # No media, no crops.
    rejected = cf.labels([4, -1, 4, -1], rejected={2: "malformed_line", 4: "out_of_range"})
    with beam_runs.unit_pipeline() as p:
        clips, letters, accounting = _decode(p, [(ghost, rejected)], cf.config(tmp_path / "out"))
        assert_that(clips, equal_to([]), label="clips")
        assert_that(letters, equal_to([("no_media", "ghost", 2, "train/ghost")]), label="letters")
        assert_that(accounting, equal_to([("train", 4, 0, 0, {"no_media": 2, "malformed_line": 1, "out_of_range": 1},
                                           1)]), label="accounting")


def test_decode_and_crop_on_a_tiny_video_counts_lines_beyond_its_end(tmp_path):
    video = vf.write_face_video(tmp_path / "v.avi", [4, 4, 4])
    track = cf.track("validation", "v", media_path=str(video), data_path="v.avi")
    config = cf.config(tmp_path / "out", face=faces.FaceStageConfig(crop_size=16, detect_every=1, max_hold=0))
    with beam_runs.unit_pipeline() as p:
        clips, letters, accounting = _decode(p, [(track, cf.labels([4, 4, 4, 4, 4]))], config)
        assert_that(clips, equal_to([("validation", "validation/v/000001", [1, 2, 3], [True] * 3, 3)]), label="clips")
        assert_that(letters, equal_to([("beyond_video_end", "v.avi", 2, "validation/v")]), label="letters")
        assert_that(accounting, equal_to([("validation", 5, 3, 0, {"beyond_video_end": 2}, 1)]), label="accounting")


def test_convert_tracks_writes_shards_dead_letters_and_stages_the_dataset_info(abaw_crops, tmp_path):
    source, discovery = abaw_crops
    config = cf.config(tmp_path / "out")
    with beam_runs.unit_pipeline() as p:
        staged = p | beam.Create(discovery.tracks) | transforms.ConvertTracks(
            source, config, ["train"], {"note": "options as given"}, [], ["orphan.avi"])
        assert_that(staged, equal_to([str(tmp_path / "out" / ".tmp-convert" / "dataset_info.json")]))
    info = finalize.load_dataset_info(config.tmp_dir)
    assert not (tmp_path / "out" / "dataset_info.json").exists()  # The driver writes it, once, with the timing.
    assert info.options == {"note": "options as given"} and info.unused_media == ["orphan.avi"]
    train = info.splits["train"]
    assert (train.num_clips, train.num_frames, train.bucket_clips) == (2, 6, {"Anger": 1, "Happiness": 1})
    assert [(s.path, s.num_records) for s in train.shards] == [
        ("train/abaw-train-Anger.tfrecord-00000-of-00001", 1), ("train/abaw-train-Happiness.tfrecord-00000-of-00001", 1)]
    import tensorflow as tf

    shard = tmp_path / "out" / train.shards[1].path
    (clip,) = [decode_clip(r.numpy()) for r in tf.data.TFRecordDataset(str(shard))]
    assert clip.example_id == "train/c1/000001" and clip.has_face.tolist() == [True, True, False, True]
    letters = [json.loads(line) for line in (tmp_path / "out" / "errors" / "dead_letters.jsonl").open()]
    assert [d["reason"] for d in letters] == ["unreadable_crop"]
    assert info.failures == {"dead_letters": 1, "by_reason": {"unreadable_crop": 1},
                             "files": ["errors/dead_letters.jsonl"]}
