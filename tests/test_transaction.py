"""Transactional outputs (issue 11 point 1, issue 20 points 1-2): staged inside the output, swapped entry by entry
after success only and only while nothing foreign appeared; clean failure, leftovers, foreign folders."""

import json
import multiprocessing
import os
import pathlib
import signal

import pytest

from tfrecords_schema.transaction import (
    MARKER_FILENAME,
    DiskFullError,
    SwapRefused,
    TransactionError,
    describe_disk_full,
    find_leftovers,
    output_transaction,
    read_marker,
    remove_leftovers,
)

FORK = multiprocessing.get_context("fork")
# Python 3.12 warns on fork() in a process with threads (TensorFlow's): the children run only file-system calls.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def write_tree(folder, files):
    for rel, text in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def read_tree(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path) as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


OLD = {"dataset_info.json": "old", "train/a.tfrecord": "old shard", "errors/dead_letters.jsonl": ""}
NEW = {"dataset_info.json": "new", "train/b.tfrecord": "new shard"}


@pytest.fixture()
def old_output(tmp_path):
    out = tmp_path / "out"
    write_tree(str(out), OLD)
    return out


def test_new_output_appears_whole_with_no_marker_and_nothing_beside_it(tmp_path):
    out = tmp_path / "out"
    with output_transaction(str(out)) as staging:
        # Staged inside the output: every rename stays on its file system (it may be a mount point).
        assert os.path.dirname(staging) == str(out) and os.path.basename(staging).startswith(".out.incomplete-")
        assert read_marker(staging)["pid"] == os.getpid()
        assert os.listdir(out) == [os.path.basename(staging)]  # Nothing under the final names while the job writes.
        write_tree(staging, NEW)
    assert read_tree(str(out)) == NEW
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_replace_swaps_the_previous_output_only_after_success(old_output, tmp_path):
    with output_transaction(str(old_output), replace=True) as staging:
        write_tree(staging, NEW)
        assert {k: v for k, v in read_tree(str(old_output)).items() if not k.startswith(".")} == OLD
    assert read_tree(str(old_output)) == NEW
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_existing_output_without_replace_is_refused_before_anything_is_written(old_output, tmp_path):
    with pytest.raises(TransactionError, match="already exists"), output_transaction(str(old_output)):
        pytest.fail("the block must not run")
    assert read_tree(str(old_output)) == OLD
    assert sorted(os.listdir(tmp_path)) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(TransactionError, match="not a folder"), output_transaction(str(tmp_path / "file"), replace=True):
        pass


def test_failure_inside_leaves_the_previous_output_untouched_and_no_staging(old_output, tmp_path):
    with pytest.raises(ValueError, match="typo in --annotations"), \
            output_transaction(str(old_output), replace=True) as staging:
        write_tree(staging, NEW)
        raise ValueError("typo in --annotations")
    assert read_tree(str(old_output)) == OLD
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with pytest.raises(ValueError), output_transaction(str(tmp_path / "fresh")) as staging:
        write_tree(staging, NEW)
        raise ValueError("failed first run")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # The folder it made for the run is gone again.


def test_disk_full_is_one_line_naming_the_folder_and_free_space(old_output, tmp_path):
    with pytest.raises(DiskFullError) as caught, output_transaction(str(old_output), replace=True) as staging:
        write_tree(staging, NEW)
        with open("/dev/full", "wb") as f:  # A real ENOSPC from the kernel.
            f.write(b"x" * 65536)
            f.flush()
    message = str(caught.value)
    assert "\n" not in message and str(old_output) in message and "free of" in message
    assert caught.value.errno == 28
    assert read_tree(str(old_output)) == OLD
    assert sorted(os.listdir(tmp_path)) == ["out"]
    # Wrapped by another layer (a Beam pipeline error keeps only the text): still recognised.
    with pytest.raises(DiskFullError), output_transaction(str(old_output), replace=True):
        raise RuntimeError("worker failed: OSError: [Errno 28] No space left on device")
    assert "about 2.0 GiB needed" in describe_disk_full(str(tmp_path / "missing" / "deeper"), 2 << 30)


def test_entries_that_appear_during_the_run_keep_both_outputs_and_nothing_is_deleted(old_output, tmp_path):
    def foreign(path):
        extra = sorted(set(os.listdir(path)) - {"dataset_info.json", "train", "errors"} - {
            n for n in os.listdir(path) if n.startswith(".out.")})
        return f"it holds {', '.join(extra)}" if extra else None

    with pytest.raises(SwapRefused) as caught, \
            output_transaction(str(old_output), replace=True, check_swap=foreign) as staging:
        write_tree(staging, NEW)
        write_tree(str(old_output), {"my_notes.txt": "mine", "analysis/plot.png": "png"})  # While the job runs.
    kept = caught.value.kept
    assert os.path.dirname(kept) == str(old_output) and os.path.basename(kept).startswith("out.new-")
    assert str(old_output) in str(caught.value) and kept in str(caught.value) and "my_notes.txt" in str(caught.value)
    everything = read_tree(str(old_output))
    assert {k: v for k, v in everything.items() if not k.startswith("out.new-")} == {
        **OLD, "my_notes.txt": "mine", "analysis/plot.png": "png"}
    assert read_tree(kept) == NEW  # Complete, and no longer marked: no later run removes it as a leftover.
    assert find_leftovers(str(old_output)) == [] and sorted(os.listdir(tmp_path)) == ["out"]
    # Without replace, anything appearing in a new output keeps the new output aside as well.
    fresh = tmp_path / "fresh"
    with pytest.raises(SwapRefused, match="1 entry appeared in it: notes.txt"), \
            output_transaction(str(fresh)) as staging:
        write_tree(staging, NEW)
        (fresh / "notes.txt").write_text("mine")
    assert (fresh / "notes.txt").read_text() == "mine"


def _killed_inside(out, started):
    with output_transaction(out, replace=True) as staging:
        write_tree(staging, NEW)
        started.set()
        os.kill(os.getpid(), signal.SIGKILL)  # No finally, no cleanup: as `kill -9` or the OOM killer.


def kill_a_run_inside(out):
    started = FORK.Event()
    child = FORK.Process(target=_killed_inside, args=(out, started))
    child.start()
    child.join(timeout=60)
    assert started.is_set() and child.exitcode == -signal.SIGKILL
    return child.pid


def test_killed_run_leaves_a_staging_folder_that_is_found_and_removed(old_output, tmp_path):
    pid = kill_a_run_inside(str(old_output))
    assert {k: v for k, v in read_tree(str(old_output)).items() if not k.startswith(".")} == OLD
    leftovers = find_leftovers(str(old_output))
    assert len(leftovers) == 1
    item = leftovers[0]
    assert item.kind == "staging" and not item.alive and item.info["pid"] == pid
    assert os.path.dirname(item.path) == str(old_output)
    assert os.path.basename(item.path).startswith(".out.incomplete-") and read_tree(item.path)[MARKER_FILENAME]
    assert f"pid {pid}" in item.describe() and "remove it" in item.describe()
    done = remove_leftovers(str(old_output))
    assert len(done) == 1 and done[0].endswith("done")
    assert sorted(os.listdir(tmp_path)) == ["out"] and read_tree(str(old_output)) == OLD
    assert find_leftovers(str(old_output)) == []


def test_a_kill_in_the_middle_of_the_swap_is_finished_by_the_next_run(old_output, tmp_path):
    kill_a_run_inside(str(old_output))
    (staging,) = find_leftovers(str(old_output))
    # The documented swap, killed midway: state "swapping", the previous dataset_info.json and train/ moved into the
    # backup, the new train/ moved in; the new dataset_info.json still staged.
    marker = {**staging.info, "state": "swapping", "previous": ["dataset_info.json", "errors", "train"],
              "new": ["dataset_info.json", "train"], "finish_with": ["dataset_info.json"]}
    (pathlib.Path(staging.path) / MARKER_FILENAME).write_text(json.dumps(marker))
    backup = old_output / f".out.replaced-{staging.info['id']}"
    backup.mkdir()
    (backup / MARKER_FILENAME).write_text(json.dumps(marker))
    os.rename(old_output / "dataset_info.json", backup / "dataset_info.json")
    os.rename(old_output / "train", backup / "train")
    os.rename(pathlib.Path(staging.path) / "train", old_output / "train")
    actions = [item.action for item in find_leftovers(str(old_output))]
    assert sorted(actions) == ["finish moving it into " + str(old_output) + " (the previous output's entries go), "
                               "then remove it", "remove it"]
    remove_leftovers(str(old_output))
    assert read_tree(str(old_output)) == NEW
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_live_run_is_reported_but_never_removed(tmp_path):
    out = tmp_path / "out"
    with output_transaction(str(out)) as staging:
        write_tree(staging, NEW)
        (item,) = find_leftovers(str(out))
        assert item.alive and item.path == staging
        assert "still going on" in remove_leftovers(str(out))[0]
        assert read_tree(staging)["dataset_info.json"] == "new"
    assert read_tree(str(out)) == NEW


def test_folders_that_only_look_like_ours_are_never_touched(old_output, tmp_path):
    foreign = {
        ".out.incomplete-0123456789abcdef": {"keep.txt": "no marker"},
        ".out.replaced-0123456789abcdef": {"keep.txt": "no marker"},
        ".out.incomplete-fedcba9876543210": {MARKER_FILENAME: json.dumps({"tool": "someone-else", "id": "x"})},
        ".other.incomplete-aaaaaaaaaaaaaaaa": {MARKER_FILENAME: json.dumps(
            {"tool": "affectstream", "id": "aaaaaaaaaaaaaaaa", "target": "other", "pid": 1, "host": "elsewhere"})},
    }
    for name, files in foreign.items():
        write_tree(str(old_output / name), files)
    write_tree(str(tmp_path / ".out.incomplete-00000000000000ff"), {"keep.txt": "beside, not ours"})
    kill_a_run_inside(str(old_output))  # One real leftover among them.
    assert [item.kind for item in find_leftovers(str(old_output))] == ["staging"]
    remove_leftovers(str(old_output))
    for name, files in foreign.items():
        assert read_tree(str(old_output / name)) == files
    assert read_tree(str(tmp_path / ".out.incomplete-00000000000000ff")) == {"keep.txt": "beside, not ours"}
    assert {k: v for k, v in read_tree(str(old_output)).items() if not k.startswith(".")} == OLD


S3_SCRIPT = r'''
import json, os, sys
import tensorflow_io  # noqa: F401  (registers s3://)
import tensorflow as tf
from tfrecords_schema.locks import LockHeldError, lock_output
from tfrecords_schema.transaction import find_leftovers, output_transaction, remove_leftovers

gf, root = tf.io.gfile, sys.argv[1]
out = root + "/out"

def put(path, text):
    with gf.GFile(path, "w") as f:
        f.write(text)

def tree(path):
    found = {}
    for folder, _, files in gf.walk(path):
        for name in files:
            full = folder.rstrip("/") + "/" + name
            with gf.GFile(full) as f:
                found[full[len(path) + 1:]] = f.read()
    return found

put(root + "/.out.incomplete-0123456789abcdef/keep.txt", "foreign")  # No marker: never touched.
report = {}
with lock_output(out):
    try:
        lock_output(out).acquire()
    except LockHeldError as e:
        report["refused_pid"] = e.holder.pid
    with output_transaction(out) as staging:
        put(staging + "/train/a", "old")
        put(staging + "/dataset_info.json", "old")
    report["first"] = tree(out)
    try:
        with output_transaction(out, replace=True) as staging:
            put(staging + "/dataset_info.json", "new")
            raise ValueError("late failure")
    except ValueError:
        pass
    report["after_failure"] = tree(out)
    with output_transaction(out, replace=True) as staging:
        put(staging + "/train/b", "new")
        put(staging + "/dataset_info.json", "new")
    report["replaced"] = tree(out)
report["entries"] = sorted(n.rstrip("/") for n in gf.listdir(root))
report["leftovers"] = len(find_leftovers(out))

# A run killed while copying its complete staging folder into OUT (the documented object-store swap).
import socket, subprocess
dead = subprocess.Popen([sys.executable, "-c", "pass"])
dead.wait()
killed = root + "/.out.incomplete-00000000000000aa"
put(killed + "/.affectstream-transaction.json", json.dumps({"tool": "affectstream", "target": "out",
    "id": "00000000000000aa", "host": socket.gethostname(), "pid": dead.pid, "state": "committing"}))
put(killed + "/dataset_info.json", "newest")
put(killed + "/train/c", "newest")
gf.remove(out + "/dataset_info.json")  # The copy had not reached it yet.
report["killed_action"] = [item.action for item in find_leftovers(out)]
remove_leftovers(out)
report["recovered"] = tree(out)
report["entries_after_recovery"] = sorted(n.rstrip("/") for n in gf.listdir(root))
report["pid"] = os.getpid()
print("REPORT " + json.dumps(report), flush=True)
os._exit(0)  # tensorflow-io's S3 file system aborts at interpreter exit (see tfrecords_schema/filesystems.py).
'''


def test_object_store_output_is_swapped_by_copy_and_locked_best_effort(s3_server):
    """s3:// through tensorflow-io against a moto server on loopback: the copy-based swap and the lock."""
    import subprocess
    import sys

    from tests.test_object_store import REPO

    env = {**os.environ, **s3_server.tf_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", S3_SCRIPT, f"s3://{s3_server.bucket}/root"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-4000:]
    report = json.loads(lines[0][len("REPORT "):])
    assert report["refused_pid"] == report["pid"]
    assert report["first"] == {"dataset_info.json": "old", "train/a": "old"}
    assert report["after_failure"] == report["first"]
    assert report["replaced"] == {"dataset_info.json": "new", "train/b": "new"}
    assert report["entries"] == [".out.incomplete-0123456789abcdef", "out"]  # Lock released, foreign kept.
    assert report["leftovers"] == 0
    assert report["killed_action"] == [f"finish copying it into s3://{s3_server.bucket}/root/out, then remove it"]
    assert report["recovered"] == {"dataset_info.json": "newest", "train/c": "newest"}
    assert report["entries_after_recovery"] == report["entries"]
