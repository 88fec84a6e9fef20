"""Learning-rate schedules, early stopping state, pretrained backbone weights and freezing them for N epochs."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from trainer_data import run_train, write_dataset

from tfrecords_schema import read_dataset_info
from trainer.input.pipeline import heads_for_task
from trainer.model.backbones import build_backbone
from trainer.model.build import build_model, pretrained_layers
from trainer.model.spec import PER_FRAME_LAYER, ModelSpec
from trainer.training import distribution, plan, schedules
from trainer.training.config import parse_train_config
from trainer.training.fingerprint import file_sha256
from trainer.training.state import TrainState
from trainer.training.step import build_model_and_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, num_clips_per_class={"Neutral": 3, "Happiness": 3, "Fear": 2},
                  num_validation_clips_per_class=1, crop_size=32, clip_length=8, seed=0)
    return str(root)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    s = schedules.WarmupSchedule(0.01, total_steps=110, warmup_steps=10, kind="cosine")
    lr = [float(s(i)) for i in (0, 4, 9, 10, 60, 109, 500)]
    assert lr[:4] == pytest.approx([0.001, 0.005, 0.01, 0.01])
    assert lr[4] == pytest.approx(0.005)  # half way through the decay
    assert lr[5] < 1e-5 and lr[6] == 0.0
    constant = schedules.WarmupSchedule(0.01, total_steps=110, warmup_steps=4, kind="constant")
    assert [float(constant(i)) for i in (0, 3, 50, 109)] == pytest.approx([0.0025, 0.01, 0.01, 0.01])
    assert schedules.learning_rate("constant", 0.02, 100) == 0.02  # no schedule object: old checkpoints fit
    with pytest.raises(ValueError, match="constant, cosine"):
        schedules.learning_rate("step", 0.01, 100)


def test_the_optimizer_follows_the_schedule_of_the_job(dataset):
    config = parse_train_config(["--data", dataset, "--job_dir", "unused", "--lr_schedule", "cosine",
                                 "--warmup_steps", "2", "--learning_rate", "0.004", "--cnn_width", "0.25",
                                 "--feature_dim", "8", "--rnn_units", "8"])
    info = read_dataset_info(dataset)
    spec = plan.model_spec_for(config, info, heads_for_task(info, "expr"))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    _, optimizer = build_model_and_optimizer(config, spec, strategy, total_steps=10)
    assert schedules.current_learning_rate(optimizer) == pytest.approx(0.002)  # step 0 of 2 warm-up steps
    optimizer.iterations.assign(6)  # the step counter a checkpoint restores
    assert schedules.current_learning_rate(optimizer) == pytest.approx(0.004 * 0.5 * (1 + np.cos(np.pi * 4 / 8)))


def test_early_stopping_count_lives_in_the_checkpointed_state(tmp_path):
    spec = ModelSpec(heads=("expression",), num_expression_classes=2, crop_size=16, cnn_width=0.125, feature_dim=4,
                     rnn_units=(4,))

    def new_state():
        model = build_model(spec)
        optimizer = keras.optimizers.Adam(0.001)
        optimizer.build(model.trainable_variables)
        return TrainState(model, optimizer, str(tmp_path), distribution.Role(), 2, fingerprint={"x": 1})

    state = new_state()
    for epoch, score in enumerate([0.5, 0.6, 0.55], start=1):
        state.record_epoch(epoch, score)
    assert state.epochs_without_improvement == 1 and not state.stops_early(2) and not state.stops_early(0)
    state.record_epoch(4, 0.6)  # equal is not better
    assert state.stops_early(2)
    state.step.assign(40)
    state.save(40)
    again = new_state()
    assert again.restore(100) == 40 and again.stops_early(2) and again.epochs_without_improvement == 2


def test_backbone_frozen_for_the_first_epochs_under_a_distribution_strategy(dataset, tmp_path):
    spec = ModelSpec(heads=("expression",), num_expression_classes=3, crop_size=32, cnn_width=0.25, feature_dim=16)
    weights = str(tmp_path / "cnn.weights.h5")
    build_backbone(spec).save_weights(weights)
    job = tmp_path / "job"
    rc, err = run_train(["--data", dataset, "--job_dir", str(job), "--task", "expr", "--weights", weights,
                        "--freeze_backbone_epochs", "1", "--epochs", "2", "--steps_per_epoch", "3", "--cnn_width", "0.25",
                        "--feature_dim", "16", "--rnn_units", "8", "--seq_len", "4", "--batch_size", "4",
                        "--learning_rate", "0.01", "--strategy", "mirrored", "--keep_checkpoints", "5"])
    assert rc == 0, err[-3000:]
    assert json.loads((job / "export" / "model_info.json").read_text())["weights"] == {
        "source": "file", "path": weights, "sha256": file_sha256(weights)}

    def weights_at(step):
        model = build_model(ModelSpec(**{**spec.__dict__, "rnn_units": (8,)}))
        tf.train.Checkpoint(model=model).restore(str(job / "checkpoints" / f"ckpt-{step}")).expect_partial()
        return model.get_layer(PER_FRAME_LAYER).layer.get_weights(), model.get_layer("gru_1").get_weights()

    loaded = build_backbone(ModelSpec(**{**spec.__dict__, "backbone_weights": weights})).get_weights()
    (cnn_1, gru_1), (cnn_2, gru_2) = weights_at(3), weights_at(6)
    assert all(np.array_equal(a, b) for a, b in zip(cnn_1, loaded))  # epoch 1: frozen, BN statistics too
    assert not all(np.array_equal(a, b) for a, b in zip(cnn_2, loaded))  # epoch 2: trained
    assert not all(np.array_equal(a, b) for a, b in zip(gru_1, gru_2))  # the rest trained all along


def test_local_weights_file_of_an_application_backbone(tmp_path):
    base = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None,
                                               pooling="avg", include_preprocessing=False)
    path = str(tmp_path / "mobilenet.weights.h5")
    base.save_weights(path)
    spec = ModelSpec(heads=("expression",), num_expression_classes=2, crop_size=32, backbone="mobilenet_v3_small",
                     backbone_weights=path, feature_dim=8, rnn_units=(4,))
    model = build_model(spec)
    (frozen,) = pretrained_layers(model, spec)  # the base model only; the new feature layer trains
    assert all(np.array_equal(a, b) for a, b in zip(frozen.get_weights(), base.get_weights()))


@pytest.mark.parametrize("args, expected", [
    (["--weights", "imagenet"], "simple_cnn has no ImageNet weights"),
    (["--weights", "/no/such/file.weights.h5"], "imagenet, none or the path of a local weights file"),
    (["--freeze_backbone_epochs", "2"], "needs a pretrained backbone"),
    (["--lr_schedule", "step"], "constant, cosine"),
    (["--early_stopping", "-1"], "integer >= 0"),
])
def test_weights_and_schedule_options_are_checked(tmp_path, args, expected):
    rc, err = run_train(["--data", str(tmp_path), "--job_dir", str(tmp_path / "job"), *args])
    assert rc == 2 and expected in err, err


def test_a_weights_file_keras_cannot_read_is_refused_with_the_options(tmp_path):
    # (It failed with Keras' own ValueError, exit 1, once the model was built.)
    (tmp_path / "notes.txt").write_text("not weights")
    rc, err = run_train(["--data", str(tmp_path), "--job_dir", str(tmp_path / "job"), "--weights",
                         str(tmp_path / "notes.txt")])
    assert rc == 2 and "not a Keras weights file (.weights.h5, .h5 or .keras)" in err, err
    rc, err = run_train(["--data", str(tmp_path), "--job_dir", str(tmp_path / "job"), "--task", "va", "--stage",
                         "frames", "--init_from", str(tmp_path), "--class_map", "Neutral=Neutral"])
    assert rc == 2 and "--task va trains no expression head (the map was ignored)" in err, err


def test_imagenet_weights_offline_fail_with_a_clear_message(dataset, tmp_path):
    # An empty Keras cache and a proxy nobody answers: the download fails as it does without internet.
    env = {**os.environ, "PYTHONPATH": REPO, "KERAS_HOME": str(tmp_path / "keras"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    done = subprocess.run([sys.executable, "-m", "trainer.train", "--data", dataset, "--job_dir", str(tmp_path / "job"),
                           "--backbone", "mobilenet_v3_small", "--weights", "imagenet", "--epochs", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "--weights imagenet needs internet" in done.stderr and "--weights PATH" in done.stderr, done.stderr[-2000:]
