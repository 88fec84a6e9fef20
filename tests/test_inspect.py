"""`inspect DIR [--verify]` over real conversion outputs: summary, recount from the shards, AU rates, leftovers."""

from __future__ import annotations

import contextlib
import io
import json
import os
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
    assert "failures: 1 dead letters" in out and "beyond_video_end: " in out and "(labels of 1 frames lost)" in out


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
    assert rc == 1
    # One clean line naming the shard, without TensorFlow's graph context.
    assert f"train/{shard.name}: unreadable (DataLossError: corrupted record at " in err
    assert "function_node" not in err and "[Op:" not in err


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
    assert "--data" not in err  # inspect takes the folder as its argument: it has no --data (the message named one).


def _edit_info(root: pathlib.Path, edit) -> None:
    path = root / "dataset_info.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw, indent=2, sort_keys=True))


def test_verify_recounts_frames_with_and_without_a_face_from_the_shards(copy):
    def shift(raw):  # Still adds up: only a recount from the records can tell.
        acc = raw["splits"]["train"]["accounting"]
        acc["written_frames_with_face"] -= 2
        acc["written_frames_without_face"] += 2
    _edit_info(copy, shift)
    rc, _, err = _run(inspect_dataset.run, [copy])
    assert rc == 0  # Without --verify the info alone is read, and it adds up.
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1
    assert "train: the shards hold 6 labelled frames with a face and 0 without; the accounting says 4 and 2" in err


def test_verify_names_both_sizes_when_the_crop_size_is_wrong(copy):
    _edit_info(copy, lambda raw: raw.update(crop_size=48))
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1 and "crops of 112x112 pixels, but dataset_info says crop_size 48 (48x48)" in err


def test_inspect_mentions_a_leftover_temp_folder_and_a_held_lock(copy):
    from tfrecords_schema.locks import lock_output

    spill = copy / ".tmp-convert" / "spill"
    spill.mkdir(parents=True)
    (spill / ("0" * 32 + ".bin")).write_bytes(b"x" * 100)
    with lock_output(str(copy), command="convert into copy"):
        rc, out, _ = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 0
    assert f"temp folder {copy / '.tmp-convert'} (spill files of a run killed during its cleanup)" in out
    assert f"held by pid {os.getpid()}" in out and "a conversion into this folder may be running" in out
    rc, out, _ = _run(inspect_dataset.run, [copy])
    assert "held by pid" not in out  # Released.


@pytest.fixture(scope="module")
def au_dataset(tmp_path_factory):
    """Expression on all 6 frames; AUs labelled on frames 3-6: AU1 present on 2 of them, AU2 on 1."""
    root = tmp_path_factory.mktemp("inspect_au")
    ann, videos = root / "annotations", root / "videos"
    vf.write_face_video(videos / "a.avi", [4] * 6)
    abaw.write_annotation(ann, "expr", "train", "a", [4] * 6)
    au = [[-1] * 12] * 2 + [[1, 1] + [0] * 10, [1] + [0] * 11, [0] * 12, [0] * 12]
    abaw.write_annotation(ann, "au", "train", "a", au)
    outputs = {}
    for name, extra in (("all", []), ("au_only", ["--tasks", "au"])):
        rc, _, err = _run(convert.run, ["--videos", videos, "--annotations", ann, "--output", root / name,
                                        "--clip_length", "3", "--runner", "DirectRunner", "--direct_running_mode",
                                        "in_memory", "--progress_every", "0", *extra])
        assert rc == 0, err
        outputs[name] = root / name
    return outputs


def _au_lines(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.strip().startswith("AU")}


def test_au_occurrence_is_per_au_labelled_frame_counted_from_the_shards(au_dataset):
    rc, out, _ = _run(inspect_dataset.run, [au_dataset["all"]])
    assert rc == 0 and "occurrence per frame: run with --verify" in out
    assert "%" not in _au_lines(out)["AU1"]  # 6 written frames, 4 AU-labelled: no guess from dataset_info alone.
    rc, out, err = _run(inspect_dataset.run, [au_dataset["all"], "--verify"])
    assert rc == 0, err
    assert "frames with the AU / 4 AU-labelled frames, counted in the shards" in out
    au = _au_lines(out)
    assert au["AU1"].split() == ["AU1", "2", "50.0%"] and au["AU2"].split() == ["AU2", "1", "25.0%"]
    assert au["AU4"].split() == ["AU4", "0", "0.0%"]


def test_au_occurrence_of_an_au_only_conversion_needs_no_verify(au_dataset):
    rc, out, _ = _run(inspect_dataset.run, [au_dataset["au_only"]])
    assert rc == 0 and "4 AU-labelled frames, every written labelled frame" in out
    assert _au_lines(out)["AU1"].split() == ["AU1", "2", "50.0%"]


def test_va_grid_bucket_names_are_explained(tmp_path):
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    vf.write_face_video(videos / "a.avi", [4] * 4)
    abaw.write_annotation(ann, "va", "train", "a", [(-0.9, 0.9)] * 4)
    rc, _, err = _run(convert.run, ["--videos", videos, "--annotations", ann, "--output", tmp_path / "out",
                                    "--clip_length", "4", "--bucket_by", "va_grid", "--runner", "DirectRunner",
                                    "--direct_running_mode", "in_memory", "--progress_every", "0"])
    assert rc == 0, err
    rc, out, _ = _run(inspect_dataset.run, [tmp_path / "out"])
    assert rc == 0
    assert ("va_grid cells v<i>_a<j>: valence bin i, arousal bin j of a 4x4 grid over [-1, 1], counted from -1 "
            "upwards (0: [-1.0, -0.5), 1: [-0.5, +0.0), 2: [+0.0, +0.5), 3: [+0.5, +1.0]); no_va:") in out
    assert "v0_a3" in out  # Valence -0.9 is in bin 0, arousal 0.9 in bin 3.


def test_verify_reads_raw_crops_and_names_a_codec_that_disagrees(tmp_path):
    from trainer_data import write_dataset

    write_dataset(tmp_path / "raw", num_clips_per_class={"A": 2, "B": 2}, clip_length=4, crop_size=16, codec="raw")
    rc, out, err = _run(inspect_dataset.run, [tmp_path / "raw", "--verify"])
    assert rc == 0, out + err
    assert "crops 16x16 (raw)" in out
    path = tmp_path / "raw" / "dataset_info.json"
    info = json.loads(path.read_text())
    info["options"]["codec"], info["crop_size"] = "jpeg", 15
    path.write_text(json.dumps(info))
    rc, out, err = _run(inspect_dataset.run, [tmp_path / "raw", "--verify"])
    assert rc != 0
    assert "crops stored as raw, but dataset_info says codec jpeg" in out + err
    assert "crops of 16x16 pixels, but dataset_info says crop_size 15" in out + err


def test_verify_counts_labels_out_of_range_of_the_label_names(copy):
    # dataset_info.json's expression names cut to 3: the records' Happiness (4) and Sadness (5) frames are then out of
    # range, which the trainer takes as no label (it trained on what was left, with --verify saying OK).
    _edit_info(copy, lambda raw: raw["label_names"].update(expression=raw["label_names"]["expression"][:3]))
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1, err
    assert "train: 3 frames hold a label out of range of dataset_info's label names" in err
    assert "validation: 5 frames hold a label out of range" in err


def test_the_three_label_rules_agree():
    # The conversion's "labelled" (any label that is not the no-label marker: inspect_dataset.labelled_frames), the
    # trainer's "labelled" (a label in range: trainer.input.frames.labelled_frames, which coverage counts) and
    # inspect's "out of range" must fit together: trainer's = conversion's and not out of range, frame for frame.
    import types

    import numpy as np
    import tensorflow as tf

    from tfrecords_schema import keys
    from trainer.input import frames as frames_lib

    rng = np.random.default_rng(0)
    n, classes = 4000, 7
    expression = rng.choice([keys.EXPRESSION_INVALID, 0, 3, 6, 7, 99, -2], n)
    va = rng.choice([keys.VA_INVALID, -1.0, 0.3, 1.0, 1.5, -3.0, np.nan], (n, 2)).astype(np.float32)
    aus = rng.choice([keys.AU_INVALID, 0, 1, 2], (n, 3), p=[0.4, 0.3, 0.25, 0.05])
    clip = types.SimpleNamespace(expression=expression, valence_arousal=va, action_units=aus)
    conversion = inspect_dataset.labelled_frames(clip)
    out_of_range = inspect_dataset.out_of_range_frames(clip, classes)
    window = {"expression": tf.constant(expression), "valence_arousal": tf.constant(va),
              "action_units": tf.constant(aus), "num_valid": tf.constant(n), "has_face": tf.zeros(n, tf.bool)}
    trainer = frames_lib.labelled_frames(window, classes).numpy()
    np.testing.assert_array_equal(trainer | out_of_range, conversion)
    assert trainer.sum() and (out_of_range & ~trainer).sum() and (out_of_range & trainer).sum()  # All cases occur.


def test_an_output_without_dead_letters_names_no_file_for_them(copy):
    _edit_info(copy, lambda raw: raw.update(failures={"dead_letters": 0, "by_reason": {}, "files": []}))
    rc, out, _ = _run(inspect_dataset.run, [copy])
    assert rc == 0 and "failures: 0 dead letters {}\n" in out  # (It read "... {} in " and named nothing.)


def test_verify_catches_a_split_whose_frame_count_disagrees_with_its_shards(copy):
    # num_frames of a split is what the summary prints ("[train] 2 clips, 6 frames"); edited to 11, --verify said
    # "OK, 3 shards, 4 records and 16 frames match dataset_info" while the shards hold 11.
    _edit_info(copy, lambda raw: raw["splits"]["train"].update(num_frames=raw["splits"]["train"]["num_frames"] + 5))
    rc, out, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1, out
    assert "train: shards list 6 frames, num_frames says 11" in err


def test_verify_catches_shards_of_a_split_that_dataset_info_does_not_list(copy):
    # Shards copied by hand into a new split folder: --verify said OK (only the listed splits' folders were looked at),
    # and `evaluate --split test` then said the split does not exist.
    shard = _a_shard(copy)
    (copy / "test").mkdir()
    shutil.copy(shard, copy / "test" / "abaw-test.tfrecord-00000-of-00001")
    rc, _, err = _run(inspect_dataset.run, [copy, "--verify"])
    assert rc == 1
    assert "test/abaw-test.tfrecord-00000-of-00001: shard file not listed in dataset_info (it has no split 'test')" in err


@pytest.mark.parametrize("version", ["newer", "unknown"])
def test_a_dataset_info_of_another_schema_version_says_what_to_do(copy, version):
    # A version newer than this tool's was told to "Convert the data again with this version of beam_jobs.convert":
    # an older converter than the one that wrote it.
    from tfrecords_schema.version import SCHEMA_VERSION

    _edit_info(copy, lambda raw: raw.update(schema_version=SCHEMA_VERSION + 1 if version == "newer" else "3.1"))
    rc, _, err = _run(inspect_dataset.run, [copy])
    assert rc == 1
    if version == "newer":
        assert f"has schema version {SCHEMA_VERSION + 1}, newer than this AffectStream reads" in err
        assert "upgrade AffectStream" in err and "Convert the data again" not in err
    else:
        assert "has schema version '3.1'" in err and "Convert the data again" in err


def test_reading_an_output_a_conversion_has_not_finished_says_so(tmp_path):
    # evaluate / train --data on it said only "dataset_info.json not found: --data must be the output directory of
    # beam_jobs.convert", as for a folder that was never a conversion's; inspect named the staging folder and the lock.
    import subprocess
    import sys

    from tfrecords_schema import DatasetInfoError, read_dataset_info
    from tfrecords_schema.locks import lock_output

    out = tmp_path / "out"
    out.mkdir()
    with lock_output(str(out), command="convert into out"):
        with pytest.raises(DatasetInfoError, match=rf"`convert into out` \(pid {os.getpid()}\) is running and holds "
                                                   rf"{out}: read it once that run has finished"):
            read_dataset_info(str(out))
    # Killed while writing: its staging folder and lock stay behind.
    killed = ("import os, sys\nfrom tfrecords_schema.locks import lock_output\n"
              "from tfrecords_schema.transaction import output_transaction\n"
              "lock = lock_output(sys.argv[1], command='convert'); lock.__enter__()\n"
              "with output_transaction(sys.argv[1]) as staging:\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", killed, str(out)]).returncode == 9
    with pytest.raises(DatasetInfoError) as e:
        read_dataset_info(str(out))
    assert "`convert` (pid " in str(e.value) and f"stopped before it finished writing {out}" in str(e.value)
    assert f"affectstream inspect {out}" in str(e.value)
    with pytest.raises(DatasetInfoError) as e:  # Never a conversion's: as before.
        read_dataset_info(str(tmp_path))
    assert "stopped before" not in str(e.value) and "is running" not in str(e.value)
