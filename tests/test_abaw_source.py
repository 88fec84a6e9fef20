"""The ABAW adapter turns every annotation layout into leak-free subject tracks with exact labels."""

import pickle

import abaw_layout as abaw
import numpy as np
import pytest

from beam_jobs.sources import SOURCES, base, make_source
from beam_jobs.sources.abaw import AbawLayoutError, AbawSource

AU12_ZERO = [0] * 12


def _source(tmp_path, **kwargs):
    kwargs.setdefault("annotations", str(tmp_path / "ann"))
    kwargs.setdefault("videos", str(tmp_path / "videos"))
    (tmp_path / "videos").mkdir(exist_ok=True)
    return AbawSource(**kwargs)


def _tracks(discovery):
    return {t.track_id: t for t in discovery.tracks}


# ---------------------------------------------------------------- layouts and splits


@pytest.mark.parametrize("layout", abaw.LAYOUTS)
def test_every_layout_gives_one_track_per_subject_and_split(tmp_path, layout):
    for split in ("train", "validation"):
        abaw.write_annotation(tmp_path / "ann", "expr", split, f"{split}_vid", [0, 1], layout=layout)
        abaw.write_annotation(tmp_path / "ann", "va", split, f"{split}_vid", [(0.5, 0.5)], layout=layout)
        abaw.write_annotation(tmp_path / "ann", "au", split, f"{split}_vid", [AU12_ZERO], layout=layout)
        abaw.write_media(tmp_path / "videos", f"{split}_vid.mp4")
    abaw.write_annotation(tmp_path / "ann", "expr", "test", "test_vid", [0], layout=layout)

    found = _source(tmp_path).discover()

    assert [t.track_id for t in found.tracks] == ["train/train_vid", "validation/validation_vid"]
    assert found.tasks == ["expr", "va", "au"]
    for track in found.tracks:
        assert track.tasks == ("expr", "va", "au") and track.problem is None
    assert found.unused_media == []  # test_vid.txt in Test_Set is ignored: no track, no media needed.


def test_annotations_may_point_at_the_parent_or_at_the_annotations_folder(tmp_path):
    abaw.write_annotation(tmp_path / "data", "va", "train", "vid", [(0.1, 0.2)], layout="2020")
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    for root in (tmp_path / "data", tmp_path / "data" / "annotations"):
        found = _source(tmp_path, annotations=str(root)).discover()
        assert [t.track_id for t in found.tracks] == ["train/vid"]


def test_video_split_per_task_gives_two_tracks_and_no_label_leaks(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [3, 3, 3])
    abaw.write_annotation(tmp_path / "ann", "va", "validation", "vid", [(0.2, -0.3), (0.4, 0.1)])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    tracks = _tracks(source.discover())

    assert tracks["train/vid"].tasks == ("expr",)
    assert tracks["validation/vid"].tasks == ("va",)
    train = source.read_labels(tracks["train/vid"])
    validation = source.read_labels(tracks["validation/vid"])
    np.testing.assert_array_equal(train.expression, [3, 3, 3])
    assert (train.valence_arousal == -5).all()
    assert (validation.expression == -1).all()
    np.testing.assert_allclose(validation.valence_arousal, [[0.2, -0.3], [0.4, 0.1]])
    assert tracks["train/vid"].media_path == tracks["validation/vid"].media_path


def test_only_the_selected_tasks_are_read(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1])
    abaw.write_annotation(tmp_path / "ann", "au", "train", "vid", [AU12_ZERO])
    abaw.write_media(tmp_path / "videos", "vid.mp4")

    found = _source(tmp_path, tasks="au").discover()

    assert found.tasks == ["au"] and found.tracks[0].tasks == ("au",)
    assert found.label_names["expression"] == [] and len(found.label_names["action_units"]) == 12


# ---------------------------------------------------------------- headers


def test_seven_and_eight_class_files_mix_under_the_eight_class_names(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "seven", [6, 7], header=abaw.EXPR_HEADER_7)
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "eight", [6, 7],
                          header=" neutral, ANGER,Disgust,Fear,Happiness,Sadness,Surprise , other ")
    for name in ("seven", "eight"):
        abaw.write_media(tmp_path / "videos", f"{name}.mp4")
    source = _source(tmp_path)

    found = source.discover()
    tracks = _tracks(found)

    assert found.label_names["expression"] == abaw.EXPR_NAMES_8
    seven = source.read_labels(tracks["train/seven"])
    np.testing.assert_array_equal(seven.expression, [6, -1])  # 7 is out of range for a 7-class file.
    assert list(seven.rejected) == ["", "out_of_range"]
    np.testing.assert_array_equal(source.read_labels(tracks["train/eight"]).expression, [6, 7])


def test_seven_class_files_alone_give_seven_names(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0], header=abaw.EXPR_HEADER_7, layout="2020")
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    assert _source(tmp_path).discover().label_names["expression"] == abaw.EXPR_NAMES_7


@pytest.mark.parametrize("names", [abaw.AU_NAMES_8, abaw.AU_NAMES_12])
def test_action_unit_names_come_from_the_header(tmp_path, names):
    header = ",".join(reversed(names))  # any column order: columns are mapped to ascending AU number.
    row = list(range(len(names)))
    row = [1 if i == 0 else 0 for i in row]  # last AU in canonical order is 1 (first column of the file).
    abaw.write_annotation(tmp_path / "ann", "au", "train", "vid", [row], header=header)
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    found = source.discover()
    labels = source.read_labels(found.tracks[0])

    assert found.label_names["action_units"] == names
    assert found.tracks[0].action_unit_names == tuple(names)
    np.testing.assert_array_equal(labels.action_units, [[0] * (len(names) - 1) + [1]])


def test_mixed_action_unit_sets_are_refused_for_the_minority_files(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "au", "train", "a", [AU12_ZERO])
    abaw.write_annotation(tmp_path / "ann", "au", "train", "b", [AU12_ZERO])
    abaw.write_annotation(tmp_path / "ann", "au", "train", "old", [[1] * 8, [0] * 8], header=abaw.AU_HEADER_8)
    for name in ("a", "b", "old"):
        abaw.write_media(tmp_path / "videos", f"{name}.mp4")
    source = _source(tmp_path)

    found = source.discover()
    old = source.read_labels(_tracks(found)["train/old"])

    assert found.label_names["action_units"] == abaw.AU_NAMES_12
    assert old.action_units.shape == (2, 12) and (old.action_units == -1).all()
    assert list(old.rejected) == ["bad_header", "bad_header"]
    [letter] = old.dead_letters
    assert letter.reason == "bad_header" and letter.frames == 2 and "mixing AU sets is refused" in letter.message


def test_wrong_header_rejects_every_line_with_one_dead_letter(tmp_path):
    path = abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(0.1, 0.1)] * 5, header="val,aro")
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [-1, 2])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    assert (labels.valence_arousal == -5).all()
    assert list(labels.rejected) == ["bad_header", "", "bad_header", "bad_header", "bad_header"]
    [letter] = labels.dead_letters
    assert letter.source == str(path) and letter.reason == base.DROP_BAD_HEADER
    assert "'val,aro'" in letter.message and letter.frames == 4


# ---------------------------------------------------------------- lines


def test_malformed_lines_name_file_and_line_and_are_grouped(tmp_path):
    rows = [0, 1, "x", "1,2", "nan", 2, "2.5"] + ["oops"] * 900 + [3]
    path = abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", rows)
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    assert labels.num_frames == 908
    np.testing.assert_array_equal(labels.expression[[0, 1, 5, 907]], [0, 1, 2, 3])
    assert [(d.source, d.reason, d.frames) for d in labels.dead_letters] == [
        (f"{path}:lines 3-5", "malformed_line", 3),
        (f"{path}:lines 7-907", "malformed_line", 901),  # "2.5" is not an integer class.
    ]
    assert "file line(s) 4-6" in labels.dead_letters[0].message
    assert (labels.rejected == "malformed_line").sum() == 904


def test_out_of_range_values_are_rejected_per_task(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [8, -2, 7, -1])
    abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(1.5, 0), (0, -1.01), (1, -1), "inf,0"])
    abaw.write_annotation(tmp_path / "ann", "au", "train", "vid", [[2] + [0] * 11, AU12_ZERO, [-1] * 12, [-1] * 12])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    np.testing.assert_array_equal(labels.expression, [-1, -1, 7, -1])
    np.testing.assert_allclose(labels.valence_arousal, [[-5, -5], [-5, -5], [1, -1], [-5, -5]])
    np.testing.assert_array_equal(labels.action_units[:, 0], [-1, 0, -1, -1])
    assert list(labels.rejected) == ["out_of_range", "", "", "out_of_range"]
    assert {(d.source.rsplit(":", 1)[1], d.reason) for d in labels.dead_letters} == {
        ("lines 1-2", "out_of_range"), ("line 1", "out_of_range"), ("line 4", "out_of_range"),
        ("lines 1-2", "out_of_range")}
    assert len(labels.dead_letters) == 4  # expr 1-2, va 1-2, va 4, au 1.


def test_rejected_reason_is_set_only_when_no_other_task_labels_the_frame(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", ["bad", "bad", "bad"])
    abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(0.1, 0.1), (-5, -5)])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    assert list(labels.rejected) == ["", "malformed_line", "malformed_line"]
    assert labels.dead_letters[0].frames == 2  # frame 1 still has its valence/arousal.


def test_half_invalid_valence_arousal_pair_is_invalid_and_trailing_blank_lines_are_ignored(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(-5, 0.3), (0.3, -5), (0.2, 0.2)],
                          trailing_blank_lines=3)
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    assert labels.num_frames == 3 and labels.dead_letters == []
    np.testing.assert_array_equal(labels.valid, [False, False, True])
    assert (labels.valence_arousal[:2] == -5).all()


def test_labelled_and_rejected_counts_are_exact(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0, -1, 9, "?", 4, -1, 1])
    abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(-5, -5), (0.5, 0.5), (-5, -5), (0, 0)])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    # frames 1,2,4(va),5,7 valid; frame 3 out of range; frame 6 unlabelled.
    np.testing.assert_array_equal(labels.valid, [True, True, False, True, True, False, True])
    np.testing.assert_array_equal(labels.labelled, [True, True, True, True, True, False, True])
    assert int(labels.valid.sum()) == 5 and int(labels.labelled.sum()) == 6
    assert list(labels.rejected) == ["", "", "out_of_range", "", "", "", ""]


# ---------------------------------------------------------------- media


def test_left_and_right_subjects_share_one_media_file(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "va", "train", "10-60-1280x720_left", [(0, 0)])
    abaw.write_annotation(tmp_path / "ann", "va", "train", "10-60-1280x720_right", [(0, 0)])
    abaw.write_annotation(tmp_path / "ann", "va", "train", "own_left", [(0, 0)])
    abaw.write_media(tmp_path / "videos", "batch1/10-60-1280x720.mp4")
    abaw.write_media(tmp_path / "videos", "own_left.mp4")
    abaw.write_media(tmp_path / "videos", "own.mp4")

    found = _source(tmp_path).discover()
    tracks = _tracks(found)

    left, right = tracks["train/10-60-1280x720_left"], tracks["train/10-60-1280x720_right"]
    assert (left.side, right.side) == ("left", "right")
    assert left.data_path == right.data_path == "batch1/10-60-1280x720.mp4"
    assert left.media_path == str(tmp_path / "videos" / "batch1" / "10-60-1280x720.mp4")
    assert tracks["train/own_left"].side is None and tracks["train/own_left"].data_path == "own_left.mp4"
    assert found.unused_media == ["own.mp4"]


def test_avi_and_nested_media_of_any_case_are_found(tmp_path):
    for name in ("a", "b", "c"):
        abaw.write_annotation(tmp_path / "ann", "expr", "train", name, [0])
    abaw.write_media(tmp_path / "videos", "x/y/a.AVI")
    abaw.write_media(tmp_path / "videos", "b.Mp4")
    abaw.write_media(tmp_path / "videos", "deep/er/c.avi")
    abaw.write_media(tmp_path / "videos", "c.txt")

    tracks = _tracks(_source(tmp_path).discover())

    assert [tracks[f"train/{n}"].data_path for n in "abc"] == ["x/y/a.AVI", "b.Mp4", "deep/er/c.avi"]


def test_annotation_without_media_is_a_no_media_track_unless_crops_exist(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "lost", [0, 1])
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "cropped", [0, 1])
    abaw.write_crops_dir(tmp_path / "crops", "cropped", 2)
    source = _source(tmp_path, cropped_aligned=str(tmp_path / "crops"))

    tracks = _tracks(source.discover())

    assert tracks["train/lost"].problem == base.DROP_NO_MEDIA and tracks["train/lost"].media_path is None
    assert int(source.read_labels(tracks["train/lost"]).labelled.sum()) == 2  # counted, then dropped.
    assert tracks["train/cropped"].problem is None
    assert tracks["train/cropped"].crops_dir == str(tmp_path / "crops" / "cropped")


def test_a_track_with_media_but_no_crops_folder_is_named_in_a_note_with_cropped_aligned(tmp_path):
    # --cropped_aligned means "the dataset's crops instead of detecting": a track whose crops folder is missing
    # falls back to the face stage on its video, and the run must say so (a silent mix of crop sources).
    for name in ("cropped", "detected"):
        abaw.write_annotation(tmp_path / "ann", "expr", "train", name, [0, 1])
        abaw.write_media(tmp_path / "videos", f"{name}.mp4")
    abaw.write_crops_dir(tmp_path / "crops", "cropped", 2)

    found = _source(tmp_path, cropped_aligned=str(tmp_path / "crops")).discover()

    tracks = _tracks(found)
    assert tracks["train/cropped"].crops_dir and tracks["train/detected"].crops_dir is None
    assert [n for n in found.notes if "train/detected" in n and "face stage" in n]
    assert not [n for n in found.notes if "train/cropped" in n]
    assert not [n for n in _source(tmp_path).discover().notes if "face stage" in n]  # no --cropped_aligned: no note


def test_media_without_annotation_is_listed_as_unused(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "used", [0])
    abaw.write_media(tmp_path / "videos", "used.mp4")
    abaw.write_media(tmp_path / "videos", "z/spare.avi")
    abaw.write_media(tmp_path / "videos", "a_spare.MP4")

    found = _source(tmp_path).discover()

    assert found.unused_media == ["a_spare.MP4", "z/spare.avi"]


def test_several_media_files_with_one_stem_are_ambiguous(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0])
    abaw.write_media(tmp_path / "videos", "one/vid.mp4")
    abaw.write_media(tmp_path / "videos", "two/vid.avi")

    [track] = _source(tmp_path).discover().tracks

    assert track.problem == base.DROP_AMBIGUOUS_MEDIA and track.media_path is None


def test_a_video_named_in_another_letter_case_is_no_media_with_a_hint(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "caseonly", [0])
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "duo_left", [0])
    abaw.write_media(tmp_path / "videos", "CASEONLY.mp4")
    abaw.write_media(tmp_path / "videos", "sub/Duo.avi")

    tracks = {t.media_id: t for t in _source(tmp_path).discover().tracks}

    for name, video in (("caseonly", "CASEONLY.mp4"), ("duo_left", "sub/Duo.avi")):
        assert tracks[name].problem == base.DROP_NO_MEDIA  # (Names match as written, as the challenge's do.)
        assert f"{video} differs only in letter case" in tracks[name].problem_message


def test_videos_rendered_by_predict_are_left_out_with_a_note(tmp_path):
    # `predict --render --output videos/preds` beside the source videos: its renders are copies of them, so each
    # predicted video's stem was met twice (ambiguous_media) and its track dropped.
    from tfrecords_schema.prediction_files import LEDGER_FILENAME, ledger_text

    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0])
    abaw.write_media(tmp_path / "videos", "a/vid.mp4")
    abaw.write_media(tmp_path / "videos", "preds/vid.mp4")
    abaw.write_media(tmp_path / "videos", "preds/mine.mp4")  # Not in the list: the user's, and still a video.
    (tmp_path / "videos" / "preds" / LEDGER_FILENAME).write_text(ledger_text(["vid.csv", "EXPR/vid.txt", "vid.mp4"]))

    found = _source(tmp_path).discover()

    [track] = found.tracks
    assert track.problem is None and track.media_path.endswith("a/vid.mp4")
    assert found.unused_media == ["preds/mine.mp4"]
    assert len(found.notes) == 1 and "1 video(s) in" in found.notes[0] and "vid.mp4" in found.notes[0]


def test_ambiguous_media_with_crops_uses_the_crops_and_reports_the_media(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0])
    abaw.write_annotation(tmp_path / "ann", "expr", "validation", "vid_left", [0])
    abaw.write_media(tmp_path / "videos", "one/vid.mp4")
    abaw.write_media(tmp_path / "videos", "two/vid.mp4")
    abaw.write_crops_dir(tmp_path / "crops", "vid", 1)

    found = _source(tmp_path, cropped_aligned=str(tmp_path / "crops")).discover()
    tracks = _tracks(found)

    assert tracks["train/vid"].problem is None and tracks["train/vid"].media_path is None
    assert tracks["train/vid"].crops_dir == str(tmp_path / "crops" / "vid")
    assert tracks["validation/vid_left"].problem == base.DROP_AMBIGUOUS_MEDIA  # no crops for this one.
    [letter] = found.dead_letters
    assert letter.reason == base.DROP_AMBIGUOUS_MEDIA and "one/vid.mp4, two/vid.mp4" in letter.message


def test_videos_and_crops_inside_the_annotations_root_are_not_taken_for_annotations(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0])
    # A folder named like an annotation folder inside --videos and --cropped_aligned must not count.
    abaw.write_annotation(tmp_path / "videos", "expr", "train", "ghost", [0])
    abaw.write_annotation(tmp_path / "crops", "expr", "train", "ghost2", [0])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    abaw.write_crops_dir(tmp_path / "crops", "vid", 1)

    found = _source(tmp_path, annotations=str(tmp_path), cropped_aligned=str(tmp_path / "crops")).discover()

    assert [t.track_id for t in found.tracks] == ["train/vid"]


def test_blank_line_inside_a_file_is_malformed(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, "", 2], trailing_blank_lines=1)
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    labels = source.read_labels(source.discover().tracks[0])

    assert list(labels.rejected) == ["", "malformed_line", ""]
    assert labels.dead_letters[0].source.endswith("vid.txt:line 2")


# ---------------------------------------------------------------- duplicates and names


def test_duplicate_subject_in_train_and_validation_rejects_both_files(tmp_path):
    train = abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, 2])
    validation = abaw.write_annotation(tmp_path / "ann", "expr", "validation", "vid", [3])
    abaw.write_annotation(tmp_path / "ann", "va", "validation", "vid", [(0.1, 0.1), (0.2, 0.2)])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    tracks = _tracks(source.discover())
    train_labels = source.read_labels(tracks["train/vid"])
    validation_labels = source.read_labels(tracks["validation/vid"])

    assert tracks["train/vid"].problem == base.DROP_DUPLICATE_TRACK and tracks["train/vid"].tasks == ()
    assert list(train_labels.rejected) == ["duplicate_track"] * 2
    assert tracks["validation/vid"].problem is None and tracks["validation/vid"].tasks == ("va",)
    assert (validation_labels.expression == -1).all() and list(validation_labels.rejected) == ["", ""]
    for labels in (train_labels, validation_labels):
        [letter] = labels.dead_letters
        assert letter.reason == base.DROP_DUPLICATE_TRACK
        assert str(train) in letter.message and str(validation) in letter.message
    assert train_labels.dead_letters[0].frames == 2 and validation_labels.dead_letters[0].frames == 0


def test_duplicate_subject_across_two_layouts_never_picks_one(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1], layout="2020")
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [2], layout="abaw6")
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    [track] = source.discover().tracks
    labels = source.read_labels(track)

    assert track.problem == base.DROP_DUPLICATE_TRACK and len(track.rejected_files) == 2
    assert (labels.expression == -1).all() and list(labels.rejected) == ["duplicate_track"]
    assert len(labels.dead_letters) == 2  # one per rejected file, each naming both.


def test_non_ascii_names_work_end_to_end(tmp_path):
    media_id = "vidéo_東京_left"
    abaw.write_annotation(tmp_path / "ännotations", "expr", "train", media_id, [5, "ß"])
    abaw.write_media(tmp_path / "vidéos", "ñ/vidéo_東京.mp4")
    abaw.write_crops_dir(tmp_path / "crops", media_id, 1)
    source = AbawSource(str(tmp_path / "ännotations"), str(tmp_path / "vidéos"),
                        cropped_aligned=str(tmp_path / "crops"))

    [track] = source.discover().tracks
    labels = source.read_labels(track)

    assert track.media_id == media_id and track.side == "left" and track.data_path == "ñ/vidéo_東京.mp4"
    assert track.crops_dir == str(tmp_path / "crops" / media_id)
    np.testing.assert_array_equal(labels.expression, [5, -1])
    assert media_id in labels.dead_letters[0].source


# ---------------------------------------------------------------- multi-task files


def test_multi_task_file_labels_only_the_listed_frames(tmp_path):
    abaw.write_mtl(tmp_path / "ann", "train", [
        ("m1", 2, (0.1, 0.2), 3, [1] + [0] * 11),
        ("m2", 1, (0.5, 0.5), 0, AU12_ZERO),
        ("m1", 4, (9, 0.2), -1, [-1] * 12),
        "m1/00005.jpg,0.1,0.2",
        "no-image-name,0,0,0",
    ])
    abaw.write_mtl(tmp_path / "ann", "validation", [("m3", 1, (0, 0), 7, AU12_ZERO)])
    abaw.write_mtl(tmp_path / "ann", "test", [("m4", 1, (0, 0), 7, AU12_ZERO)])
    for name in ("m1", "m2", "m3", "m4"):
        abaw.write_media(tmp_path / "videos", f"{name}.mp4")
    source = _source(tmp_path)

    found = source.discover()
    tracks = _tracks(found)
    m1 = source.read_labels(tracks["train/m1"])

    assert sorted(tracks) == ["train/m1", "train/m2", "validation/m3"]
    assert tracks["train/m1"].tasks == ("expr", "va", "au")
    assert found.label_names["action_units"] == abaw.AU_NAMES_12
    assert found.unused_media == ["m4.mp4"]
    assert [d.source.rsplit(":", 1)[1] for d in found.dead_letters] == ["line 6"]
    assert found.split_drops == [base.SplitDrop("train", "malformed_line", 1)]  # Counted in its split.
    np.testing.assert_array_equal(m1.expression, [-1, 3, -1, -1, -1])
    np.testing.assert_allclose(m1.valence_arousal[1], [0.1, 0.2])
    np.testing.assert_array_equal(m1.action_units[1], [1] + [0] * 11)
    assert list(m1.rejected) == ["", "", "", "out_of_range", "malformed_line"]
    assert sorted(d.reason for d in m1.dead_letters) == ["malformed_line"] * 3 + ["out_of_range"]


def test_multi_task_and_per_task_file_for_one_subject_are_duplicates(tmp_path):
    abaw.write_mtl(tmp_path / "ann", "train", [("vid", 1, (0.1, 0.2), 3, AU12_ZERO)])
    abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(0.3, 0.3)])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    [track] = source.discover().tracks
    labels = source.read_labels(track)

    assert track.tasks == ("expr", "au") and {r.task for r in track.rejected_files} == {"va"}
    assert labels.expression[0] == 3 and (labels.valence_arousal == -5).all()


# ---------------------------------------------------------------- construction, registry, determinism


def test_bad_arguments_fail_at_construction_with_the_valid_values(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError, match="valid tasks: expr, va, au"):
        AbawSource(str(tmp_path / "ann"), str(tmp_path / "videos"), tasks=["expr", "pose"])
    with pytest.raises(FileNotFoundError, match="--videos"):  # also a ValueError, as callers catch.
        AbawSource(str(tmp_path / "ann"), str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--annotations"):
        AbawSource(str(tmp_path / "missing"), str(tmp_path / "videos"))
    with pytest.raises(ValueError, match="--videos or --cropped_aligned"):
        AbawSource(str(tmp_path / "ann"), None)
    with pytest.raises(ValueError, match="valid datasets: abaw"):
        make_source("affectnet", annotations=str(tmp_path / "ann"))
    with pytest.raises(AbawLayoutError, match="no ABAW annotation files"):
        AbawSource(str(tmp_path / "ann"), str(tmp_path / "videos")).discover()


def test_registry_builds_the_abaw_source(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "va", "train", "vid", [(0, 0)])
    source = make_source("abaw", annotations=str(tmp_path / "ann"), videos=str(tmp_path), tasks=["VA"])
    assert SOURCES["abaw"] is AbawSource and isinstance(source, AbawSource) and source.tasks == ("va",)


def test_source_pickles_and_reads_the_same_labels_after(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [0, "x", 2])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)
    found = source.discover()

    clone = pickle.loads(pickle.dumps(source))
    track = pickle.loads(pickle.dumps(found.tracks[0]))
    labels = clone.read_labels(track)

    np.testing.assert_array_equal(labels.expression, source.read_labels(found.tracks[0]).expression)
    assert pickle.loads(pickle.dumps(labels)).dead_letters == labels.dead_letters


def test_discovery_is_deterministic_and_sorted(tmp_path):
    for name in ("b", "a", "c_right", "c_left"):
        abaw.write_annotation(tmp_path / "ann", "expr", "validation", name, [0])
        abaw.write_annotation(tmp_path / "ann", "expr", "train", name + "x", [0])
    abaw.write_media(tmp_path / "videos", "c.mp4")

    first, second = _source(tmp_path).discover(), _source(tmp_path).discover()

    assert first == second
    assert [t.track_id for t in first.tracks] == sorted(t.track_id for t in first.tracks)
