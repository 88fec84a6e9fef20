"""The CSV manifest adapter converts per-video and per-segment labels end to end, counting every bad row."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
import video_fixtures as vf

from beam_jobs import convert
from beam_jobs.sources import SOURCES, folds, make_source, media_rows, segments
from beam_jobs.sources.manifest import ManifestSource
from tfrecords_schema import decode_clip, keys, read_dataset_info

FPS = 10.0
SIDE = 64
CLASSES = ["neutral", "happy", "sad"]
NEUTRAL, HAPPY, SAD = range(3)
ARGS = ["--clip_length", "8", "--detect_every", "5", "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
        "--progress_every", "0"]


def write_video(path: pathlib.Path, frames: int, expression: int = 4) -> pathlib.Path:
    """A tiny real video; containers the fixture helper does not write (.MOV, .mkv) go through cv2 directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".avi", ".mp4"):
        return vf.write_face_video(path, [expression] * frames, fps=FPS, height=SIDE, width=SIDE)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (SIDE, SIDE))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(vf.face_frame(expression, SIDE, SIDE, seed=i))
    writer.release()
    return path


def run_convert(*argv, source=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = convert.run(ARGS + [str(a) for a in argv], source=source)
    return rc, out.getvalue(), err.getvalue()


def written_frames(output) -> dict[str, dict[int, tuple[int, tuple[float, float]]]]:
    """``{media_id: {frame: (expression, (valence, arousal))}}`` of every record, read back from the shards."""
    paths = sorted(str(p) for p in pathlib.Path(output).rglob("*.tfrecord-*"))
    frames: dict[str, dict] = {}
    for record in tf.data.TFRecordDataset(paths):
        clip = decode_clip(record.numpy())
        for i, frame in enumerate(clip.frame_index.tolist()):
            va = tuple(round(float(v), 4) for v in clip.valence_arousal[i])
            frames.setdefault(clip.media_id, {})[frame] = (int(clip.expression[i]), va)
    return frames


def dead_letters(output) -> list[dict]:
    path = pathlib.Path(output) / "errors" / "dead_letters.jsonl"
    return [json.loads(line) for line in path.open(encoding="utf-8")]


NO_VA = (keys.VA_INVALID, keys.VA_INVALID)
MANIFEST = """path,split,expression,subject,start,end,valence,arousal
train/s01.avi,train,happy,s01,,,,
s02.MOV,train,sad,s02,0,0.5,-0.5,0.25
s02.MOV,train,happy,s02,0.4,0.7,,
s02.MOV,train,neutral,s02,1.0,1.5,0.5,0.5
s02.MOV,train,happy,s02,1.8,2.5,,
val/s03,Validation,Happy,s03,,,0.5,-0.25
s04.avi,val,angry,,,,,
train/s01.avi,train,happy,s01,2,1,,
gone.avi,train,happy,,,,,
s05a.avi,train,happy,s05,,,,
s05b.avi,validation,sad,s05,,,,
train/s01.avi,train,happy,s01,abc,1,,
s06.avi,train,neutral,,,,x,0
s07.avi,test,happy,,,,,
s08.avi,holdout,happy,,,,,
"""
# Frame counts of the videos (10 fps).
VIDEOS = {"train/s01.avi": 12, "s02.MOV": 20, "val/s03.mkv": 10, "s04.avi": 8, "s05a.avi": 6, "s05b.avi": 7,
          "s06.avi": 5, "s07.avi": 4, "s08.avi": 3, "unused.mp4": 2}


def make_manifest_dataset(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    videos = root / "videos"
    for rel, frames in VIDEOS.items():
        write_video(videos / rel, frames)
    manifest = root / "manifest.csv"
    manifest.write_text(MANIFEST, encoding="utf-8")
    return manifest, videos


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    manifest, videos = make_manifest_dataset(root)
    source = ManifestSource(str(manifest), videos=str(videos), class_names=",".join(CLASSES))
    rc, _, err = run_convert("--dataset", "manifest", "--videos", videos, "--output", root / "out", source=source)
    assert rc == 0, err
    return {"root": root, "manifest": manifest, "videos": videos, "output": root / "out",
            "info": read_dataset_info(str(root / "out"))}


def test_manifest_and_folders_are_registered():
    assert SOURCES["manifest"] is ManifestSource and SOURCES["folders"].name == "folders"


def test_accounting_counts_every_row_problem_in_frames(converted):
    info = converted["info"]
    for split in info.splits.values():
        a = split.accounting
        assert a.labelled_frames == a.written_frames + sum(a.dropped.values())
    train, validation = info.splits["train"].accounting, info.splits["validation"].accounting
    # s01 12 frames + s02 14 labelled (one with conflicting expressions: it keeps its valence/arousal) + s05a 6
    # (split conflict) + s06 5 (bad valence).
    assert (train.labelled_frames, train.written_frames) == (37, 26)
    assert train.dropped == {"split_conflict": 6, "malformed_line": 5}
    # s03 10 frames + s04 8 (unknown class) + s05b 7 (split conflict).
    assert (validation.labelled_frames, validation.written_frames) == (25, 10)
    assert validation.dropped == {"unknown_class": 8, "split_conflict": 7}
    unassigned = info.splits[media_rows.UNASSIGNED_SPLIT].accounting
    assert (unassigned.labelled_frames, unassigned.dropped) == (3, {"unknown_split": 3})
    test = info.splits["test"].accounting
    assert (test.labelled_frames, test.written_frames, test.dropped) == (4, 4, {})  # Held out, written.


def test_every_bad_row_is_a_dead_letter_naming_its_line(converted):
    letters = dead_letters(converted["output"])
    manifest = str(converted["manifest"])
    by_line = {(d["source"], d["reason"]): d["frames"] for d in letters}
    assert by_line[(f"{manifest}:line 9", "bad_segment")] == 0  # end <= start.
    assert by_line[(f"{manifest}:line 10", "no_media")] == 0  # A missing video: its frames cannot be known.
    assert by_line[(f"{manifest}:line 13", "malformed_line")] == 0  # start "abc".
    assert by_line[(f"{manifest}:line 14", "malformed_line")] == 5  # valence "x": the video's 5 frames.
    assert by_line[(f"{manifest}:line 8", "unknown_class")] == 8
    assert by_line[(f"{manifest}:line 11", "split_conflict")] == 6
    assert by_line[(f"{manifest}:line 12", "split_conflict")] == 7
    assert by_line[(f"{manifest}:line 4", "conflicting_labels")] == 0  # Frame 5 keeps line 3's valence/arousal.
    assert by_line[(f"{manifest}:line 6", "beyond_video_end")] == 0  # 1.8-2.5 s of a 2 s video.
    assert by_line[(f"{manifest}:line 16", "unknown_split")] == 3
    assert converted["info"].failures["dead_letters"] == len(letters)


def test_label_names_follow_class_names_and_written_labels_match_the_rows(converted):
    info = converted["info"]
    assert info.label_names["expression"] == CLASSES
    assert info.label_names["valence_arousal"] == ["valence", "arousal"]
    assert info.tasks == ["expr", "va"]
    frames = written_frames(converted["output"])
    assert sorted(frames) == ["s02.MOV", "s07.avi", "train/s01.avi", "val/s03.mkv"]
    assert {f: e for f, (e, _) in frames["train/s01.avi"].items()} == {i: HAPPY for i in range(1, 13)}
    assert frames["val/s03.mkv"] == {i: (HAPPY, (0.5, -0.25)) for i in range(1, 11)}
    # s02 at 10 fps: sad 0-0.5 s = frames 1-5, happy 0.4-0.7 s = 5-7 (frame 5's expressions conflict; its
    # valence/arousal, given by one row only, stays), neutral 1.0-1.5 s = 11-15, happy 1.8-2.5 s = 19-20 (the
    # video ends at frame 20); other frames are unlabelled.
    expected = {i: (SAD, (-0.5, 0.25)) for i in range(1, 5)}
    expected[5] = (keys.EXPRESSION_INVALID, (-0.5, 0.25))
    expected.update({6: (HAPPY, NO_VA), 7: (HAPPY, NO_VA), 19: (HAPPY, NO_VA), 20: (HAPPY, NO_VA)})
    expected.update({i: (NEUTRAL, (0.5, 0.5)) for i in range(11, 16)})
    got = frames["s02.MOV"]
    assert {f: v for f, v in got.items() if v != (keys.EXPRESSION_INVALID, NO_VA)} == expected
    assert set(got) == set(range(1, 21))  # Clips of 8 frames: every clip holds a labelled frame.


def test_rows_labelling_different_tasks_of_the_same_frames_add_up_and_only_a_task_given_twice_conflicts():
    def segment(start, end, expression=keys.EXPRESSION_INVALID, va=None, line=0):
        return segments.Segment(start, end, expression, va, source=f"m.csv:line {line}")

    def labels(*rows, frames=30):
        got = segments.build_labels(rows, 10.0, frames)
        return got, [(d.source, d.reason, d.frames) for d in got.dead_letters]

    # An expression tier and a valence/arousal tier (an ELAN or BORIS export): nothing conflicts.
    got, letters = labels(segment(0, 3, HAPPY, line=2), segment(1, 2, va=(0.3, 0.2), line=3))
    assert letters == [] and got.valid.all() and (got.expression == HAPPY).all()
    np.testing.assert_allclose(got.valence_arousal[10:20], [[0.3, 0.2]] * 10)
    assert (got.valence_arousal[:10] == keys.VA_INVALID).all() and (got.valence_arousal[20:] == keys.VA_INVALID).all()
    # The same class twice, one row adding valence/arousal: agreement.
    got, letters = labels(segment(None, None, HAPPY, line=2), segment(1, 2, HAPPY, (0.3, 0.2), line=3))
    assert letters == [] and (got.expression == HAPPY).all() and (got.valence_arousal[10:20, 0] == np.float32(0.3)).all()
    # Two classes on frames 11-20, one row with valence/arousal: the expression goes, the valence/arousal stays.
    got, letters = labels(segment(0, 2, SAD, (-0.5, 0.25), line=2), segment(1, 3, HAPPY, line=3))
    assert letters == [("m.csv:line 3", "conflicting_labels", 0)]
    assert (got.expression[10:20] == keys.EXPRESSION_INVALID).all() and got.valid.all()
    assert "10 frame(s)" in got.dead_letters[0].message and "(expression)" in got.dead_letters[0].message
    # Two classes and nothing else: those frames have no label left and are dropped.
    got, letters = labels(segment(0, 2, SAD, line=2), segment(1, 3, HAPPY, line=3))
    assert letters == [("m.csv:line 3", "conflicting_labels", 10)]
    assert got.rejected.tolist() == [""] * 10 + ["conflicting_labels"] * 10 + [""] * 10
    # Two valence/arousal values on the same class: the class stays. A third row counts no frame twice.
    got, letters = labels(segment(0, 2, SAD, (0.1, 0.1), line=2), segment(1, 3, SAD, (0.2, 0.2), line=3),
                          segment(1, 2, SAD, (0.4, 0.4), line=4))
    assert letters == [("m.csv:line 3", "conflicting_labels", 0)] and got.valid.all()
    assert "(valence/arousal)" in got.dead_letters[0].message
    assert (got.valence_arousal[10:20] == keys.VA_INVALID).all() and (got.expression == SAD).all()
    # One row contradicts the expression, another the valence/arousal: the frames are dropped, and counted once.
    got, letters = labels(segment(None, None, HAPPY, (0.1, 0.1), line=2), segment(None, None, SAD, line=3),
                          segment(None, None, va=(0.5, 0.5), line=4))
    assert letters == [("m.csv:line 3", "conflicting_labels", 30), ("m.csv:line 4", "conflicting_labels", 0)]
    assert (got.rejected == "conflicting_labels").all()


def test_a_segment_between_two_frames_is_a_dead_letter_not_a_silent_loss():
    # At 10 fps frames are shown at 0.0, 0.1, ...: 0.95-1.0 s holds none of them.
    got = segments.build_labels([segments.Segment(0.95, 1.0, HAPPY, source="m.csv:line 2"),
                                   segments.Segment(2.0, 2.5, SAD, source="m.csv:line 3")], 10.0, 30)
    assert [(d.source, d.reason, d.frames) for d in got.dead_letters] == [("m.csv:line 2", "empty_segment", 0)]
    assert "0.95-1 s holds no frame" in got.dead_letters[0].message
    assert got.valid.sum() == 5
    # Past the end it is the end's letter alone.
    got = segments.build_labels([segments.Segment(3.5, 4.0, HAPPY, source="m.csv:line 2")], 10.0, 30)
    assert [d.reason for d in got.dead_letters] == ["beyond_video_end"]


def test_unused_media_and_options_are_recorded(converted):
    info = converted["info"]
    assert info.unused_media == ["unused.mp4"]
    assert info.name == "manifest" and info.options["dataset"] == "manifest"


def test_without_class_names_the_sorted_names_found_are_the_classes(converted):
    found = ManifestSource(str(converted["manifest"]), videos=str(converted["videos"])).discover()
    # Names are matched case-insensitively ("Happy" = "happy"); rows without a valid split do not add names.
    assert found.label_names["expression"] == ["angry", "happy", "neutral", "sad"]


def test_a_missing_column_is_a_bad_header_dead_letter_and_the_run_fails_cleanly(tmp_path):
    write_video(tmp_path / "videos" / "a.avi", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,split,expression\na.avi,train,happy\n", encoding="utf-8")
    source = ManifestSource(str(manifest), videos=str(tmp_path / "videos"))
    found = source.discover()
    assert found.tracks == []
    assert [(d.reason, d.source) for d in found.dead_letters] == [("bad_header", f"{manifest}:line 1")]
    assert "'path'" in found.dead_letters[0].message
    rc, _, err = run_convert("--dataset", "manifest", "--videos", tmp_path / "videos", "--output", tmp_path / "out",
                             source=source)
    assert rc == 1 and "bad_header" in err


def test_requested_task_without_its_columns_is_an_error(tmp_path):
    write_video(tmp_path / "a.avi", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expression\na.avi,train,happy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no labels for task"):
        ManifestSource(str(manifest), tasks=["va"]).discover()
    with pytest.raises(ValueError, match="does not exist"):
        ManifestSource(str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="repeats"):
        ManifestSource(str(manifest), class_names="happy,Happy")
    manifest.write_text('path,split,expression\na.avi,"train,happy\n', encoding="utf-8")  # An unclosed quote.
    with pytest.raises(ValueError, match="line 2"):
        ManifestSource(str(manifest)).discover()


# ------------------------------------------------------------------------------------------------ folds


def test_fold_assignment_is_fixed_for_known_subjects():
    # Regression values: SHA-256 of the NFC id, first 8 bytes big-endian, modulo K. They must never change.
    expected = {"actor_01": 3, "actor_02": 3, "actor_03": 2, "actor_04": 0, "actor_05": 0, "actor_06": 3,
                "actor_07": 1, "actor_08": 2, "actor_09": 2, "actor_10": 2, "actor_11": 1, "actor_12": 4}
    assert {s: folds.fold_of(s, 5) for s in expected} == expected
    assert folds.fold_of("Ångström", 4) == folds.fold_of("A\u030angstro\u0308m ", 4) == 1  # NFC and spaces.
    assert folds.fold_split("actor_07", 5, 1) == "validation" and folds.fold_split("actor_07", 5, 0) == "train"


def test_fold_options_are_checked():
    for bad in ((5, None), (None, 1), (1, 0), (5, 5), (5, -1)):
        with pytest.raises(ValueError):
            folds.check_folds(*bad)
    folds.check_folds(None, None)
    folds.check_folds(5, 4)


def test_folds_keep_every_subject_in_one_split_and_partition_the_subjects(tmp_path):
    subjects = [f"actor_{i:02d}" for i in range(1, 13)]
    rows = ["path,expression,subject"]
    for s in subjects:
        for take in range(2):
            write_video(tmp_path / "v" / f"{s}_{take}.avi", 2)
            rows.append(f"{s}_{take}.avi,happy,{s}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    validation_subjects = []
    for fold in range(5):
        found = ManifestSource(str(manifest), videos=str(tmp_path / "v"), folds=5, fold=fold).discover()
        split_of = {}
        for track in found.tracks:
            subject = track.media_id.rsplit("_", 1)[0]
            assert split_of.setdefault(subject, track.split) == track.split  # One split per subject.
            assert track.problem is None
        assert sorted(split_of) == subjects
        validation_subjects += [s for s, split in split_of.items() if split == "validation"]
    assert sorted(validation_subjects) == subjects  # Each subject is in validation in exactly one fold.


def test_folds_with_a_split_column_are_refused(converted):
    with pytest.raises(ValueError, match="split"):
        ManifestSource(str(converted["manifest"]), videos=str(converted["videos"]), folds=3, fold=0).discover()


@pytest.mark.skipif("--manifest" not in convert.build_parser().format_help(),
                    reason="beam_jobs.convert's parser does not take the adapters' options yet (helper A's change)")
def test_command_line_conversion_with_folds_records_them(tmp_path):
    for name, frames in (("p1_a.avi", 3), ("p1_b.avi", 2), ("p2.avi", 4), ("p3.avi", 2)):
        write_video(tmp_path / "videos" / name, frames)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,expression,subject\np1_a.avi,happy,p1\np1_b.avi,sad,p1\np2.avi,sad,p2\n"
                        "p3.avi,happy,p3\n", encoding="utf-8")
    rc, _, err = run_convert("--dataset", "manifest", "--manifest", manifest, "--videos", tmp_path / "videos",
                             "--folds", "3", "--fold", "1", "--class_names", "sad,happy", "--output", tmp_path / "out")
    assert rc == 0, err
    info = read_dataset_info(str(tmp_path / "out"))
    assert (info.options["folds"], info.options["fold"]) == (3, 1)
    assert info.label_names["expression"] == ["sad", "happy"]
    assert [folds.fold_split(s, 3, 1) for s in ("p1", "p2", "p3")] == ["train", "validation", "validation"]
    assert info.splits["train"].accounting.labelled_frames == 5  # p1's two videos.
    assert info.splits["validation"].accounting.labelled_frames == 6  # p2 and p3.
    assert sorted(written_frames(tmp_path / "out")) == ["p1_a.avi", "p1_b.avi", "p2.avi", "p3.avi"]


def test_make_source_builds_the_manifest_adapter(converted):
    source = make_source("manifest", manifest=str(converted["manifest"]), videos=str(converted["videos"]))
    labels = source.read_labels(next(t for t in source.discover().tracks if t.media_id == "val/s03.mkv"))
    np.testing.assert_array_equal(labels.expression, [1] * 10)  # Sorted names found: angry, happy, ...


def test_rows_of_a_video_that_does_not_open_count_zero_frames_with_a_dead_letter(tmp_path):
    (tmp_path / "broken.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expression,start,end\nbroken.avi,train,happy,0,1\nbroken.avi,train,sad,1,2\n"
                        "gone.avi,train,happy,,\ngone.avi,train,sad,,\n", encoding="utf-8")
    source = ManifestSource(str(manifest))
    found = source.discover()
    track = next(t for t in found.tracks if t.media_id == "broken.avi")
    labels = source.read_labels(track)
    assert labels.num_frames == 0
    # A dead letter per row, each naming its line (one per video named only the first, or no line at all).
    assert [(d.source, d.reason, d.frames) for d in labels.dead_letters] == [
        (f"{manifest}:line 2", "unreadable_media", 0), (f"{manifest}:line 3", "unreadable_media", 0)]
    assert [(d.source, d.reason) for d in found.dead_letters if d.reason == "no_media"] == [
        (f"{manifest}:line 4", "no_media"), (f"{manifest}:line 5", "no_media")]
    # Their classes (only "sad" on gone.avi besides broken.avi) are not judged: no unknown_class besides no_media.
    assert {d.reason for d in found.dead_letters} == {"no_media"}
    assert all(s.reason is None for t in found.tracks for s in t.segments)
    assert source.count_labelled_lines(track) == (0, [str(tmp_path / "broken.avi")])


def test_a_manifest_and_videos_on_an_object_store_go_through_beam_filesystems(tmp_path, s3_server):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    url, client = s3_server.url, s3_server.client
    FileSystems.set_options(PipelineOptions(["--s3_endpoint_url", url, "--s3_access_key_id", "testing",
                                             "--s3_secret_access_key", "testing", "--s3_region_name", "us-east-1"]))
    client.upload_file(str(write_video(tmp_path / "v.avi", 6)), "affect", "videos/v.avi")
    body = ("path,split,expression,start,end\ns3://affect/videos/v.avi,train,happy,0.2,0.4\n"
            "s3://affect/videos/gone.avi,train,happy,,\n")
    client.put_object(Bucket="affect", Key="lists/manifest.csv", Body=body.encode("utf-8"))
    source = ManifestSource("s3://affect/lists/manifest.csv")
    found = source.discover()
    tracks = {t.media_id: t for t in found.tracks}
    assert tracks["s3://affect/videos/gone.avi"].problem == "no_media"
    assert found.unlisted_folders == []  # A manifest of URLs lists no folder.
    labels = source.read_labels(tracks["s3://affect/videos/v.avi"])  # Probed after a copy to a temp file.
    np.testing.assert_array_equal(labels.expression, [-1, -1, 0, 0, -1, -1])  # 0.2-0.4 s at 10 fps: frames 3-4.


def test_names_match_in_any_unicode_form_and_the_file_is_opened_as_named_on_disk(tmp_path):
    on_disk = write_video(tmp_path / "v" / "vide\u0301o_\u6771\u4eac.avi", 3)  # NFD, as macOS writes names.
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expression\nvid\u00e9o_\u6771\u4eac.avi,train,happy\n", encoding="utf-8")  # NFC.
    source = ManifestSource(str(manifest), videos=str(tmp_path / "v"))
    (track,) = source.discover().tracks
    assert track.problem is None and track.media_path == str(on_disk)
    np.testing.assert_array_equal(source.read_labels(track).expression, [0, 0, 0])


def test_one_file_under_two_names_is_a_split_conflict_across_splits_and_one_video_within_one(tmp_path):
    videos = tmp_path / "v"
    write_video(videos / "a.avi", 3)
    write_video(videos / "b.avi", 4)
    write_video(videos / "c.avi", 2)
    os.symlink(videos / "a.avi", videos / "a_link.avi")
    os.link(videos / "b.avi", videos / "b_hard.avi")
    os.symlink(videos / "c.avi", videos / "c_link.avi")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expression\na.avi,train,happy\na_link.avi,validation,happy\n"
                        "b.avi,train,happy\nb_hard.avi,validation,happy\nc.avi,train,sad\nc_link.avi,train,sad\n",
                        encoding="utf-8")
    source = ManifestSource(str(manifest), videos=str(videos))
    found = source.discover()
    tracks = {t.media_id: t for t in found.tracks}
    assert {k: t.problem for k, t in tracks.items()} == {
        "a.avi": "split_conflict", "a_link.avi": "split_conflict", "b.avi": "split_conflict",
        "b_hard.avi": "split_conflict", "c.avi": None}
    (segment,) = tracks["a_link.avi"].segments
    assert "the same file as ['a.avi']" in segment.message and "['train', 'validation']" in segment.message
    # In one split the two names are one video, one subject (the selection split cannot part them): c_link's row
    # joins c's track, with a note.
    assert len(tracks["c.avi"].segments) == 2 and tracks["c.avi"].media_path == str(videos / "c.avi")
    (note,) = [d for d in found.dead_letters if d.reason == "duplicate_media"]
    assert note.frames == 0 and "'c_link.avi' is the same file as 'c.avi'" in note.message
    labels = source.read_labels(tracks["c.avi"])
    np.testing.assert_array_equal(labels.expression, [1, 1])  # The same label twice is no conflict.
    assert not labels.dead_letters


def test_a_manifest_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,split,expression\na.avi,train,happy\nb.avi,train,col\u00e8re\n".encode("cp1252"))
    with pytest.raises(ValueError, match="line 3 is not UTF-8"):
        ManifestSource(str(manifest)).discover()
    # UTF-16 with its byte-order mark (Excel's "Unicode text"): read, as annotation files are (it was refused as
    # "not UTF-8" with advice to convert it from cp1252).
    (tmp_path / "b.avi").write_bytes(b"listing only")
    manifest.write_bytes(b"\xff\xfe" + "path,split,expression\r\nb.avi,train,col\u00e8re\r\n".encode("utf-16-le"))
    found = ManifestSource(str(manifest)).discover()
    assert found.label_names["expression"] == ["col\u00e8re"] and [t.problem for t in found.tracks] == [None]
    # A UTF-16 file that does not decode: the advice names its encoding (cp1252 would garble it).
    manifest.write_bytes(b"\xff\xfe" + "path,split\r\n".encode("utf-16-le") + b"\x00\xd8")
    with pytest.raises(ValueError, match="is not UTF-16-LE .* iconv -f utf-16-le -t utf-8"):
        ManifestSource(str(manifest)).discover()


def test_a_row_with_a_stray_comma_names_its_video_which_is_not_reported_unused(tmp_path):
    write_video(tmp_path / "a.avi", 3)
    write_video(tmp_path / "b.avi", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expression\na.avi,train,happy\nb.avi,train,happy, excited\n", encoding="utf-8")
    found = ManifestSource(str(manifest), videos=str(tmp_path)).discover()
    (letter,) = found.dead_letters
    assert (letter.source, letter.reason, letter.frames) == (f"{manifest}:line 3", "malformed_line", 0)
    assert "4 cells for 3 columns" in letter.message and "'b.avi'" in letter.message
    assert found.unused_media == []


def test_class_names_match_across_unicode_forms_and_come_from_rows_that_can_be_converted(tmp_path):
    import unicodedata

    from beam_jobs.sources.folders import FoldersSource

    nfc, nfd = (unicodedata.normalize(form, "Überrascht") for form in ("NFC", "NFD"))
    for name in ("a.avi", "b.avi", "c.avi"):
        (tmp_path / name).write_bytes(b"listing only")
    manifest = tmp_path / "m.csv"
    # The same name typed on macOS (NFD) and elsewhere (NFC): one class, not two that look alike. "fear" is named only
    # by the row of a missing video: no class (it was class 0, without a frame, moving every index).
    manifest.write_text(f"path,split,expression\na.avi,train,{nfd}\nb.avi,validation,{nfc}\nc.avi,train,neutral\n"
                        "missing.avi,train,fear\n", encoding="utf-8")
    found = ManifestSource(str(manifest)).discover()
    assert found.label_names["expression"] == ["neutral", nfc]
    assert [t.problem for t in found.tracks if t.media_id != "missing.avi"] == [None, None, None]
    # The missing video's row is its no_media dead letter alone, not also an unknown_class one for "fear".
    (missing,) = [t for t in found.tracks if t.media_id == "missing.avi"]
    assert missing.problem == "no_media" and [s.reason for s in missing.segments] == [None]
    # A class folder copied from macOS (NFD) against --class_names typed in NFC: it was every video unknown_class.
    (tmp_path / "folders" / "Train" / nfd).mkdir(parents=True)
    (tmp_path / "folders" / "Train" / nfd / "v.avi").write_bytes(b"listing only")
    (tmp_path / "folders" / "Train" / "neutral").mkdir()
    (tmp_path / "folders" / "Train" / "neutral" / "w.avi").write_bytes(b"listing only")
    found = FoldersSource(str(tmp_path / "folders"), class_names=f"{nfc},neutral").discover()
    assert found.label_names["expression"] == [nfc, "neutral"] and [t.problem for t in found.tracks] == [None, None]


def test_a_relative_path_above_the_manifest_folder_is_the_file_it_names(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "above.mp4").write_bytes(b"listing only")
    manifest = tmp_path / "lab" / "m.csv"
    manifest.write_text("path,split,expression\n../above.mp4,train,happy\n../gone.mp4,train,happy\n../above,train,"
                        "happy\n", encoding="utf-8")
    found = ManifestSource(str(manifest)).discover()
    tracks = {t.media_id: t for t in found.tracks}
    # It was "no video '../above.mp4' under .../lab": only the listing below the folder was searched.
    assert tracks[str(tmp_path / "above.mp4")].problem is None
    assert tracks[str(tmp_path / "above.mp4")].media_path == str(tmp_path / "above.mp4")
    messages = {d.source.rsplit(":", 1)[1]: d.message for d in found.dead_letters if d.reason == "no_media"}
    assert "../gone.mp4" in messages["line 3"] and "not found" in messages["line 3"]
    assert "needs its extension" in messages["line 4"]
    # A path that climbs out and back in is the root's own video (one track, not reported unused).
    (tmp_path / "lab" / "in.mp4").write_bytes(b"listing only")
    manifest.write_text("path,split,expression\n../lab/in.mp4,train,happy\nin.mp4,train,happy\n", encoding="utf-8")
    found = ManifestSource(str(manifest)).discover()
    assert [t.media_id for t in found.tracks] == ["in.mp4"] and not found.unused_media


def test_a_split_conflict_of_subjects_taken_from_file_stems_says_where_the_subject_came_from(tmp_path):
    for person in ("p01", "p07"):
        (tmp_path / person).mkdir()
        (tmp_path / person / "session1.mp4").write_bytes(b"listing only")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expression\np01/session1.mp4,train,happy\np07/session1.mp4,validation,sad\n",
                        encoding="utf-8")
    found = ManifestSource(str(manifest)).discover()
    (message, *_) = {s.message for t in found.tracks for s in t.segments}
    assert "subject 'session1' (the subject is the video's file stem: the row has no subject cell" in message
    assert [t.problem for t in found.tracks] == ["split_conflict", "split_conflict"]


def test_class_names_with_a_misspelt_expression_column_is_an_error_not_a_silent_va_only_conversion(tmp_path):
    # `expresion`: an unknown column is ignored, and with the valence/arousal columns present the conversion went on
    # with task va alone, every expression label lost and counted nowhere, although --class_names asked for them.
    write_video(tmp_path / "videos" / "a.avi", 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,expresion,valence,arousal\na.avi,train,happy,0.5,0.2\n", encoding="utf-8")
    source = ManifestSource(str(manifest), videos=str(tmp_path / "videos"), class_names=CLASSES)
    with pytest.raises(ValueError, match=r"no 'expression' column .*ignored as unknown: \['expresion'\]"):
        source.discover()
    # Without --class_names, or asking for va alone, a manifest of valence/arousal converts as before.
    for tasks, names in ((None, None), (["va"], CLASSES)):
        found = ManifestSource(str(manifest), videos=str(tmp_path / "videos"), tasks=tasks,
                               class_names=names).discover()
        assert found.tasks == ["va"] and len(found.tracks) == 1
