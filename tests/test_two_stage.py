"""Two-stage training (--stage frames, then --stage sequence): per-frame CNN, feature shards, one exported model."""

import contextlib
import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from trainer_data import run_train, write_dataset

from tfrecords_schema import decode_clip, keys, read_dataset_info
from tfrecords_schema.features import (
    FeatureClip,
    decode_feature_clip,
    encode_feature_clip,
    make_feature_parser,
    read_features_info,
)
from tfrecords_schema.image_codec import JPEG_DCT_METHOD
from trainer.evaluation import evaluate
from trainer.input import features as feature_input
from trainer.model.spec import PER_FRAME_LAYER
from trainer.training import features as two_stage

TINY = ["--task", "expr", "--cnn_width", "0.25", "--feature_dim", "16", "--seq_len", "8", "--batch_size", "8",
        "--log_every", "5", "--learning_rate", "0.003", "--seed", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, num_clips_per_class={"Neutral": 8, "Happiness": 6, "Sadness": 4, "Fear": 3},
                  num_validation_clips_per_class=2, crop_size=32, clip_length=16, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def frames_job(dataset, tmp_path_factory):
    job = tmp_path_factory.mktemp("frames") / "job"
    rc, err = run_train(["--data", dataset, "--job_dir", str(job), "--stage", "frames", "--epochs", "2",
                        "--steps_per_epoch", "6", *TINY])
    assert rc == 0, err[-3000:]
    return job


@pytest.fixture(scope="module")
def sequence_job(dataset, frames_job, tmp_path_factory):
    job = tmp_path_factory.mktemp("sequence") / "job"
    rc, err = run_train(["--data", dataset, "--job_dir", str(job), "--stage", "sequence", "--init_from", str(frames_job),
                        "--epochs", "2", "--steps_per_epoch", "6", "--rnn_units", "16,8", *TINY])
    assert rc == 0, err[-3000:]
    return job


def test_frames_stage_exports_a_per_frame_model(frames_job):
    info = json.loads((frames_job / "export" / "model_info.json").read_text())
    assert (info["stage"], info["rnn"], info["rnn_units"], info["seq_len"]) == ("frames", None, [], 8)
    model = keras.saving.load_model(str(frames_job / "export" / "model.keras"), compile=False)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]
    # Each frame is predicted on its own: reversing time reverses the outputs.
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 32, 32, 3), dtype=np.uint8)
    forward = model(x)["expression"].numpy()
    backward = model(x[:, ::-1])["expression"].numpy()
    np.testing.assert_allclose(backward[:, ::-1], forward, atol=1e-5)


def test_frames_stage_from_a_sequence_export_keeps_its_cnn_and_starts_new_heads(dataset, sequence_job, tmp_path,
                                                                               caplog):
    job = tmp_path / "job"
    with caplog.at_level("INFO", logger="trainer.train"):
        rc, err = run_train(["--data", dataset, "--job_dir", str(job), "--stage", "frames", "--init_from",
                             str(sequence_job), "--epochs", "1", "--steps_per_epoch", "2", *TINY])
    # Its expression head reads the GRU's 8 outputs, not a frame's 16 features: it used to be copied (a Keras error).
    assert rc == 0, err[-3000:]
    assert "is a sequence export: its heads read its recurrent stack, so only its CNN is kept" in caplog.text
    rc, err = run_train(["--data", dataset, "--job_dir", str(tmp_path / "job2"), "--stage", "frames", "--init_from",
                         str(sequence_job), "--class_map", "Neutral=Neutral", "--epochs", "1", *TINY])
    assert rc == 1 and "reads its recurrent stack (a sequence export)" in err, err[-2000:]


def test_feature_shards_mirror_the_clip_shards_and_hold_the_cnn_output(dataset, frames_job, sequence_job):
    index = read_features_info(str(sequence_job / "features"))
    data = read_dataset_info(dataset)
    assert sorted(index.splits) == ["train", "validation"] and index.feature_dim == 16
    for split in index.splits:
        clip_shards = [(s.path, s.bucket, s.num_records, s.num_frames) for s in data.splits[split].shards]
        feature_shards = [(s.path, s.bucket, s.num_records, s.num_frames) for s in index.dataset.splits[split].shards]
        assert feature_shards == clip_shards

    # The first train clip: its features are the frames job's CNN on its crops, its labels the clip's.
    shard = data.splits["train"].shards[0]
    clip = decode_clip(next(iter(tf.data.TFRecordDataset(os.path.join(dataset, shard.path)))).numpy())
    feature = decode_feature_clip(next(iter(tf.data.TFRecordDataset(str(sequence_job / "features" / shard.path))))
                                  .numpy())
    assert feature.example_id == clip.example_id and feature.bucket_index == data.bucket_names.index(shard.bucket)
    np.testing.assert_array_equal(feature.frame_index, clip.frame_index)
    np.testing.assert_array_equal(feature.has_face, clip.has_face)
    np.testing.assert_array_equal(feature.expression, clip.expression)
    np.testing.assert_array_equal(feature.action_units, clip.action_units)
    model = keras.saving.load_model(str(frames_job / "export" / "model.keras"), compile=False)
    extractor = keras.Model(model.input, model.get_layer(PER_FRAME_LAYER).output)
    # uint8, as models take
    crops = np.stack([tf.io.decode_jpeg(image, dct_method=JPEG_DCT_METHOD).numpy() for image in clip.images])[None]
    expected = extractor(crops, training=False).numpy()[0]
    np.testing.assert_allclose(feature.features, expected, atol=1e-4)


def test_sequence_stage_exports_one_model_that_evaluate_scores_like_the_job(dataset, frames_job, sequence_job,
                                                                           tmp_path):
    info = json.loads((sequence_job / "export" / "model_info.json").read_text())
    assert info["stage"] == "sequence" and info["rnn_units"] == [16, 8] and info["crop_size"] == 32
    assert info["weights"]["source"] == "features_from" and info["weights"]["init_stage"] == "frames"
    assert info["train_config"]["feature_dim"] == 16  # the backbone options of --init_from
    model = keras.saving.load_model(str(sequence_job / "export" / "model.keras"), compile=False)
    frames_model = keras.saving.load_model(str(frames_job / "export" / "model.keras"), compile=False)
    assert [layer.name for layer in model.layers if isinstance(layer, keras.layers.GRU)] == ["gru_1", "gru_2"]
    # The CNN stayed frozen: the export holds the frames job's CNN weights exactly.
    for ours, theirs in zip(model.get_layer(PER_FRAME_LAYER).get_weights(),
                            frames_model.get_layer(PER_FRAME_LAYER).get_weights()):
        np.testing.assert_array_equal(ours, theirs)

    metrics = json.loads((sequence_job / "metrics.json").read_text())
    report = tmp_path / "eval"
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.run(["--model", str(sequence_job), "--data", dataset, "--report_dir", str(report)]) == 0
    evaluated = json.loads((report / "metrics.json").read_text())
    assert evaluated["expression"] == metrics["expression"] and evaluated["face_stage_differs"] == {}
    # The epoch was selected on the features; the export scores the same on the images.
    assert metrics["score"] == pytest.approx(info["best_score"], abs=0.02)


def test_features_are_reused_for_the_same_cnn_and_computed_again_for_another(dataset, frames_job, tmp_path, caplog):
    data = read_dataset_info(dataset)
    model = keras.saving.load_model(str(frames_job / "export" / "model.keras"), compile=False)
    extractor = keras.Model(model.input, model.get_layer(PER_FRAME_LAYER).output)
    out = str(tmp_path / "features")

    def extract(sha):
        return two_stage.extract_features(dataset, data, ["validation"], extractor, out, dataset_fingerprint="d1",
                                          backbone_sha256=sha, init_from="x")

    first = extract("cnn-a")
    shard = os.path.join(out, first.dataset.splits["validation"].shards[0].path)
    written = os.stat(shard).st_mtime_ns
    with caplog.at_level("INFO", logger="trainer.train"):
        assert extract("cnn-a").backbone_sha256 == "cnn-a"
    assert "reusing" in caplog.text and os.stat(shard).st_mtime_ns == written
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer.train"):
        assert extract("cnn-b").backbone_sha256 == "cnn-b"
    assert "computing them again" in caplog.text and os.stat(shard).st_mtime_ns != written


def test_sequence_stage_keeps_the_bucket_rebalancing(sequence_job):
    index = read_features_info(str(sequence_job / "features"))

    def class_shares(sampling):
        ds = feature_input.make_feature_train_dataset(str(sequence_job / "features"), index, task="expr", seq_len=4,
                                                  batch_size=16, sampling=sampling, seed=3)
        counts = np.zeros(4)
        for _, targets, weights in ds.take(30):
            labelled = weights["expression"].numpy().max(axis=1) > 0
            counts += np.bincount(targets["expression"].numpy()[labelled, 0], minlength=4)  # one class per clip
        return counts / counts.sum()

    balanced, natural = class_shares("balanced"), class_shares("natural")
    assert np.abs(balanced - 0.25).max() < 0.08, balanced  # 8/6/4/3 clips drawn as 1/4 each
    assert natural[0] > balanced[0] + 0.07 and natural[3] < balanced[3] - 0.05, (natural, balanced)


def test_feature_record_round_trip_and_parser(tmp_path):
    rng = np.random.default_rng(0)
    clip = FeatureClip(example_id="train/v/000001", media_id="v", bucket_index=2,
                       features=rng.normal(size=(5, 3)).astype(np.float32), frame_index=np.arange(1, 6),
                       has_face=[True, False, True, True, True], expression=[0, 1, keys.EXPRESSION_INVALID, 2, 2],
                       valence_arousal=np.full((5, 2), keys.VA_INVALID), action_units=np.zeros((5, 2), np.int64))
    data = encode_feature_clip(clip)
    back = decode_feature_clip(data)
    np.testing.assert_array_equal(back.features, clip.features)
    assert (back.example_id, back.bucket_index, back.has_face.tolist()) == ("train/v/000001", 2, clip.has_face.tolist())
    parsed = make_feature_parser(3, 2)(tf.constant(data))
    np.testing.assert_array_equal(parsed["features"].numpy(), clip.features)
    np.testing.assert_array_equal(parsed["expression"].numpy(), clip.expression)
    with pytest.raises(tf.errors.InvalidArgumentError, match="features/embedding"):  # another feature size
        make_feature_parser(4, 2)(tf.constant(data))


def test_early_stopping_stops_and_a_rerun_does_not_train_on(dataset, frames_job, tmp_path, caplog):
    # A learning rate this small leaves every prediction (and so the score) as it is: no epoch improves.
    args = ["--data", dataset, "--job_dir", str(tmp_path / "job"), "--stage", "sequence", "--init_from",
            str(frames_job), "--epochs", "6", "--steps_per_epoch", "2", "--rnn_units", "8", "--early_stopping", "2",
            *TINY, "--learning_rate", "1e-12"]
    with caplog.at_level("INFO", logger="trainer.train"):
        rc, err = run_train(args)
    assert rc == 0, err[-2000:]
    assert "early stopping: 2 epochs without a better score than epoch 1" in caplog.text
    latest = tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints"))
    assert int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")) == 6  # 3 epochs of 2 steps
    assert json.loads((tmp_path / "job" / "metrics.json").read_text())["best_epoch"] == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer.train"):
        assert run_train(args)[0] == 0
    assert "early stopping" in caplog.text and "step 8/12" not in caplog.text
    latest = tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints"))
    assert int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")) == 6


@pytest.mark.parametrize("args, expected", [
    (["--stage", "sequence"], "--stage sequence needs --features_from"),
    (["--features_from", "x"], "--features_from is for --stage sequence"),
    (["--feature_layer", "x"], "--feature_layer names a layer of the --features_from export"),
    (["--init_from", "x", "--class_map", "a=b"], "it goes with --stage frames --init_from"),
    (["--stage", "sequence", "--init_from", "x", "--weights", "imagenet", "--backbone", "efficientnet_b0"],
     "takes its (frozen) backbone from --features_from"),
    (["--stage", "pairs"], "end_to_end, frames, sequence"),
])
def test_stage_options_are_checked(tmp_path, args, expected):
    rc, err = run_train(["--data", str(tmp_path), "--job_dir", str(tmp_path / "job"), *args])
    assert rc == 2 and expected in err, err


def test_sequence_stage_refuses_a_backbone_made_for_another_crop_size(frames_job, tmp_path):
    data = tmp_path / "data48"
    write_dataset(data, num_clips_per_class={"Neutral": 2, "Fear": 2}, num_validation_clips_per_class=1,
                  crop_size=48, clip_length=8)
    rc, err = run_train(["--data", str(data), "--job_dir", str(tmp_path / "job"), "--stage", "sequence", "--init_from",
                        str(frames_job), *TINY])
    assert rc == 1 and "32 px crops" in err and "48 px crops" in err, err


@pytest.mark.parametrize("stage, head", [("end_to_end", "tcn"), ("end_to_end", "transformer"),
                                         ("sequence", "transformer")])
def test_tcn_and_transformer_heads_train_and_travel_in_the_export(dataset, frames_job, tmp_path, stage, head):
    # (The TCN in the sequence stage: tests/test_fer_import.py, on an imported model's features.)
    source = ["--stage", "sequence", "--features_from", str(frames_job)] if stage == "sequence" else []
    job = tmp_path / "job"
    rc, err = run_train(["--data", dataset, "--job_dir", str(job), *source, "--temporal", head, "--temporal_width", "8",
                         "--temporal_layers", "1", "--epochs", "1", "--steps_per_epoch", "2", *TINY])
    assert rc == 0, err[-3000:]
    info = json.loads((job / "export" / "model_info.json").read_text())
    assert (info["stage"], info["temporal"]["type"], info["temporal"]["layers"], info["rnn"]) == (stage, head, 1, None)
    model = keras.saving.load_model(str(job / "export" / "model.keras"), compile=False)
    assert f"{head}_1_{'conv1' if head == 'tcn' else 'attention'}" in [layer.name for layer in model.layers]
    report = tmp_path / "eval"
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.run(["--model", str(job), "--data", dataset, "--report_dir", str(report)]) == 0
    metrics = json.loads((job / "metrics.json").read_text())
    assert json.loads((report / "metrics.json").read_text())["expression"] == metrics["expression"]
