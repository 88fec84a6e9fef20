"""The selection split: a subject-disjoint slice of the train subjects, held out by the conversion, on which the
trainer selects its best epoch by default, so that validation is touched only by the final evaluation."""

from __future__ import annotations

import contextlib
import io
import json
import types

import abaw_layout as abaw
import cv2
import pytest
import video_fixtures as vf

from beam_jobs import convert
from beam_jobs.sources.base import Discovery, TrackSpec
from beam_jobs.sources.selection import held_out_subjects, hold_out
from tfrecords_schema import SPLIT_SELECTION, SPLIT_TRAIN, SPLIT_VALIDATION, read_dataset_info
from trainer.training.plan import default_select_split


def test_about_the_fraction_of_subjects_is_held_out_by_a_stable_hash():
    subjects = [f"subject_{i:03d}" for i in range(400)]
    held = held_out_subjects(subjects, 0.1)
    assert 25 <= len(held) <= 55 and held == held_out_subjects(list(reversed(subjects)), 0.1)
    assert held <= held_out_subjects(subjects, 0.2)  # a larger fraction keeps the smaller one's subjects
    assert held_out_subjects(subjects[:3], 0.1) == set()  # too few subjects for a tenth: none
    few = held_out_subjects(subjects[:10], 0.1)
    assert len(few) >= 1 and held_out_subjects(subjects, 0.0) == set()


def test_every_track_of_a_held_out_subject_moves_and_other_splits_stay():
    tracks = [TrackSpec(f"clip{i}", SPLIT_TRAIN, (), subject=f"person{i % 10}") for i in range(30)]
    tracks.append(TrackSpec("val", SPLIT_VALIDATION, ()))
    moved = hold_out(Discovery(tracks=tracks, label_names={}, tasks=[]), 0.1).tracks
    selection = {t.subject_id for t in moved if t.split == SPLIT_SELECTION}
    assert selection and not selection & {t.subject_id for t in moved if t.split == SPLIT_TRAIN}
    assert sum(t.split == SPLIT_SELECTION for t in moved) == 3 * len(selection)  # 3 clips per person
    assert [t.split for t in moved if t.media_id == "val"] == [SPLIT_VALIDATION]


def test_the_conversion_writes_the_selection_split_and_training_selects_on_it(tmp_path):
    crops, ann = tmp_path / "crops", tmp_path / "annotations"
    for i in range(12):
        abaw.write_annotation(ann, "expr", "train", f"s{i:02d}", [4, 4, 1, 1])
        folder = abaw.write_crops_dir(crops, f"s{i:02d}")
        for f in range(1, 5):
            cv2.imwrite(str(folder / f"{f:05d}.jpg"), vf.face_frame(4 if f < 3 else 1, seed=f))
    abaw.write_annotation(ann, "expr", "validation", "v", [4, 1])
    for f in (1, 2):
        cv2.imwrite(str(abaw.write_crops_dir(crops, "v") / f"{f:05d}.jpg"), vf.face_frame(4, seed=f))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert convert.run(["--cropped_aligned", str(crops), "--annotations", str(ann), "--output", str(tmp_path / "out"),
                            "--crop_size", "32", "--clip_length", "4", "--runner", "DirectRunner",
                            "--direct_running_mode", "in_memory", "--progress_every", "0"]) == 0
    info = read_dataset_info(str(tmp_path / "out"))
    held = held_out_subjects([f"s{i:02d}" for i in range(12)], 0.1)
    assert info.splits[SPLIT_SELECTION].num_clips == len(held) >= 1
    assert info.splits[SPLIT_TRAIN].num_clips == 12 - len(held) and info.splits[SPLIT_VALIDATION].num_clips == 1
    assert json.loads((tmp_path / "out" / "dataset_info.json").read_text())["options"]["select_fraction"] == 0.1
    config = types.SimpleNamespace(select_split=None, eval_split=SPLIT_VALIDATION)
    assert default_select_split(config, info) == SPLIT_SELECTION
    config.select_split = SPLIT_VALIDATION
    assert default_select_split(config, info) == SPLIT_VALIDATION
    # Without a selection split, a test report is selected on validation, not on the test figures it reports.
    splits = {SPLIT_TRAIN: None, SPLIT_VALIDATION: None, "test": None}
    config = types.SimpleNamespace(select_split=None, eval_split="test")
    assert default_select_split(config, types.SimpleNamespace(splits=splits)) == SPLIT_VALIDATION
    del splits[SPLIT_VALIDATION]
    assert default_select_split(config, types.SimpleNamespace(splits=splits)) == "test"


@pytest.mark.parametrize("fraction", ["-0.1", "0.5"])
def test_a_select_fraction_out_of_range_is_one_line(tmp_path, fraction, capsys):
    assert convert.run(["--annotations", str(tmp_path), "--output", str(tmp_path / "o"), "--select_fraction",
                        fraction, "--runner", "DirectRunner"]) == 2
    assert "--select_fraction must be in [0, 0.5)" in capsys.readouterr().err


def test_heads_without_train_labels_are_refused_and_a_selection_split_without_labels_too(caplog):
    from tfrecords_schema import HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
    from trainer.common.errors import TrainingError
    from trainer.training.plan import _check_labelled_heads

    def data(train, selection, written=10):
        def split(frames):
            return types.SimpleNamespace(task_frames=frames, class_frames={},
                                         accounting=types.SimpleNamespace(written_frames=written))

        return types.SimpleNamespace(splits={SPLIT_TRAIN: split(train), SPLIT_SELECTION: split(selection)})

    config = types.SimpleNamespace(data="DATA")
    heads = (HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL)
    # --task multi where expression is labelled outside train only: it crashed in the input pipeline, after files.
    with pytest.raises(TrainingError, match="no train frame of DATA is labelled for expression.*train --task va"):
        _check_labelled_heads(data({"va": 100}, {"va": 9, "expr": 9}), heads, SPLIT_SELECTION, config)
    # A selection split that labels no head: every epoch scored 0.0000 and the first stayed the best.
    with pytest.raises(TrainingError, match="labels no frame for expression, valence_arousal"):
        _check_labelled_heads(data({"va": 100, "expr": 100}, {"au": 5}), heads, SPLIT_SELECTION, config)
    with caplog.at_level("WARNING"):
        _check_labelled_heads(data({"va": 100, "expr": 100}, {"expr": 5}), heads, SPLIT_SELECTION, config)
    assert "labels no frame for valence_arousal: the best epoch is selected on the other heads only" in caplog.text
    _check_labelled_heads(data({}, {}), heads, SPLIT_SELECTION, config)  # Data without task_frames: not checked.
    with pytest.raises(TrainingError, match="no train frame of DATA is labelled for expression, valence_arousal"):
        _check_labelled_heads(data({}, {}, written=0), heads, SPLIT_SELECTION, config)  # Nothing labelled at all.


def test_expression_classes_the_train_split_lacks_are_warned_of(caplog):
    from trainer.training.plan import _warn_of_untrainable_classes

    def data(**splits):
        return types.SimpleNamespace(splits={name: types.SimpleNamespace(class_frames={"expr": frames})
                                             for name, frames in splits.items()})

    config = types.SimpleNamespace(data="DATA", eval_split=SPLIT_VALIDATION)
    with caplog.at_level("WARNING"):
        _warn_of_untrainable_classes(data(train={"Neutral": 50, "Happiness": 9, "Fear": 0},
                                          selection={"Neutral": 5, "Fear": 3},
                                          validation={"Neutral": 5, "Happiness": 2, "Fear": 4, "Anger": 0}),
                                     SPLIT_SELECTION, config)
    # Fear is scored on both evaluated splits but never trained; Anger has no frame anywhere: not named.
    assert "'selection' split has frames of expression class(es) no train frame is labelled with (Fear: 3 frames)" \
        in caplog.text
    assert "'validation' split has frames of expression class(es) no train frame is labelled with (Fear: 4 frames)" \
        in caplog.text
    assert "Anger" not in caplog.text and "one expression class" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_of_untrainable_classes(data(train={"Neutral": 50, "Fear": 0}, validation={"Neutral": 5}),
                                     SPLIT_VALIDATION, config)
    assert "every labelled train frame of DATA is of one expression class (Neutral)" in caplog.text
    assert "no train frame is labelled with" not in caplog.text  # validation is checked once, and lacks nothing
    caplog.clear()
    with caplog.at_level("WARNING"):  # Data counted before class_frames were recorded: not checked.
        _warn_of_untrainable_classes(data(train={}, validation={"Neutral": 5}), SPLIT_VALIDATION, config)
    assert not caplog.text
    with caplog.at_level("WARNING"):  # No train split (refused later, in its own words: it was a KeyError here).
        _warn_of_untrainable_classes(data(validation={"Neutral": 5}), SPLIT_VALIDATION, config)
    # input-rate evaluates nothing: the evaluated splits are not looked at.
    with caplog.at_level("WARNING"):
        _warn_of_untrainable_classes(data(train={"Neutral": 50, "Fear": 0}, validation={"Fear": 4}), None, config)
    assert "no train frame is labelled with" not in caplog.text and "one expression class (Neutral)" in caplog.text


def test_a_head_that_scored_no_frame_is_left_out_of_the_selection_score():
    from trainer.evaluation.metrics import primary_score

    assert primary_score({"expression": {"macro_f1": 0.5, "frames": 10},
                          "valence_arousal": {"ccc_mean": 0.0, "frames": 0}}) == 0.5
