"""The folder-per-class adapter converts ROOT/<split>/<class>/.../<video> end to end, counting every odd video."""

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
from beam_jobs.sources import SOURCES, folds, media_rows
from beam_jobs.sources.folders import FoldersSource
from tfrecords_schema import decode_clip, read_dataset_info

FPS = 10.0
SIDE = 64
CLASSES = ["Neutral", "Happy", "Sad"]
ARGS = ["--clip_length", "8", "--detect_every", "5", "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
        "--progress_every", "0"]
# Relative path → frames. Split folders and class folders in any letter case, any nesting, any container case.
VIDEOS = {
    "Train/Happy/clip1.avi": 6,
    "Train/Happy/nested/deeper/clip2.AVI": 5,
    "Train/Sad/clip1.mkv": 4,  # Same stem as Train/Happy/clip1.avi: another video.
    "Val/happy/c3.MOV": 5,  # "happy" matches --class_names' "Happy".
    "Val/Angry/c4.avi": 3,  # Not in --class_names: unknown_class.
    "Val/loose.avi": 2,  # In no class folder: unknown_class.
    "Test/Sad/t1.avi": 4,  # the held-out test split.
    "extras/Happy/e1.avi": 3,  # Not a split folder: unknown_split, accounted under "unassigned".
}


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


def written_expressions(output) -> dict[str, dict[int, int]]:
    """``{media_id: {frame: expression}}`` of every record, read back from the shards."""
    paths = sorted(str(p) for p in pathlib.Path(output).rglob("*.tfrecord-*"))
    found: dict[str, dict[int, int]] = {}
    for record in tf.data.TFRecordDataset(paths):
        clip = decode_clip(record.numpy())
        found.setdefault(clip.media_id, {}).update(zip(clip.frame_index.tolist(), clip.expression.tolist()))
    return found


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    videos = root / "videos"
    for rel, frames in VIDEOS.items():
        write_video(videos / rel, frames)
    (videos / "Train" / "Happy" / "notes.txt").write_text("not a video", encoding="utf-8")
    os.symlink(root / "nowhere", videos / "Train" / "ghost")  # A folder that cannot be listed.
    source = FoldersSource(str(videos), class_names=",".join(CLASSES))
    refused = run_convert("--dataset", "folders", "--videos", videos, "--output", root / "refused", source=source)
    rc, _, err = run_convert("--dataset", "folders", "--videos", videos, "--output", root / "out", "--allow_partial",
                             source=source)
    assert rc == 0, err
    return {"root": root, "videos": videos, "output": root / "out", "refused": refused,
            "info": read_dataset_info(str(root / "out"))}


def test_an_unlistable_folder_fails_the_run_unless_partial_input_is_allowed(converted):
    rc, _, err = converted["refused"]
    assert rc == 1 and "ghost" in err and "--allow_partial" in err
    letters = [json.loads(line) for line in (converted["output"] / "errors" / "dead_letters.jsonl").open()]
    assert any(d["reason"] == "unlisted_folder" and d["source"].endswith("ghost") for d in letters)


def test_accounting_counts_every_video_in_frames(converted):
    info = converted["info"]
    for split in info.splits.values():
        a = split.accounting
        assert a.labelled_frames == a.written_frames + sum(a.dropped.values())
    train, validation = info.splits["train"].accounting, info.splits["validation"].accounting
    assert (train.labelled_frames, train.written_frames, train.dropped) == (15, 15, {})
    assert (validation.labelled_frames, validation.written_frames) == (10, 5)
    assert validation.dropped == {"unknown_class": 5}
    unassigned = info.splits[media_rows.UNASSIGNED_SPLIT].accounting
    assert (unassigned.labelled_frames, unassigned.dropped) == (3, {"unknown_split": 3})
    test = info.splits["test"].accounting
    assert (test.labelled_frames, test.written_frames, test.dropped) == (4, 4, {})  # Held out, written.


def test_dead_letters_name_each_odd_video_with_its_frames(converted):
    letters = [json.loads(line) for line in (converted["output"] / "errors" / "dead_letters.jsonl").open()]
    by_video = {(pathlib.Path(d["source"]).relative_to(converted["videos"]).as_posix(), d["reason"]): d["frames"]
                for d in letters if d["source"].startswith(str(converted["videos"])) and d["frames"]}
    assert by_video[("Val/Angry/c4.avi", "unknown_class")] == 3
    assert by_video[("Val/loose.avi", "unknown_class")] == 2
    assert by_video[("extras/Happy/e1.avi", "unknown_split")] == 3


def test_every_frame_carries_its_folder_class_in_class_names_order(converted):
    info = converted["info"]
    assert info.label_names["expression"] == CLASSES and info.tasks == ["expr"]
    happy, sad = CLASSES.index("Happy"), CLASSES.index("Sad")
    found = written_expressions(converted["output"])
    expected = {"Train/Happy/clip1.avi": (happy, 6), "Train/Happy/nested/deeper/clip2.AVI": (happy, 5),
                "Train/Sad/clip1.mkv": (sad, 4), "Val/happy/c3.MOV": (happy, 5), "Test/Sad/t1.avi": (sad, 4)}
    assert {m: frames for m, frames in found.items()} == \
        {m: dict.fromkeys(range(1, n + 1), c) for m, (c, n) in expected.items()}
    assert info.unused_media == []


def test_without_class_names_the_sorted_folder_names_are_the_classes(converted):
    found = FoldersSource(str(converted["videos"])).discover()
    # Folders of valid splits only ("extras" is not one); "happy" and "Happy" are one class.
    assert found.label_names["expression"] == ["Angry", "Happy", "Sad"]
    assert found.unlisted_folders == [str(converted["videos"] / "Train" / "ghost")]


def test_registered_and_built_from_the_command_line_options(converted):
    args = convert.build_parser().parse_known_args(
        ["--dataset", "folders", "--videos", str(converted["videos"]), "--output", "x", "--class_names", "A,B",
         "--subject_regex", "(?P<subject>c\\d)"])[0]
    source = SOURCES["folders"].from_args(args, None)
    assert isinstance(source, FoldersSource) and source.class_names == ["A", "B"]
    assert source.subject_pattern.pattern == "(?P<subject>c\\d)"


# ------------------------------------------------------------------------------------------ subjects and folds


def test_folds_without_a_split_level_keep_subjects_together(tmp_path):
    subjects = [f"actor{i:02d}" for i in range(1, 9)]
    for i, s in enumerate(subjects):
        write_video(tmp_path / ("Happy" if i % 2 else "Sad") / s / "take1.avi", 2)
        write_video(tmp_path / "Neutral" / f"{s}_take2.avi", 2)
    regex = r"(?P<subject>actor\d+)"
    validation = []
    for fold in range(4):
        found = FoldersSource(str(tmp_path), folds=4, fold=fold, subject_regex=regex).discover()
        split_of = {}
        for track in found.tracks:
            subject = track.media_id.split("/")[1][:7]
            assert split_of.setdefault(subject, track.split) == track.split
            assert track.split == folds.fold_split(subject, 4, fold) and track.problem is None
        assert sorted(split_of) == subjects
        validation += [s for s, split in split_of.items() if split == "validation"]
    assert sorted(validation) == subjects
    assert found.label_names["expression"] == ["Happy", "Neutral", "Sad"]


def test_split_level_must_match_the_folds_option(tmp_path):
    write_video(tmp_path / "train" / "Happy" / "a.avi", 2)
    with pytest.raises(ValueError, match="split folders"):
        FoldersSource(str(tmp_path), folds=3, fold=0).discover()
    flat = tmp_path / "flat"
    write_video(flat / "Happy" / "a.avi", 2)
    with pytest.raises(ValueError, match="no split folder"):
        FoldersSource(str(flat)).discover()
    with pytest.raises(ValueError, match="not a folder"):
        FoldersSource(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="regular expression"):
        FoldersSource(str(tmp_path), subject_regex="(")


def test_a_subject_in_two_splits_and_an_unmatched_subject_are_counted(tmp_path):
    write_video(tmp_path / "train" / "Happy" / "actor01_a.avi", 3)
    write_video(tmp_path / "validation" / "Sad" / "actor01_b.avi", 4)
    write_video(tmp_path / "train" / "Sad" / "actor02.avi", 2)
    write_video(tmp_path / "train" / "Sad" / "nobody.avi", 5)
    source = FoldersSource(str(tmp_path), subject_regex=r"actor\d+")
    tracks = {t.track_id: t for t in source.discover().tracks}
    assert {k: t.problem for k, t in tracks.items()} == {
        "train/train/Happy/actor01_a.avi": "split_conflict", "validation/validation/Sad/actor01_b.avi": "split_conflict",
        "train/train/Sad/actor02.avi": None, "train/train/Sad/nobody.avi": "no_subject"}
    for track_id, frames, reason in (("train/train/Happy/actor01_a.avi", 3, "split_conflict"),
                                     ("validation/validation/Sad/actor01_b.avi", 4, "split_conflict"),
                                     ("train/train/Sad/nobody.avi", 5, "no_subject")):
        labels = source.read_labels(tracks[track_id])
        assert labels.rejected.tolist() == [reason] * frames and not labels.valid.any()
        assert [(d.reason, d.frames) for d in labels.dead_letters] == [(reason, frames)]
    good = source.read_labels(tracks["train/train/Sad/actor02.avi"])
    np.testing.assert_array_equal(good.expression, [1, 1])  # Classes found: Happy, Sad.


def test_a_folder_named_like_a_video_is_listed_and_a_link_into_another_split_conflicts(tmp_path):
    write_video(tmp_path / "train" / "Happy" / "session1.mp4" / "clip1.avi", 3)  # A folder named like a video.
    write_video(tmp_path / "train" / "Happy" / "session1.mp4" / "clip2.avi", 2)
    write_video(tmp_path / "validation" / "Sad" / "e.avi", 4)
    (tmp_path / "train" / "Sad").mkdir()
    os.symlink(tmp_path / "validation" / "Sad" / "e.avi", tmp_path / "train" / "Sad" / "e_copy.avi")
    found = FoldersSource(str(tmp_path)).discover()
    assert {t.track_id: t.problem for t in found.tracks} == {
        "train/train/Happy/session1.mp4/clip1.avi": None, "train/train/Happy/session1.mp4/clip2.avi": None,
        "train/train/Sad/e_copy.avi": "split_conflict", "validation/validation/Sad/e.avi": "split_conflict"}
    assert found.dead_letters == []


def test_videos_rendered_by_predict_inside_a_class_folder_are_not_taken_for_its_videos(tmp_path):
    from tfrecords_schema.prediction_files import LEDGER_FILENAME, ledger_text

    write_video(tmp_path / "train" / "Happy" / "a.avi", 3)
    write_video(tmp_path / "train" / "Happy" / "preds" / "a.mp4", 3)  # predict --render --output .../Happy/preds
    (tmp_path / "train" / "Happy" / "preds" / LEDGER_FILENAME).write_text(ledger_text(["a.csv", "a.mp4"]))
    found = FoldersSource(str(tmp_path)).discover()
    assert [t.track_id for t in found.tracks] == ["train/train/Happy/a.avi"]
    rendered = [note for note in found.notes if "predict --render" in note]
    assert len(rendered) == 1
    # A file of that name that is no such list (not even UTF-8) leaves nothing out, and stops nothing.
    (tmp_path / "train" / "Happy" / "preds" / LEDGER_FILENAME).write_bytes(b"\xff\xfe")
    found = FoldersSource(str(tmp_path)).discover()
    assert len(found.tracks) == 2 and not [note for note in found.notes if "predict" in note]


def test_a_hidden_folder_is_not_a_class(tmp_path):
    write_video(tmp_path / "train" / "Happy" / "a.avi", 3)
    write_video(tmp_path / "train" / ".ipynb_checkpoints" / "a-checkpoint.avi", 2)
    source = FoldersSource(str(tmp_path))
    found = source.discover()
    assert found.label_names["expression"] == ["Happy"]
    hidden = next(t for t in found.tracks if ".ipynb_checkpoints" in t.track_id)
    assert hidden.problem == "unknown_class" and "hidden folder" in hidden.segments[0].message
    labels = source.read_labels(hidden)
    assert [(d.reason, d.frames) for d in labels.dead_letters] == [("unknown_class", 2)]


def test_hidden_folders_and_files_inside_a_class_folder_are_counted_not_learnt(tmp_path):
    # Happy/.ipynb_checkpoints/ held a copy of a Sad clip and was trained on as Happy; "._a.avi" is macOS metadata.
    write_video(tmp_path / "train" / "Happy" / "a.avi", 3)
    write_video(tmp_path / "train" / "Happy" / ".ipynb_checkpoints" / "b-checkpoint.avi", 2)
    write_video(tmp_path / "train" / "Happy" / "._a.avi", 4)
    found = FoldersSource(str(tmp_path)).discover()
    learnt = [t.track_id for t in found.tracks if t.problem is None]
    assert learnt == ["train/train/Happy/a.avi"]
    hidden = {t.track_id: t for t in found.tracks if t.problem is not None and t.track_id.startswith("train/train/")}
    assert sorted(hidden) == ["train/train/Happy/._a.avi", "train/train/Happy/.ipynb_checkpoints/b-checkpoint.avi"]
    for track in hidden.values():
        assert track.problem == "unknown_class" and "inside class folder 'Happy' is hidden" in track.segments[0].message
    # Under --folds (no split level) the same, at any depth.
    write_video(tmp_path / "folds" / "Sad" / "s1.avi", 2)
    write_video(tmp_path / "folds" / "Sad" / "deeper" / ".cache" / "c.avi", 2)
    found = FoldersSource(str(tmp_path / "folds"), folds=2, fold=0).discover()
    assert sorted((t.track_id.split("/", 1)[1], t.problem) for t in found.tracks) == [
        ("Sad/deeper/.cache/c.avi", "unknown_class"), ("Sad/s1.avi", None)]


def test_a_link_within_one_split_is_one_video_and_one_subject_also_under_folds(tmp_path):
    from beam_jobs.sources import folds as folds_lib

    write_video(tmp_path / "Happy" / "a.avi", 3)
    # A name of the same file that, as its own subject, would fall in the other split of fold 0 of 3.
    link = next(f"a_link{i}.avi" for i in range(100) if folds_lib.fold_split(f"Happy/a_link{i}.avi", 3, 0)
                != folds_lib.fold_split("Happy/a.avi", 3, 0))
    os.symlink(tmp_path / "Happy" / "a.avi", tmp_path / "Happy" / link)
    found = FoldersSource(str(tmp_path), folds=3, fold=0).discover()
    (track,) = found.tracks
    assert track.problem is None and track.media_path == str(tmp_path / "Happy" / "a.avi")
    assert len(track.segments) == 2 and track.subject == "Happy/a.avi"
    assert [(d.reason, d.frames) for d in found.dead_letters] == [("duplicate_media", 0)]


def test_the_classes_found_and_an_empty_validation_split_are_said_before_any_video_is_read(tmp_path):
    # A misspelt class folder became a class of its own with nothing said, and a --folds fold that no subject reached
    # converted without a validation split (exit 0; train stopped later on the missing split).
    for cls, name in (("happy", "a"), ("happy", "b"), ("hapy", "c"), ("sad", "d")):
        write_video(tmp_path / "train" / cls / f"{name}.avi", 2)
    notes = FoldersSource(str(tmp_path)).discover().notes
    assert [n for n in notes if n.startswith("classes found")] == [
        "classes found, in label order, with the rows (manifest lines, or videos of a class folder) naming each: "
        "happy 2, hapy 1, sad 1; "
        "a misspelt name is a class of its own: give --class_names to fix the order and refuse other names"]
    assert any(n.startswith("no video to convert is in the validation split") for n in notes)
    write_video(tmp_path / "validation" / "sad" / "e.avi", 2)
    notes = FoldersSource(str(tmp_path), class_names="happy,hapy,sad").discover().notes
    assert notes == []  # (named classes: nothing to say)
