"""The embedded demo dataset: ABAW layout, deterministic, labels visible, faces detectable."""

import filecmp
import os

import cv2
import numpy as np

from affectstream import demo_data
from affectstream.synthetic_faces import FaceSpec, render_frame


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_writes_identical_annotations_and_layout(tmp_path):
    a = demo_data.make_demo_dataset(str(tmp_path / "a"), frames_per_video=60)
    b = demo_data.make_demo_dataset(str(tmp_path / "b"), frames_per_video=60)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    match, mismatch, errors = filecmp.cmpfiles(a["annotations"], b["annotations"], _files(a["annotations"]), shallow=False)
    assert not mismatch and not errors and match


def test_layout_has_two_subjects_mixed_split_and_overlong_annotation(tmp_path):
    made = demo_data.make_demo_dataset(str(tmp_path), frames_per_video=60)
    ann = made["annotations"]
    expr_train = os.path.join(ann, demo_data.EXPR_DIR, "Train_Set")
    assert {"video_two_people_left.txt", "video_two_people_right.txt"} <= set(os.listdir(expr_train))
    assert os.path.exists(os.path.join(ann, demo_data.EXPR_DIR, "Validation_Set", "mixed_split.txt"))
    assert os.path.exists(os.path.join(ann, demo_data.VA_DIR, "Train_Set", "mixed_split.txt"))
    with open(os.path.join(expr_train, "1-30-320x240.txt")) as f:
        lines = f.read().splitlines()
    assert lines[0] == ",".join(demo_data.EXPRESSION_NAMES)
    assert len(lines) - 1 == 60 + 12  # 12 lines past the video's end, for the accounting to catch.
    capture = cv2.VideoCapture(os.path.join(made["videos"], "batch1", "1-30-320x240.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 60


def test_haar_cascade_finds_the_drawn_faces():
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = 0
    cases = [(e, size) for e in range(8) for size in (104, 118, 132)]  # The demo draws faces of 104-132 px.
    for e, size in cases:
        frame = render_frame(240, 320, [FaceSpec(160, 120, size, e, 0.3, 0.3, (1, 0) * 6)], noise_seed=e)
        found += len(cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 4)) > 0
    assert found == len(cases)


def test_expressions_are_visible_in_the_pixels():
    crops = [render_frame(160, 160, [FaceSpec(80, 80, 136, e)]).astype(np.int32) for e in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            assert np.abs(crops[i] - crops[j]).sum() > 1000, (i, j)


def test_make_demo_data_with_a_bad_value_prints_one_line(tmp_path, capsys):
    for flag, value in (("--frames_per_video", "0"), ("--num_train_videos", "-1")):
        assert demo_data.run([str(tmp_path / "out"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err == f"make-demo-data: error: {flag} must be >= {60 if 'frames' in flag else 1}, got {value}\n"
    (tmp_path / "file").write_text("x")
    assert demo_data.run([str(tmp_path / "file"), "--frames_per_video", "60", "--num_train_videos", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"make-demo-data: error: {tmp_path / 'file'}")
    assert not (tmp_path / "out").exists() and (tmp_path / "file").read_text() == "x"
