"""The ABAW adapter at its edges: no frame hides in an encoding or a line end, scans end, bad input is counted."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib

import abaw_layout as abaw
import numpy as np
import pytest
import video_fixtures as vf

from beam_jobs import convert
from beam_jobs.sources import base
from beam_jobs.sources.abaw import AbawSource
from beam_jobs.sources.text_lines import iter_lines
from tfrecords_schema import read_dataset_info

AU12_ZERO = [0] * 12
# (line end, encoding) of every variant; the first is the reference.
VARIANTS = [("\n", "utf-8"), ("\r\n", "utf-8"), ("\r", "utf-8"), ("\n", "utf-8-sig"), ("\r", "utf-8-sig"),
            ("\n", "utf-16"), ("\r\n", "utf-16"), ("\r", "utf-16-be-bom"), ("\r\n", "utf-32")]


def _source(root: pathlib.Path, **kwargs) -> AbawSource:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    return AbawSource(str(root / "ann"), str(root / "videos"), **kwargs)


def _tracks(discovery: base.Discovery) -> dict[str, base.TrackSpec]:
    return {t.track_id: t for t in discovery.tracks}


def _reasons(letters) -> list[str]:
    return sorted(d.reason for d in letters)


# ---------------------------------------------------------------- encodings and line ends


def _write_labels(root: pathlib.Path) -> None:
    """Per-task files of every task (with a bad line, an out-of-range value, blank lines at the end)
    and a multi-task file (with a row that names no frame)."""
    ann = root / "ann"
    abaw.write_annotation(ann, "expr", "train", "vid", [0, 4, "four", -1, 9, 6], trailing_blank_lines=2)
    abaw.write_annotation(ann, "va", "train", "vid", [(0.1, -0.2), (-5, -5), (0.5, 2.0)])
    abaw.write_annotation(ann, "au", "validation", "vid", [AU12_ZERO, [1] + [0] * 11, "0,1"])
    abaw.write_mtl(ann, "train", [("m1", 2, (0.1, 0.2), 3, AU12_ZERO), ("m2", 1, (0.5, 0.5), 0, AU12_ZERO),
                                  ("m1", 4, (9, 0.2), -1, [-1] * 12), "no-image-name,0,0,0"])
    for name in ("vid", "m1", "m2"):
        abaw.write_media(root / "videos", f"{name}.mp4")


def _everything_read(root: pathlib.Path) -> dict:
    """What discovery and label reading give, with the root taken out of paths."""
    source = _source(root)
    found = source.discover()

    def clean(text: str) -> str:
        return text.replace(str(root), "ROOT")

    result = {"tasks": found.tasks, "label_names": found.label_names, "split_drops": found.split_drops,
              "discovery_letters": [(clean(d.source), d.reason, clean(d.message), d.frames) for d in found.dead_letters]}
    for track in found.tracks:
        labels = source.read_labels(track)
        result[track.track_id] = {
            "tasks": track.tasks, "expression": labels.expression.tolist(),
            "valence_arousal": labels.valence_arousal.tolist(), "action_units": labels.action_units.tolist(),
            "rejected": labels.rejected.tolist(), "labelled": int(labels.labelled.sum()),
            "letters": [(clean(d.source), d.reason, clean(d.message), d.frames) for d in labels.dead_letters],
            "counted": source.count_labelled_lines(track)}
    return result


def test_every_encoding_and_line_end_reads_the_same_labels(tmp_path):
    _write_labels(tmp_path / "reference")
    reference = _everything_read(tmp_path / "reference")
    # The reference itself: 6 expression lines (5 labelled: line 4 is the invalid marker), VA frame 3 out of range.
    assert reference["train/vid"]["expression"] == [0, 4, -1, -1, -1, 6]
    assert reference["train/vid"]["labelled"] == 5 and reference["train/vid"]["counted"] == (6, [])
    assert reference["train/m1"]["labelled"] == 2 and reference["validation/vid"]["labelled"] == 3
    assert reference["split_drops"] == [base.SplitDrop("train", base.DROP_MALFORMED_LINE, 1)]

    for newline, encoding in VARIANTS[1:]:
        root = tmp_path / f"{encoding}-{len(newline)}{newline == chr(13)}"
        _write_labels(root)
        for path in (root / "ann").rglob("*.txt"):
            abaw.rewrite_text(path, newline=newline, encoding=encoding)

        assert _everything_read(root) == reference, (newline, encoding)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_lines_split_on_every_line_end_whatever_the_chunk_boundaries(chunk):
    text = "h\u00e9ader\r\nb\rc\n\nd\r\r\ne"
    expected = ["h\u00e9ader", "b", "c", "", "d", "", "e"]
    for data in (text.encode("utf-8"), text.encode("utf-8-sig"), text.encode("utf-16"), text.encode("utf-32")):
        assert list(iter_lines(io.BytesIO(data), chunk_bytes=chunk)) == expected
    assert list(iter_lines(io.BytesIO(b"a\n"), chunk_bytes=chunk)) == ["a"]  # A final line end adds no line.
    assert list(iter_lines(io.BytesIO(b"x\xff,1\r"), chunk_bytes=chunk)) == ["x\ufffd,1"]  # A stray byte.


ARGS = ["--clip_length", "4", "--detect_every", "1", "--max_hold", "0", "--runner", "DirectRunner",
        "--direct_running_mode", "in_memory", "--progress_every", "0"]


def _convert(root: pathlib.Path, newline: str, encoding: str):
    ann, videos = root / "ann", root / "videos"
    vf.write_face_video(videos / "vid.avi", [4] * 6)
    abaw.write_annotation(ann, "expr", "train", "vid", [4, 4, "four", 4, -1, 4, 4])  # line 7: past the video.
    abaw.write_annotation(ann, "va", "validation", "vid", [(0.1, 0.2), (2.5, 0.1), (0.3, 0.3)])
    for path in ann.rglob("*.txt"):
        abaw.rewrite_text(path, newline=newline, encoding=encoding)
    out = root / "out"
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        rc = convert.run(ARGS + ["--videos", str(videos), "--annotations", str(ann), "--output", str(out)])
    assert rc == 0, errors.getvalue()
    info = read_dataset_info(str(out))
    return {split: (s.accounting.labelled_frames, s.accounting.written_frames, s.accounting.dropped)
            for split, s in sorted(info.splits.items())}


def test_conversion_accounting_is_identical_for_lf_cr_only_and_utf16(tmp_path):
    reference = _convert(tmp_path / "lf", "\n", "utf-8")
    assert reference == {"train": (6, 4, {"beyond_video_end": 1, "malformed_line": 1}),
                         "validation": (3, 2, {"out_of_range": 1})}
    assert _convert(tmp_path / "cr", "\r", "utf-8-sig") == reference
    assert _convert(tmp_path / "utf16", "\r\n", "utf-16") == reference


def test_dead_letter_messages_are_bounded_and_keep_the_line_number(tmp_path):
    huge = "x" * 200_000
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, huge, 2])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    source = _source(tmp_path)

    [letter] = source.read_labels(source.discover().tracks[0]).dead_letters

    assert letter.source.endswith("vid.txt:line 2") and letter.reason == base.DROP_MALFORMED_LINE
    assert len(letter.message) < base.MAX_MESSAGE_CHARS + 40 and "more characters]" in letter.message
    long_source = base.DeadLetter(source="/d" * 2000 + "/a.txt:line 7", reason="r", message="m")
    assert len(long_source.source) <= base.MAX_SOURCE_CHARS + 3 and long_source.source.endswith("a.txt:line 7")


# ---------------------------------------------------------------- scans that end


def test_symlink_loops_are_reported_once_and_never_followed(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, 2])
    abaw.write_media(tmp_path / "videos", "sub/vid.mp4")
    os.symlink(".", tmp_path / "videos" / "loop")
    os.symlink(".", tmp_path / "videos" / "loop2")  # Two loops used to hang the scan.
    os.symlink("..", tmp_path / "videos" / "sub" / "up")
    os.symlink(".", tmp_path / "ann" / "loop")  # Used to make every annotation a duplicate_track.
    split = abaw.split_dir(tmp_path / "ann", "expr", "train")
    os.symlink("..", split / "again")

    found = _source(tmp_path).discover()

    [track] = found.tracks
    assert track.problem is None and track.data_path == "sub/vid.mp4"  # Not ambiguous_media.
    loops = sorted(d.source for d in found.dead_letters if d.reason == base.SCAN_SYMLINK_LOOP)
    assert loops == sorted(str(p) for p in (tmp_path / "ann" / "loop", tmp_path / "videos" / "loop",
                                            tmp_path / "videos" / "loop2", tmp_path / "videos" / "sub" / "up"))
    assert found.unlisted_folders == [] and found.unused_media == []


def test_links_between_links_and_second_paths_to_one_folder(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1])
    videos = tmp_path / "videos"
    abaw.write_media(videos, "a/vid.mp4")
    os.symlink("a", videos / "b")  # A second path to the same folder.
    (videos / "c").mkdir()
    os.symlink("../a/vid.mp4", videos / "c" / "vid.mp4")  # A second name of the same file.
    os.symlink("y", videos / "x")  # Two links that lead only to each other.
    os.symlink("x", videos / "y")

    found = _source(tmp_path).discover()

    [track] = found.tracks
    assert track.problem is None and track.data_path == "a/vid.mp4"
    assert {(pathlib.Path(d.source).name, d.reason) for d in found.dead_letters} == {
        ("b", base.SCAN_REPEATED_FOLDER), ("x", base.SCAN_SYMLINK_LOOP), ("y", base.SCAN_SYMLINK_LOOP)}


def test_ambiguous_media_names_its_candidates(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1])
    abaw.write_media(tmp_path / "videos", "one/vid.mp4")
    abaw.write_media(tmp_path / "videos", "two/vid.MOV")

    [track] = _source(tmp_path).discover().tracks

    assert track.problem == base.DROP_AMBIGUOUS_MEDIA
    assert "one/vid.mp4, two/vid.MOV" in track.problem_message


def test_every_ffmpeg_container_is_found_in_any_letter_case(tmp_path):
    for name in ("a", "b", "c"):
        abaw.write_annotation(tmp_path / "ann", "expr", "train", name, [0])
    abaw.write_media(tmp_path / "videos", "x/a.mov")
    abaw.write_media(tmp_path / "videos", "b.MKV")
    abaw.write_media(tmp_path / "videos", "c.WebM")
    abaw.write_media(tmp_path / "videos", "c.srt")

    found = _source(tmp_path).discover()

    assert [_tracks(found)[f"train/{n}"].data_path for n in "abc"] == ["x/a.mov", "b.MKV", "c.WebM"]
    assert all(t.problem is None for t in found.tracks)


# ---------------------------------------------------------------- multi-task frame numbers


def test_multi_task_frame_numbers_far_beyond_the_rows_are_malformed_and_counted(tmp_path):
    path = abaw.write_mtl(tmp_path / "ann", "train", [
        ("m1", 1, (0.1, 0.2), 3, AU12_ZERO), ("m1", 2, (0.1, 0.2), 4, AU12_ZERO),
        "m1/99999999999.jpg,0.1,0.2,3," + ",".join(["0"] * 12),
        ("m2", 300_000, (0.1, 0.2), 3, AU12_ZERO),  # A subject whose only row is out of reach: no track.
    ])
    for name in ("m1", "m2"):
        abaw.write_media(tmp_path / "videos", f"{name}.mp4")
    source = _source(tmp_path)

    found = source.discover()
    [track] = found.tracks
    labels = source.read_labels(track)

    assert track.track_id == "train/m1" and labels.num_frames == 2
    np.testing.assert_array_equal(labels.expression, [3, 4])
    assert found.split_drops == [base.SplitDrop("train", base.DROP_MALFORMED_LINE, 2)]
    [letter] = found.dead_letters
    assert letter.source == f"{path}:lines 4-5" and letter.frames == 2 and "beyond 100008" in letter.message
    assert source.count_labelled_lines(track) == (2, [])
    assert found.unused_media == ["m2.mp4"]


def test_count_labelled_lines_of_a_multi_task_file_counts_this_subject_only(tmp_path):
    abaw.write_mtl(tmp_path / "ann", "train", [
        ("m1", 1, (0.1, 0.2), 3, AU12_ZERO), ("m2", 1, (0.1, 0.2), 3, AU12_ZERO),
        ("m1", 2, (0.1, 0.2), 3, AU12_ZERO), ("m1", 5, (-5, -5), -1, [-1] * 12),
        "m1/00002.jpg,0.1,0.2,1," + ",".join(["0"] * 12),  # Frame 2 again: one frame.
    ])
    per_task = abaw.write_annotation(tmp_path / "ann", "va", "train", "solo", [(0.1, 0.1)] * 4,
                                     trailing_blank_lines=2)
    abaw.rewrite_text(per_task, newline="\r")
    source = _source(tmp_path)

    tracks = _tracks(source.discover())

    assert source.count_labelled_lines(tracks["train/m1"]) == (3, [])  # Frames 1, 2, 5 (an upper bound).
    assert source.count_labelled_lines(tracks["train/m2"]) == (1, [])
    assert source.count_labelled_lines(tracks["train/solo"]) == (4, [])


# ---------------------------------------------------------------- folders that cannot be listed


def test_a_broken_link_where_a_folder_is_expected_is_an_unlisted_folder(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, 2])
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    missing = abaw.split_dir(tmp_path / "ann", "expr", "validation")  # e.g. a drive that is not mounted.
    os.symlink(tmp_path / "not-mounted" / "Validation_Set", missing)

    found = _source(tmp_path).discover()

    assert [t.track_id for t in found.tracks] == ["train/vid"]
    assert found.unlisted_folders == [str(missing)]
    [letter] = found.dead_letters
    assert letter.reason == base.SCAN_UNLISTED_FOLDER and letter.source == str(missing)
    assert "broken symbolic link" in letter.message


def test_a_media_root_that_cannot_be_listed_is_reported(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, 2])
    source = _source(tmp_path)
    (tmp_path / "videos").rmdir()  # Gone between the start and the scan (a transient store error).
    (tmp_path / "videos").write_text("not a folder")

    found = source.discover()

    assert found.unlisted_folders == [str(tmp_path / "videos")]
    assert _reasons(found.dead_letters) == [base.SCAN_UNLISTED_FOLDER]
    assert found.tracks[0].problem == base.DROP_NO_MEDIA


def test_a_folder_without_read_permission_is_reported(tmp_path):
    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid", [1, 2])
    locked = abaw.write_annotation(tmp_path / "ann", "expr", "validation", "other", [1]).parent
    abaw.write_media(tmp_path / "videos", "vid.mp4")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("permissions do not apply to this user (root)")
        found = _source(tmp_path).discover()
    finally:
        locked.chmod(0o755)

    assert [t.track_id for t in found.tracks] == ["train/vid"]
    assert found.unlisted_folders == [str(locked)]
    assert _reasons(found.dead_letters) == [base.SCAN_UNLISTED_FOLDER]


def test_an_unlistable_annotation_root_is_named_in_the_error(tmp_path):
    (tmp_path / "ann").mkdir()
    source = _source(tmp_path)
    (tmp_path / "ann").rmdir()
    (tmp_path / "ann").write_text("")

    with pytest.raises(ValueError, match="could not list: .*ann"):
        source.discover()


# ---------------------------------------------------------------- construction


def test_from_args_needs_annotations(tmp_path):
    (tmp_path / "videos").mkdir()
    args = argparse.Namespace(annotations=None, videos=str(tmp_path / "videos"), cropped_aligned=None)
    with pytest.raises(ValueError, match="--dataset abaw needs --annotations"):
        AbawSource.from_args(args, None)
    args.annotations = str(tmp_path)
    assert AbawSource.from_args(args, ["va"]).tasks == ("va",)
