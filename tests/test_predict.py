"""`affectstream predict`: per-frame outputs, ABAW files, no-face rules, smoothing, scoring, consistency.

The unit tests build per-frame predictions by hand. The end-to-end tests share one small trained export
(the demo dataset at 60 frames per video, converted with the demo's settings and trained for a few steps
on every task) and run the real command on real videos through real face detection.
"""

import contextlib
import csv
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import abaw_layout as abaw
import cv2
import numpy as np
import pytest
import video_fixtures as vf
from mounts import tmpfs

from affectstream import cli, demo, demo_data
from beam_jobs import convert
from beam_jobs.faces.stage import FaceStageConfig
from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, read_dataset_info
from trainer import train
from trainer.evaluation import evaluate
from trainer.prediction import outputs as P
from trainer.prediction import ownership, predict, scoring, videos
from trainer.prediction.errors import PredictError, PredictUsageError

EXPR_NAMES = abaw.EXPR_NAMES_8
AU_NAMES = abaw.AU_NAMES_12
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_NAMES = {HEAD_EXPRESSION: EXPR_NAMES, HEAD_VALENCE_AROUSAL: ["valence", "arousal"], HEAD_ACTION_UNITS: AU_NAMES}


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_predictions(n: int, heads=(HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEAD_ACTION_UNITS), has_face=None,
                     stem: str = "clip", seed: int = 0) -> P.VideoPredictions:
    rng = np.random.default_rng(seed)
    outputs = {}
    if HEAD_EXPRESSION in heads:
        logits = rng.normal(size=(n, len(EXPR_NAMES)))
        outputs[HEAD_EXPRESSION] = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    if HEAD_VALENCE_AROUSAL in heads:
        outputs[HEAD_VALENCE_AROUSAL] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    if HEAD_ACTION_UNITS in heads:
        outputs[HEAD_ACTION_UNITS] = rng.uniform(0, 1, (n, len(AU_NAMES))).astype(np.float32)
    has_face = np.ones(n, bool) if has_face is None else np.asarray(has_face, bool)
    boxes = np.where(has_face[:, None], np.array([0.1, 0.2, 0.6, 0.7], np.float32), np.nan).astype(np.float32)
    return P.VideoPredictions(stem=stem, fps=25.0, timestamps_us=np.arange(n, dtype=np.int64) * 40000,
                              decoded=np.ones(n, bool), has_face=has_face, boxes=boxes, outputs=outputs,
                              label_names={h: list(ALL_NAMES[h]) for h in outputs})


# --------------------------------------------------------------------------------------------------
# Smoothing and the no-face rules.


def test_smooth_is_a_centred_average_with_shorter_windows_at_the_ends():
    values = np.array([[0.0], [0.0], [3.0], [0.0], [6.0]], np.float32)
    out = P.smooth(values, 3)
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, 1.0, 3.0, 3.0], atol=1e-6)
    # Even N: frames i-(N-1)//2 .. i+N//2, e.g. frame 0 averages frames 0..2 for N=4.
    np.testing.assert_allclose(P.smooth(values, 4)[:, 0], [1.0, 0.75, 2.25, 3.0, 3.0], atol=1e-6)
    constant = np.full((7, 2), 0.4, np.float32)
    np.testing.assert_allclose(P.smooth(constant, 5), constant, atol=1e-6)
    for off in (0, 1):
        np.testing.assert_array_equal(P.smooth(values, off), values)


def test_fill_no_face_interpolates_linearly_between_face_frames_and_holds_the_nearest_at_the_ends():
    values = np.array([[9.0], [1.0], [9.0], [9.0], [4.0], [9.0]], np.float32)
    has_face = np.array([False, True, False, False, True, False])
    out = P.fill_no_face(values, has_face)
    np.testing.assert_allclose(out[:, 0], [1.0, 1.0, 2.0, 3.0, 4.0, 4.0], atol=1e-6)
    nobody = np.zeros(6, bool)
    np.testing.assert_array_equal(P.fill_no_face(values, nobody), values)


def test_postprocess_applies_the_rule_then_smoothing_and_keeps_probabilities_summing_to_one():
    preds = make_predictions(40, has_face=np.arange(40) % 7 != 3)
    model_rule = P.postprocess(preds, P.NO_FACE_MODEL, 0)
    np.testing.assert_array_equal(model_rule.outputs[HEAD_EXPRESSION], preds.outputs[HEAD_EXPRESSION])
    filled = P.postprocess(preds, P.NO_FACE_INTERPOLATE, 5)
    np.testing.assert_allclose(filled.outputs[HEAD_EXPRESSION].sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(filled.outputs[HEAD_VALENCE_AROUSAL], preds.outputs[HEAD_VALENCE_AROUSAL])
    with pytest.raises(ValueError, match="valid: model, interpolate"):
        P.postprocess(preds, "nearest", 0)


# --------------------------------------------------------------------------------------------------
# Files.


def test_abaw_files_have_the_header_and_exactly_one_line_per_frame(tmp_path):
    preds = make_predictions(23)
    preds.outputs[HEAD_VALENCE_AROUSAL][0] = [1.5, -2.0]  # out of range: clipped in the file
    preds.outputs[HEAD_ACTION_UNITS][1, :] = 0.5  # the threshold itself is active
    paths = P.write_submission(str(tmp_path), preds)
    assert sorted(paths) == sorted(ALL_NAMES)
    lines = {h: pathlib.Path(paths[h]).read_text().splitlines() for h in paths}
    assert lines[HEAD_EXPRESSION][0] == "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    assert lines[HEAD_VALENCE_AROUSAL][0] == "valence,arousal"
    assert lines[HEAD_ACTION_UNITS][0] == "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
    assert all(len(v) == 24 for v in lines.values())
    assert [int(x) for x in lines[HEAD_EXPRESSION][1:]] == list(preds.outputs[HEAD_EXPRESSION].argmax(1))
    assert lines[HEAD_VALENCE_AROUSAL][1] == "1.000000,-1.000000"
    assert lines[HEAD_ACTION_UNITS][2] == ",".join(["1"] * 12)
    assert all(set(line.split(",")) <= {"0", "1"} for line in lines[HEAD_ACTION_UNITS][1:])
    assert paths[HEAD_EXPRESSION].endswith("EXPR/clip.txt") and paths[HEAD_ACTION_UNITS].endswith("AU/clip.txt")
    names, values = P.read_submission(paths[HEAD_VALENCE_AROUSAL], HEAD_VALENCE_AROUSAL)
    assert names == ["valence", "arousal"] and values.shape == (23, 2) and values.max() <= 1.0


def test_a_video_named_near_the_file_name_limit_gets_its_files(tmp_path):
    # A file name of 240 bytes (a video's "<stem>.mp4", legal on every file system) gives "<stem>.csv": legal too. Before,
    # each file was written under a temporary name 47 bytes longer, past the 255 bytes a name may have: the video was
    # decoded and predicted, then failed with "File name too long".
    stem = "v" * 120 + "\u00e9" * 58  # (é: two bytes in UTF-8, the file system's count.)
    assert len(f"{stem}.csv".encode()) == 240
    preds = make_predictions(3, stem=stem)
    P.write_csv(str(tmp_path / f"{stem}.csv"), preds)
    P.write_submission(str(tmp_path), preds)
    assert len(read_rows(tmp_path / f"{stem}.csv")) == 3
    assert len((tmp_path / "EXPR" / f"{stem}.txt").read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{stem}.csv", "AU", "EXPR", "VA"])


def test_a_video_name_that_is_not_utf8_gets_its_files(tmp_path):
    # A file name in Latin-1 ("caf\xe9.avi") reads back with a surrogate escape: its temporary name was cut by its
    # UTF-8 bytes, which such a name has not ("surrogates not allowed"), short or long.
    for stem in (os.fsdecode(b"caf\xe9"), os.fsdecode(b"v" * 200 + b"\xe9" * 30)):
        preds = make_predictions(3, stem=stem)
        P.write_csv(os.path.join(str(tmp_path), f"{stem}.csv"), preds)
        assert len(read_rows(pathlib.Path(os.path.join(str(tmp_path), f"{stem}.csv")))) == 3
    assert sorted(os.listdir(os.fsencode(str(tmp_path)))) == [b"caf\xe9.csv", b"v" * 200 + b"\xe9" * 30 + b".csv"]


def test_csv_has_one_row_per_frame_and_only_the_columns_of_the_model_heads(tmp_path):
    has_face = np.array([True, False, True, True, False])
    preds = make_predictions(5, heads=(HEAD_EXPRESSION,), has_face=has_face)
    path = P.write_csv(str(tmp_path / "clip.csv"), preds)
    rows = read_rows(path)
    assert len(rows) == 5
    header = list(rows[0])
    assert header[:8] == ["frame", "timestamp_s", "decoded", "has_face", "box_ymin", "box_xmin", "box_ymax",
                          "box_xmax"]
    assert header[8:] == [f"expr_{n}" for n in EXPR_NAMES] + ["expr_index", "expr_label"]
    assert [r["frame"] for r in rows] == ["1", "2", "3", "4", "5"] and rows[2]["timestamp_s"] == "0.080000"
    assert [r["has_face"] for r in rows] == ["1", "0", "1", "1", "0"]
    assert rows[1]["box_ymin"] == "" and float(rows[0]["box_xmax"]) == pytest.approx(0.7)
    best = int(preds.outputs[HEAD_EXPRESSION][3].argmax())
    assert rows[3]["expr_index"] == str(best) and rows[3]["expr_label"] == EXPR_NAMES[best]
    np.testing.assert_array_equal(P.read_frame_flags(path)["has_face"], has_face)
    assert not (tmp_path / "EXPR").exists()  # the CSV alone; write_submission writes the ABAW files


def test_csv_au_probabilities_stay_on_the_side_of_the_threshold_the_au_file_took(tmp_path):
    preds = make_predictions(1, heads=(HEAD_ACTION_UNITS,))
    preds.outputs[HEAD_ACTION_UNITS][0, :3] = [np.nextafter(np.float32(0.5), np.float32(0)), 0.5, 0.4999994]
    row = read_rows(P.write_csv(str(tmp_path / "clip.csv"), preds))[0]
    au_file = pathlib.Path(P.write_submission(str(tmp_path), preds)[HEAD_ACTION_UNITS]).read_text().splitlines()
    assert au_file[1].split(",")[:3] == ["0", "1", "0"]
    # Just under 0.5 printed "0.500000" next to a 0 in the AU file.
    assert [row[f"au_{n}"] for n in AU_NAMES[:3]] == ["0.499999", "0.500000", "0.499999"]


def test_csv_quotes_class_names_that_hold_a_comma_or_quote_and_abaw_headers_refuse_them(tmp_path):
    preds = make_predictions(6, heads=(HEAD_EXPRESSION,), has_face=[True, False] * 3)
    names = ["happy, excited", 'say "cheese"'] + EXPR_NAMES[2:]
    preds.label_names[HEAD_EXPRESSION] = names
    preds.outputs[HEAD_EXPRESSION][:, :2] += 10.0  # The two odd names are the labels.
    path = P.write_csv(str(tmp_path / "clip.csv"), preds)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][8:10] == ["expr_happy, excited", 'expr_say "cheese"'] and len(set(map(len, rows))) == 1
    assert {row[rows[0].index("expr_label")] for row in rows[1:]} <= {"happy, excited", 'say "cheese"'}
    np.testing.assert_array_equal(P.read_frame_flags(path)["has_face"], [True, False] * 3)
    with pytest.raises(P.PredictionFileError, match="'happy, excited' cannot go into an ABAW header: it holds a comma"):
        P.write_submission(str(tmp_path), preds)


# --------------------------------------------------------------------------------------------------
# Scoring against annotation files.


def test_scoring_counts_every_labelled_frame_reports_face_frames_and_what_was_not_scored(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    truth = [0, 4, 4, -1, 5, 5, 0, 4, 4, 4, 4, 4]  # 11 valid labels, the last two past the video's 10 frames
    abaw.write_annotation(ann, "expr", "validation", "clip", truth)
    abaw.write_annotation(ann, "expr", "validation", "not_predicted", [0, 0])
    abaw.write_annotation(ann, "expr", "train", "clip_train", [0, 0])
    abaw.write_annotation(ann, "va", "validation", "clip", [(0.5, -0.5)] * 4 + [(-5, -5)] * 2 + [(0.1, 0.2)] * 4)
    has_face = np.array([True] * 6 + [False] * 4)
    preds = make_predictions(10, heads=(HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL), has_face=has_face)
    probs = np.full((10, 8), 0.01, np.float32)
    labels = np.array(truth[:10])
    probs[np.arange(10), np.where(labels >= 0, labels, 1)] = 0.9
    probs[8] = 0.01
    probs[8, 1] = 0.9  # frame 9 wrong (Anger instead of Happiness), and it has no face
    preds.outputs[HEAD_EXPRESSION] = probs
    va = np.array([(0.5, -0.5)] * 4 + [(0.0, 0.0)] * 2 + [(0.1, 0.2)] * 4, np.float32)
    preds.outputs[HEAD_VALENCE_AROUSAL] = va + np.linspace(0, 0.01, 10)[:, None].astype(np.float32)
    P.write_submission(str(out), preds)
    P.write_csv(str(out / "clip.csv"), preds)

    scores = scoring.score_predictions(str(out), str(ann), split="validation")
    expr = scores[HEAD_EXPRESSION]
    assert expr["frames"] == 9 and expr["accuracy"] == pytest.approx(8 / 9)
    assert expr["with_face"]["frames"] == 5 and expr["with_face"]["accuracy"] == 1.0
    assert scores["beyond_predictions"][HEAD_EXPRESSION] == 2
    assert scores["without_predictions"] == {HEAD_EXPRESSION: ["validation/not_predicted"]}
    assert scores[HEAD_VALENCE_AROUSAL]["frames"] == 8
    assert scores[HEAD_VALENCE_AROUSAL]["ccc_mean"] > 0.99
    assert scores["videos_scored"] == 1
    # Each frame once per video, whichever heads scored it: 9 expression and 8 valence/arousal frames cover all 10.
    assert [(r["media_id"], r["frames"]) for r in scores["per_video"]] == [("clip", 10)]
    assert "1 annotated track(s) of the split have no prediction file" in scoring.format_scores(scores)
    # As the challenge scores a submission: the 2 frames past the video's end and the 2 of the track without a file
    # count as wrong (misses of their true class), next to the figure over the 9 predicted frames.
    every = scores["all_annotated"][HEAD_EXPRESSION]
    assert every["frames"] == 13 and every["accuracy"] == pytest.approx(8 / 13) and every["missed_frames"] == 4
    assert every["per_class"]["Neutral"]["recall"] == pytest.approx(2 / 4)  # frames 1, 7 right; 2 without a file
    assert every["macro_f1"] < expr["macro_f1"]
    # Its with_face block is over the 5 labelled frames with a face found (it held all 13 before).
    assert every["with_face"]["frames"] == 5 and every["with_face"]["accuracy"] == 1.0
    # 12 labelled lines of clip (expression or valence/arousal) + 2 of not_predicted; 10 of them predicted.
    assert scores["coverage"] == {"labelled_frames": 14, "scored_frames": 10, "coverage": round(10 / 14, 6),
                                  "not_scored": {"no_prediction_file": 2, "beyond_predictions": 2}}
    text = scoring.format_scores(scores)
    assert "over all 13 labelled frames of the split" in text and "10 of 14 labelled frames scored" in text
    # Each head says what a frame without a prediction is scored as: valence and arousal 0 is not "wrong".
    assert "(frames without a prediction count as wrong)" in text.splitlines()[0]
    va_line = next(line for line in text.splitlines() if line.startswith(HEAD_VALENCE_AROUSAL))
    assert "(frames without a prediction are scored as valence and arousal 0)" in va_line
    # Frames labelled only for a task the predictions have no head for (AU) count as labelled, not scored, as in
    # evaluate's coverage (they were left out of predict's denominator).
    abaw.write_annotation(ann, "au", "validation", "au_only", [[0] * 12] * 3)
    abaw.write_annotation(ann, "au", "validation", "clip", [[1] * 12] * 13)  # one frame past the expression lines
    scores = scoring.score_predictions(str(out), str(ann), split="validation")
    assert scores["coverage"]["labelled_frames"] == 14 + 3 + 1
    assert scores["coverage"]["not_scored"] == {"no_prediction_file": 2, "beyond_predictions": 2,
                                                "not_for_this_model": 4}


def test_scoring_refuses_a_prediction_header_that_differs_from_the_annotations(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    abaw.write_annotation(ann, "expr", "validation", "clip", [0, 1, 2], header=abaw.EXPR_HEADER_7)
    P.write_submission(str(out), make_predictions(3, heads=(HEAD_EXPRESSION,)))  # 8 classes
    with pytest.raises(P.PredictionFileError, match="differs from the annotations"):
        scoring.score_predictions(str(out), str(ann))


def test_score_command_says_in_one_line_when_nothing_can_be_scored(tmp_path, capsys):
    ann, out = tmp_path / "ann", tmp_path / "out"
    abaw.write_annotation(ann, "expr", "validation", "clip", [0, 1, 2])
    P.write_submission(str(out), make_predictions(3, heads=(HEAD_EXPRESSION,), stem="other"))
    assert cli.main(["score", "--predictions", str(out), "--annotations", str(ann)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "no prediction file under" in err and not (out / "scores.json").exists()
    assert cli.main(["score", "--predictions", str(out)]) == 2  # --annotations is required


# --------------------------------------------------------------------------------------------------
# Inputs.


def test_folders_are_searched_recursively_for_every_container_in_any_case(tmp_path):
    for name in ("a.MP4", "sub/b.Avi", "sub/deeper/c.mkv", "d.MoV", "notes.txt"):
        (tmp_path / "v" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "v" / name).write_bytes(b"listing only")
    single = tmp_path / "single.avi"
    single.write_bytes(b"listing only")
    found = videos.list_videos([str(tmp_path / "v"), str(single), str(single)])
    assert [p.split("/v/")[-1] if "/v/" in p else "single" for p in found] == [
        "a.MP4", "d.MoV", "sub/b.Avi", "sub/deeper/c.mkv", "single"]
    with pytest.raises(PredictError, match="does not exist"):
        videos.list_videos([str(tmp_path / "missing.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no video"):
        videos.list_videos([str(tmp_path / "empty")])


def test_a_folder_search_enters_each_folder_once_and_leaves_out_the_output_folder(tmp_path):
    # Three links back up the tree: before, the search followed them for ever (an exponential walk, no output).
    root = tmp_path / "t"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        os.symlink("..", root / name / "up")
    (root / "a" / "v.mp4").write_bytes(b"listing only")
    (root / "mine.3gp").write_bytes(b"listing only")  # A phone's container: listed (it was passed over unsaid).
    (root / "b" / "preds").mkdir()
    (root / "b" / "preds" / "v.mp4").write_bytes(b"a render of an earlier run")
    notes: list[str] = []
    found = videos.list_videos([str(root)], output=str(root / "b" / "preds"), notes=notes)
    assert found == [str(root / "a" / "v.mp4"), str(root / "mine.3gp")]
    assert sorted(n.split(str(root) + "/")[1] for n in notes) == [
        "a/up leads to a folder searched already (a link): not searched again",
        "b/preds is the --output folder: not searched for videos",
        "b/up leads to a folder searched already (a link): not searched again",
        "c/up leads to a folder searched already (a link): not searched again"]


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    # Before, os.walk's default left out a folder it could not list (no permission, an I/O error) without a word:
    # its videos were missing from the run, and the run ended with exit status 0.
    root = tmp_path / "v"
    (root / "locked").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"listing only")
    (root / "locked" / "b.mp4").write_bytes(b"listing only")
    real_scandir = os.scandir

    def scandir(path="."):  # (Root reads any folder whatever its mode: the refusal is made here.)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PredictError, match=r"cannot list 1 folder\(s\) under .*/v: .*/locked: Permission denied; "
                                           r"its videos would be missing from the run: nothing was read or written"):
        videos.list_videos([str(root)])


def test_a_folder_search_leaves_out_the_videos_an_earlier_run_rendered(tmp_path):
    # predict --render into V/preds, then predict --videos V into another folder: before, V/preds/a.mp4 (a copy of
    # V/a.mp4 with the predictions drawn on) was taken for a second video named a, and the run was refused ("share an
    # output name ... predict them into different --output folders", which would not help); a render without a
    # namesake was predicted as a video. The conversion's folder scan leaves them out by the folder's file list.
    from tfrecords_schema.prediction_files import ledger_text

    root = tmp_path / "v"
    (root / "preds").mkdir(parents=True)
    for name in ("a.mp4", "preds/a.mp4", "preds/b.mp4", "preds/mine.mp4"):
        (root / name).write_bytes(b"listing only")
    (root / "preds" / ownership.LEDGER_FILENAME).write_text(ledger_text(["a.csv", "a.mp4", "b.mp4", "EXPR/a.txt"]))
    for url in ("", "file://"):  # (The local search, and the URL one of gs:// and s3://.)
        notes: list[str] = []
        found = videos.list_videos([f"{url}{root}"], output=str(tmp_path / "other"), notes=notes)
        assert found == [f"{url}{root}/a.mp4", f"{url}{root}/preds/mine.mp4"]  # (mine.mp4: the user's, kept.)
        assert notes == [f"2 video(s) in {url}{root}/preds that affectstream predict --render wrote left out (its "
                         f"{ownership.LEDGER_FILENAME} lists them): a.mp4, b.mp4"]
    # Named as a file, a render is predicted as asked.
    assert videos.list_videos([str(root / "preds" / "b.mp4")]) == [str(root / "preds" / "b.mp4")]
    # A listed render replaced since (another size and time: a video of the user's put there under its name) is a video
    # again; one as the run wrote it is still left out.
    b = os.stat(root / "preds" / "b.mp4")
    (root / "preds" / ownership.LEDGER_FILENAME).write_text(
        ledger_text({"a.mp4": [1, 1], "b.mp4": [b.st_size, b.st_mtime_ns]}))
    notes = []
    assert videos.list_videos([str(root)], notes=notes) == [str(root / name) for name in ("a.mp4", "preds/a.mp4",
                                                                                         "preds/mine.mp4")]
    assert notes == [f"1 video(s) in {root / 'preds'} that affectstream predict --render wrote left out (its "
                     f"{ownership.LEDGER_FILENAME} lists them): b.mp4"]


def test_a_folder_search_leaves_out_macos_metadata_files_but_not_a_video_named_like_one(tmp_path):
    # A folder copied from a Mac holds "._a.mp4" beside "a.mp4" (AppleDouble metadata): each was predicted as a video
    # that does not open, and every such run exited 1. A video that happens to be named "._x.mp4" is still a video.
    root = tmp_path / "v"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"listing only")
    (root / "._a.mp4").write_bytes(videos.APPLE_DOUBLE_MAGIC + b"\x00\x02\x00\x00Mac OS X        ")
    (root / "._x.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # (an MP4's first bytes)
    notes: list[str] = []
    assert videos.list_videos([str(root)], notes=notes) == [str(root / "._x.mp4"), str(root / "a.mp4")]
    assert notes == [f"1 macOS metadata file(s) under {root} left out (AppleDouble '._' companions of a copy from a "
                     f"Mac, not videos): {root / '._a.mp4'}"]


def test_a_url_folder_search_leaves_out_an_output_folder_below_it_only(tmp_path):
    # file:// goes through the URL search (tf.io.gfile), as gs:// and s3:// do.
    root = tmp_path / "v"
    (root / "preds").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"listing only")
    (root / "preds" / "a.mp4").write_bytes(b"a render of an earlier run")
    url = f"file://{root}"
    notes: list[str] = []
    assert videos.list_videos([url], output=f"{url}/preds", notes=notes) == [f"{url}/a.mp4"]
    assert notes == [f"{url}/preds is the --output folder: not searched for videos"]
    # The output is the searched folder or above it (the CSVs next to the videos): everything below is searched, as
    # locally. Before, every folder was left out and the run stopped with "no video under folder".
    for output in (url, f"file://{tmp_path}"):
        notes = []
        assert videos.list_videos([url], output=output, notes=notes) == [f"{url}/a.mp4", f"{url}/preds/a.mp4"]
        assert not notes


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode (the tmpfs test below "
                    "covers it there)")
def test_an_output_this_user_cannot_write_is_refused_before_any_video_is_read(tmp_path, capsys):
    video = vf.write_face_video(tmp_path / "v" / "talk.mp4", [4] * 3)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert predict.run(["--model", str(tmp_path / "no_model"), "--videos", str(video), "--output",
                            str(locked / "out")]) == 2
        assert f"cannot be written: {locked} is not writable by this user" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_an_output_on_a_read_only_file_system_is_refused_before_any_video_is_read(tmp_path, capsys):
    video = vf.write_face_video(tmp_path / "v" / "talk.mp4", [4] * 3)
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        # Before: every video was decoded and predicted, then each failed to be written (rc 1).
        for output in (ro, ro / "sub"):
            argv = ["--model", str(tmp_path / "no_model"), "--videos", str(video), "--output", str(output)]
            assert predict.run(argv) == 2
            assert (f"--output {str(output)!r} cannot be written: {ro} is on a read-only file system; nothing was "
                    "read or written") in capsys.readouterr().err


def test_a_render_over_its_own_video_and_an_output_that_is_a_file_are_refused_before_any_work(tmp_path, capsys):
    video = vf.write_face_video(tmp_path / "v" / "talk.mp4", [4] * 3)
    before = video.read_bytes()
    # Checked before the model is loaded: a model that is not there is never reached.
    argv = ["--model", str(tmp_path / "no_model"), "--videos", str(video), "--render"]
    assert predict.run([*argv, "--output", str(tmp_path / "v")]) == 2
    assert "--render would write" in capsys.readouterr().err and video.read_bytes() == before
    # Renders into a folder --videos searches: a second run would take them for videos (and clash on their names).
    assert predict.run(["--model", str(tmp_path / "no_model"), "--videos", str(tmp_path / "v"), "--render",
                        "--output", str(tmp_path / "v")]) == 2
    assert "which --videos searches: the next run would take them for videos" in capsys.readouterr().err
    (tmp_path / "file").write_text("mine", encoding="utf-8")
    assert predict.run([*argv, "--output", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # A link to a folder that is not there (or a link loop): before, "FileExistsError: [Errno 17] File exists" (exit 1)
    # once the model was loaded.
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    os.symlink("loop", tmp_path / "loop")
    for name in ("dangling", "loop"):
        assert predict.run([*argv[:-1], "--output", str(tmp_path / name)]) == 2
        assert f"--output {str(tmp_path / name)!r} is a symbolic link to a folder that is not there (" in \
            capsys.readouterr().err
    # Annotations to score against that hold nothing of the split: said before any video, not after all of them.
    (tmp_path / "empty").mkdir()
    assert predict.run([*argv[:-1], "--output", str(tmp_path / "out"), "--annotations", str(tmp_path / "empty")]) == 2
    assert "no ABAW annotation files" in capsys.readouterr().err  # The adapter's own line, before any video.
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "talk", [4, 4, 4])  # A train split only.
    assert predict.run([*argv[:-1], "--output", str(tmp_path / "out"), "--annotations", str(tmp_path / "ann")]) == 2
    assert "holds no ABAW annotation file of the 'validation' split" in capsys.readouterr().err
    # A batch far past any speed-up: refused in one line (100,000 windows a call ended in a segmentation fault).
    assert predict.run([*argv, "--output", str(tmp_path / "out"), "--batch_size", "100000"]) == 2
    assert "--batch_size must be <= 1024" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert (tmp_path / "file").read_text(encoding="utf-8") == "mine"


def _write_files(paths, text="x"):
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)


def test_a_prediction_folder_replaces_only_the_files_the_tool_wrote_there(tmp_path):
    out = str(tmp_path / "out")
    planned = ownership.planned_files(out, ["a", "b"], ["EXPR"], render=True, scores=False)
    assert [os.path.relpath(p, out) for p in planned] == ["a.csv", "EXPR/a.txt", "a.png", "a.mp4", "b.csv",
                                                         "EXPR/b.txt", "b.png", "b.mp4", "predict_summary.json"]
    ownership.Ledger.read(out).check(planned)  # A new folder.
    _write_files([os.path.join(out, "a.csv")], "frame,label\n1,happy\n")  # The user's.
    with pytest.raises(PredictUsageError, match=r"--output .* holds 1 file\(s\) this run would replace that this tool "
                                                r"did not write, .*: .*a\.csv; nothing was read or written"):
        ownership.Ledger.read(out).check(planned)
    os.remove(os.path.join(out, "a.csv"))
    # A run of a and b where b's video fails: b's names were listed before any file was written, and leave the list
    # when the run ends, so a file of the user's put there later under one of them is refused.
    ledger = ownership.Ledger.read(out)
    ledger.record(planned)
    _write_files(planned[:4] + planned[-1:])
    ledger.finish(planned)
    assert set(ownership.Ledger.read(out).owned) == {"a.csv", "EXPR/a.txt", "a.png", "a.mp4", "predict_summary.json"}
    ownership.Ledger.read(out).check(planned)  # The next run replaces a's files.
    _write_files([planned[4]], "mine")
    with pytest.raises(PredictUsageError, match="b.csv"):
        ownership.Ledger.read(out).check(planned)
    os.remove(planned[4])
    # A file the tool wrote and the user then replaced (rm OUT/*, then a file of theirs under that name): not the
    # tool's any more. (Its time moves: set apart from the one the ledger holds, whatever the clock's resolution.)
    _write_files([planned[0]], "my own table")
    os.utime(planned[0], ns=(1, 1))
    with pytest.raises(PredictUsageError, match="a.csv"):
        ownership.Ledger.read(out).check(planned)
    os.remove(planned[0])
    # Two runs at once into one folder (one --side each): both keep their files listed. Each merges into the list as
    # it is on disk when it writes.
    left, right = (ownership.planned_files(out, [stem], ["EXPR"], render=False, scores=False)[:2]
                   for stem in ("duo_left", "duo_right"))
    first, second = ownership.Ledger.read(out), ownership.Ledger.read(out)
    first.record(left)
    second.record(right)
    _write_files(left + right)
    first.finish(left)
    second.finish(right)
    assert {"duo_left.csv", "EXPR/duo_left.txt", "duo_right.csv", "EXPR/duo_right.txt"} <= set(
        ownership.Ledger.read(out).owned)
    # An --output typed with a double slash lists the same names.
    ownership.Ledger.read(out + "//").record([out + "//c.csv"])
    assert "c.csv" in ownership.Ledger.read(out).owned and "/c.csv" not in ownership.Ledger.read(out).owned
    # A folder predicted into before the ledger existed: its summary names the files of its last run, whatever
    # spelling of the folder that run was given; the refusal of the others says an older version may have written them.
    legacy = tmp_path / "legacy"
    _write_files([str(legacy / name) for name in ("c.csv", "EXPR/c.txt", "d.csv")])
    (legacy / "predict_summary.json").write_text(json.dumps({"model": "m", "videos": [
        {"stem": "c", "csv": "../legacy/c.csv", "abaw": {"expression": "/elsewhere/legacy/EXPR/c.txt"}}]}))
    ledger = ownership.Ledger.read(str(legacy))
    assert set(ledger.owned) == {"c.csv", "EXPR/c.txt", "predict_summary.json"}
    ledger.check(ownership.planned_files(str(legacy), ["c"], ["EXPR"], render=False, scores=False))
    with pytest.raises(PredictUsageError, match="older version records only its last run's files.*d.csv"):
        ledger.check(ownership.planned_files(str(legacy), ["d"], ["EXPR"], render=False, scores=False))
    # A file of the ledger's name that is not one (not even UTF-8) is refused in one line.
    (legacy / ownership.LEDGER_FILENAME).write_bytes(b"\xff\xfe")
    with pytest.raises(PredictUsageError, match="is not the file list this tool writes"):
        ownership.Ledger.read(str(legacy))


def test_a_file_where_the_run_writes_a_folder_is_refused_before_any_work(tmp_path):
    # A file of the user's named like a head's folder (OUT/EXPR): before, every video was decoded and predicted, its
    # CSV written, and then each failed with "[Errno 17] File exists" (exit 1, its CSV left behind).
    out = tmp_path / "out"
    out.mkdir()
    (out / "EXPR").write_text("my notes")
    planned = ownership.planned_files(str(out), ["a"], ["EXPR", "VA"], render=False, scores=False)
    with pytest.raises(PredictUsageError, match=r"holds 1 file\(s\) where this run writes a folder: .*EXPR; nothing "
                                                r"was read or written"):
        ownership.Ledger.read(str(out)).check(planned)
    assert (out / "EXPR").read_text() == "my notes"


def test_output_names_carry_the_side_and_clashing_names_are_refused():
    assert videos.output_stems(["x/10-60-1280x720.mp4", "y/b.AVI"], "left") == ["10-60-1280x720_left", "b_left"]
    assert videos.output_stems(["gs://bucket/v/a.mp4"], None) == ["a"]
    with pytest.raises(PredictError, match="1 video\\(s\\) share an output name .*'a': x/a.mp4 and y/a.avi"):
        videos.output_stems(["x/a.mp4", "y/a.avi"], None)
    # Every clash at once (one a run, before), and names that differ only in case (one file on macOS or Windows).
    with pytest.raises(PredictError, match="2 video.*'b': x/b.mp4 and y/b.mkv; 'Case': x/case.mp4 and y/Case.mp4"):
        videos.output_stems(["x/b.mp4", "x/case.mp4", "y/b.mkv", "y/Case.mp4"], None)
    # The same name in two Unicode forms (an accent composed, or a letter and a combining accent): two files on
    # Linux, one on macOS, whose file systems do not tell the forms apart. Before, both were written.
    with pytest.raises(PredictError, match="1 video.*share an output name"):
        videos.output_stems(["x/caf\u00e9.mp4", "y/cafe\u0301.mp4"], None)


def test_help_documents_every_option():
    text = predict.build_parser().format_help()
    for option in ("--model", "--videos", "--output", "--side", "--no_face", "--smooth", "--batch_size", "--render",
                   "--annotations", "--score_split", "--progress_every"):
        assert option in text
    assert "interpolate" in text and "EXPR|VA|AU" in text


# --------------------------------------------------------------------------------------------------
# End to end with a trained export.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo dataset at a small size, converted with the demo's settings, a multi-task model trained briefly."""
    root = tmp_path_factory.mktemp("predict_e2e")
    made = demo_data.make_demo_dataset(str(root / "src"), frames_per_video=60, num_train_videos=2)
    records = root / "records"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run(["--videos", made["videos"], "--annotations", made["annotations"], "--output",
                          str(records), *demo.DEMO_CONVERT_FLAGS, "--runner", "DirectRunner",
                          "--direct_running_mode", "in_memory", "--progress_every", "0"])
    assert rc == 0
    job = root / "job"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = train.run(["--data", str(records), "--job_dir", str(job), "--epochs", "1", "--steps_per_epoch", "12",
                        "--log_every", "100", *demo.DEMO_TRAIN_FLAGS, "--task", "multi"])
    assert rc == 0
    model_info = json.loads((job / "export" / "model_info.json").read_text())
    info = read_dataset_info(str(records))
    # The export names the face stage that made its crops: predict rebuilds exactly that one.
    assert model_info["face_stage"] == FaceStageConfig.from_dict({**info.options, "crop_size": info.crop_size}).to_dict()
    validation = sorted((v for v in demo_data.demo_videos(2) if "validation" in (v.expr_split, v.va_split, v.au_split)),
                        key=lambda v: v.media)
    return {"made": made, "records": str(records), "export": str(job / "export"), "root": root,
            "validation_videos": [f"{made['videos']}/{v.media}" for v in validation if len(v.subjects) == 1],
            "two_person_videos": [f"{made['videos']}/{v.media}" for v in validation if len(v.subjects) == 2]}


def run_predict(args) -> int:
    return predict.run([*args, "--progress_every", "0"])


# Tolerance of the consistency test. Both paths crop with the same face stage and JPEG-encode the crop the
# same way (the records hold encode_jpeg(crop); predict decodes encode_jpeg(crop) with the trainer's decode),
# and both cut windows of seq_len frames from frame 1 (the clip length 32 is a multiple of seq_len 4), so the
# model sees the same pixels. What may differ is float rounding between batch compositions (and valence/arousal
# written with 6 decimals): far below one frame's decision. Frame counts must match exactly.
METRIC_TOLERANCE = 1e-3


def test_predict_on_validation_videos_scores_like_evaluate_on_the_converted_split(trained, tmp_path):
    eval_dir = tmp_path / "eval"
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.run(["--model", trained["export"], "--data", trained["records"],
                             "--report_dir", str(eval_dir)]) == 0
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["face_stage_differs"] == {}  # Trained on this conversion: its export records the data's stage.
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", *trained["validation_videos"], "--output", str(out)]) == 0
    for side in ("left", "right"):  # each person of the two-person validation video
        assert run_predict(["--model", trained["export"], "--videos", *trained["two_person_videos"], "--output",
                            str(out), "--side", side]) == 0
    # The split was predicted by three runs (the two people of the two-person video one run each): scored whole by
    # `affectstream score`.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli.main(["score", "--predictions", str(out), "--annotations", trained["made"]["annotations"]]) == 0
    scored = json.loads((out / "scores.json").read_text())
    assert scored["videos_scored"] == len(trained["validation_videos"]) + 2 and not scored["without_predictions"]
    assert f"scores of {scored['videos_scored']} track(s)" in printed.getvalue()
    for head, metric in (("expression", "macro_f1"), ("expression", "accuracy"), ("valence_arousal", "ccc_valence"),
                         ("valence_arousal", "ccc_arousal"), ("action_units", "mean_f1")):
        assert scored[head]["frames"] == evaluated[head]["frames"], head
        assert scored[head]["with_face"]["frames"] == evaluated[head]["with_face"]["frames"], head
        assert scored[head][metric] == pytest.approx(evaluated[head][metric], abs=METRIC_TOLERANCE), (head, metric)
        assert scored[head]["with_face"][metric] == pytest.approx(evaluated[head]["with_face"][metric],
                                                                  abs=METRIC_TOLERANCE), (head, metric)
    info = read_dataset_info(trained["records"])
    acc = info.splits["validation"].accounting
    assert scored["expression"]["frames"] == acc.written_frames_with_face + acc.written_frames_without_face
    # What the figures cover: every labelled frame of the split, scored or not (here the annotation lines past the
    # end of a video), in evaluate as in predict.
    coverage = evaluated["coverage"]
    assert coverage["labelled_frames"] == acc.labelled_frames == coverage["scored_frames"] + sum(
        coverage["not_scored"].values())
    assert coverage["not_scored"] == {k: v for k, v in acc.dropped.items() if v}
    assert scored["coverage"]["scored_frames"] == coverage["scored_frames"]
    assert scored["coverage"]["labelled_frames"] == coverage["labelled_frames"]


def test_what_cannot_be_scored_is_said_before_any_video(trained, tmp_path, capsys):
    # The two-person validation video without --side: its output name is no annotated track (its people are annotated
    # as _left and _right). This failed after every video had been predicted, and no summary was written.
    ann = trained["made"]["annotations"]
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", *trained["two_person_videos"], "--output", str(out),
                        "--annotations", ann]) == 2
    err = capsys.readouterr().err
    assert "is a track of split 'validation' annotated for expression, valence_arousal, action_units" in err, err
    assert "annotated as _left and _right tracks, predict each with --side" in err
    assert not (out / "EXPR").exists() and not (out / predict.SUMMARY_FILENAME).exists()
    # With a validation video, the run goes on: the other output is named as predicted and not scored.
    assert run_predict(["--model", trained["export"], "--videos", trained["validation_videos"][0],
                        *trained["two_person_videos"], "--output", str(out), "--annotations", ann]) == 0
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert any("1 of the 2 outputs are no track of split 'validation'" in n for n in summary["notes"]), summary["notes"]
    assert "scores" in summary
    # Every scorable video failed: nothing to score at the end, and the summary is written all the same.
    stem = pathlib.Path(trained["validation_videos"][0]).stem
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / f"{stem}.mp4").write_bytes(b"not a video")
    assert run_predict(["--model", trained["export"], "--videos", str(tmp_path / "broken" / f"{stem}.mp4"),
                        "--output", str(tmp_path / "pred2"), "--annotations", ann]) == 1
    summary = json.loads((tmp_path / "pred2" / predict.SUMMARY_FILENAME).read_text())
    assert "nothing to score" in summary["scores_error"] and len(summary["failed"]) == 1


def test_check_scorable_refuses_heads_and_label_names_the_annotations_do_not_score():
    import types

    tracks = [types.SimpleNamespace(media_id="a", tasks=("expr",)), types.SimpleNamespace(media_id="b", tasks=("au",))]
    found = types.SimpleNamespace(tasks=["expr", "au"], label_names={HEAD_EXPRESSION: EXPR_NAMES,
                                                                      HEAD_ACTION_UNITS: ["AU1", "AU20"]})
    annotated = (None, found, tracks)
    names = {HEAD_EXPRESSION: EXPR_NAMES, HEAD_VALENCE_AROUSAL: ["valence", "arousal"], HEAD_ACTION_UNITS: AU_NAMES}
    with pytest.raises(ValueError, match="the model predicts valence_arousal, and the 'validation' split of the "
                                         "annotations annotates au, expr"):
        scoring.check_scorable(annotated, "validation", [HEAD_VALENCE_AROUSAL], names, ["a"])
    with pytest.raises(ValueError, match=r"action_units labels \(AU1,AU20\) are not the model's"):
        scoring.check_scorable(annotated, "validation", [HEAD_ACTION_UNITS], names, ["b"])
    with pytest.raises(ValueError, match="expression labels .* are not the model's"):
        scoring.check_scorable(annotated, "validation", [HEAD_EXPRESSION], {HEAD_EXPRESSION: EXPR_NAMES[:7]}, ["a"])
    # "b" is annotated, but not for the model's head.
    with pytest.raises(ValueError, match=r"none of the run's outputs \(b\) is a track of split 'validation'"):
        scoring.check_scorable(annotated, "validation", [HEAD_EXPRESSION], names, ["b"])
    assert scoring.check_scorable(annotated, "validation", [HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL], names,
                                  ["a", "b"]) == [
        "1 of the 2 outputs are no track of split 'validation' annotated for expression: predicted, not scored (b)",
        "the 'validation' split of the annotations does not annotate valence_arousal: scored on expression"]
    # A head the annotations hold in another split only: said too (it was scored as 0 over 0 frames at the end).
    train_au = (None, types.SimpleNamespace(tasks=["expr", "au"], label_names=found.label_names), tracks[:1])
    assert scoring.check_scorable(train_au, "validation", [HEAD_EXPRESSION, HEAD_ACTION_UNITS], names, ["a"]) == [
        "the 'validation' split of the annotations does not annotate action_units: scored on expression"]


def test_cropped_aligned_on_a_face_stage_export_says_the_crops_differ_from_training(trained, tmp_path, capsys):
    video = vf.write_face_video(tmp_path / "v.avi", [4] * 4)
    crops = abaw.write_crops_dir(tmp_path / "crops", "v")
    for i in (1, 2, 3):
        cv2.imwrite(str(crops / f"{i:05d}.jpg"), vf.face_frame(4)[8:112, 28:132])
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(out),
                        "--cropped_aligned", str(tmp_path / "crops")]) == 0
    assert "differ from the model's training crops" in capsys.readouterr().out
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert summary["crops"] == {"source": "provided", "trained_on": "face_stage", "matches_training": False}
    assert [r["has_face"] for r in read_rows(out / "v.csv")] == ["1", "1", "1", "0"]


def count_decoded_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_every_decoded_frame_gets_a_line_in_every_file_and_render_writes_video_and_plot(trained, tmp_path):
    video = trained["validation_videos"][0]
    stem = video.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", video, "--output", str(out), "--no_face",
                        "interpolate", "--smooth", "5", "--render", "--batch_size", "3"]) == 0
    frames = count_decoded_frames(video)
    assert frames == 60
    for task in ("EXPR", "VA", "AU"):
        assert len((out / task / f"{stem}.txt").read_text().splitlines()) == frames + 1
    rows = read_rows(out / f"{stem}.csv")
    assert len(rows) == frames and rows[-1]["frame"] == str(frames)
    assert 0 < sum(r["has_face"] == "1" for r in rows) < frames  # the demo face leaves the picture
    rendered = cv2.VideoCapture(str(out / f"{stem}.mp4"))
    assert rendered.get(cv2.CAP_PROP_FRAME_COUNT) == frames and rendered.read()[0]
    rendered.release()
    assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # The render has the mode of every other output (not 0600).
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert summary["no_face"] == "interpolate" and summary["smooth"] == 5 and summary["failed"] == []


def test_side_picks_the_face_on_that_side_of_a_two_person_video(trained, tmp_path):
    video = vf.write_two_face_video(tmp_path / "duo.avi", 12)
    out = tmp_path / "pred"
    for side in ("left", "right"):
        assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(out),
                            "--side", side]) == 0
    centres = {}
    for side in ("left", "right"):
        rows = read_rows(out / f"duo_{side}.csv")
        assert len(rows) == 12 and all(r["has_face"] == "1" for r in rows)
        centres[side] = np.mean([(float(r["box_xmin"]) + float(r["box_xmax"])) / 2 for r in rows])
        assert len((out / "EXPR" / f"duo_{side}.txt").read_text().splitlines()) == 13
    assert centres["left"] < 0.5 < centres["right"]
    # The folder's files are the tool's over both runs: predicting one side again replaces its files. A file of the
    # user's with a name the run writes is refused before any video, and left as it was.
    assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(out),
                        "--side", "left"]) == 0
    (out / "duo_right.png").write_bytes(b"my picture")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(out),
                        "--side", "right", "--render"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_folder_with_mixed_case_extensions_is_predicted_and_an_unreadable_video_is_a_counted_failure(trained,
                                                                                                          tmp_path):
    folder = tmp_path / "videos"
    vf.write_face_video(folder / "one.AVI", [4] * 5)
    vf.write_face_video(folder / "nested" / "two.Mp4", [5] * 7)
    (folder / "broken.mp4").write_bytes(b"")
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", str(folder), "--output", str(out)]) == 1
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert sorted((v["stem"], v["frames"]) for v in summary["videos"]) == [("one", 5), ("two", 7)]
    assert [f["video"].rsplit("/", 1)[-1] for f in summary["failed"]] == ["broken.mp4"]
    assert summary["failed"][0]["error"] == "zero-byte file"  # The path is the entry's "video", not said twice.
    assert len((out / "VA" / "two.txt").read_text().splitlines()) == 8


def test_an_export_without_the_face_stage_is_a_clear_error(trained, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(trained["export"], export)
    info = json.loads((export / "model_info.json").read_text())
    del info["face_stage"]
    (export / "model_info.json").write_text(json.dumps(info))
    video = vf.write_face_video(tmp_path / "v.avi", [0, 0])
    assert run_predict(["--model", str(export), "--videos", str(video), "--output", str(tmp_path / "o")]) == 1
    assert "export made before face_stage was recorded; re-export" in capsys.readouterr().err


def test_frames_that_do_not_decode_keep_their_lines_without_a_face(trained, tmp_path):
    video = vf.write_face_video(tmp_path / "v.avi", [4] * 9)
    vf.corrupt_mjpeg_frames(video, [4, 5])
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(out)]) == 0
    rows = read_rows(out / "v.csv")
    assert [r["frame"] for r in rows] == [str(i) for i in range(1, 10)]
    assert [r["decoded"] for r in rows] == ["1", "1", "1", "0", "0", "1", "1", "1", "1"]
    assert rows[3]["has_face"] == rows[4]["has_face"] == "0" and rows[2]["has_face"] == "1"
    assert len((out / "EXPR" / "v.txt").read_text().splitlines()) == 10


def test_videos_and_outputs_on_s3(trained, tmp_path, s3_server):
    s3_server.client.upload_file(str(vf.write_face_video(tmp_path / "clip.avi", [4] * 6)), s3_server.bucket,
                                 "in/sub/clip.AVI")
    # A subprocess: tensorflow-io's S3 file system aborts the interpreter at exit (tfrecords_schema.filesystems).
    done = subprocess.run(
        [sys.executable, "-m", "trainer.prediction.predict", "--model", trained["export"], "--videos",
         f"s3://{s3_server.bucket}/in", "--output", f"s3://{s3_server.bucket}/out", "--progress_every", "0"],
        check=False, cwd=REPO, env={**os.environ, **s3_server.tf_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert s3_server.keys("out/") == ["out/.affectstream-predict-files.json", "out/AU/clip.txt", "out/EXPR/clip.txt",
                                      "out/VA/clip.txt", "out/clip.csv", "out/predict_summary.json"]
    text = s3_server.client.get_object(Bucket=s3_server.bucket, Key="out/EXPR/clip.txt")["Body"].read().decode()
    assert len(text.splitlines()) == 7
    # The same with --workers 2: each worker process registers s3:// itself (every video failed with "File system
    # scheme 's3' not implemented").
    s3_server.client.upload_file(str(vf.write_face_video(tmp_path / "other.avi", [4] * 4)), s3_server.bucket,
                                 "in/other.avi")
    done = subprocess.run(
        [sys.executable, "-m", "trainer.prediction.predict", "--model", trained["export"], "--videos",
         f"s3://{s3_server.bucket}/in", "--output", f"s3://{s3_server.bucket}/out2", "--progress_every", "0",
         "--workers", "2"],
        check=False, cwd=REPO, env={**os.environ, **s3_server.tf_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "out2/EXPR/clip.txt" in s3_server.keys("out2/") and "out2/EXPR/other.txt" in s3_server.keys("out2/")
    assert "2 track(s) predicted, 0 failed" in done.stdout
    # An --output in a bucket that does not exist: refused before any video (each video was decoded, then failed).
    done = subprocess.run(
        [sys.executable, "-m", "trainer.prediction.predict", "--model", trained["export"], "--videos",
         f"s3://{s3_server.bucket}/in", "--output", "s3://no-such-bucket/preds", "--progress_every", "0"],
        check=False, cwd=REPO, env={**os.environ, **s3_server.tf_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert "--output 's3://no-such-bucket/preds' cannot be written" in done.stderr and "track(s)" not in done.stdout
    assert not any(".affectstream-write-probe-" in key for key in s3_server.keys())  # the probe is gone


# --------------------------------------------------------------------------------------------------
# Phone video, variable frame rate, damaged and repeated inputs, earlier runs' files (issue 20).


def _face_frames(n: int) -> list[np.ndarray]:
    from affectstream.synthetic_faces import FaceSpec, render_frame

    return [render_frame(120, 160, [FaceSpec(cx=60, cy=60, size=80, expression=4)], noise_seed=i) for i in range(n)]


def test_phone_video_is_predicted_upright_at_the_times_its_frames_are_shown(trained, tmp_path):
    import mp4_boxes

    upright = _face_frames(12)
    vf.write_container_video(tmp_path / "v" / "upright.mp4", upright)
    turned = [np.ascontiguousarray(np.rot90(f, k=-1)) for f in upright]  # Stored turned clockwise, shown upright.
    mp4_boxes.set_display_rotation(vf.write_container_video(tmp_path / "v" / "sideways.mp4", turned), 90)
    durations = [1 / 30] * 6 + [4 / 30] * 6
    mp4_boxes.set_frame_durations(vf.write_container_video(tmp_path / "v" / "vfr.mp4", upright, fps=30), durations)
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", str(tmp_path / "v"), "--output", str(out)]) == 0
    rows = {stem: read_rows(out / f"{stem}.csv") for stem in ("upright", "sideways", "vfr")}
    assert all(r["has_face"] == "1" for r in rows["sideways"])
    box = ("box_ymin", "box_xmin", "box_ymax", "box_xmax")
    np.testing.assert_allclose([[float(r[k]) for k in box] for r in rows["sideways"]],
                               [[float(r[k]) for k in box] for r in rows["upright"]], atol=0.03)
    shown = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    np.testing.assert_allclose([float(r["timestamp_s"]) for r in rows["vfr"]], shown, atol=1e-6)
    summary = {v["stem"]: v for v in json.loads((out / predict.SUMMARY_FILENAME).read_text())["videos"]}
    assert summary["sideways"]["rotation"] == 270 and summary["upright"]["rotation"] == 0
    assert summary["vfr"]["variable_frame_rate"] and not summary["upright"]["variable_frame_rate"]
    # A variable-rate video's fps: the average over the times its frames are shown (11 intervals in 26/30 s).
    assert summary["vfr"]["fps"] == pytest.approx(11 * 30 / 26, abs=1e-3) and summary["upright"]["fps"] == vf.FPS


def test_a_truncated_video_is_warned_and_counted_and_a_video_named_twice_is_predicted_once(trained, tmp_path,
                                                                                          capsys, monkeypatch):
    videos = tmp_path / "videos"
    vf.truncate_file(vf.write_face_video(videos / "cut.avi", [4] * 30, fps=30), 0.5)
    vf.write_face_video(videos / "once.avi", [4] * 4)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pred"
    assert run_predict(["--model", trained["export"], "--videos", str(videos / "once.avi"), "videos/once.avi",
                        str(videos), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    cut = {v["stem"]: v for v in summary["videos"]}["cut"]
    assert cut["truncated"] and cut["declared_frames"] == 30 and 0 < cut["frames"] < 30
    assert summary["truncated_videos"] == 1
    assert f"[predict] warning: {videos / 'cut.avi'}: truncated? the container declares 30 frames, " \
           f"{cut['frames']} decode (a cut file, or frames lost inside it" in err
    assert sorted(v["stem"] for v in summary["videos"]) == ["cut", "once"]
    assert summary["duplicates"] == [f"videos/once.avi is the same video as {videos / 'once.avi'}: predicted once",
                                     f"{videos / 'once.avi'} is the same video as {videos / 'once.avi'}: predicted once"]
    assert err.count("is the same video as") == 2


def test_a_run_interrupted_part_way_leaves_the_names_it_did_not_write_free(trained, tmp_path, monkeypatch):
    # Ctrl-C during the second video: before, the names the run listed as its own before writing anything (so that a
    # run killed part-way leaves its files the tool's) stayed listed for the videos it never wrote, and a file of the
    # user's put there afterwards under one of them was replaced by the next run without a word.
    folder = tmp_path / "videos"
    for name in ("a", "b"):
        vf.write_face_video(folder / f"{name}.avi", [4] * 4)
    out = tmp_path / "pred"
    real = predict.predict_video

    def interrupted(crops, stem, *args, **kwargs):
        if stem == "b":
            raise KeyboardInterrupt
        return real(crops, stem, *args, **kwargs)

    monkeypatch.setattr(predict, "predict_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_predict(["--model", trained["export"], "--videos", str(folder), "--output", str(out)])
    monkeypatch.setattr(predict, "predict_video", real)
    assert (out / "a.csv").exists() and not (out / "b.csv").exists()
    (out / "b.csv").write_text("my own table")
    assert run_predict(["--model", trained["export"], "--videos", str(folder), "--output", str(out)]) == 2
    assert (out / "b.csv").read_text() == "my own table"
    (out / "b.csv").unlink()  # The files the interrupted run wrote stay the tool's: the next run replaces them.
    assert run_predict(["--model", trained["export"], "--videos", str(folder), "--output", str(out)]) == 0


def test_annotations_score_only_the_predictions_of_this_run(trained, tmp_path):
    first, second = trained["validation_videos"][:2]
    stem = lambda video: video.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # noqa: E731
    out = tmp_path / "pred"
    # An earlier run, by another model, left files for the second video in the same folder.
    old = make_predictions(60, stem=stem(second), seed=5)
    old.label_names[HEAD_ACTION_UNITS] = AU_NAMES
    P.write_submission(str(out), old)
    P.write_csv(str(out / f"{stem(second)}.csv"), old)
    assert run_predict(["--model", trained["export"], "--videos", first, "--output", str(out),
                        "--annotations", trained["made"]["annotations"]]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["videos_scored"] == 1
    assert [row["media_id"] for row in scores["per_video"]] == [stem(first)]


@pytest.mark.parametrize("batch_size, runtime", [("3", "tensorflow"), ("16", "tflite")])
def test_workers_write_the_same_files_as_one_worker(trained, tmp_path, batch_size, runtime):
    """--workers 2: face stages in two processes, the model fed across videos; every file as with one worker, a
    video that fails reported the same way, on either runtime (the export's TF Lite copy is made for 16 windows a
    call)."""
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"not a video at all")
    videos_in = [*trained["validation_videos"], str(broken)]
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = run_predict(["--model", trained["export"], "--videos", *videos_in, "--output", str(out),
                                "--workers", str(workers), "--batch_size", batch_size, "--runtime", runtime])
        assert code == 1 and "broken.mp4" in err.getvalue()  # the broken video fails, the others are written
        outputs[workers] = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        summary = json.loads(outputs[workers].pop(predict.SUMMARY_FILENAME))
        # The list of the files written: the same names (their sizes and times differ between runs).
        outputs[workers]["ledger"] = sorted(json.loads(outputs[workers].pop(ownership.LEDGER_FILENAME))["files"])
        assert summary["workers"] == workers and [f["stem"] for f in summary["failed"]] == ["broken"]
        assert summary["runtime"]["name"] == runtime
        videos = [{k: v for k, v in video.items() if k != "seconds"} for video in summary["videos"]]
        outputs[workers]["videos"] = json.loads(json.dumps(videos).replace(str(out), "OUT"))
    assert len(outputs[1]["videos"]) == len(trained["validation_videos"]) >= 2
    assert sorted(outputs[1]) == sorted(outputs[2])
    assert outputs[1]["videos"] == outputs[2]["videos"]
    assert [name for name in outputs[1] if outputs[1][name] != outputs[2][name]] == []


# The start of the scripts below: a pool of one worker on the video sys.argv[1], its results queue {chunks} chunks long.
ONE_WORKER_POOL = """
import os, signal, sys, time
from beam_jobs.faces.stage import FaceStageConfig
from trainer.prediction import parallel
from trainer.prediction.crops import CROPS_FACE_STAGE, ServedCrops
from trainer.prediction.videos import Track
parallel.QUEUE_CHUNKS_PER_WORKER = {chunks}
served = ServedCrops(CROPS_FACE_STAGE, FaceStageConfig(crop_size=32), 32, 90, "jpeg")
tracks = [Track(sys.argv[1], "v")]
with parallel.WorkerPool(1, served) as pool:
"""
# A worker pool of one worker on one video. "kill": the script reads nothing (its worker fills the results queue and
# waits to send more), prints the worker's pid and kills itself (SIGKILL: what the out-of-memory killer sends).
# "int": once the first crops are in, the worker, still decoding, gets a SIGINT (the Ctrl-C that reaches every process
# of the terminal's group); the script reads on and prints how the video ended.
BLOCKED_WORKER = ONE_WORKER_POOL.format(chunks=1) + """\
    pool.run(tracks)
    worker = pool._processes[0].pid
    if sys.argv[2] == "kill":
        while not pool._results.full():
            time.sleep(0.05)
        time.sleep(1.0)  # (The worker has decoded its next chunk and waits to send it.)
        print(worker, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    messages = pool.results(tracks)
    next(messages)
    os.kill(worker, signal.SIGINT)
    print([kind for kind, _, _ in messages][-1], flush=True)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"  # (A zombie waits for its reaper: it is gone.)
    except FileNotFoundError:
        return True


def _assert_the_worker_ends_with_the_killed_script(script_text: str, *args) -> None:
    """Runs ``script_text`` (it prints its worker's pid, then kills itself) and checks that the worker ends within
    15 s; a worker left behind is killed here."""
    # (The worker holds the script's stdout too: its first line is read, not its end.)
    with subprocess.Popen([sys.executable, "-c", script_text, *map(str, args)], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as script:
        worker = int(script.stdout.readline())
        assert script.wait(timeout=120) == -9
    deadline = time.monotonic() + 15
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert _gone(worker), "the worker outlived the run that was killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, 9)


def test_workers_end_when_the_run_is_killed_and_leave_ctrl_c_to_it(tmp_path):
    """A worker waiting to send its crops to a parent that was killed (SIGKILL, out of memory) waited for ever: the
    workers, the fork server and the resource tracker stayed behind. A Ctrl-C, which reaches the workers too, printed
    a KeyboardInterrupt traceback from each worker busy decoding, while the parent stopped the run on its own."""
    video = vf.write_face_video(tmp_path / "long.avi", [4] * 1500)
    _assert_the_worker_ends_with_the_killed_script(BLOCKED_WORKER, video, "kill")
    # (SIGINT at its default: a shell's background job, and so this test, may have inherited it ignored.)
    done = subprocess.run([sys.executable, "-c", BLOCKED_WORKER, str(video), "int"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 0 and done.stdout.split() == ["done"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr[-2000:]


# A worker pool of one worker on one video, its results queue never full: the worker queues its whole video (more than
# the pipe holds: the queue's feeder thread waits to write the rest), gets its stop, and ends; the script, reading
# nothing, prints the worker's pid and kills itself.
QUEUED_WORKER = ONE_WORKER_POOL.format(chunks=1000) + """\
    pool.run(tracks)
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 3.0:  # (Until the worker has queued its last message.)
        if pool._results.qsize() != last:
            last, since = pool._results.qsize(), time.monotonic()
        time.sleep(0.1)
    print(pool._processes[0].pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_that_queued_its_last_crops_ends_when_the_run_is_killed(tmp_path):
    """Its queue not full, a worker is never kept waiting by :func:`parallel._send`: it ends once its stop comes, and
    at exit multiprocessing hands over what the queue's feeder thread still holds, which waited for ever on a parent
    killed before reading it."""
    video = vf.write_face_video(tmp_path / "long.avi", [4] * 1500)
    _assert_the_worker_ends_with_the_killed_script(QUEUED_WORKER, video)


# --------------------------------------------------------------------------------------------------
# The TF Lite runtime: the export's checked copy, run without importing TensorFlow.


def test_the_export_has_a_tflite_copy_that_serves_what_the_keras_model_serves(trained):
    import keras
    import tensorflow as tf

    from tfrecords_schema import decode_clip
    from trainer.input.frames import decode_frames
    from trainer.model.lite import MAX_DIFFERENCE, SERVING_BATCH
    from trainer.prediction.serving import LiteWindowPredictor, WindowPredictor

    model_info = json.loads((pathlib.Path(trained["export"]) / "model_info.json").read_text())
    lite = model_info["tflite"]
    assert lite["file"] == "serving.tflite" and (pathlib.Path(trained["export"]) / lite["file"]).is_file()
    assert (lite["batch_size"], lite["window"], lite["crop_size"]) == (SERVING_BATCH, model_info["seq_len"],
                                                                       model_info["crop_size"])
    assert 0 <= lite["max_difference"] <= MAX_DIFFERENCE
    # Real crops of the converted validation split, in windows of seq_len (the last one short: padding).
    shard = sorted(pathlib.Path(trained["records"]).glob("validation/*.tfrecord*"))[0]
    crops = [image for record in tf.data.TFRecordDataset(str(shard)).take(2)
             for image in decode_clip(record.numpy()).images]
    seq_len, size = model_info["seq_len"], model_info["crop_size"]
    windows = [crops[i:i + seq_len] for i in range(0, len(crops), seq_len)][:SERVING_BATCH - 1]
    windows[-1] = windows[-1][:seq_len - 1]
    heads = model_info["heads"]
    lite_predictor = LiteWindowPredictor(str(pathlib.Path(trained["export"]) / lite["file"]), lite["outputs"], heads,
                                         seq_len, size, SERVING_BATCH)
    assert sorted(lite["outputs"]) == sorted(heads)
    # OpenCV's JPEG decode there is the trainer's decode, pixel for pixel.
    for window in windows[:3]:
        frames = np.zeros((SERVING_BATCH, seq_len, size, size, 3), np.uint8)
        for j, crop in enumerate(window):
            lite_predictor._decode(crop, frames[0, j])
        expected = decode_frames({"image": tf.constant(window + [b""] * (seq_len - len(window))),
                                  "num_valid": tf.constant(len(window))}, size, seq_len)
        np.testing.assert_array_equal(frames[0], expected.numpy())
    model = keras.saving.load_model(str(pathlib.Path(trained["export"]) / "model.keras"), compile=False)
    keras_outputs = WindowPredictor(model, heads, seq_len, size, SERVING_BATCH)(windows)
    lite_outputs = lite_predictor(windows)
    for head in heads:
        assert lite_outputs[head].shape == keras_outputs[head].shape == (sum(map(len, windows)),
                                                                        keras_outputs[head].shape[1])
        np.testing.assert_allclose(lite_outputs[head], keras_outputs[head], atol=1e-4)


PREDICT_WITHOUT_TENSORFLOW = """
import json, sys
from trainer.prediction import predict
code = predict.run(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def test_predict_on_the_tflite_copy_never_imports_tensorflow_and_matches_the_keras_runtime(trained, tmp_path):
    video = trained["validation_videos"][0]
    stem = pathlib.Path(video).stem
    rows = {}
    for runtime, workers in (("auto", "2"), ("tensorflow", "1")):
        out = tmp_path / runtime
        # (No GPU for this process: auto would take TensorFlow on a machine with one.)
        done = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TENSORFLOW, "--model", trained["export"],
                               "--videos", video, "--output", str(out), "--runtime", runtime, "--workers", workers,
                               "--progress_every", "0"], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["code"] == 0, done.stderr[-2000:]
        assert result["tensorflow_imported"] == (runtime == "tensorflow")
        summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
        assert summary["runtime"]["name"] == ("tflite" if runtime == "auto" else "tensorflow")
        rows[runtime] = read_rows(out / f"{stem}.csv")
    assert len(rows["auto"]) == len(rows["tensorflow"]) > 0
    for lite_row, keras_row in zip(rows["auto"], rows["tensorflow"]):
        assert lite_row.keys() == keras_row.keys()
        for name, value in lite_row.items():
            if name.startswith(("expr_", "au_")) and name not in ("expr_index", "expr_label"):
                assert float(value) == pytest.approx(float(keras_row[name]), abs=1e-4), name
            elif name in ("valence", "arousal"):
                assert float(value) == pytest.approx(float(keras_row[name]), abs=2e-6 + 1e-4), name
            elif name not in ("expr_index", "expr_label"):  # the frame's facts: the same crops, the same frames
                assert value == keras_row[name], name


def test_runtime_tflite_for_a_batch_size_the_copy_was_not_made_for_is_a_usage_error(trained, tmp_path, capsys):
    video = vf.write_face_video(tmp_path / "v.avi", [0, 0])
    assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(tmp_path / "o"),
                        "--runtime", "tflite", "--batch_size", "5"]) == 2
    assert "takes --batch_size 16, not 5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_damaged_tflite_copy_falls_back_to_the_keras_model_and_a_missing_one_is_not_used(trained, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(trained["export"], export)
    (export / "serving.tflite").write_bytes(b"damaged" * 100)
    video = vf.write_face_video(tmp_path / "v.avi", [0, 0, 4])
    assert run_predict(["--model", str(export), "--videos", str(video), "--output", str(tmp_path / "auto")]) == 0
    assert "TF Lite copy does not load" in capsys.readouterr().err
    summary = json.loads((tmp_path / "auto" / predict.SUMMARY_FILENAME).read_text())
    assert summary["runtime"]["name"] == "tensorflow" and "does not load" in summary["runtime"]["why"]
    assert run_predict(["--model", str(export), "--videos", str(video), "--output", str(tmp_path / "lite"),
                        "--runtime", "tflite"]) == 1
    err = capsys.readouterr().err
    assert "does not load as a TF Lite model" in err and "Traceback" not in err
    (export / "serving.tflite").unlink()
    assert run_predict(["--model", str(export), "--videos", str(video), "--output", str(tmp_path / "none"),
                        "--runtime", "tflite"]) == 2
    assert "TF Lite copy serving.tflite is missing" in capsys.readouterr().err


@pytest.mark.parametrize("edit", ["no_heads", "label_names_not_a_dict"])
def test_a_model_info_without_the_fields_predict_needs_is_refused_with_its_name(trained, tmp_path, capsys, edit):
    # A hand-edited or foreign model_info.json ended in a raw KeyError: 'heads' (evaluate named the file already).
    export = tmp_path / "export"
    shutil.copytree(trained["export"], export)
    path = export / "model_info.json"
    model_info = json.loads(path.read_text())
    if edit == "no_heads":
        del model_info["heads"]
    else:
        model_info["label_names"] = ["neutral"]
    path.write_text(json.dumps(model_info))
    video = vf.write_face_video(tmp_path / "v.avi", [0, 0])
    assert run_predict(["--model", str(export), "--videos", str(video), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"error: ExportError: {path} lacks or garbles" in err and "export (or import) the model again" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_a_truncated_model_file_is_named_as_such_before_any_video_is_read(trained, tmp_path, capsys):
    # Keras said "File not found: filepath=.../model.keras" of a file that was there, only cut short.
    export = tmp_path / "export"
    shutil.copytree(trained["export"], export)
    model = export / "model.keras"
    model.write_bytes(model.read_bytes()[:3000])
    video = vf.write_face_video(tmp_path / "v.avi", [0, 0])
    assert run_predict(["--model", str(export), "--videos", str(video), "--output", str(tmp_path / "o"),
                        "--runtime", "tensorflow"]) == 1
    err = capsys.readouterr().err
    assert f"{model} cannot be loaded: not a complete .keras archive (truncated or corrupt?)" in err
    assert "File not found" not in err and "Traceback" not in err


def test_an_output_name_too_long_for_the_file_system_is_refused_before_any_video_is_read(trained, tmp_path, capsys):
    # A legal 254-byte video name with --side left makes a 259-byte CSV name: every video was decoded and predicted,
    # then the run failed with "File name too long".
    video = vf.write_face_video(tmp_path / ("a" * 250 + ".avi"), [0, 0])
    out = tmp_path / "o"
    assert run_predict(["--model", trained["export"], "--videos", str(video), "--output", str(out),
                        "--side", "left"]) == 2
    err = capsys.readouterr().err
    assert "longer than the 255 bytes a file name may have" in err and f"{'a' * 250}_left.csv" in err
    assert "Traceback" not in err and not out.exists()
