"""Resume only on the same data and model options (issue 11.6): checkpoints carry the job's fingerprint."""

import json
import shutil

import pytest
import tensorflow as tf
from trainer_data import run_train, write_dataset

from tfrecords_schema import read_dataset_info
from tfrecords_schema.dataset_info import RUN_TIMING_FIELDS
from trainer.training.fingerprint import dataset_fingerprint

TINY = ["--task", "expr", "--cnn_width", "0.25", "--feature_dim", "8", "--rnn_units", "8", "--seq_len", "4",
        "--batch_size", "4", "--steps_per_epoch", "2", "--log_every", "1"]


def _write(root, crop_size=32, seed=0):
    write_dataset(root, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=crop_size, clip_length=8, seed=seed)
    return dataset_fingerprint(read_dataset_info(str(root)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data (32 px crops) and a job trained on it for one epoch; tests work on copies of both."""
    root = tmp_path_factory.mktemp("trained")
    fingerprint = _write(root / "data")
    rc, err = run_train(["--data", str(root / "data"), "--job_dir", str(root / "job"), *TINY, "--epochs", "1"])
    assert rc == 0, err[-2000:]
    return root, fingerprint


@pytest.fixture
def copy(trained, tmp_path):
    root, fingerprint = trained
    shutil.copytree(root / "data", tmp_path / "data")
    shutil.copytree(root / "job", tmp_path / "job")
    return tmp_path, fingerprint, ["--data", str(tmp_path / "data"), "--job_dir", str(tmp_path / "job"), *TINY]


def _latest_step(job) -> int:
    return int(tf.train.load_variable(tf.train.latest_checkpoint(str(job / "checkpoints")),
                                      "step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_dataset_fingerprint_ignores_only_the_run_timing(tmp_path):
    _write(tmp_path)
    info = read_dataset_info(str(tmp_path))
    base = dataset_fingerprint(info)
    info.run = {"tracks": 8, **{field: 1.5 for field in RUN_TIMING_FIELDS}}
    timed = dataset_fingerprint(info)
    info.run = {"tracks": 8, **{field: 99.0 for field in RUN_TIMING_FIELDS}}
    assert dataset_fingerprint(info) == timed  # another run of the same conversion
    info.run["tracks"] = 9
    assert dataset_fingerprint(info) != timed
    info.run = {}
    info.crop_size = 48
    assert dataset_fingerprint(info) != base


def test_resume_on_reconverted_data_with_another_crop_size_is_refused_naming_both(copy):
    root, before, command = copy
    after = _write(root / "data", crop_size=48)  # the same folder, converted again with other crops
    rc, err = run_train(command + ["--epochs", "2"])
    assert rc == 1, err[-2000:]
    assert "crop_size: 32 in the checkpoint, 48 now" in err, err[-2000:]
    assert f'dataset: "{before}" in the checkpoint, "{after}" now' in err
    assert "--allow_data_change" in err
    assert _latest_step(root / "job") == 2  # nothing trained on the new data


def test_changed_model_options_are_named_with_both_values(copy):
    root, _, command = copy
    rc, err = run_train(command + ["--epochs", "2", "--seq_len", "6"])
    assert rc == 1 and "seq_len: 4 in the checkpoint, 6 now" in err, err[-2000:]
    assert "does not fit this model/options" in err
    rc, err = run_train(command + ["--epochs", "2", "--stage", "frames"])
    assert rc == 1 and 'stage: "end_to_end" in the checkpoint, "frames" now' in err, err[-2000:]
    # The optimizer's options: the restore failed on a tensor shape or dtype before; now they are named, and
    # --allow_data_change does not pass them (the optimizer's state cannot take them).
    rc, err = run_train(command + ["--epochs", "2", "--lr_schedule", "cosine", "--allow_data_change"])
    assert rc == 1 and 'lr_schedule: "constant" in the checkpoint, "cosine" now' in err, err[-2000:]
    assert "The optimizer's checkpointed state cannot take another --lr_schedule, also with --allow_data_change" in err
    # The selection split and the steps of an epoch: resumed silently before (selected_on rewritten, an epoch number
    # given to two models).
    rc, err = run_train(command + ["--epochs", "2", "--select_split", "train"])
    assert rc == 1 and 'select_split: "validation" in the checkpoint, "train" now' in err, err[-2000:]
    rc, err = run_train(command + ["--epochs", "2", "--steps_per_epoch", "3"])
    assert rc == 1 and "steps_per_epoch: 2 in the checkpoint, 3 now" in err, err[-2000:]
    assert "--allow_data_change" in err  # (They follow the data when not given: new data may change them.)
    assert _latest_step(root / "job") == 2
    # float32 -> bfloat16 restores the same optimizer variables: refused without --allow_data_change (it changes the
    # run), passed with it (it was refused as if the restore could not take it).
    rc, err = run_train(command + ["--epochs", "2", "--precision", "mixed_bfloat16"])
    assert rc == 1 and 'precision: "float32" in the checkpoint, "mixed_bfloat16" now' in err, err[-2000:]
    rc, err = run_train(command + ["--epochs", "2", "--precision", "mixed_bfloat16", "--allow_data_change"])
    assert rc == 0 and _latest_step(root / "job") == 4, err[-2000:]


def test_a_changed_hash_says_which_files_it_stands_for():
    from trainer.training.fingerprint import differences

    (line,) = differences({"task": "expr", "init_backbone": "aa"}, {"task": "expr", "init_backbone": "bb"})
    assert line.startswith('init_backbone: "aa" in the checkpoint, "bb" now (the SHA-256 of the model.keras of the '
                           "--init_from/--features_from export: it is another export, or it was trained further")
    (line,) = differences({"dataset": "aa"}, {"dataset": "bb"})
    assert "dataset_info.json" in line


def test_checkpoints_from_before_the_optimizer_options_were_kept_still_resume():
    from trainer.training.fingerprint import RUN_OPTIONS, differences

    current = {"task": "expr", "optimizer": "adam", "lr_schedule": "constant", "warmup_steps": 0,
               "precision": "float32", "select_split": "selection", "steps_per_epoch": 100}
    older = {k: v for k, v in current.items() if k not in RUN_OPTIONS}
    assert differences(older, current) == []
    assert differences({**older, "optimizer": "sgd"}, current) == ['optimizer: "sgd" in the checkpoint, "adam" now']
    # What the optimizer's variables cannot take is refused even with --allow_data_change; the rest passes with it.
    from trainer.training.fingerprint import unrestorable

    assert unrestorable({**current, "optimizer": "sgd"}, current) == ["optimizer"]
    assert unrestorable({**current, "lr_schedule": "cosine"}, current) == ["lr_schedule"]  # a schedule, then none
    assert unrestorable({**current, "warmup_steps": 5}, current) == ["warmup_steps"]
    assert unrestorable({**current, "precision": "mixed_float16"}, current) == ["precision"]  # loss scaling
    warm = {**current, "warmup_steps": 5}
    assert unrestorable(warm, {**warm, "warmup_steps": 10}) == []  # both schedules
    assert unrestorable(warm, {**warm, "lr_schedule": "cosine"}) == []
    assert unrestorable(current, {**current, "precision": "mixed_bfloat16"}) == []  # neither scales the loss
    assert unrestorable(older, current) == []  # not recorded: not compared
    # ... but the selection split they chose their best epoch on is unknown: said, not passed silently.
    from trainer.training.fingerprint import unrecorded_selection

    assert "epochs from now on are selected on 'selection'" in unrecorded_selection(older, current)
    assert unrecorded_selection(current, current) is None
    assert unrecorded_selection(older, {k: v for k, v in current.items() if k != "select_split"}) is None


def test_allow_data_change_resumes_and_records_the_new_fingerprint(copy, caplog):
    root, _, command = copy
    changed = _write(root / "data", seed=1)  # same crops and classes, other clips: same model shapes
    rc, err = run_train(command + ["--epochs", "2"])
    assert rc == 1 and "dataset: " in err and "crop_size" not in err

    with caplog.at_level("WARNING", logger="trainer.train"):
        rc, err = run_train(command + ["--epochs", "2", "--allow_data_change"])
    assert rc == 0, err[-2000:]
    assert "going on from its weights (--allow_data_change)" in caplog.text
    latest = tf.train.latest_checkpoint(str(root / "job" / "checkpoints"))
    assert latest.endswith("ckpt-4")
    stored = json.loads(tf.train.load_variable(latest, "fingerprint/.ATTRIBUTES/VARIABLE_VALUE").decode())
    assert stored["dataset"] == changed
    assert run_train(command + ["--epochs", "2"])[0] == 0  # from now on the new data is the job's data
