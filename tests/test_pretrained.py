"""Imported models and temporal heads, on small networks made here: the input adapter, the class map, the split of a
network at its classifier, cuts at named layers, `import-model`'s checks, SavedModel folders, and the TCN and
transformer heads (causality, window lengths, serialisation). The real pretrained model is in test_fer_import.py."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import types

import cv2
import keras
import numpy as np
import pytest

import trainer  # noqa: F401  (registers the custom layers for load_model)
from trainer.common.errors import TrainingError
from trainer.model import build as model_lib
from trainer.model import pretrained, temporal
from trainer.model.layers import ClassMap, ImageAdapter
from trainer.model.spec import ModelSpec
from trainer.training import import_model
from trainer.training.export_source import ExportSource, head_plan

CLASSES = "calm,glad,cross"


def run_import(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = import_model.run(args)
    return rc, err.getvalue()


def tiny_network(final: str = "dense_softmax", size: int = 16, channels: int = 1) -> keras.Model:
    """conv → [pool → Dense → Dense 3 softmax | … → Dense 3 → Softmax | … → Dense 3 logits | conv 3 → GAP → softmax]."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, channels), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    if final == "gap_softmax":  # the FER2013 mini-Xception's ending
        x = keras.layers.Conv2D(3, 3, name="class_maps")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inputs, keras.layers.Activation("softmax", name="predictions")(x))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(5, activation="relu", name="embedding")(x)
    if final == "dense_softmax":
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classifier")(x))
    logits = keras.layers.Dense(3, name="classifier")(x)
    if final == "logits":
        return keras.Model(inputs, logits)
    return keras.Model(inputs, keras.layers.Softmax(name="predictions")(logits))


@pytest.fixture(scope="module")
def network_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "tiny.keras"
    tiny_network().save(path)
    return str(path)


# --------------------------------------------------------------------------------------------------
# Layers.


def test_image_adapter_matches_opencv_grey_resize_and_the_pixel_range():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = ImageAdapter(16, 1, (-1, 1))(rgb.astype(np.float32) / 255.0).numpy()
    assert out.shape == (2, 16, 16, 1)
    for i in range(2):  # fer's own preprocessing: OpenCV grey, OpenCV resize, /255, (x - 0.5) * 2
        grey = cv2.cvtColor(rgb[i], cv2.COLOR_RGB2GRAY).astype(np.float32)
        expected = (cv2.resize(grey, (16, 16)) / 255.0 - 0.5) * 2.0
        np.testing.assert_allclose(out[i, ..., 0], expected, atol=0.02)  # OpenCV rounds to uint8 between steps
    colour = ImageAdapter(32, 3, (0, 255), "bgr", mean=(10, 20, 30), std=(2, 2, 2))(rgb.astype(np.float32) / 255.0)
    np.testing.assert_allclose(colour.numpy(), (rgb[..., ::-1] - np.float32([10, 20, 30])) / 2.0, atol=1e-3)
    with pytest.raises(ValueError, match="LOW < HIGH"):
        ImageAdapter(16, 1, (1, -1))


def test_class_map_sums_merged_classes_and_renormalises_over_the_mapped_ones():
    probabilities = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    out = ClassMap([2, -1, 0, 0], num_classes=3)(probabilities).numpy()
    np.testing.assert_allclose(out, [[0.7 / 0.8, 0.0, 0.1 / 0.8]], atol=1e-6)
    assert pretrained.class_map_targets(["a", "b", "c"], {"a": "Y", "c": "X"}, ["X", "Y", "Z"]) == (1, -1, 0)
    with pytest.raises(ValueError, match="not the model's classes"):
        pretrained.class_map_targets(["a"], {"q": "X"}, ["X"])
    with pytest.raises(ValueError, match="not the dataset's classes"):
        pretrained.class_map_targets(["a"], {"a": "Q"}, ["X"])
    with pytest.raises(ValueError, match="SOURCE=TARGET"):
        pretrained.parse_class_map("a=X,b")


# --------------------------------------------------------------------------------------------------
# Splitting and cutting networks.


@pytest.mark.parametrize("final, feature_layer", [("dense_softmax", "embedding"), ("softmax_layer", "embedding"),
                                                  ("gap_softmax", "gap"), ("logits", "embedding")])
def test_split_classifier_rebuilds_the_network_exactly(final, feature_layer):
    net = tiny_network(final)
    split = pretrained.split_classifier(net, "logits" if final == "logits" else "probabilities")
    assert split.feature_layer == feature_layer
    x = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
    logits = split.features.predict_on_batch(x) @ split.kernel + split.bias
    expected = net.predict_on_batch(x)
    if final != "logits":
        expected = np.log(expected)
        logits = logits - logits.max(-1, keepdims=True)
        expected = expected - expected.max(-1, keepdims=True)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("wrapping", ["head", "whole"])
def test_a_classifier_inside_a_nested_model_is_found(wrapping, tmp_path):
    # A network whose output comes from a nested model (a Sequential head, or the whole network wrapped behind
    # preprocessing) was refused as "not a softmax", then with --model_outputs logits as "must end in a softmax".
    net = tiny_network("dense_softmax", size=16, channels=3)
    inputs = keras.Input((16, 16, 3), name="outer")
    if wrapping == "head":
        features = keras.Model(net.inputs[0], net.get_layer("embedding").output, name="body")
        head = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")], name="head")
        head.layers[-1].set_weights(net.get_layer("classifier").get_weights())
        wrapped = keras.Model(inputs, head(features(inputs)))
    else:
        wrapped = keras.Model(inputs, net(keras.layers.Rescaling(1.0, name="prep")(inputs)))
    wrapped.save(tmp_path / "wrapped.keras")
    rc, err = run_import(["--keras", str(tmp_path / "wrapped.keras"), "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(tmp_path / "export")])
    assert rc == 0, err
    info = json.loads((tmp_path / "export" / "model_info.json").read_text())
    layer = "body" if wrapping == "head" else "embedding"  # the head reads the output of the nested body
    assert (info["source"]["feature_layer"], info["source"]["feature_dim"]) == (layer, 5)
    model = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), compile=False)
    crops = np.random.default_rng(6).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(model(crops[:, None])["expression"].numpy()[:, 0],
                               net.predict_on_batch(crops.astype(np.float32) / 255.0), atol=1e-5)


def test_a_network_that_does_not_end_in_a_softmax_needs_model_outputs_logits():
    with pytest.raises(pretrained.ModelImportError, match="--model_outputs logits"):
        pretrained.split_classifier(tiny_network("logits"), "probabilities")


def test_cut_network_reaches_into_nested_models_and_pools_maps():
    net = tiny_network("gap_softmax")
    cnn = pretrained.imported_cnn(pretrained.split_classifier(net).features, pretrained.InputSpec(16, 1, (0, 1)), "x")
    cut = pretrained.cut_network(cnn, "conv")  # inside the nested feature network: [14, 14, 4] averaged
    crops = np.random.default_rng(2).uniform(0, 1, (2, 20, 20, 3)).astype(np.float32)
    maps = keras.Model(net.inputs, net.get_layer("conv").output).predict_on_batch(
        ImageAdapter(16, 1, (0, 1))(crops).numpy())
    np.testing.assert_allclose(cut.predict_on_batch(crops), maps.mean(axis=(1, 2)), atol=1e-5)
    with pytest.raises(pretrained.ModelImportError, match="'nope' is not a layer"):
        pretrained.cut_network(cnn, "nope")


# --------------------------------------------------------------------------------------------------
# import-model.


def test_import_model_writes_an_export_with_its_source_recorded(network_file, tmp_path):
    out = tmp_path / "export"
    rc, err = run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1",
                          "--class_map", "glad=Happiness,cross=Anger", "--crop_size", "24", "--detector", "haar",
                          "--align", "off", "--output", str(out)])
    assert rc == 0, err
    info = json.loads((out / "model_info.json").read_text())
    assert info["label_names"]["expression"][:2] == ["Neutral", "Anger"] and len(info["label_names"]["expression"]) == 8
    assert (info["kind"], info["per_frame"], info["seq_len"], info["crop_size"]) == ("imported", True, None, 24)
    assert info["input"]["size"] == 16 and info["input"]["channels"] == 1 and info["input"]["pixel_range"] == [0, 1]
    assert info["face_stage"]["detector"] == "haar" and info["face_stage"]["crop_size"] == 24
    assert info["class_map"]["targets"] == [-1, 4, 1]
    assert info["source"]["sha256"] == import_model.source_sha256(network_file)
    model = keras.saving.load_model(str(out / "model.keras"), compile=False)
    crops = np.random.default_rng(3).integers(0, 256, (1, 5, 24, 24, 3), dtype=np.uint8)
    probabilities = model(crops)["expression"].numpy()
    assert probabilities.shape == (1, 5, 8)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.all(probabilities[..., [0, 2, 3, 5, 6, 7]] == 0)  # only the mapped classes
    # An export is never written over unless asked, and a foreign folder never.
    rc, err = run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(out)])
    assert rc == 2 and "--overwrite" in err
    (out / "notes.txt").write_text("mine")
    rc, err = run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1", "--overwrite",
                          "--output", str(out)])
    assert rc == 2 and "notes.txt" in err and (out / "notes.txt").read_text() == "mine"


# The child sends itself SIGTERM while its export is staged: from our own TF Lite step (nothing of TF's replaced).
_SIGTERM_AT_THE_TFLITE_COPY = """
import os, signal, sys
from trainer.model import lite
def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # The handler, if any, runs right after the kill, between bytecodes.
    raise AssertionError("SIGTERM did not stop the command")
lite.write_serving_copy = terminated
from affectstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_leaves_neither_the_staged_export_nor_temporary_files(network_file, tmp_path):
    # `kill PID` (or a scheduler) ended `affectstream import-model` where it stood: its staging folder stayed in
    # --output (the next run then refused the folder as holding other files) and its temporary folder in TMPDIR.
    # SIGTERM now unwinds every command as Ctrl-C does: exit 143, and what the run made is removed.
    out, tmp = tmp_path / "export", tmp_path / "tmp"
    tmp.mkdir()
    child = subprocess.run([sys.executable, "-c", _SIGTERM_AT_THE_TFLITE_COPY, "import-model", "--keras", network_file,
                            "--class_names", CLASSES, "--pixel_range=0,1", "--crop_size", "24", "--output", str(out)],
                           env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=300)
    assert child.returncode == 143, child.stderr[-2000:]
    assert "affectstream import-model: terminated" in child.stderr
    assert not out.exists() or list(out.iterdir()) == []
    assert list(tmp.iterdir()) == []


def test_the_next_import_removes_what_a_killed_import_left_in_its_output(network_file, tmp_path):
    # kill -9 (no clean-up can run) left the staging folder in --output, and every later import refused the folder
    # as holding other files (`.export.incomplete-<id>`) until the user deleted it by hand. The next import removes
    # it: it carries our marker, from this host, and its process is gone.
    out = tmp_path / "export"
    args = ["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1", "--crop_size", "24",
            "--output", str(out)]
    tmp = tmp_path / "tmp"  # (The killed child's temporary files stay there, not in the shared temp folder.)
    tmp.mkdir()
    killed = subprocess.run([sys.executable, "-c", _SIGTERM_AT_THE_TFLITE_COPY.replace("SIGTERM", "SIGKILL"),
                             "import-model", *args], env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name.startswith(".export.incomplete-") for p in out.iterdir()] == [True]
    rc, err = run_import(args)
    assert rc == 0, err
    assert "a killed import's leftover" in err
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "model_info.json", "saved_model", "serving.tflite"]


def test_a_class_map_onto_the_abaw_classes_with_a_misspelt_name_is_refused(network_file, tmp_path):
    # "glad=Happines,cross=Anger" made the export's classes ["Happines", "Anger"] (the mapped names, as for a dataset
    # of one's own) without a word: the mistake showed only later, as a label mismatch in evaluate.
    out = tmp_path / "export"
    rc, err = run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1",
                          "--class_map", "glad=Happines,cross=Anger", "--output", str(out)])
    assert rc == 2 and not out.exists()
    assert "--class_map maps onto 'Happines' (did you mean 'Happiness'?): not an ABAW expression class" in err
    assert "--dataset_classes" in err and "Traceback" not in err
    rc, err = run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1",
                          "--class_map", "glad=happiness,cross=anger", "--output", str(out)])
    assert rc == 2 and "'happiness' (did you mean 'Happiness'?), 'anger' (did you mean 'Anger'?)" in err
    # A dataset of one's own with names of its own: they are its classes, in order.
    rc, err = run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1",
                          "--class_map", "glad=Joy,cross=Rage", "--output", str(out)])
    assert rc == 0, err
    assert json.loads((out / "model_info.json").read_text())["label_names"]["expression"] == ["Joy", "Rage"]


def test_fine_tuning_keeps_a_head_mapped_by_class_map_or_with_the_data_classes(network_file, tmp_path):
    out = tmp_path / "export"
    assert run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1",
                       "--output", str(out)])[0] == 0

    def data(*names):
        return types.SimpleNamespace(expression_names=list(names), label_names={"expression": list(names)})

    source = ExportSource(str(out), "--init_from")
    mapped = head_plan(source, ("expression",), data("Neutral", "Happiness"), "glad=Happiness,calm=Neutral")
    assert mapped.kept == ("expression",)
    assert mapped.record() == {"source": ["calm", "glad", "cross"], "map": {"glad": "Happiness", "calm": "Neutral"},
                               "targets": [0, 1, -1]}
    assert head_plan(source, ("expression",), data("Neutral", "Happiness"), None).kept == ()  # a new head
    same = head_plan(source, ("expression",), data("calm", "glad", "cross"), None)
    assert same.kept == ("expression",) and same.record() is None
    with pytest.raises(TrainingError, match="not the model's classes"):
        head_plan(source, ("expression",), data("Neutral"), "sad=Neutral")


@pytest.mark.parametrize("case, expected", [
    ("garbage", "does not load as a Keras model"),
    ("missing", "no such file"),
    ("classes", "--class_names lists 2 classes but the model has 3 outputs"),
    ("not_image", "is not an image"),
    ("range", "expected 2 numbers"),
    ("map", "not the model's classes"),
    ("range_inf", "expected finite numbers"),
    ("mean_nan", "expected finite numbers"),
    ("output_file", "is a file"),
    ("unbuilt", "no defined input"),
    ("sigmoid_as_logits", "applies a sigmoid activation"),
    ("softmax_as_logits", "leave out --model_outputs logits"),
    ("uint8_input", "--pixel_range=0,255"),
    ("custom_layer", "uses the custom class 'Doubled', which is not available here"),
    ("lambda", "holds a Lambda layer"),
])
def test_import_model_refuses_bad_input_in_one_line_with_exit_2(network_file, tmp_path, case, expected):
    path, names, pixel_range, extra = network_file, CLASSES, "--pixel_range=-1,1", []
    output = tmp_path / "o"
    if case == "garbage":
        path = str(tmp_path / "broken.h5")
        (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n not really" * 20)
    elif case == "missing":
        path = str(tmp_path / "none.keras")
    elif case == "classes":
        names = "calm,glad"
    elif case == "not_image":
        inputs = keras.Input((8,))
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)).save(tmp_path / "vector.keras")
        path = str(tmp_path / "vector.keras")
    elif case == "range":
        pixel_range = "--pixel_range=-1"
    elif case == "map":
        extra = ["--class_map", "happy=Happiness"]
    elif case == "range_inf":  # an export whose adapter makes NaN, and a model_info.json that is not JSON
        pixel_range = "--pixel_range=0,inf"
    elif case == "mean_nan":
        extra = ["--mean", "nan"]
    elif case == "output_file":
        output = tmp_path / "o.txt"
        output.write_text("mine")
    elif case == "unbuilt":  # a Sequential saved before it was built has no inputs to read
        keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(3, activation="softmax")]).save(tmp_path / "unbuilt.keras")
        path = str(tmp_path / "unbuilt.keras")
    elif case in ("sigmoid_as_logits", "softmax_as_logits"):  # softmax over these would pass the check, but be wrong
        inputs = keras.Input((16, 16, 1))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        activation = "sigmoid" if case == "sigmoid_as_logits" else "softmax"
        keras.Model(inputs, keras.layers.Dense(3, activation=activation)(x)).save(tmp_path / "act.keras")
        path, extra = str(tmp_path / "act.keras"), ["--model_outputs", "logits"]
    elif case == "uint8_input":  # Keras casts the adapter's [-1, 1] floats to uint8: 0 or 1, silently
        inputs = keras.Input((16, 16, 1), dtype="uint8")
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs)))
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "uint8.keras")
        path = str(tmp_path / "uint8.keras")
    elif case in ("custom_layer", "lambda"):  # Keras's own messages: a deserialisation error, safe_mode=False
        inputs = keras.Input((16, 16, 1))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        if case == "lambda":
            x = keras.layers.Lambda(lambda t: t * 2)(x)
        else:
            @keras.saving.register_keras_serializable(package="audit")
            class Doubled(keras.layers.Layer):
                def call(self, t):
                    return t * 2

            x = Doubled()(x)
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "own_code.keras")
        keras.saving.get_custom_objects().pop("audit>Doubled", None)  # the user's code is not in this process
        path = str(tmp_path / "own_code.keras")
    rc, err = run_import(["--keras", path, "--class_names", names, pixel_range, "--output", str(output), *extra])
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    if case == "output_file":
        assert output.read_text() == "mine"


def test_a_mixed_precision_network_is_imported_and_checked_at_its_precision(tmp_path):
    # Its float16 classifier differs from the export's float32 one by ~1e-4: the check refused it, saying the
    # network does not end in a softmax.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        net = tiny_network("dense_softmax", size=16, channels=3)
    finally:
        keras.config.set_dtype_policy("float32")
    net.save(tmp_path / "mixed.keras")
    rc, err = run_import(["--keras", str(tmp_path / "mixed.keras"), "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(tmp_path / "export")])
    assert rc == 0, err
    model = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), compile=False)
    crops = np.random.default_rng(5).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(model(crops[:, None])["expression"].numpy()[:, 0],
                               net.predict_on_batch(crops.astype(np.float32) / 255.0).astype(np.float32), atol=1e-2)


def test_a_uint8_input_network_gets_the_crops_pixels_rounded_not_truncated(tmp_path):
    # The adapter's grey (or resized) values were cast to the network's uint8 input by truncation: 99.7 became 99, so
    # every pixel was half a grey level darker on average than the rounded images such a network is trained on.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "uint8.keras")
    net = keras.saving.load_model(tmp_path / "uint8.keras", compile=False)
    rc, err = run_import(["--keras", str(tmp_path / "uint8.keras"), "--class_names", CLASSES, "--pixel_range=0,255",
                          "--crop_size", "16", "--output", str(tmp_path / "export")])
    assert rc == 0, err
    model = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), compile=False)
    crops = np.random.default_rng(7).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    grey = pretrained.InputSpec(16, 1, (0, 255)).adapter()(crops.astype(np.float32) / 255.0).numpy()
    rounded = np.round(grey).astype(np.uint8)
    assert np.mean(rounded != np.floor(grey)) > 0.3  # (the crops make grey values that rounding and truncation part)
    np.testing.assert_allclose(model(crops[:, None])["expression"].numpy()[:, 0], net.predict_on_batch(rounded),
                               atol=1e-6)


def test_import_model_never_writes_into_the_model_it_imports(tmp_path):
    # A model saved as model.keras looked like an export to --output's check: --overwrite replaced the user's model
    # with the export; an --output inside a SavedModel folder changed the folder being imported.
    (tmp_path / "mine").mkdir()
    source = tmp_path / "mine" / "model.keras"
    tiny_network().save(source)
    before = source.read_bytes()
    for output in (tmp_path / "mine", tmp_path / "mine" / "model.keras"):
        rc, err = run_import(["--keras", str(source), "--class_names", CLASSES, "--pixel_range=0,1", "--output",
                              str(output), "--overwrite"])
        assert rc == 2 and "the model being imported" in err and len(err.strip().splitlines()) == 1, err
    assert source.read_bytes() == before and sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["model.keras"]
    tiny_network("dense_softmax", size=16, channels=3).export(str(tmp_path / "sm"), verbose=False)
    rc, err = run_import(["--keras", str(tmp_path / "sm"), "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(tmp_path / "sm" / "export")])
    assert rc == 2 and "the model being imported" in err, err
    assert not (tmp_path / "sm" / "export").exists()


def test_a_savedmodel_folder_is_imported_into_a_self_contained_export(tmp_path):
    net = tiny_network("dense_softmax", size=16, channels=3)
    net.export(str(tmp_path / "sm"), verbose=False)
    rc, err = run_import(["--keras", str(tmp_path / "sm"), "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(tmp_path / "export")])
    assert rc == 0, err
    shutil.rmtree(tmp_path / "sm")  # the export carries the SavedModel's files itself
    model = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), compile=False)
    crops = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(model(crops[:, None])["expression"].numpy()[:, 0],
                               net.predict_on_batch(crops.astype(np.float32) / 255.0), atol=1e-5)
    info = json.loads((tmp_path / "export" / "model_info.json").read_text())
    assert info["source"]["format"] == "saved_model" and info["source"]["params"] == net.count_params()


def test_a_model_loaded_with_an_imported_savedmodel_is_saved_again(tmp_path):
    # A loaded layer used to keep no files (load_assets set its source to None): saving its model again, as every
    # training job from a SavedModel import does at export, failed with a TypeError in save_assets.
    net = tiny_network("dense_softmax", size=16, channels=3)
    net.export(str(tmp_path / "sm"), verbose=False)
    assert run_import(["--keras", str(tmp_path / "sm"), "--class_names", CLASSES, "--pixel_range=0,1",
                       "--output", str(tmp_path / "export")])[0] == 0
    shutil.rmtree(tmp_path / "sm")
    model = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), compile=False)
    model.save(tmp_path / "again.keras")
    del model
    shutil.rmtree(tmp_path / "export")  # the second file carries the files too
    again = keras.saving.load_model(str(tmp_path / "again.keras"), compile=False)
    crops = np.random.default_rng(7).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(again(crops[:, None])["expression"].numpy()[:, 0],
                               net.predict_on_batch(crops.astype(np.float32) / 255.0), atol=1e-5)


@pytest.fixture(scope="module")
def savedmodel_import(tmp_path_factory):
    """A tiny 16 px colour SavedModel imported (the folder removed), and 16 px data to train on."""
    from trainer_data import write_dataset

    root = tmp_path_factory.mktemp("savedmodel")
    net = tiny_network("dense_softmax", size=16, channels=3)
    net.export(str(root / "sm"), verbose=False)
    rc, err = run_import(["--keras", str(root / "sm"), "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(root / "import")])
    assert rc == 0, err
    shutil.rmtree(root / "sm")
    write_dataset(root / "data", num_clips_per_class={"Neutral": 3, "Happiness": 3}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=8, seed=0)
    return types.SimpleNamespace(export=root / "import", data=str(root / "data"), net=net)


SMALL_JOB = ["--task", "expr", "--seq_len", "4", "--batch_size", "8", "--epochs", "1", "--steps_per_epoch", "3"]


def test_the_sequence_stage_on_an_imported_savedmodel_exports_it_under_the_head(savedmodel_import, tmp_path):
    from trainer_data import run_train

    from trainer.model.spec import PER_FRAME_LAYER

    job = tmp_path / "job"
    rc, err = run_train(["--data", savedmodel_import.data, "--job_dir", str(job), "--stage", "sequence",
                         "--features_from", str(savedmodel_import.export), *SMALL_JOB])
    assert rc == 0, err[-3000:]  # it used to fail at the export, after training
    info = json.loads((job / "export" / "model_info.json").read_text())
    assert info["features_from"] == str(savedmodel_import.export) and info["stage"] == "sequence"
    model = keras.saving.load_model(str(job / "export" / "model.keras"), compile=False)
    crops = np.random.default_rng(8).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    # The frozen network is the SavedModel's: its features are the network's log probabilities.
    features = model.get_layer(PER_FRAME_LAYER).layer(crops.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(features, np.log(savedmodel_import.net.predict_on_batch(crops / 255.0)), atol=1e-5)
    assert model(crops[None])["expression"].shape == (1, 2, len(info["label_names"]["expression"]))
    # Its network is still the SavedModel: fine-tuning it from this job is refused as from the import.
    rc, err = run_train(["--data", savedmodel_import.data, "--job_dir", str(tmp_path / "tuned"), "--stage", "frames",
                         "--init_from", str(job), *SMALL_JOB])
    assert rc == 2 and "which cannot be fine-tuned" in err and not (tmp_path / "tuned").exists(), err[-3000:]


@pytest.mark.parametrize("stage", ["frames", "end_to_end"])
def test_init_from_an_imported_savedmodel_is_refused_in_one_line_before_training(savedmodel_import, tmp_path, stage):
    from trainer_data import run_train

    job = tmp_path / "job"
    rc, err = run_train(["--data", savedmodel_import.data, "--job_dir", str(job), "--stage", stage, "--init_from",
                         str(savedmodel_import.export), *SMALL_JOB])
    # It used to train (the SavedModel frozen, only the heads learning), then fail at the export.
    assert rc == 2, err[-3000:]
    assert err.startswith("error: --init_from ") and len(err.strip().splitlines()) == 1, err[-3000:]
    assert "imported SavedModel folder (layer saved_model), which cannot be fine-tuned" in err
    assert f"--stage sequence --features_from {savedmodel_import.export}" in err
    assert not job.exists()


# --------------------------------------------------------------------------------------------------
# Temporal heads.


def spec(**kw):
    base = {"heads": ("expression",), "num_expression_classes": 3, "crop_size": 16, "cnn_width": 0.125,
            "feature_dim": 6, "temporal_width": 8, "dropout": 0.0}
    return ModelSpec(**{**base, **kw})


@pytest.mark.parametrize("head", ["tcn", "transformer"])
def test_temporal_heads_take_any_window_and_survive_save_and_load(head, tmp_path):
    model = model_lib.build_sequence_model(spec(temporal=head, max_window=12))
    features = np.random.default_rng(5).normal(size=(2, 12, 6)).astype(np.float32)
    outputs = model(features)["expression"].numpy()
    assert outputs.shape == (2, 12, 3)
    assert model(features[:, :5])["expression"].shape == (2, 5, 3)  # a shorter window
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(str(tmp_path / "m.keras"), compile=False)
    np.testing.assert_allclose(again(features)["expression"].numpy(), outputs, atol=1e-5)
    later = features.copy()
    later[:, 6:] += 5.0  # change the future of frame 5
    changed = np.abs(model(later)["expression"].numpy()[:, :6] - outputs[:, :6]).max()
    if head == "tcn":  # causal: frames up to 5 do not see frames 6 on
        assert changed < 1e-6
    else:  # the encoder attends to the whole window
        assert changed > 1e-4
    assert temporal.describe(spec(temporal=head))["causal"] == (head == "tcn")


def test_tcn_receptive_field_is_as_recorded():
    s = spec(temporal="tcn", temporal_layers=2)
    model = model_lib.build_sequence_model(s)
    field = temporal.describe(s)["receptive_field"]  # 1 + 2 (3 - 1)(1 + 2) = 13
    features = np.random.default_rng(6).normal(size=(1, 30, 6)).astype(np.float32)
    base = model(features)["expression"].numpy()[0, -1]
    seen = features.copy()
    seen[0, 30 - field] += 3.0
    unseen = features.copy()
    unseen[0, 30 - field - 1] += 3.0
    assert field == 13
    assert np.abs(model(seen)["expression"].numpy()[0, -1] - base).max() > 1e-6
    assert np.abs(model(unseen)["expression"].numpy()[0, -1] - base).max() < 1e-7


@pytest.mark.parametrize("option", ["--features_from", "--init_from"])
def test_a_model_file_given_where_an_export_goes_points_to_import_model(network_file, option):
    # It said "--model ... holds no model_info.json: pass the export/ directory of a training job": another option's
    # name, and no word of import-model.
    with pytest.raises(Exception, match=f"^{option} .*tiny.keras.* is a Keras model, not an export: .*import-model"):
        ExportSource(network_file, option)


@pytest.mark.parametrize("final", ["logits", "sigmoid"])
def test_a_savedmodel_whose_outputs_are_not_probabilities_is_refused(final, tmp_path):
    # Its outputs were taken as probabilities (their log, floored at 1e-7, under the softmax) without a word: logits
    # imported without --model_outputs logits, or sigmoid scores, gave a wrong export that passed its own check.
    net = tiny_network("logits", size=16, channels=3)
    if final == "sigmoid":
        net = keras.Model(net.inputs, keras.layers.Activation("sigmoid")(net.outputs[0]))
    net.export(str(tmp_path / "sm"), verbose=False)
    rc, err = run_import(["--keras", str(tmp_path / "sm"), "--class_names", CLASSES, "--pixel_range=0,1",
                          "--output", str(tmp_path / "export")])
    assert rc == 2 and "not probabilities" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "export").exists()


def test_a_file_inside_an_export_given_where_the_export_goes_names_the_export(network_file, tmp_path):
    out = tmp_path / "export"
    assert run_import(["--keras", network_file, "--class_names", CLASSES, "--pixel_range=0,1", "--output",
                       str(out)])[0] == 0
    for inside in ("model.keras", "saved_model"):
        with pytest.raises(Exception, match=f"^--init_from .*{inside} is a file of the export .*: give --init_from "
                                            f"{out}$"):
            ExportSource(str(out / inside), "--init_from")
