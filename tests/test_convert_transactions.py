"""The conversion's output is a transaction under a lock (issue 11 points 1-2, issue 8 point 7).

Real conversions (DirectRunner, in memory) of a tiny generated dataset into real folders: a new output replaces
the previous one only after success; a typo, a failed pipeline, a full disk or a kill leave the previous output
as it was and no temporary folder behind; a second run into a locked output refuses, naming the holder; a stale
lock and a killed run's staging folder are taken over and removed with a message; ``--overwrite`` replaces only
an output this tool wrote and never deletes anything else.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import abaw_layout as abaw
import pytest
import video_fixtures as vf
from convert_runs import COMMON, run_convert, tree, write_inputs
from mounts import tmpfs

from beam_jobs import convert
from beam_jobs.pipeline import output_folder
from beam_jobs.pipeline.config import TMP_DIRNAME
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import read_dataset_info
from tfrecords_schema.atomic import INCOMPLETE_MARK
from tfrecords_schema.cli import BEAM_CONTROL_THREAD, BEAM_WORKER_THREAD
from tfrecords_schema.dataset_info import CONVERT_TMP_DIRNAME
from tfrecords_schema.locks import LOCK_FILENAME, lock_output, process_identity
from tfrecords_schema.transaction import MARKER_FILENAME, STATE_WRITING, TOOL, output_transaction

FORK = multiprocessing.get_context("fork")
# Python 3.12 warns on fork() in a process with threads (TensorFlow's): the children run only file-system calls.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def previous(inputs, tmp_path):
    """A finished conversion output in a folder of its own: (output, its files' hashes)."""
    out = tmp_path / "outs" / "out"
    rc, _, err = run_convert(*inputs, out)
    assert rc == 0, err
    return out, tree(out)


def assert_untouched(previous) -> None:
    out, before = previous
    assert tree(out) == before
    assert sorted(os.listdir(out.parent)) == ["out"]  # No staging folder, backup or lock left beside it.


class _FailingCountSource(AbawSource):
    """An adapter failing inside the pipeline: its labels raise, and counting their lines runs ``fail``."""

    def __init__(self, *args, fail=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail = fail

    def read_labels(self, track):
        raise KeyError("adapter bug")

    def count_labelled_lines(self, track):
        self.fail()
        return 0, []


def _raise():
    raise RuntimeError("worker crashed")


def _fill_the_disk():
    with open("/dev/full", "wb") as f:  # A real ENOSPC from the kernel, raised in the pipeline's worker.
        f.write(b"x" * 65536)
        f.flush()


def test_a_new_output_records_the_users_output_and_leaves_nothing_beside_it(previous):
    out, _ = previous
    info = read_dataset_info(str(out))
    assert info.options["output"] == str(out)  # Not the staging folder the workers wrote into.
    assert ".incomplete-" not in (out / "dataset_info.json").read_text()
    assert sorted(os.listdir(out)) == ["dataset_info.json", "train", "validation"]
    assert sorted(os.listdir(out.parent)) == ["out"]


def test_a_typo_in_the_annotations_leaves_the_previous_output_untouched(inputs, previous):
    ann, videos = inputs
    rc, _, err = run_convert(ann.parent / "annotatoins", videos, previous[0], "--overwrite")
    assert rc != 0 and "annotatoins" in err
    assert_untouched(previous)
    rc, _, err = run_convert(videos, videos, previous[0], "--overwrite")  # Exists, holds no annotation: found late.
    assert rc == 1 and "no ABAW annotation files" in err
    assert_untouched(previous)


def test_a_failed_pipeline_leaves_the_previous_output_and_no_staging_folder(inputs, previous):
    ann, videos = inputs
    source = _FailingCountSource(str(ann), str(videos), fail=_raise)
    rc, _, err = run_convert(ann, videos, previous[0], "--overwrite", source=source)
    assert rc == 1 and "the pipeline failed" in err and "worker crashed" in err
    assert_untouched(previous)


def test_a_full_disk_inside_the_pipeline_is_one_line_and_cleans_up(inputs, previous):
    ann, videos = inputs
    source = _FailingCountSource(str(ann), str(videos), fail=_fill_the_disk)
    rc, _, err = run_convert(ann, videos, previous[0], "--overwrite", source=source)
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("convert: error: disk full while writing "), err
    assert str(previous[0].parent) in err and "free of" in err
    assert_untouched(previous)


def test_a_run_where_nothing_can_be_written_keeps_the_previous_output(inputs, previous, tmp_path):
    ann, _ = inputs
    (tmp_path / "empty_videos").mkdir()  # A typo'd --videos: every track is no_media.
    rc, _, err = run_convert(ann, tmp_path / "empty_videos", previous[0], "--overwrite")
    assert rc == 1 and "nothing could be written" in err and "no_media" in err
    assert f"the previous output in {previous[0]} is kept unchanged" in err
    assert_untouched(previous)


def test_overwrite_replaces_a_previous_output_only_after_success(inputs, previous):
    rc, _, err = run_convert(*inputs, previous[0], "--overwrite", "--bucket_by", "none")
    assert rc == 0, err
    assert sorted(os.listdir(previous[0] / "train")) == ["abaw-train.tfrecord-00000-of-00001"]
    assert sorted(os.listdir(previous[0].parent)) == ["out"]


# ------------------------------------------------------------------------------------------------ locks
def _hold_lock(output, ready, release):
    with lock_output(str(output), command="the other conversion"):
        ready.set()
        release.wait(60)


def test_a_second_run_into_a_locked_output_refuses_naming_the_holder(inputs, previous):
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_lock, args=(previous[0], ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        rc, _, err = run_convert(*inputs, previous[0], "--overwrite")
        assert rc == 1
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "the other conversion" in err
        assert {k: v for k, v in tree(previous[0]).items() if k != ".affectstream.lock"} == previous[1]
    finally:
        release.set()
        holder.join(30)
    rc, _, err = run_convert(*inputs, previous[0], "--overwrite")  # Released: the next run goes ahead.
    assert rc == 0, err


def _killed_mid_run(output, started):
    """A conversion killed with SIGKILL while it holds the lock and writes its staging folder."""
    with lock_output(str(output), command="killed conversion"), \
            output_transaction(str(output), replace=True) as staging:
        (pathlib.Path(staging) / TMP_DIRNAME).mkdir()
        (pathlib.Path(staging) / TMP_DIRNAME / "half.bin").write_bytes(b"x" * 1000)
        started.set()
        os.kill(os.getpid(), signal.SIGKILL)  # No cleanup at all, as `kill -9` or the OOM killer.


def test_a_killed_runs_lock_and_staging_folder_are_taken_over_and_removed(inputs, previous):
    from beam_jobs import inspect_dataset

    started = FORK.Event()
    child = FORK.Process(target=_killed_mid_run, args=(previous[0], started))
    child.start()
    child.join(60)
    assert started.is_set() and child.exitcode == -signal.SIGKILL
    # Inside the output: the dead run's lock and its staging folder; nothing beside it.
    assert sorted(os.listdir(previous[0]))[:2] == [".affectstream.lock", ".out.incomplete-" + sorted(
        os.listdir(previous[0]))[1].split("-")[-1]] and sorted(os.listdir(previous[0].parent)) == ["out"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert inspect_dataset.run([str(previous[0])]) == 0
    said = out.getvalue()
    assert f"pid {child.pid}" in said and ".out.incomplete-" in said and "the next conversion takes the lock over" in said
    rc, _, err = run_convert(*inputs, previous[0], "--overwrite")
    assert rc == 0, err
    assert "took over the stale lock" in err and f"pid {child.pid}" in err
    assert "leftover of an earlier run: staging" in err and "remove it: done" in err
    assert sorted(os.listdir(previous[0].parent)) == ["out"]


def _killed_in_the_swap(output, staged_from):
    """A run killed in its swap: the previous dataset_info.json and one more entry already in the backup."""
    moves = []
    rename = os.rename

    def rename_then_die(src, dst):
        if ".replaced-" in os.path.dirname(dst):
            moves.append(dst)
            if len(moves) == 2:
                os._exit(9)
        rename(src, dst)

    with lock_output(str(output), command="killed conversion"), \
            output_transaction(str(output), replace=True) as staging:
        shutil.copytree(staged_from, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))  # A new output.
        os.rename = rename_then_die


def test_a_kill_in_the_swap_is_finished_by_the_next_run(inputs, previous, tmp_path):
    out, before = previous
    child = FORK.Process(target=_killed_in_the_swap, args=(out, str(out)))
    child.start()
    child.join(60)
    assert child.exitcode == 9 and not (out / "dataset_info.json").exists()  # Killed with the swap half done.
    # The next run repairs the output first (it was refused as "no dataset_info.json": not this tool's), then
    # says that the output, complete again, is not replaced without --overwrite.
    rc, _, err = run_convert(*inputs, out)
    assert rc == 2 and "leftover of an earlier run: staging" in err and "already exists" in err, err
    assert {k: v for k, v in tree(out).items() if not k.startswith(".")} == before
    rc, _, err = run_convert(*inputs, out, "--overwrite")
    assert rc == 0, err
    assert sorted(os.listdir(out.parent)) == ["out"]


def test_a_killed_runs_lock_under_a_pid_used_again_is_taken_over(inputs, previous):
    # A run restarted after a kill (a process supervisor in the same container, a rebooted host) can get the dead
    # run's pid: its lock and staging folder read as held by the new run itself ("held by pid N", N its own), run
    # after run.
    out, before = previous
    me, txn = os.getpid(), "0123456789abcdef"
    boot, ticks, namespace = process_identity(me).split()
    dead = {"host": socket.gethostname(), "pid": me, "started": "2026-01-02T03:04:05+00:00",
            "process": f"{boot} {int(ticks) - 1000} {namespace}",  # An earlier process, same pid and namespace.
            "command": "killed conversion"}
    (out / LOCK_FILENAME).write_text(json.dumps({**dead, "token": "f" * 32}))
    staging = out / f".out{INCOMPLETE_MARK}{txn}"
    staging.mkdir()
    (staging / MARKER_FILENAME).write_text(json.dumps({**dead, "tool": TOOL, "target": "out", "id": txn,
                                                       "state": STATE_WRITING}))
    rc, _, err = run_convert(*inputs, out, "--overwrite")
    assert rc == 0, err
    assert f"took over the stale lock {out / LOCK_FILENAME} of pid {me}" in err
    assert f"leftover of an earlier run: staging {staging}" in err and "remove it: done" in err
    assert sorted(tree(out)) == sorted(before) and sorted(os.listdir(out.parent)) == ["out"]


# ---------------------------------------------------------------------------------------- --overwrite safety
def test_overwrite_refuses_a_folder_with_an_errors_subfolder_and_a_user_file(inputs, tmp_path):
    mine = tmp_path / "project"
    (mine / "errors").mkdir(parents=True)
    (mine / "errors" / "notes.txt").write_text("my notes")
    (mine / "precious.txt").write_text("keep")
    before = tree(mine)
    rc, _, err = run_convert(*inputs, mine, "--overwrite")
    assert rc == 2 and "does not look like a conversion output" in err and "Nothing was deleted" in err
    assert tree(mine) == before and sorted(os.listdir(tmp_path)) == ["project"]


def test_overwrite_refuses_our_output_with_a_foreign_entry_and_names_it(previous, inputs):
    out, _ = previous
    (out / "README.md").write_text("mine")
    (out / "train" / "labels.csv").write_text("mine")
    before = tree(out)
    rc, _, err = run_convert(*inputs, out, "--overwrite")
    assert rc == 2 and "2 entries this tool did not write: README.md, train/labels.csv" in err
    assert tree(out) == before
    assert output_folder.foreign_entries(str(out)) == ["README.md", "train/labels.csv"]


def test_overwrite_refuses_another_tools_dataset_info(inputs, tmp_path):
    tfds = tmp_path / "tfds"
    (tfds / "train").mkdir(parents=True)
    (tfds / "dataset_info.json").write_text(json.dumps({"name": "mnist", "version": "3.0.1"}))
    (tfds / "train" / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
    rc, _, err = run_convert(*inputs, tfds, "--overwrite")
    assert rc == 2 and "its dataset_info.json is not one this tool writes" in err
    assert sorted(p.name for p in tfds.rglob("*")) == ["dataset_info.json", "mnist-train.tfrecord-00000-of-00001",
                                                      "train"]


def test_overwrite_never_follows_a_symlink_inside_the_output(previous, inputs, tmp_path):
    out, _ = previous
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_text("not ours")
    (out / "validation" / "linked").symlink_to(elsewhere)
    rc, _, err = run_convert(*inputs, out, "--overwrite")
    assert rc == 2 and "validation/linked" in err
    assert (elsewhere / "data.bin").read_text() == "not ours"


def test_the_temp_folder_name_is_declared_once_for_both_sides():
    assert TMP_DIRNAME == CONVERT_TMP_DIRNAME  # The job writes it, inspect (no Beam import) looks for it.


def test_disk_space_estimate_scales_the_spill_by_the_tracks_done(tmp_path):
    tmp = tmp_path / "staging" / TMP_DIRNAME
    (tmp / "spill").mkdir(parents=True)
    (tmp / "progress").mkdir()
    (tmp / "spill" / ("0" * 32 + ".bin")).write_bytes(b"x" * 3000)
    assert output_folder.estimate_needed_bytes(str(tmp_path / "staging"), 4) is None  # No track done yet.
    (tmp / "progress" / ("a" * 40 + ".json")).write_text("{}")
    assert output_folder.estimate_needed_bytes(str(tmp_path / "staging"), 4) == 2 * 3000 * 4


# ------------------------------------------------------------------------------------- messages of discovery
def test_a_manifest_run_without_tracks_names_what_was_searched(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,split,expression\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = convert.run(["--dataset", "manifest", "--manifest", str(manifest), "--videos", str(tmp_path),
                          "--output", str(tmp_path / "out"), *COMMON])
    assert rc == 1
    assert f"no annotated tracks found: searched --dataset manifest (--manifest {manifest}, --videos {tmp_path})" \
        in err.getvalue() and "None" not in err.getvalue()
    assert not (tmp_path / "out").exists()


def test_an_ambiguous_media_dead_letter_lists_its_candidates(tmp_path):
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    vf.write_face_video(videos / "one" / "clip.avi", [4] * 3)
    vf.write_face_video(videos / "two" / "clip.mp4", [4] * 3)
    abaw.write_annotation(ann, "expr", "train", "clip", [4] * 3)
    vf.write_face_video(videos / "ok.avi", [1] * 3)
    abaw.write_annotation(ann, "expr", "train", "ok", [1] * 3)
    rc, _, err = run_convert(ann, videos, tmp_path / "out")
    assert rc == 0, err
    letters = [json.loads(line) for line in (tmp_path / "out" / "errors" / "dead_letters.jsonl").open()]
    (ambiguous,) = [d for d in letters if d["reason"] == "ambiguous_media"]
    assert "one/clip.avi" in ambiguous["message"] and "two/clip.mp4" in ambiguous["message"]


def test_a_keyboard_interrupt_is_known_in_each_form_beam_re_raises_it():
    assert convert._interrupted(RuntimeError("KeyboardInterrupt [while running 'ConvertTracks/DecodeAndCrop']"))
    worker = RuntimeError("Traceback (most recent call last):\n  File \"sdk_worker.py\", line 1\nKeyboardInterrupt\n")
    assert convert._interrupted(worker)  # A worker process's failure: its traceback's text.
    chained = RuntimeError("the pipeline failed")
    chained.__cause__ = KeyboardInterrupt()
    assert convert._interrupted(chained)
    assert not convert._interrupted(RuntimeError("OSError: [Errno 28] No space left on device"))


def test_ctrl_c_ends_a_run_with_code_130_in_one_line_and_the_previous_output_kept(tmp_path):
    long_video = vf.write_face_video(tmp_path / "v" / "long.avi", [4] * 12000, height=64, width=64)
    vf.write_face_video(tmp_path / "v" / "short.avi", [4] * 6, height=64, width=64)
    (tmp_path / "short.csv").write_text("path,split,expression\nshort.avi,train,happy\n", encoding="utf-8")
    (tmp_path / "long.csv").write_text(f"path,split,expression\n{long_video.name},train,happy\n", encoding="utf-8")
    out = tmp_path / "out"

    def command(manifest, *extra, workers="1"):
        return [sys.executable, "-m", "affectstream.cli", "convert", "--dataset", "manifest", "--manifest",
                str(tmp_path / manifest), "--videos", str(tmp_path / "v"), "--output", str(out), "--runner",
                "DirectRunner", "--direct_num_workers", workers, "--progress_every", "0", *extra]

    # The previous output, written in this process: only the interrupted runs below need processes of their own.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert convert.run(command("short.csv")[4:]) == 0, err.getvalue()
    before = tree(out)
    # SIGINT at its default (a shell's background job inherits it ignored): Python turns it into KeyboardInterrupt.
    # SIGTERM (a scheduler, `kill`) unwinds the same way through `affectstream convert` (it left the staging folder,
    # the lock and the Beam workers behind).
    # SIGTERM as the Beam worker processes start (the runner's): they are ended too. Before, a worker still starting
    # up waited for ever for the runner, and the runner for it (4 of 8 such kills hung).
    # Ctrl-C in a terminal: SIGINT to the whole process group, the worker processes too. The runner's threads that saw
    # them go printed a traceback each before the one line (the workers' own still print: Beam starts them through a
    # shell, tfrecords_schema.cli.interrupts_said_once). With one worker, Beam logged the step it stopped, traceback
    # and all.
    for signum, code, word, workers, delay, group in ((signal.SIGINT, 130, "interrupted", "1", 1.5, False),
                                                      (signal.SIGTERM, 143, "terminated", "1", 1.5, False),
                                                      (signal.SIGTERM, 143, "terminated", "2", 0.5, False),
                                                      (signal.SIGINT, 130, "interrupted", "2", 1.5, True)):
        proc = subprocess.Popen(command("long.csv", "--overwrite", workers=workers), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=group,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        for line in proc.stdout:  # Discovery is done and the pipeline starts: ~9 s of work on 2 cores follow.
            if line.startswith("[convert] 1 tracks"):
                break
        time.sleep(delay)
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err
        assert err.splitlines()[-1] == f"convert: {word}; {out} is as it was before the run"
        runner_threads = [f"Exception in thread {name}:" for name in (BEAM_WORKER_THREAD, BEAM_CONTROL_THREAD)]
        assert not [t for t in runner_threads if t in err] and (group or "Traceback" not in err), err
        assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["long.csv", "out", "short.csv", "v"]
        assert not [n for n in os.listdir(out) if n.startswith(".")]  # No staging folder or lock left.


# ------------------------------------------------------------------------------------ a really full file system
@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs the right to mount; skipped elsewhere)."""
    with tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


def test_a_really_full_disk_keeps_the_previous_output_and_says_so_in_one_line(inputs, small_disk):
    out = small_disk / "out"
    rc, _, err = run_convert(*inputs, out, "--crop_size", "16")
    assert rc == 0, err
    before = tree(out)
    rc, _, err = run_convert(*inputs, out, "--overwrite", "--crop_size", "400")  # 169 KB of shards, as much spill.
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith(f"convert: error: disk full while writing {small_disk}"), err
    assert "KiB needed" in err  # Estimated from the spill: the failure came while writing shards, every track done.
    assert tree(out) == before and sorted(os.listdir(small_disk)) == ["out"]


def test_a_disk_filled_while_spilling_reports_the_space_the_failed_run_left(inputs, small_disk):
    ann, videos = inputs
    # The command as a user runs it (one worker): the report is made while the failure is being handled.
    done = subprocess.run([sys.executable, "-m", "beam_jobs.convert", "--annotations", str(ann), "--videos",
                           str(videos), "--output", str(small_disk / "out"), "--runner", "DirectRunner",
                           "--direct_num_workers", "1", "--crop_size", "400", "--codec", "raw", "--progress_every",
                           "0"], capture_output=True, text=True, check=False)  # 480 KB a frame: full at once.
    err = done.stderr
    assert done.returncode == 1 and f"convert: error: disk full while writing {small_disk}" in err, err
    free_kib, total_kib = map(float, re.search(r"([\d.]+) KiB free of ([\d.]+) KiB", err).groups())
    # Measured after the run's files are removed, so all but a few KiB is free: a spill file the failed bundle left
    # open would still take its space (4 KiB free of 256 when EncodeClipsFn did not close it).
    assert free_kib >= total_kib - 8, err
    assert sorted(os.listdir(small_disk)) == []


# ------------------------------------------------------------------------------------------- object stores
def test_object_store_output_is_replaced_only_when_ours_and_only_after_listing_the_inputs(inputs, s3_server):
    options = s3_server.beam_args
    ann, videos = inputs
    rc, _, err = run_convert(ann, videos, "s3://affect/out", *options)
    assert rc == 0, err
    written = s3_server.keys()
    s3_server.client.put_object(Bucket="affect", Key="out/notes.txt", Body=b"mine")
    rc, _, err = run_convert(ann, videos, "s3://affect/out", "--overwrite", *options)
    assert rc == 2 and "notes.txt" in err
    s3_server.client.delete_object(Bucket="affect", Key="out/notes.txt")
    rc, _, err = run_convert(ann.parent / "annotatoins", videos, "s3://affect/out", "--overwrite", *options)
    assert rc != 0 and s3_server.keys() == written  # A typo is found before the previous output is touched.
    source = _FailingCountSource(str(ann), str(videos), fail=_raise)
    rc, _, err = run_convert(ann, videos, "s3://affect/out", "--overwrite", *options, source=source)
    assert rc == 1 and "worker crashed" in err
    assert not [k for k in s3_server.keys() if f"/{TMP_DIRNAME}/" in k]  # The run's temp objects are removed.
    # What a killed (SIGKILL) in-place run left is said as such (it read "already exists and is not empty").
    for key in (f"killed/{TMP_DIRNAME}/progress/{'a' * 40}.json", f"killed/{TMP_DIRNAME}/spill/{'b' * 32}.bin"):
        s3_server.client.put_object(Bucket="affect", Key=key, Body=b"{}")
    rc, _, err = run_convert(ann, videos, "s3://affect/killed", *options)
    assert rc == 2 and f"holds what a stopped conversion left (2 object(s) under {TMP_DIRNAME}/)" in err, err
    rc, _, err = run_convert(ann, videos, "s3://affect/killed", "--overwrite", *options)
    assert rc == 0, err
    # A bucket that does not exist: refused before the run (it failed at the first shard, with tracebacks).
    rc, _, err = run_convert(ann, videos, "s3://no-such-bucket/out", *options)
    assert rc == 2 and "convert: error: cannot write to --output s3://no-such-bucket/out" in err, err
    assert err.count("\n") == 1 and not [k for k in s3_server.keys() if "write-probe" in k]



def test_an_s3_output_without_any_credentials_is_refused_at_once(inputs, s3_server, monkeypatch, tmp_path):
    # Beam's S3 client retried "Unable to locate credentials" for minutes, then failed with a traceback.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rc, _, err = run_convert(*inputs, "s3://affect/out", "--s3_endpoint_url", s3_server.url)
    assert rc == 2 and "no AWS credentials for --output s3://affect/out" in err and err.count("\n") == 1, err
    assert not s3_server.keys()  # nothing written


def test_an_output_that_is_a_symlink_is_replaced_through_the_link(inputs, tmp_path):
    real = tmp_path / "big_disk" / "records"
    rc, _, err = run_convert(*inputs, real)
    assert rc == 0, err
    link = tmp_path / "records"
    link.symlink_to(real)
    rc, _, err = run_convert(*inputs, link, "--overwrite", "--bucket_by", "none")
    assert rc == 0, err
    assert link.is_symlink() and sorted(os.listdir(link / "train")) == ["abaw-train.tfrecord-00000-of-00001"]
    assert sorted(os.listdir(real.parent)) == ["records"] and read_dataset_info(str(link)).options["output"] == str(link)
