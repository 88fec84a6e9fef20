"""Reports people look at: the pictures, their titles, the TensorBoard tags of an epoch, the printed summary.

No training: metrics come from :mod:`trainer.evaluation.metrics` on small arrays made here, and the TensorBoard
event files are read back with ``tf.compat.v1.train.summary_iterator``.
"""

from __future__ import annotations

import io
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
from trainer.evaluation import metrics, plots, reports, tensorboard
from trainer.model.losses import compute_losses

CLASSES = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"]
AUS = ["AU1", "AU2", "AU4", "AU6"]
CONTEXT = reports.ReportContext(dataset="abaw", split="validation", model="simple_cnn_gru from job/export", epoch=3)


def _expression_batch(rng, batch=4, frames=6):
    """targets int [B, T], softmax outputs [B, T, C], weights [B, T] with some 0, has_face [B, T]."""
    classes = len(CLASSES)
    targets = rng.integers(0, classes, (batch, frames))
    logits = rng.normal(size=(batch, frames, classes)) + 2.0 * np.eye(classes)[targets]
    outputs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    weights = (rng.random((batch, frames)) > 0.2).astype(np.float32)
    has_face = rng.random((batch, frames)) > 0.3
    return targets, outputs, weights, has_face


def _png(path: pathlib.Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.load()
    return image


def _assert_sensible_picture(image: Image.Image) -> None:
    width, height = image.size
    assert 400 <= width <= 2500 and 300 <= height <= 2500, image.size
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # drawn, not a blank canvas


def _expression_metrics(rng, n=400):
    y_true = rng.choice(len(CLASSES), n, p=[0.4, 0.05, 0.05, 0.05, 0.2, 0.1, 0.1, 0.05])
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, len(CLASSES), n))
    return metrics.expression_metrics(y_true, y_pred, np.ones(n), CLASSES)


def test_confusion_matrix_cells_are_row_percentages_summing_to_100_next_to_the_counts():
    counts = [[30, 10, 0], [0, 0, 0], [1, 2, 7]]
    percent, shown_counts = plots.confusion_matrix_cells(counts)
    assert shown_counts.tolist() == counts
    np.testing.assert_allclose(percent.sum(axis=1), [100.0, 0.0, 100.0])  # an empty class is a row of 0
    np.testing.assert_allclose(percent[0], [75.0, 25.0, 0.0])
    np.testing.assert_allclose(percent[2], [10.0, 20.0, 70.0])
    with pytest.raises(ValueError, match="square"):
        plots.confusion_matrix_cells([[1, 2, 3], [4, 5, 6]])


def test_confusion_matrix_png_is_a_titled_picture_with_row_percentages(tmp_path):
    m = _expression_metrics(np.random.default_rng(0))
    paths = reports.write_reports({HEAD_EXPRESSION: m, "score": m["macro_f1"]}, [], CLASSES,
                                  metrics_path=str(tmp_path / "metrics.json"), report_dir=str(tmp_path / "reports"),
                                  context=CONTEXT)
    image = _png(pathlib.Path(paths["confusion_matrix_png"]))
    _assert_sensible_picture(image)
    title = image.info["Title"]
    assert "validation" in title and "epoch 3" in title and "simple_cnn_gru" in title
    assert f"macro-F1 {m['macro_f1']:.4f}" in title
    saved = json.loads(pathlib.Path(paths["confusion_matrix_json"]).read_text())
    assert saved["matrix"] == m["confusion_matrix"] and saved["title"] == title
    np.testing.assert_allclose(np.sum(saved["row_percent"], axis=1), 100.0, atol=0.05)
    assert "va_density_png" not in paths and "au_f1_png" not in paths  # no such head


def test_va_density_counts_every_scored_frame_in_the_right_bins():
    density = plots.VADensity(bins=4)  # bins of width 0.5 over [-1, 1]
    truth = np.array([[[-0.9, 0.1], [0.6, -0.6], [0.2, 0.2]]])
    pred = np.array([[[-0.8, 0.3], [0.7, 0.9], [1.5, 0.2]]])  # 1.5 is clipped into the last bin
    weights = np.array([[1.0, 1.0, 0.0]])  # the third frame is not scored
    density.update({HEAD_VALENCE_AROUSAL: truth}, {HEAD_VALENCE_AROUSAL: pred}, {HEAD_VALENCE_AROUSAL: weights})
    density.update({HEAD_EXPRESSION: np.zeros((1, 3))}, {}, {HEAD_EXPRESSION: np.ones((1, 3))})  # no VA head
    assert density.frames == 2
    valence, arousal = density.counts
    assert valence[0, 0] == 1 and valence[3, 3] == 1 and valence.sum() == 2
    assert arousal[2, 2] == 1 and arousal[0, 3] == 1 and arousal.sum() == 2


def test_va_density_and_au_f1_pictures_name_their_figures(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    truth = rng.uniform(-1, 1, (n, 2))
    pred = np.clip(0.7 * truth + rng.normal(0, 0.2, (n, 2)), -1, 1)
    density = plots.VADensity()
    density.update({HEAD_VALENCE_AROUSAL: truth[None]}, {HEAD_VALENCE_AROUSAL: pred[None]},
                   {HEAD_VALENCE_AROUSAL: np.ones((1, n))})
    au_true = rng.random((n, len(AUS))) < 0.3
    au_pred = np.where(rng.random((n, len(AUS))) < 0.7, au_true, ~au_true).astype(np.float64)
    result = {HEAD_VALENCE_AROUSAL: metrics.valence_arousal_metrics(truth, pred, np.ones(n)),
              HEAD_ACTION_UNITS: metrics.action_unit_metrics(au_true, au_pred, np.ones(n), AUS)}
    paths = reports.write_reports(result, [], [], metrics_path=str(tmp_path / "metrics.json"),
                                  report_dir=str(tmp_path), context=CONTEXT, va_density=density)
    va = _png(pathlib.Path(paths["va_density_png"]))
    _assert_sensible_picture(va)
    assert f"mean CCC {result[HEAD_VALENCE_AROUSAL]['ccc_mean']:.4f}" in va.info["Title"]
    assert "epoch 3" in va.info["Title"] and "validation" in va.info["Title"]
    au = _png(pathlib.Path(paths["au_f1_png"]))
    _assert_sensible_picture(au)
    assert f"mean AU F1 {result[HEAD_ACTION_UNITS]['mean_f1']:.4f}" in au.info["Title"]
    assert "confusion_matrix_png" not in paths


def test_validation_loss_is_the_training_loss_over_face_frames_of_the_whole_split():
    rng = np.random.default_rng(2)
    loss = tensorboard.ValidationLoss()
    batches = [_expression_batch(rng, batch=b) for b in (4, 4, 3)]  # a short last batch
    for targets, outputs, weights, has_face in batches:
        loss.update({HEAD_EXPRESSION: targets}, {HEAD_EXPRESSION: outputs}, {HEAD_EXPRESSION: weights}, has_face)
    # Reference: weighted cross-entropy over face frames, over every frame slot of the split (as a step scales it).
    num, slots = 0.0, 0
    for targets, outputs, weights, has_face in batches:
        ce = -np.log(np.take_along_axis(outputs, targets[..., None], -1)[..., 0])
        num += float((weights * has_face * ce).sum())
        slots += weights.size
    result = loss.result()
    assert result[HEAD_EXPRESSION] == pytest.approx(num / slots, rel=1e-5)
    assert result["loss"] == pytest.approx(result[HEAD_EXPRESSION])
    # One batch alone is exactly what a training step reports on it.
    targets, outputs, weights, has_face = batches[0]
    one = tensorboard.ValidationLoss()
    one.update({HEAD_EXPRESSION: targets}, {HEAD_EXPRESSION: outputs}, {HEAD_EXPRESSION: weights}, has_face)
    step = compute_losses({HEAD_EXPRESSION: targets}, {HEAD_EXPRESSION: outputs},
                          {HEAD_EXPRESSION: weights * has_face}, global_frames=weights.size)
    assert one.result()[HEAD_EXPRESSION] == pytest.approx(float(step[HEAD_EXPRESSION]), rel=1e-6)
    assert tensorboard.ValidationLoss().result() == {}


def _events(log_dir: pathlib.Path) -> dict[str, list]:
    """``{tag: [(step, plugin, value)]}`` of every event file under ``log_dir``."""
    found: dict[str, list] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, []).append((event.step, value.metadata.plugin_data.plugin_name, tensor))
    return found


def test_an_epoch_logs_validation_loss_learning_rate_per_class_f1_and_the_confusion_matrix(tmp_path):
    rng = np.random.default_rng(3)
    acc = metrics.PredictionAccumulator([HEAD_EXPRESSION], CLASSES)
    loss = tensorboard.ValidationLoss()
    for _ in range(3):
        targets, outputs, weights, has_face = _expression_batch(rng)
        batch = ({HEAD_EXPRESSION: targets}, {HEAD_EXPRESSION: outputs}, {HEAD_EXPRESSION: weights})
        acc.update(*batch, has_face=has_face)
        loss.update(*batch, has_face=has_face)
    result = acc.result()
    eval_writer = tf.summary.create_file_writer(str(tmp_path / "validation"))
    tensorboard.log_epoch(eval_writer, 2, result, validation_loss=loss.result(), expression_names=CLASSES,
                          context=CONTEXT)
    train_writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    tensorboard.log_learning_rate(train_writer, 40, keras.optimizers.Adam(0.003))

    validation = _events(tmp_path / "validation")
    expected = {"score", "val_loss/loss", "val_loss/expression", "expression/macro_f1", "expression/accuracy",
                "expression/with_face/macro_f1", tensorboard.TAG_CONFUSION_MATRIX,
                *(f"expression/f1/{name}" for name in CLASSES)}
    assert expected <= set(validation), sorted(set(validation))
    assert all(step == 2 for entries in validation.values() for step, _, _ in entries)
    assert float(validation["val_loss/expression"][0][2]) == pytest.approx(loss.result()[HEAD_EXPRESSION], rel=1e-6)
    for name in CLASSES:
        assert float(validation[f"expression/f1/{name}"][0][2]) == pytest.approx(
            result[HEAD_EXPRESSION]["per_class"][name]["f1"], abs=1e-6)
    _, plugin, image = validation[tensorboard.TAG_CONFUSION_MATRIX][0]
    assert plugin == "images"
    width, height, encoded = int(image[0]), int(image[1]), image[2]  # the images plugin: [width, height, png]
    assert encoded[:8] == b"\x89PNG\r\n\x1a\n" and 400 <= width <= 2500 and 300 <= height <= 2500
    assert Image.open(io.BytesIO(encoded)).size == (width, height)

    train = _events(tmp_path / "train")
    [(step, _, rate)] = train[tensorboard.TAG_LEARNING_RATE]
    assert step == 40 and float(rate) == pytest.approx(0.003)


def test_learning_rate_is_the_schedule_value_at_the_optimizer_step_also_under_loss_scaling():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.5)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(schedule))
    optimizer.build([keras.Variable(1.0)])
    assert tensorboard.learning_rate_of(optimizer) == pytest.approx(0.01)
    optimizer.iterations.assign(10)
    assert tensorboard.learning_rate_of(optimizer) == pytest.approx(0.005)


def test_a_no_op_writer_logs_and_renders_nothing(tmp_path):
    # Non-chief workers hold no-op writers: log_epoch returns before it renders the picture. With class
    # names that do not fit the matrix, rendering would raise: it does with a real writer, not with a no-op one.
    result = {HEAD_EXPRESSION: _expression_metrics(np.random.default_rng(4)), "score": 0.0}
    tensorboard.log_epoch(tf.summary.create_noop_writer(), 1, result, expression_names=CLASSES[:3], context=CONTEXT)
    with pytest.raises(ValueError, match="3 class names"):
        tensorboard.log_epoch(tf.summary.create_file_writer(str(tmp_path)), 1, result, expression_names=CLASSES[:3],
                              context=CONTEXT)


def test_chance_macro_f1_is_one_over_k_when_balanced_and_matches_a_simulated_uniform_guess():
    assert reports.chance_macro_f1([10] * 8) == pytest.approx((0.125, 0.125))
    supports = [500, 60, 40, 80, 200, 90, 30, 0]  # skewed, one absent class
    balanced, mix = reports.chance_macro_f1(supports)
    assert balanced == 0.125 and mix < balanced
    rng = np.random.default_rng(5)
    y_true = np.repeat(np.arange(8), [s * 100 for s in supports])
    guess = rng.integers(0, 8, y_true.size)
    simulated = metrics.expression_metrics(y_true, guess, np.ones(y_true.size), CLASSES)["macro_f1"]
    assert simulated == pytest.approx(mix, abs=0.005)
    with pytest.raises(ValueError):
        reports.chance_macro_f1([])


def test_summary_prints_the_figures_with_face_frames_and_a_numeric_chance_level():
    rng = np.random.default_rng(6)
    acc = metrics.PredictionAccumulator([HEAD_EXPRESSION], CLASSES)
    for _ in range(3):
        targets, outputs, weights, has_face = _expression_batch(rng)
        acc.update({HEAD_EXPRESSION: targets}, {HEAD_EXPRESSION: outputs}, {HEAD_EXPRESSION: weights}, has_face)
    # Through JSON, as the demo reads metrics.json (sorted keys: per_class no longer in class order).
    result = json.loads(json.dumps(acc.result(), sort_keys=True))
    m = result[HEAD_EXPRESSION]
    lines = reports.format_summary(result, CLASSES).splitlines()
    assert lines[0] == (f"expression: macro-F1 {m['macro_f1']:.4f} (over present classes {m['macro_f1_present']:.4f})"
                        f"  accuracy {m['accuracy']:.4f}  2020 score {m['score_2020']:.4f}  ({m['frames']} frames)")
    face = m["with_face"]
    assert lines[1].startswith(f"  frames with a face: macro-F1 {face['macro_f1']:.4f}")
    assert f"({face['frames']} frames)" in lines[1] and face["frames"] < m["frames"]
    _, mix = reports.chance_macro_f1([m["per_class"][name]["support"] for name in CLASSES])
    assert lines[2] == (f"chance macro-F1 with 8 classes: 0.125 (uniform random guess; {mix:.3f} with this "
                        "split's class mix)")
    assert "about 1/classes" not in "\n".join(lines)


def test_a_head_no_frame_of_the_split_labels_is_said_not_scored_not_printed_as_zero():
    rng = np.random.default_rng(7)
    acc = metrics.PredictionAccumulator([HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL], CLASSES)
    targets, outputs, weights, has_face = _expression_batch(rng)
    va_shape = targets.shape + (2,)
    acc.update({HEAD_EXPRESSION: targets, HEAD_VALENCE_AROUSAL: np.zeros(va_shape, np.float32)},
               {HEAD_EXPRESSION: outputs, HEAD_VALENCE_AROUSAL: np.zeros(va_shape, np.float32)},
               {HEAD_EXPRESSION: weights, HEAD_VALENCE_AROUSAL: np.zeros(targets.shape, np.float32)}, has_face)
    result = acc.result()
    assert result[HEAD_VALENCE_AROUSAL]["frames"] == 0
    for text in (reports.format_metrics(result), reports.format_summary(result, CLASSES)):
        # It read "valence/arousal: CCC-V 0.0000 CCC-A 0.0000 mean 0.0000 (0 frames)".
        assert "valence/arousal: not scored (no frame of this split is labelled for it)" in text
        assert "CCC-V" not in text and "macro-F1" in text


def test_model_label_names_the_export_folder():
    assert reports.model_label("simple_cnn_gru", "/tmp/runs/job7/export/") == "simple_cnn_gru from job7/export"
    assert reports.model_label("simple_cnn_gru", "gs://bucket/job/export") == "simple_cnn_gru from job/export"
    assert reports.model_label("simple_cnn_gru") == "simple_cnn_gru"


def test_the_evaluation_run_never_shares_the_training_run_folder():
    assert tensorboard.evaluation_run("validation") == "validation"
    assert tensorboard.evaluation_run(tensorboard.TRAIN_RUN) != tensorboard.TRAIN_RUN
