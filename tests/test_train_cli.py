"""The training command at its edges: the --job_dir lock, crop-size checks, the progress bar, --verbose."""

import contextlib
import hashlib
import io
import json
import logging
import os
import pty
import re
import select
import socket
import subprocess
import sys

import pytest
from trainer_data import write_dataset

from tfrecords_schema import DATASET_INFO_FILENAME
from tfrecords_schema.locks import LOCK_FILENAME, LockInfo, lock_folder
from trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--task", "expr", "--cnn_width", "0.25", "--feature_dim", "8", "--rnn_units", "8", "--seq_len", "4",
        "--batch_size", "2", "--epochs", "1", "--steps_per_epoch", "3", "--log_every", "1"]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=4, seed=0)
    return root


def _run(args):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = train.run(args)
    return rc, err.getvalue(), out.getvalue()


def _snapshot(folder) -> dict:
    """Every file under ``folder``: relative path -> (size, mtime_ns, sha256)."""
    files = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            st = os.stat(path)
            files[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, digest)
    return files


# --------------------------------------------------------------------------------------------------
# The --job_dir lock.


def test_second_training_into_a_locked_job_dir_exits_1_naming_the_holder_and_touches_nothing(data, tmp_path):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    (job / "train_config.json").write_text('{"epochs": 9}\n')
    with lock_folder(str(job), command="the first training") as held:
        before = _snapshot(job)
        rc, err, _ = _run(["--data", str(data), "--job_dir", str(job), *TINY])
        after = _snapshot(job)
    assert rc == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "LockHeldError" in errors[0], err[-2000:]
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in errors[0]
    assert "the first training" in errors[0] and held.info.started in errors[0]
    assert after == before  # no checkpoint, log, config or lock of the second run
    assert sorted(os.listdir(job)) == ["checkpoints", "train_config.json"]  # the holder released its lock


# --------------------------------------------------------------------------------------------------
# Crop sizes.


def test_dataset_info_crop_size_that_disagrees_with_the_frames_is_one_clear_line(data, tmp_path):
    wrong = tmp_path / "data"
    write_dataset(wrong, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=4, seed=0)
    raw = json.loads((wrong / DATASET_INFO_FILENAME).read_text())
    raw["crop_size"] = 24
    (wrong / DATASET_INFO_FILENAME).write_text(json.dumps(raw))
    job = tmp_path / "job"
    rc, err, _ = _run(["--data", str(wrong), "--job_dir", str(job), *TINY])
    assert rc == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert "are 16x16 px" in errors[0] and "says crop_size 24" in errors[0], errors[0]
    assert "--crop_size 24" in errors[0]  # what to do
    assert "Traceback" not in err and not job.exists()


def test_weights_file_saved_on_other_crops_is_refused_naming_both_sizes(data, tmp_path):
    from trainer.model.backbones import build_backbone
    from trainer.model.spec import ModelSpec

    weights = str(tmp_path / "cnn48.weights.h5")
    spec = ModelSpec(heads=("expression",), num_expression_classes=2, crop_size=48, cnn_width=0.25, feature_dim=8)
    build_backbone(spec).save_weights(weights)
    rc, err, _ = _run(["--data", str(data), "--job_dir", str(tmp_path / "job"), *TINY, "--weights", weights])
    assert rc == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert "the 16 px crops" in errors[0], errors[0]
    assert re.search(r"it fits a simple_cnn on [\d, or]*\b48 px crops", errors[0]), errors[0]
    assert "--weights none" in errors[0]
    assert not (tmp_path / "job").exists()  # The job folder this run made (for its lock) goes with the failure.

    # (test_schedules trains with a --weights file of the data's own crop size: the check lets it through.)


# --------------------------------------------------------------------------------------------------
# Progress: a bar on a terminal, log lines otherwise; --verbose.


def test_a_terminal_gets_a_progress_bar_per_epoch_and_no_step_log_lines(data, tmp_path):
    primary, replica = pty.openpty()
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.train", "--data", str(data), "--job_dir",
                             str(tmp_path / "job"), *TINY, "--epochs", "2"], cwd=REPO, env=env,
                            stdout=replica, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(replica)
    chunks = []
    while True:  # drain the terminal while the job runs (a full pty would block it)
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the job closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    err = proc.communicate(timeout=120)[1].decode()
    os.close(primary)
    screen = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    assert proc.returncode == 0, err[-2000:]
    assert "epoch 1/2" in screen and "epoch 2/2" in screen, screen[-2000:]
    assert re.search(r"\b3/3 ━+", screen) and "step - loss: " in screen and "steps/s: " in screen, screen[-2000:]
    assert not re.search(r"step \d+/6 ", err), err[-2000:]  # the bar replaces the log lines


def test_without_a_terminal_steps_are_log_lines_verbose_logs_debug_and_a_stale_lock_is_taken_over(data, tmp_path,
                                                                                                    caplog):
    # One training checks three things (each costs a whole run): a lock left by a dead process does not block,
    # the steps are plain log lines when stdout is not a terminal, and --verbose lowers the trainer's log level.
    job = tmp_path / "job"
    job.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    stale = LockInfo(host=socket.gethostname(), pid=gone.pid, started="2026-01-01T00:00:00+00:00",
                     command="a killed training", token="stale")
    (job / LOCK_FILENAME).write_text(stale.to_json())
    trainer_logger = logging.getLogger("trainer")
    level = trainer_logger.level
    try:
        with caplog.at_level(logging.INFO, logger="trainer.train"):
            rc, err, out = _run(["--data", str(data), "--job_dir", str(job), *TINY, "--verbose"])
        assert rc == 0, err[-2000:]
        assert trainer_logger.level == logging.DEBUG
    finally:
        trainer_logger.setLevel(level)
    assert f"took over the stale lock {job / LOCK_FILENAME} of pid {gone.pid}" in caplog.text
    assert (job / "metrics.json").exists() and not (job / LOCK_FILENAME).exists()  # released at the end
    steps = [int(n) for n in re.findall(r"step (\d+)/3 loss=", caplog.text)]
    assert steps == [1, 2, 3], caplog.text[-2000:]
    assert "━" not in out and "steps/s:" not in out and "epoch 1/1" not in out


# --------------------------------------------------------------------------------------------------
# --help without TensorFlow: the hook that registers the custom layers once Keras loads.


def test_keras_hook_imports_its_module_right_after_keras_and_not_before(tmp_path):
    (tmp_path / "after_keras_probe.py").write_text("import keras\nREGISTERED = keras.__name__\n")
    hook = os.path.join(REPO, "trainer", "common", "keras_hook.py")
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("keras_hook", {hook!r})  # alone: the trainer package imports Keras
keras_hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keras_hook)
keras_hook.import_after_keras("after_keras_probe")
keras_hook.import_after_keras("after_keras_probe")  # installed once
assert "keras" not in sys.modules and "after_keras_probe" not in sys.modules
assert sum(type(f).__name__ == "_AfterKeras" for f in sys.meta_path) == 1
import importlib.util as u
assert u.find_spec("keras") is not None and "after_keras_probe" not in sys.modules  # a probe loads nothing
import tensorflow  # imports Keras itself
assert sys.modules["after_keras_probe"].REGISTERED == "keras"
assert not any(type(f).__name__ == "_AfterKeras" for f in sys.meta_path)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
