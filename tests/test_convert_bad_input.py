"""Every bad input of issue 2 gives a clear error or a counted, reported skip; the job goes on."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import abaw_layout as abaw
import cv2
import numpy as np
import pytest
import tensorflow as tf
import video_fixtures as vf

from beam_jobs import convert
from beam_jobs.faces import stage as faces
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import decode_clip, read_dataset_info

ARGS = ["--clip_length", "4", "--detect_every", "1", "--max_hold", "0", "--runner", "DirectRunner",
        "--direct_running_mode", "in_memory",
        "--progress_every", "0"]
NON_ASCII = "vidéo_ü_東京"


def run_convert(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = convert.run(ARGS + [str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def all_clips(output) -> list:
    paths = sorted(str(p) for p in pathlib.Path(output).rglob("*.tfrecord-*"))
    return [decode_clip(r.numpy()) for r in tf.data.TFRecordDataset(paths)] if paths else []


def dead_letters(output) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(output) / "errors" / "dead_letters.jsonl").open(encoding="utf-8")]


def make_bad_dataset(root: pathlib.Path):
    ann, videos = root / "annotations", root / "videos"
    # A good track, so the run writes something.
    vf.write_face_video(videos / "good.avi", [4] * 6)
    abaw.write_annotation(ann, "expr", "train", "good", [4] * 6)
    # Corrupt: random bytes in a video name.
    abaw.write_media(videos, "corrupt.avi", np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    abaw.write_annotation(ann, "expr", "train", "corrupt", [1] * 5)
    # Truncated download: half of a 12-frame video.
    vf.truncate_file(vf.write_face_video(videos / "truncated.avi", [4] * 12), 0.5)
    abaw.write_annotation(ann, "expr", "train", "truncated", [4] * 12)
    # Zero-byte file.
    abaw.write_media(videos, "empty.mp4", b"")
    abaw.write_annotation(ann, "expr", "train", "empty", [2] * 3)
    # Unsupported codec: a real AVI whose codec tag nobody decodes.
    data = vf.write_face_video(videos / "codec.avi", [4] * 6).read_bytes()
    (videos / "codec.avi").write_bytes(data.replace(b"MJPG", b"XVQZ"))
    abaw.write_annotation(ann, "expr", "train", "codec", [4] * 6)
    # Annotation without media; media without annotation.
    abaw.write_annotation(ann, "expr", "train", "ghost", [1] * 5)
    vf.write_face_video(videos / "orphan.avi", [0] * 2)
    # Malformed line 3, wrong header, out-of-range values.
    vf.write_face_video(videos / "malformed.avi", [4] * 6)
    abaw.write_annotation(ann, "expr", "train", "malformed", [4, 4, "four", 4, 4, 4])
    vf.write_face_video(videos / "badheader.avi", [4] * 4)
    abaw.write_annotation(ann, "expr", "train", "badheader", [4] * 4, header="Happy,Sad")
    vf.write_face_video(videos / "outofrange.avi", [4] * 4)
    abaw.write_annotation(ann, "va", "validation", "outofrange", [(0.1, 0.2), (2.5, 0.1), (0.1, 0.2), (0.3, 0.3)])
    # More annotation lines than frames, and fewer.
    vf.write_face_video(videos / "shortvideo.avi", [4] * 4)
    abaw.write_annotation(ann, "expr", "validation", "shortvideo", [4] * 7)
    vf.write_face_video(videos / "longvideo.avi", [4] * 9)
    abaw.write_annotation(ann, "expr", "validation", "longvideo", [4] * 3)
    # The same subject annotated twice for one task (train and validation).
    vf.write_face_video(videos / "dup.avi", [4] * 4)
    abaw.write_annotation(ann, "expr", "train", "dup", [4] * 4)
    abaw.write_annotation(ann, "expr", "validation", "dup", [4] * 4)
    # Non-ASCII names.
    vf.write_face_video(videos / f"{NON_ASCII}.avi", [5] * 4)
    abaw.write_annotation(ann, "expr", "validation", NON_ASCII, [5] * 4)
    return ann, videos


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    ann, videos = make_bad_dataset(root)
    rc, out, err = run_convert("--videos", videos, "--annotations", ann, "--output", root / "out")
    assert rc == 0, err
    info = read_dataset_info(str(root / "out"))
    letters = dead_letters(root / "out")
    return {"out": root / "out", "info": info, "letters": letters, "clips": all_clips(root / "out"), "stdout": out}


def _letters(bad_run, track_part):
    return [d for d in bad_run["letters"] if track_part in d["track"] or track_part in d["source"]]


def test_accounting_adds_up_over_all_bad_inputs(bad_run):
    info = bad_run["info"]
    info.check()
    train, val = info.splits["train"].accounting, info.splits["validation"].accounting
    # good 6 + malformed 5 + truncated 5 (of 12) written in train; validation: outofrange 3, shortvideo 4,
    # longvideo 3, non-ASCII 4.
    assert train.written_frames == 16
    assert train.dropped == {"bad_header": 4, "beyond_video_end": 7, "duplicate_track": 4, "malformed_line": 1,
                             "no_media": 5, "unreadable_media": 5 + 3 + 6}
    assert val.written_frames == 14
    assert val.dropped == {"beyond_video_end": 3, "duplicate_track": 4, "out_of_range": 1}
    assert train.labelled_frames == 16 + sum(train.dropped.values())


@pytest.mark.parametrize("name, reason, frames", [
    ("corrupt", "unreadable_media", 5), ("empty", "unreadable_media", 3), ("codec", "unreadable_media", 6),
    ("truncated", "beyond_video_end", 7), ("ghost", "no_media", 5), ("shortvideo", "beyond_video_end", 3),
])
def test_each_bad_video_gets_a_dead_letter_with_its_lost_frames(bad_run, name, reason, frames):
    letters = [d for d in _letters(bad_run, name) if d["reason"] == reason]
    assert letters, bad_run["letters"]
    assert max(d["frames"] for d in letters) == frames
    assert all(d["message"] for d in letters)


def test_unreadable_media_message_says_why(bad_run):
    (empty,) = [d for d in _letters(bad_run, "empty.mp4") if d["reason"] == "unreadable_media"]
    assert "zero-byte" in empty["message"]
    (codec,) = [d for d in _letters(bad_run, "codec.avi") if d["reason"] == "unreadable_media"]
    assert "codec" in codec["message"]


def test_malformed_line_is_reported_with_file_and_line_number(bad_run):
    letters = [d for d in _letters(bad_run, "malformed") if d["reason"] == "malformed_line"]
    assert letters and "malformed.txt" in letters[0]["source"] and "3" in letters[0]["source"]
    clips = [c for c in bad_run["clips"] if c.media_id == "malformed"]
    frames = np.concatenate([c.frame_index for c in clips]).tolist()
    expression = np.concatenate([c.expression for c in clips]).tolist()
    assert frames == [1, 2, 3, 4, 5, 6]  # The frame stays in place (time is not shifted)...
    assert expression == [4, 4, -1, 4, 4, 4]  # ...with an invalid label.


def test_wrong_header_duplicates_and_out_of_range_are_reported(bad_run):
    assert any(d["reason"] == "bad_header" and "Happy,Sad" in d["message"] for d in _letters(bad_run, "badheader"))
    dup = [d for d in _letters(bad_run, "dup") if d["reason"] == "duplicate_track"]
    assert dup
    assert not [c for c in bad_run["clips"] if c.media_id == "dup"]
    assert any(d["reason"] == "out_of_range" for d in _letters(bad_run, "outofrange"))
    (clip,) = [c for c in bad_run["clips"] if c.media_id == "outofrange"]
    assert clip.valence_arousal[1].tolist() == [-5.0, -5.0]


def test_fewer_annotation_lines_than_frames_write_only_the_annotated_frames(bad_run):
    (clip,) = [c for c in bad_run["clips"] if c.media_id == "longvideo"]
    assert clip.frame_index.tolist() == [1, 2, 3]


def test_truncated_video_keeps_the_frames_before_the_cut(bad_run):
    clips = [c for c in bad_run["clips"] if c.media_id == "truncated"]
    assert np.concatenate([c.frame_index for c in clips]).tolist() == [1, 2, 3, 4, 5]


def test_media_without_annotation_is_listed_and_printed(bad_run):
    assert bad_run["info"].unused_media == ["orphan.avi"]
    assert "media without annotation (skipped): 1" in bad_run["stdout"]


def test_non_ascii_names_convert(bad_run):
    (clip,) = [c for c in bad_run["clips"] if c.media_id == NON_ASCII]
    assert clip.data_path == f"{NON_ASCII}.avi" and clip.example_id == f"validation/{NON_ASCII}/000001"
    assert clip.has_face.all()


def test_summary_lists_dropped_reasons(bad_run):
    assert "unreadable_media=14" in bad_run["stdout"]
    assert "dead letters:" in bad_run["stdout"]


def test_unreadable_or_missing_provided_crop_is_a_frame_without_face_and_a_dead_letter(tmp_path):
    ann, crops = tmp_path / "annotations", tmp_path / "cropped_aligned"
    abaw.write_annotation(ann, "expr", "train", "cropvid", [4] * 6)
    folder = abaw.write_crops_dir(crops, "cropvid")
    face = vf.face_frame(4)[10:110, 30:130]
    for i in (1, 2, 4, 6):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), face)
    (folder / "00003.jpg").write_bytes(b"\xff\xd8 broken jpeg")  # Unreadable; 00005.jpg is missing.
    out = tmp_path / "out"
    rc, _, err = run_convert("--cropped_aligned", crops, "--annotations", ann, "--output", out)
    assert rc == 0, err
    info = read_dataset_info(str(out))
    acc = info.splits["train"].accounting
    assert (acc.labelled_frames, acc.written_frames_with_face, acc.written_frames_without_face) == (6, 4, 2)
    clips = sorted(all_clips(out), key=lambda c: c.example_id)
    assert np.concatenate([c.has_face for c in clips]).tolist() == [True, True, False, True, False, True]
    assert np.concatenate([c.frame_index for c in clips]).tolist() == [1, 2, 3, 4, 5, 6]
    letters = dead_letters(out)
    assert [(d["reason"], pathlib.Path(d["source"]).name) for d in letters] == [("unreadable_crop", "00003.jpg")]


def test_a_run_where_nothing_can_be_written_exits_non_zero_with_the_reasons(tmp_path):
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    abaw.write_media(videos, "broken.avi", b"\x00" * 100)
    abaw.write_annotation(ann, "expr", "train", "broken", [1] * 4)
    abaw.write_annotation(ann, "expr", "train", "missing", [1] * 3)
    rc, _, err = run_convert("--videos", videos, "--annotations", ann, "--output", tmp_path / "out")
    assert rc == 1
    assert "nothing could be written" in err and "unreadable_media" in err and "no_media" in err
    info = read_dataset_info(str(tmp_path / "out"))
    assert info.splits["train"].accounting.dropped == {"no_media": 3, "unreadable_media": 4}


def test_annotations_folder_without_any_annotation_exits_non_zero(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "videos").mkdir()
    rc, _, err = run_convert("--videos", tmp_path / "videos", "--annotations", tmp_path / "annotations",
                             "--output", tmp_path / "out")
    assert rc != 0 and "no ABAW annotation files" in err


class FailingDetector(faces.HaarDetector):
    """The Haar detector, failing on its 4th call: an exception in the middle of a track."""

    name = "failing"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def detect(self, gray, min_size=None, max_size=None):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("detector crashed")
        return super().detect(gray, min_size, max_size)


def test_exception_mid_track_drops_the_remaining_frames_as_decode_error(tmp_path, monkeypatch):
    monkeypatch.setitem(faces.DETECTORS, "failing", FailingDetector)
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    vf.write_face_video(videos / "crash.avi", [4] * 6)
    abaw.write_annotation(ann, "expr", "train", "crash", [4] * 6)
    out = tmp_path / "out"
    rc, _, err = run_convert("--videos", videos, "--annotations", ann, "--output", out, "--detector", "failing",
                             "--clip_length", "2")
    assert rc == 0, err
    acc = read_dataset_info(str(out)).splits["train"].accounting
    assert (acc.labelled_frames, acc.written_frames, acc.dropped) == (6, 2, {"decode_error": 4})
    assert [c.frame_index.tolist() for c in all_clips(out)] == [[1, 2]]  # Clips before the crash are kept.
    (letter,) = dead_letters(out)
    assert letter["reason"] == "decode_error" and "detector crashed" in letter["message"] and letter["frames"] == 4


class BrokenLabelsSource(AbawSource):
    """The ABAW adapter whose label reader fails on one track (an adapter bug)."""

    def read_labels(self, track):
        if track.media_id == "bad":
            raise KeyError("adapter bug")
        return super().read_labels(track)


def test_an_adapter_exception_becomes_a_dead_letter_and_the_job_goes_on(tmp_path):
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    for name in ("bad", "fine"):
        vf.write_face_video(videos / f"{name}.avi", [4] * 3)
        abaw.write_annotation(ann, "expr", "train", name, [4] * 3)
    abaw.write_annotation(ann, "va", "train", "bad", [(0.1, 0.2)] * 5, trailing_blank_lines=2)
    out = tmp_path / "out"
    errors, printed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        rc = convert.run(["--videos", str(videos), "--annotations", str(ann), "--output", str(out), *ARGS,
                          "--progress_every", "0.2"], source=BrokenLabelsSource(str(ann), str(videos)))
    assert rc == 0, errors.getvalue()
    assert {c.media_id for c in all_clips(out)} == {"fine"}
    (letter,) = dead_letters(out)
    assert letter["reason"] == "read_labels_error" and "adapter bug" in letter["message"]
    info = read_dataset_info(str(out))
    assert info.failures["by_reason"] == {"read_labels_error": 1}
    # The failed track's lines (most lines of its files: 5 VA lines, blank lines not counted) stay in the
    # accounting as labelled and dropped, and in its dead letter.
    assert letter["frames"] == 5 and letter["track"] == "train/bad"
    acc = info.splits["train"].accounting
    assert (acc.labelled_frames, acc.written_frames, acc.dropped) == (3 + 5, 3, {"read_labels_error": 5})
    assert info.run["tracks"] == 2
    assert "tracks 2/2 (videos 2/2) done" in printed.getvalue()


def test_lines_of_a_failed_track_in_a_multi_task_file_are_counted_for_its_subject_only(tmp_path):
    rows = [("m1", 1, (0.1, 0.2), 3, [0] * 12), ("m2", 1, (0.1, 0.2), 3, [0] * 12),
            ("m1", 2, (0.1, 0.2), 3, [0] * 12), ("m1", 5, (0.1, 0.2), 3, [0] * 12)]
    abaw.write_mtl(tmp_path / "ann", "train", rows)
    (tmp_path / "videos").mkdir()
    source = AbawSource(str(tmp_path / "ann"), str(tmp_path / "videos"))
    tracks = {t.media_id: t for t in source.discover().tracks}
    # What CountUnreadableLabels records for a track whose labels the adapter failed to read.
    assert source.count_labelled_lines(tracks["m1"]) == (3, [])
    assert source.count_labelled_lines(tracks["m2"]) == (1, [])


def test_multi_task_rows_without_an_image_name_count_as_dropped_in_their_split(tmp_path):
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    vf.write_face_video(videos / "mvid.avi", [4] * 4)
    good = [("mvid", i, (0.1, 0.2), 4, [0] * 12) for i in range(1, 5)]
    abaw.write_mtl(ann, "train", good[:2] + ["no-image-name,0.1,0.2,4," + ",".join(["0"] * 12),
                                             "00003.jpg,0.1,0.2,4," + ",".join(["0"] * 12)] + good[2:])
    # A validation file whose only row names no frame: the split has no track but still its accounting.
    abaw.write_mtl(ann, "validation", ["mvid,0.1,0.2,4," + ",".join(["0"] * 12)])
    out = tmp_path / "out"
    rc, _, err = run_convert("--videos", videos, "--annotations", ann, "--output", out)
    assert rc == 0, err
    info = read_dataset_info(str(out))
    info.check()
    train, val = info.splits["train"].accounting, info.splits["validation"].accounting
    assert (train.labelled_frames, train.written_frames, train.dropped) == (6, 4, {"malformed_line": 2})
    assert (val.labelled_frames, val.written_frames, val.dropped) == (1, 0, {"malformed_line": 1})
    assert info.splits["validation"].num_clips == 0 and info.splits["validation"].shards == []
    malformed = sorted((pathlib.Path(d["source"]).name, d["frames"]) for d in dead_letters(out)
                       if d["reason"] == "malformed_line")
    assert malformed == [("training_set_annotations.txt:lines 4-5", 2), ("validation_set_annotations.txt:line 2", 1)]
    assert np.concatenate([c.frame_index for c in all_clips(out)]).tolist() == [1, 2, 3, 4]
