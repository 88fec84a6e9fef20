"""The trainer at the edges (issue 20 points 1 and 8): the export swap keeps what appeared in ``JOB/export``, a
corrupt validation shard stops a job before its first step, and a broken ``model_info.json`` is named."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import pytest
from trainer_data import corrupt_shard, run_train, shard_path, write_dataset

from tfrecords_schema.atomic import INCOMPLETE_MARK
from tfrecords_schema.transaction import MARKER_FILENAME, STATE_WRITING, TOOL, SwapRefused
from trainer.evaluation import evaluate
from trainer.model.export import ExportError, export_model, foreign_entries, read_model_info, resolve_model_dir

TINY = ["--task", "expr", "--cnn_width", "0.25", "--feature_dim", "16", "--rnn_units", "16", "--seq_len", "4",
        "--batch_size", "2", "--steps_per_epoch", "2", "--log_every", "1"]


def tree(folder) -> dict[str, str]:
    root = pathlib.Path(folder)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_model(units: int) -> keras.Model:
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, keras.layers.Dense(units, name="y")(inputs))


def test_an_export_swap_keeps_files_that_appeared_and_both_exports(tmp_path):
    export = tmp_path / "job" / "export"
    export_model(tiny_model(2), str(export), {"version": 1})
    assert foreign_entries(str(export)) == [] and sorted(os.listdir(export)) == [
        "model.keras", "model_info.json", "saved_model"]
    export_model(tiny_model(2), str(export), {"version": 2})  # Only a previous export there: replaced.
    assert read_model_info(str(export)) == {"version": 2} and sorted(os.listdir(export)) == [
        "model.keras", "model_info.json", "saved_model"]
    before = tree(export)
    (export / "my_notes.txt").write_text("mine")  # Appears while the next training runs.
    (export / "saved_model" / "plot.png").write_bytes(b"png")
    with pytest.raises(SwapRefused) as caught:
        export_model(tiny_model(4), str(export), {"version": 3})
    kept = pathlib.Path(caught.value.kept)
    assert "my_notes.txt" in str(caught.value) and "saved_model/plot.png" in str(caught.value)
    assert str(export) in str(caught.value) and str(kept) in str(caught.value)
    assert {k: v for k, v in tree(export).items() if not k.startswith(kept.name)} == {
        **before, "my_notes.txt": tree(export)["my_notes.txt"], "saved_model/plot.png": tree(export)[
            "saved_model/plot.png"]}
    assert read_model_info(str(kept)) == {"version": 3} and read_model_info(str(export)) == {"version": 2}


def test_an_export_killed_in_its_writing_leaves_nothing_after_the_next_export(tmp_path):
    export = tmp_path / "job" / "export"
    export_model(tiny_model(2), str(export), {"version": 1})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    leftover = export / f".export{INCOMPLETE_MARK}0123abcd"  # what `kill -9` during an export leaves
    leftover.mkdir()
    (leftover / "model.keras").write_bytes(b"half a model")
    (leftover / MARKER_FILENAME).write_text(json.dumps({
        "tool": TOOL, "target": "export", "id": "0123abcd", "host": socket.gethostname(),
        "pid": int(dead.stdout), "state": STATE_WRITING}))
    export_model(tiny_model(2), str(export), {"version": 2}, locked=True)  # (a training holds its job's lock)
    assert sorted(os.listdir(export)) == ["model.keras", "model_info.json", "saved_model"]
    assert read_model_info(str(export)) == {"version": 2}


def test_init_from_a_typo_or_a_checkpoint_says_so_and_names_the_job(tmp_path):
    with pytest.raises(ExportError, match=f"^--init_from {tmp_path / 'typo'} does not exist$"):
        resolve_model_dir(str(tmp_path / "typo"), "--init_from")
    checkpoints = tmp_path / "job" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')  # (what TensorFlow writes there)
    for given in (checkpoints, checkpoints / "ckpt-4"):  # the folder, or one checkpoint's prefix (no such file)
        with pytest.raises(ExportError, match=f"is a training job's checkpoint, not an export: give --init_from the "
                                              f"job folder {tmp_path / 'job'} "):
            resolve_model_dir(str(given), "--init_from")
    # A user's folder that is only named so: its Keras file gets the import-model hint, a typo in it is a typo.
    mine = tmp_path / "checkpoints"
    mine.mkdir()
    (mine / "model.keras").write_bytes(b"PK")
    with pytest.raises(ExportError, match="is a Keras model, not an export: make one with `affectstream import-model"):
        resolve_model_dir(str(mine / "model.keras"), "--init_from")
    with pytest.raises(ExportError, match="typo does not exist$"):
        resolve_model_dir(str(mine / "typo"), "--init_from")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_data")
    info = write_dataset(root, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=2,
                         num_shards_per_bucket=1, crop_size=16, clip_length=8)
    return root, info


def test_a_corrupt_validation_shard_stops_the_job_before_its_first_step(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data[0], data)
    bad = shard_path(data, tiny_data[1], "validation", 0)
    corrupt_shard(bad)  # Same size: only reading its records finds it.
    job = tmp_path / "job"
    rc, err = run_train(["--data", str(data), "--job_dir", str(job), "--epochs", "1", *TINY])
    assert rc == 1
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"validation shard {bad} is corrupt or unreadable" in line and "--skip_corrupt" in line
    assert not job.exists()  # Before the first step: nothing written, not even the job's lock.


def test_a_model_info_json_error_names_the_file(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model_info.json").write_text('{"heads": ["expression"], ')  # Cut short.
    with pytest.raises(ExportError, match=f"{export / 'model_info.json'} is not valid JSON"):
        read_model_info(str(export))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = evaluate.run(["--model", str(export), "--data", str(tmp_path / "data")])
    assert rc == 1 and f"{export / 'model_info.json'} is not valid JSON" in err.getvalue()


def test_a_job_dir_that_is_a_file_or_an_export_holding_user_files_is_refused_before_the_first_step(tiny_data,
                                                                                                  tmp_path):
    data = str(tiny_data[0])
    (tmp_path / "file").write_text("mine")
    rc, err = run_train(["--data", data, "--job_dir", str(tmp_path / "file"), "--epochs", "1", *TINY])
    assert rc == 1 and f"--job_dir {tmp_path / 'file'} is a file" in err, err[-2000:]
    assert (tmp_path / "file").read_text() == "mine"
    export = tmp_path / "job" / "export"
    export.mkdir(parents=True)
    (export / "notes.txt").write_text("mine")  # Before the run: the export at its end would be refused.
    rc, err = run_train(["--data", data, "--job_dir", str(tmp_path / "job"), "--epochs", "1", *TINY])
    assert rc == 1 and "it holds 1 entry an export did not write: notes.txt" in err, err[-2000:]
    assert sorted(os.listdir(tmp_path / "job")) == ["export"] and os.listdir(export) == ["notes.txt"]  # No step.
    # A job folder that is the conversion output, or inside it: checkpoints would be mixed into the records.
    before = sorted(os.listdir(data))
    for job in (data, os.path.join(data, "jobs", "one")):
        rc, err = run_train(["--data", data, "--job_dir", job, "--epochs", "1", *TINY])
        assert rc == 1 and f"--job_dir {job} is inside --data {data}" in err, err[-2000:]
    assert sorted(os.listdir(data)) == before


def test_a_folder_of_the_users_own_files_that_a_job_would_overwrite_is_refused_and_kept(tiny_data, tmp_path):
    job = tmp_path / "mine"
    (job / "reports").mkdir(parents=True)
    (job / "metrics.json").write_text('{"my": "results"}')
    (job / "reports" / "confusion_matrix.png").write_bytes(b"my picture")
    (job / "notes.txt").write_text("mine")
    before = tree(job)
    rc, err = run_train(["--data", str(tiny_data[0]), "--job_dir", str(job), "--epochs", "1", *TINY])
    assert rc == 1 and f"--job_dir {job} is not a training job's folder, yet holds metrics.json, reports/" in err, (
        err[-2000:])
    assert tree(job) == before and sorted(os.listdir(job)) == ["metrics.json", "notes.txt", "reports"]
    (job / "logs").write_text("my log, a file where a job makes its logs/ folder")  # (It was a NotADirectoryError.)
    rc, err = run_train(["--data", str(tiny_data[0]), "--job_dir", str(job), "--epochs", "1", *TINY])
    assert rc == 1 and "holds logs/, metrics.json, reports/" in err and "NotADirectoryError" not in err


def test_a_job_dir_inside_a_remote_conversion_is_told_by_its_url():
    from tfrecords_schema.filesystems import is_within

    assert is_within("gs://b/conv/job", "gs://b/conv/") and is_within("gs://b//conv", "gs://b/conv")
    assert not is_within("gs://b/conversion-jobs/1", "gs://b/conv") and not is_within("gs://b/jobs", "gs://b/conv")
    assert not is_within("/tmp/x", "gs://b/conv")


def test_a_diverged_epoch_names_the_kept_best_epoch_only_when_there_is_one():
    from trainer.training.job import divergence_message

    first = divergence_message(1, "selection", "float32", 0, "JOB/best", "expression: 12 of 40 outputs")
    assert first == ("epoch 1: the model's outputs are not finite on selection (training diverged: lower "
                     "--learning_rate); no epoch has been kept yet. (expression: 12 of 40 outputs)")
    later = divergence_message(3, "selection", "mixed_float16", 2, "JOB/best", "x")
    assert "lower --learning_rate, or train in float32); the best epoch so far (2) is in JOB/best" in later


def test_an_init_from_export_with_a_damaged_model_or_info_file_is_named_as_such(tmp_path):
    # A truncated model.keras was called "File not found" by Keras, and a model_info.json that is not JSON ended in
    # a JSONDecodeError traceback (evaluate and predict named both already).
    from trainer.training.export_source import ExportSource

    export = tmp_path / "export"
    export_model(tiny_model(2), str(export), {"version": 1})
    model = export / "model.keras"
    model.write_bytes(model.read_bytes()[:3000])
    with pytest.raises(ExportError, match="cannot be loaded: not a complete .keras archive"):
        ExportSource(str(export), "--init_from")
    (export / "model_info.json").write_text("{not json")
    with pytest.raises(ExportError, match="model_info.json is not valid JSON"):
        ExportSource(str(export), "--init_from")


def test_sigterm_saves_a_checkpoint_at_the_step_reached_releases_the_lock_and_the_rerun_resumes_there(tiny_data,
                                                                                                      tmp_path):
    # A scheduler's SIGTERM (a preempted VM, a Kubernetes eviction) killed the job at once: the steps since the last
    # checkpoint (up to --checkpoint_every, 100 by default) were lost, and its lock was left for the rerun to take over.
    data, _ = tiny_data
    job = tmp_path / "job"
    argv = ["train", "--data", str(data), "--job_dir", str(job), *TINY, "--steps_per_epoch", "100000",
            "--log_every", "20"]
    child = subprocess.Popen([sys.executable, "-m", "affectstream.cli", *argv], stderr=subprocess.PIPE, text=True)
    lines = []
    for line in child.stderr:  # Wait for the first logged steps (the model is built and training).
        lines.append(line)
        if "step 40/" in line:
            break
    child.send_signal(subprocess.signal.SIGTERM)
    _, rest = child.communicate(timeout=120)
    err = "".join(lines) + rest
    assert child.returncode == 143, err
    assert "affectstream train: terminated; the same command resumes from its last checkpoint" in err
    assert "Traceback" not in err
    saved = int(err.split("saved a checkpoint at step ")[1].split()[0])
    assert saved >= 40 and (job / "checkpoints" / f"ckpt-{saved}.index").exists()
    assert not (job / ".affectstream.lock").exists()
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(job / "checkpoints" / f"ckpt-{saved}"))
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == saved  # What the rerun resumes from.
