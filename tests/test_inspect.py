"""`inspect DIR [--verify]` over a real conversion output."""

from __future__ import annotations

import contextlib
import io
import pathlib
import shutil

import abaw_layout as abaw
import pytest
import video_fixtures as vf

from beam_jobs import convert, inspect_dataset


def _run(fn, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fn([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    ann, videos = root / "annotations", root / "videos"
    vf.write_face_video(videos / "a.avi", [4, 4, 4, 1, 1, 1])
    abaw.write_annotation(ann, "expr", "train", "a", [4, 4, 4, 1, 1, 1, 1])  # One line beyond the end.
    vf.write_face_video(videos / "b.avi", [5] * 5)
    abaw.write_annotation(ann, "expr", "validation", "b", [5] * 5)
    rc, _, err = _run(convert.run, ["--videos", videos, "--annotations", ann, "--output", root / "out",
                                    "--clip_length", "3", "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
                                    "--progress_every", "0"])
    assert rc == 0, err
    return root / "out"


@pytest.fixture
def copy(dataset, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(dataset, target)
    return target


def test_inspect_prints_splits_buckets_histogram_accounting_and_failures(dataset):
    rc, out, _ = _run(inspect_dataset.run, [dataset])
    assert rc == 0
    assert "[train] 2 clips, 6 frames, 2 shards" in out
    assert "[validation] 2 clips, 5 frames, 1 shards" in out
    assert "accounting (adds up): labelled 7 = written with face 6 + without face 0 + dropped 1" in out
    assert "dropped beyond_video_end: 1" in out
    assert "Happiness" in out and "Anger" in out and "50.0%" in out
    assert "failures: 1 dead letters" in out and "beyond_video_end: " in out


def test_verify_passes_on_an_untouched_output(dataset):
    rc, out, err = _run(inspect_dataset.run, [dataset, "--verify"])
    assert rc == 0, err
    assert "verify: OK, 3 shards, 4 records and 11 frames" in out


def _a_shard(root: pathlib.Path) -> pathlib.Path:
    return min((root / "train").iterdir())


def test_verify_catches_a_shard_with_an_extra_record(copy):
    shard = _a_shard(copy)
    data = shard.read_bytes()
    shard.write_bytes(data + data)  # The same record twice: a valid file that disagrees with the info.
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1
    assert f"train/{shard.name}: 2 records" in err and "bytes on disk" in err


def test_verify_catches_a_corrupted_shard(copy):
    shard = _a_shard(copy)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1 and "unreadable" in err


def test_verify_catches_missing_and_unlisted_shards(copy):
    shard = _a_shard(copy)
    shard.rename(copy / "train" / "abaw-train-Extra.tfrecord-00000-of-00001")
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1
    assert f"train/{shard.name}: missing" in err
    assert "abaw-train-Extra.tfrecord-00000-of-00001: shard file not listed" in err


def test_inspect_of_a_folder_without_dataset_info_fails_clearly(tmp_path):
    rc, _, err = _run(inspect_dataset.run, [tmp_path])
    assert rc == 1 and "dataset_info.json not found" in err
