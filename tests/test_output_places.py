"""Where a conversion writes (issue 20 points 1, 2 and 8): nothing that appears during a run is deleted, outputs on
mount points and other file systems, the checks before any work, and the real free space of a full disk.

Real conversions (DirectRunner, in memory) of a tiny generated dataset. The file-system cases use real tmpfs mounts
(``mount`` needs root; skipped elsewhere, with the reason): a mount point cannot be renamed (EBUSY) and a rename
between file systems fails (EXDEV), exactly what a Docker volume or a mounted data disk does to an output.
"""

from __future__ import annotations

import json
import os

import pytest
from convert_runs import run_convert, tree, write_inputs
from mounts import tmpfs

from beam_jobs.pipeline import output_folder
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import read_dataset_info


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


class _WritesIntoTheOutput(AbawSource):
    """An adapter that, while the pipeline runs, puts a user's files into the output folder."""

    def __init__(self, *args, output=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.output = output

    def read_labels(self, track):
        (self.output / "analysis").mkdir(parents=True, exist_ok=True)
        (self.output / "my_notes.txt").write_text("my notes")
        (self.output / "analysis" / "plot.png").write_bytes(b"\x89PNG")
        return super().read_labels(track)


def test_overwrite_never_deletes_what_appeared_during_the_run(inputs, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_convert(*inputs, out)
    assert rc == 0, err
    before = tree(out)
    source = _WritesIntoTheOutput(str(inputs[0]), str(inputs[1]), output=out)
    rc, _, err = run_convert(*inputs, out, "--overwrite", "--bucket_by", "none", source=source)
    assert rc == 2, err
    assert err.count("\n") == 1 and "changed during the run" in err and "my_notes.txt" in err and "analysis/" in err
    assert (out / "my_notes.txt").read_text() == "my notes" and (out / "analysis" / "plot.png").exists()
    (kept,) = [p for p in out.iterdir() if p.name.startswith("out.new-")]
    assert str(out) in err and str(kept) in err  # Both outputs named.
    now = tree(out)
    assert {k: v for k, v in now.items() if k.split("/")[0] in ("dataset_info.json", "train", "validation")} == before
    assert read_dataset_info(str(kept)).bucket_by == "none"  # The new output is complete, beside the previous one.
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ------------------------------------------------------------------------------------------ real file systems

def test_an_output_that_is_a_mount_point_is_written_and_replaced(inputs, tmp_path):
    with tmpfs(tmp_path / "volume", "16m") as volume:
        assert os.path.ismount(volume)
        rc, out, err = run_convert(*inputs, volume)
        assert rc == 0, err
        assert f"[convert] output {volume}: a mount point, staged inside it (one file system)" in out
        assert sorted(os.listdir(volume)) == ["dataset_info.json", "train", "validation"]
        rc, _, err = run_convert(*inputs, volume, "--overwrite", "--bucket_by", "none")
        assert rc == 0, err
        assert sorted(os.listdir(volume / "train")) == ["abaw-train.tfrecord-00000-of-00001"]
        assert sorted(os.listdir(volume)) == ["dataset_info.json", "train", "validation"]
        assert os.path.ismount(volume) and sorted(os.listdir(tmp_path)) == ["volume"]


def test_a_fresh_ext4_disk_with_its_lost_found_is_written_and_replaced(inputs, tmp_path):
    # mkfs.ext4 leaves lost+found/ at the root: --output on a new data disk was refused as "not empty", and with
    # --overwrite as "not a conversion output" (no dataset_info.json).
    with tmpfs(tmp_path / "disk", "16m") as disk:
        (disk / "lost+found").mkdir(mode=0o700)
        for extra in ((), ("--overwrite",)):
            rc, _, err = run_convert(*inputs, disk, *extra)
            assert rc == 0, err
            assert sorted(os.listdir(disk)) == ["dataset_info.json", "lost+found", "train", "validation"]
    plain = tmp_path / "plain"  # Not a mount point: a lost+found there is a user's folder like any other.
    (plain / "lost+found").mkdir(parents=True)
    rc, _, err = run_convert(*inputs, plain, "--overwrite")
    assert rc == 2 and "no dataset_info.json" in err, err


def test_a_small_parent_disk_is_never_used_for_staging(inputs, tmp_path):
    # The parent holds 64 KiB; the output is a 16 MiB disk mounted below it. Staging beside the output would fill
    # the parent; staging inside never touches it.
    with tmpfs(tmp_path / "small", "64k") as small, tmpfs(small / "data", "16m") as data:
        rc, _, err = run_convert(*inputs, data, "--crop_size", "200")  # About 1 MB of shards and as much spill.
        assert rc == 0, err
        rc, _, err = run_convert(*inputs, data, "--overwrite", "--crop_size", "200", "--bucket_by", "none")
        assert rc == 0, err
        assert sorted(os.listdir(small)) == ["data"]


def test_a_full_disk_reports_the_free_space_of_the_outputs_own_file_system(inputs, tmp_path):
    with tmpfs(tmp_path / "tiny", "256k") as tiny:
        rc, _, err = run_convert(*inputs, tiny, "--crop_size", "400")  # 169 KB of shards, as much spill.
        assert rc == 1
        assert err.count("\n") == 1 and err.startswith(f"convert: error: disk full while writing {tiny}:"), err
        assert "free of 256.0 KiB on its file system" in err  # The mount's, not the big disk its parent is on.
        free = err.split(f"{tiny}: ")[1].split(" free of")[0]
        assert free in ("256.0 KiB", "252.0 KiB", "248.0 KiB")  # Measured after the staging folder was removed.
        assert os.listdir(tiny) == []


def test_a_read_only_output_is_refused_up_front_in_one_line(inputs, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        rc, out, err = run_convert(*inputs, ro)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"--output {ro} cannot be written: {ro} is on a read-only file system; nothing was written" in err
        assert "[convert]" not in out  # Before any work: the inputs were not even listed.


def test_a_previous_output_entry_on_another_file_system_is_refused_before_any_work(inputs, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_convert(*inputs, out)
    assert rc == 0, err
    with tmpfs(out / "validation", "1m") as mounted:
        (mounted / "abaw-validation.tfrecord-00000-of-00001").write_bytes(b"")
        rc, out_text, err = run_convert(*inputs, out, "--overwrite")
        assert rc == 2 and err.count("\n") == 1, err
        assert f"{mounted} is on another file system (a mount point) than {out}" in err
        assert "[convert]" not in out_text


def test_low_space_is_one_warning_line_up_front(inputs, tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "out"
        rc, _, err = run_convert(*inputs, out, "--crop_size", "200")
        assert rc == 0, err
        previous = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"x" * (free - previous))  # Less than twice the previous output stays free.
        rc, _, err = run_convert(*inputs, out, "--overwrite", "--crop_size", "200")
        first = err.splitlines()[0]
        assert first.startswith(f"convert: warning: {out}: only ") and "needed (twice the previous output)" in first
        assert json.loads((out / "dataset_info.json").read_text())["crop_size"] == 200  # Previous or new: whole.


def test_an_output_named_like_a_pattern_is_written_and_replaced_whole(inputs, tmp_path):
    # Beam's FileSystems.match and delete take a path for a pattern: in "run [v2]" the run failed on its first shard
    # (IndexError), and with the name matching nothing the temp folder stayed in the output.
    out = tmp_path / "run [v2] é*?"
    for extra in ((), ("--overwrite",)):
        rc, stdout, err = run_convert(*inputs, out, *extra, "--progress_every", "1")
        assert rc == 0, err
        assert sorted(os.listdir(out)) == ["dataset_info.json", "train", "validation"], err
        assert "tracks 2/2" in stdout and "in 1 worker processes" in stdout  # The progress markers were found.
    assert read_dataset_info(str(out)).splits["train"].num_clips == 2


def test_overwrite_of_a_folder_without_dataset_info_is_refused_without_walking_it(tmp_path, monkeypatch):
    # A typo such as --output /data for /data/records: every file below was listed before the refusal (minutes on a
    # share with millions of files), only to look for an object-store run's .tmp-convert/.
    data = tmp_path / "data"
    (data / "records" / "deep").mkdir(parents=True)
    (data / "records" / "deep" / "x.bin").write_bytes(b"x")
    walked, walk = [], os.walk
    monkeypatch.setattr(os, "walk", lambda top, *a, **k: walked.append(top) or walk(top, *a, **k))
    with pytest.raises(output_folder.OutputRefused, match="it has no dataset_info.json"):
        output_folder.check_output(str(data), overwrite=True)
    assert walked == []


def _access_as_owner(path, mode, **_):
    """os.access as the folder's owner sees it (root passes every check whatever the mode bits)."""
    try:
        bits = os.stat(path).st_mode
    except OSError:
        return False
    return all(bits & bit for flag, bit in ((os.R_OK, 0o400), (os.W_OK, 0o200), (os.X_OK, 0o100)) if mode & flag)


def test_a_previous_folder_the_user_cannot_write_is_refused_before_any_work(inputs, tmp_path, monkeypatch):
    # Found only in the swap, it stopped the swap halfway: the previous dataset_info.json already moved aside (the
    # output unreadable until a run could finish the swap, which meets the same folder).
    out = tmp_path / "out"
    rc, _, err = run_convert(*inputs, out)
    assert rc == 0, err
    before = tree(out)
    (out / "train").chmod(0o555)
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", _access_as_owner)
    try:
        rc, _, err = run_convert(*inputs, out, "--overwrite")
    finally:
        (out / "train").chmod(0o755)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{out / 'train'} is a folder this user cannot write" in err and "nothing was written" in err
    assert tree(out) == before and sorted(os.listdir(out)) == ["dataset_info.json", "train", "validation"]
