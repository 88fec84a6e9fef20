"""Evaluation on a real conversion: every labelled frame is scored, frames without a face included.

The fixture converts tiny drawn-face videos with Beam (in memory); two frames of one video show no face
(``--max_hold 0``: nothing is held), so the validation accounting has frames written without a face. An
exported model (untrained: the counts, not the scores, are under test) is evaluated through the
``affectstream evaluate`` entry point.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import abaw_layout as abaw
import pytest
import video_fixtures as vf
from trainer_data import corrupt_shard, shard_path

from beam_jobs import convert
from beam_jobs.faces.stage import FaceStageConfig
from tfrecords_schema import SPLIT_VALIDATION, read_dataset_info
from trainer.evaluation import evaluate
from trainer.input.pipeline import heads_for_task
from trainer.model.build import build_model
from trainer.model.export import export_model
from trainer.training.config import TrainConfig
from trainer.training.model_info import model_info_payload
from trainer.training.plan import model_spec_for

VID1 = [0, 0, 4, 4, None, None, 4, 1, 1, 5, 5, 5]  # None: a frame without a face (labelled Neutral)
VID1_LABELS = [0 if e is None else e for e in VID1]
VID1_LABELS[7] = -1  # one unlabelled line: not a labelled frame, not scored
VID2 = [3] * 6


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    ann, videos = root / "annotations", root / "videos"
    vf.write_face_video(videos / "vid1.avi", VID1)
    abaw.write_annotation(ann, "expr", "validation", "vid1", VID1_LABELS)
    vf.write_face_video(videos / "vid2.avi", VID2)
    abaw.write_annotation(ann, "expr", "validation", "vid2", VID2)
    vf.write_face_video(videos / "vid3.avi", [4] * 6)
    abaw.write_annotation(ann, "expr", "train", "vid3", [4] * 6)
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = convert.run(["--videos", str(videos), "--annotations", str(ann), "--output", str(out),
                          "--clip_length", "4", "--detect_every", "1", "--max_hold", "0", "--crop_size", "32",
                          "--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"])
    assert rc == 0, err.getvalue()[-3000:]
    return out, read_dataset_info(str(out))


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    """An untrained model of the converted data, exported as a training job exports it."""
    out, info = converted
    job = tmp_path_factory.mktemp("job")
    config = TrainConfig(data=str(out), job_dir=str(job), task="expr", seq_len=4, cnn_width=0.125, feature_dim=8,
                         rnn_units=[8])
    heads = heads_for_task(info, config.task)
    model = build_model(model_spec_for(config, info, heads))
    export_model(model, str(job / "export"),
                 model_info_payload(config, info, heads, best_epoch=0, best_score=0.0, selected_on=SPLIT_VALIDATION))
    return job


def test_evaluate_scores_every_written_labelled_frame_with_or_without_a_face(converted, exported, capsys):
    out, info = converted
    accounting = info.splits[SPLIT_VALIDATION].accounting
    assert accounting.written_frames_without_face == 2 and accounting.dropped == {}

    assert evaluate.run(["--model", str(exported / "export"), "--data", str(out)]) == 0
    report_dir = exported / "evaluation" / SPLIT_VALIDATION
    assert f"reports written to {report_dir}" in capsys.readouterr().out
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["coverage"]["not_scored"] == {}  # vid1's unlabelled frame is in a record, but not labelled
    expression = metrics["expression"]
    # A single-task split: every written labelled frame has a valid expression label, and each is scored.
    assert expression["frames"] == accounting.written_frames_with_face + accounting.written_frames_without_face
    assert expression["frames"] == len(VID1) - 1 + len(VID2)
    assert expression["with_face"]["frames"] == accounting.written_frames_with_face

    with open(report_dir / "per_video.csv", newline="") as f:
        rows = {row["media_id"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"vid1", "vid2"}
    assert (int(rows["vid1"]["frames"]), int(rows["vid2"]["frames"])) == (len(VID1) - 1, len(VID2))
    assert float(rows["vid1"]["face_rate"]) == pytest.approx(9 / 11, abs=1e-4)
    assert float(rows["vid2"]["face_rate"]) == 1.0


def test_model_info_face_stage_is_the_conversion_face_stage(converted, exported):
    _, info = converted
    model_info = json.loads((exported / "export" / "model_info.json").read_text())
    stage = FaceStageConfig.from_dict(model_info["face_stage"])
    assert stage == FaceStageConfig.from_dict({**info.options, "crop_size": info.crop_size})
    assert (stage.detect_every, stage.max_hold, stage.crop_size) == (1, 0, 32)


def test_frames_of_records_skipped_as_corrupt_are_counted_as_such(converted, exported, tmp_path, capsys):
    # Every labelled frame of this split has an expression label, so a frame the expression model did not score was
    # either not read (its record skipped) or not there. Before, the frames of skipped records were reported as
    # not_for_this_model.
    out, info = converted
    data = tmp_path / "data"
    shutil.copytree(out, data)
    corrupt_shard(shard_path(data, info, SPLIT_VALIDATION))
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(exported / "export"), "--data", str(data), "--skip_corrupt",
                         "--report_dir", str(report_dir)]) == 0
    metrics = json.loads((report_dir / "metrics.json").read_text())
    written = info.splits[SPLIT_VALIDATION].accounting.written_frames
    coverage = metrics["coverage"]
    assert metrics["skipped_corrupt_records"] >= 1
    assert set(coverage["not_scored"]) == {"skipped_as_corrupt"}
    assert 0 < coverage["not_scored"]["skipped_as_corrupt"] < written
    assert coverage["scored_frames"] == metrics["expression"]["frames"]
    assert coverage["scored_frames"] + coverage["not_scored"]["skipped_as_corrupt"] == written
    assert "skipped_as_corrupt" in capsys.readouterr().out


def test_default_report_folders_of_two_imported_models_side_by_side_differ(tmp_path):
    # import-model --output models/fer and models/effnet: both wrote models/evaluation/validation before.
    assert evaluate.default_report_dir(str(tmp_path / "job" / "export"), "validation") == str(
        tmp_path / "job" / "evaluation" / "validation")
    assert evaluate.default_report_dir(str(tmp_path / "models" / "fer"), "test") == str(
        tmp_path / "models" / "evaluation" / "fer" / "test")
    assert evaluate.default_report_dir("gs://b/models/effnet/", "validation") == "gs://b/models/evaluation/effnet/validation"


def test_a_model_that_outputs_nan_is_refused_not_scored(converted, exported, tmp_path, capsys):
    import keras
    import numpy as np

    out, _ = converted
    broken = tmp_path / "export"
    shutil.copytree(exported / "export", broken)
    model = keras.saving.load_model(str(broken / "model.keras"), compile=False)
    layer = model.get_layer("expression_logits")
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    model.save(str(broken / "model.keras"))
    # Before: argmax of NaN is class 0, and the run printed a macro-F1 for it (exit 0).
    assert evaluate.run(["--model", str(broken), "--data", str(out), "--report_dir", str(tmp_path / "r")]) == 1
    assert "outputs NaN or infinity for expression" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_multi_task_model_is_scored_on_the_heads_a_conversion_of_some_of_its_tasks_labels(tmp_path, capsys):
    # It was refused ("the model predicts 'valence_arousal' but DATA has no valence_arousal labels"), so a conversion
    # with --tasks expr could not score the expression head of a multi-task model.
    from trainer_data import write_dataset

    both = write_dataset(tmp_path / "both", num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16,
                         tasks=("expr", "va"))
    config = TrainConfig(data=str(tmp_path / "both"), job_dir=str(tmp_path / "job"), task="multi", seq_len=4,
                         cnn_width=0.125, feature_dim=8, rnn_units=[8])
    heads = heads_for_task(both, config.task)
    assert heads == ("expression", "valence_arousal")
    export_model(build_model(model_spec_for(config, both, heads)), str(tmp_path / "job" / "export"),
                 model_info_payload(config, both, heads, best_epoch=0, best_score=0.0, selected_on=SPLIT_VALIDATION))
    write_dataset(tmp_path / "expr", num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16,
                  tasks=("expr",))
    report = tmp_path / "report"
    assert evaluate.run(["--model", str(tmp_path / "job"), "--data", str(tmp_path / "expr"), "--report_dir",
                         str(report)]) == 0
    assert "has no valence_arousal labels: the model is scored on expression" in capsys.readouterr().err
    metrics = json.loads((report / "metrics.json").read_text())
    assert "expression" in metrics and "valence_arousal" not in metrics
    assert metrics["heads_not_scored"] == ["valence_arousal"] and metrics["expression"]["frames"] > 0
    write_dataset(tmp_path / "au", num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16, tasks=("au",))
    assert evaluate.run(["--model", str(tmp_path / "job"), "--data", str(tmp_path / "au")]) == 1
    assert "has no labels for them" in capsys.readouterr().err


def _export_with(exported, tmp_path, **changes):
    """A copy of the export whose model_info.json has ``changes`` (``face_stage`` fields, or ``crops``)."""
    export = tmp_path / "export"
    shutil.copytree(exported / "export", export)
    path = export / "model_info.json"
    model_info = json.loads(path.read_text())
    crops = changes.pop("crops", None)
    model_info["face_stage"].update(changes)
    if crops is not None:
        model_info["crops"] = crops
    path.write_text(json.dumps(model_info))
    return export


def test_a_model_on_data_of_another_face_stage_is_scored_with_a_warning_and_the_report_says_so(
        converted, exported, tmp_path, capsys):
    # The audit's case: data converted with --detect_every 3, a model whose face stage detects every 20 frames.
    # evaluate said nothing, and its macro-F1 was 0.105 where predict gave 0.026 on the same video.
    out, _ = converted
    export = _export_with(exported, tmp_path, detect_every=20, detector="haar")
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(export), "--data", str(out), "--report_dir", str(report_dir)]) == 0
    captured = capsys.readouterr()
    warning = next(line for line in captured.err.splitlines() if line.startswith("warning: "))
    assert f"{out} was converted with another face stage than {export} records" in warning
    assert "detect_every: model 20 vs data 1" in warning and "detector: model haar vs data blazeface" in warning
    assert "the ones `affectstream predict` serves this model" in warning
    assert "evaluate on a conversion made with the export's detector, detect_every" in warning
    assert "warning" not in captured.out  # On stderr, before the model is scored.
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["face_stage_differs"] == {"detector": {"model": "haar", "data": "blazeface"},
                                             "detect_every": {"model": 20, "data": 1}}
    assert metrics["expression"]["frames"] > 0  # Scored all the same: the warning says what the figures are.


def test_a_model_of_provided_crops_on_face_stage_data_is_scored_with_a_warning(converted, exported, tmp_path, capsys):
    out, info = converted
    export = _export_with(exported, tmp_path, crops={"source": "provided", "crop_size": info.crop_size,
                                                     "jpeg_quality": 90, "codec": "jpeg"})
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(export), "--data", str(out), "--report_dir", str(report_dir)]) == 0
    err = capsys.readouterr().err
    assert "(crops: model provided vs data face_stage)" in err and "made with --cropped_aligned" in err
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["face_stage_differs"] == {"crops": {"model": "provided", "data": "face_stage"}}


def test_face_stage_options_that_cut_the_same_crops_do_not_warn(converted, exported, tmp_path, capsys):
    # The data's stage: blazeface, which shrinks a whole frame to 192 pixels at most; detect_every 1, so there is no
    # held box and no early detection. None of these changes a crop.
    out, _ = converted
    export = _export_with(exported, tmp_path, detect_width=640, max_hold=None, redetect_change=0.3)
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(export), "--data", str(out), "--report_dir", str(report_dir)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((report_dir / "metrics.json").read_text())["face_stage_differs"] == {}


def test_a_model_trained_on_the_conversion_is_evaluated_on_it_without_a_face_stage_warning(
        converted, exported, tmp_path, capsys):
    out, _ = converted
    assert evaluate.run(["--model", str(exported / "export"), "--data", str(out), "--report_dir",
                         str(tmp_path / "report")]) == 0
    assert "face stage" not in capsys.readouterr().err
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["face_stage_differs"] == {}


def test_an_export_that_records_no_face_stage_is_scored_with_a_note(converted, exported, tmp_path, capsys):
    out, _ = converted
    export = tmp_path / "export"
    shutil.copytree(exported / "export", export)
    model_info = json.loads((export / "model_info.json").read_text())
    del model_info["face_stage"], model_info["crops"]  # An export of a trainer older than both fields.
    (export / "model_info.json").write_text(json.dumps(model_info))
    assert evaluate.run(["--model", str(export), "--data", str(out), "--report_dir", str(tmp_path / "r")]) == 0
    assert f"note: {export} records no face stage" in capsys.readouterr().err
    assert "face_stage_differs" not in json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_a_crop_size_that_differs_says_how_to_make_them_agree():
    import types

    from trainer.evaluation.evaluate import EvaluationError, check_model_fits_data

    info = types.SimpleNamespace(label_names={"expression": ["A", "B"]}, tasks=["expr"], crop_size=32)
    model_info = {"heads": ["expression"], "label_names": {"expression": ["A", "B"]}, "crop_size": 64}
    with pytest.raises(EvaluationError, match="64 != data crop size 32: convert with --crop_size 64"):
        check_model_fits_data(model_info, info, "DATA")


def test_a_split_where_no_frame_is_scored_is_refused_not_reported_as_a_score(converted, exported, tmp_path, capsys):
    # Every validation record skipped as corrupt: evaluate printed "expression: not scored (no frame of this split is
    # labelled for it)" and "score ... 0.0000", wrote metrics.json with macro-F1 0.0 and exited 0.
    out, info = converted
    data = tmp_path / "data"
    shutil.copytree(out, data)
    for shard in info.splits[SPLIT_VALIDATION].shards:
        corrupt_shard(str(data / shard.path), offset=0)
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(exported / "export"), "--data", str(data), "--skip_corrupt",
                         "--report_dir", str(report_dir)]) == 1
    err = capsys.readouterr().err
    labelled = info.splits[SPLIT_VALIDATION].accounting.labelled_frames
    assert f"no frame of split 'validation' of {data} was scored" in err
    assert f"0 of {labelled} labelled frames scored" in err and f"skipped_as_corrupt {labelled}" in err
    assert not (report_dir / "metrics.json").exists()


def test_a_model_on_a_split_without_labels_of_its_task_is_refused(tmp_path, capsys):
    # The data labels valence/arousal (in train) but its validation split has expression labels only: a VA model was
    # "scored" on 0 frames, with CCC 0.0 in metrics.json and exit status 0.
    from trainer_data import write_dataset

    both = write_dataset(tmp_path / "data", num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16,
                         tasks=("expr", "va"), invalid_fraction=0.0)
    expr = write_dataset(tmp_path / "expr", num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16,
                         tasks=("expr",), invalid_fraction=0.0)
    shutil.rmtree(tmp_path / "data" / SPLIT_VALIDATION)
    shutil.copytree(tmp_path / "expr" / SPLIT_VALIDATION, tmp_path / "data" / SPLIT_VALIDATION)
    info_path = tmp_path / "data" / "dataset_info.json"
    raw = json.loads(info_path.read_text())
    raw["splits"][SPLIT_VALIDATION] = json.loads((tmp_path / "expr" / "dataset_info.json").read_text())["splits"][
        SPLIT_VALIDATION]
    info_path.write_text(json.dumps(raw))
    config = TrainConfig(data=str(tmp_path / "data"), job_dir=str(tmp_path / "job"), task="va", seq_len=4,
                         cnn_width=0.125, feature_dim=8, rnn_units=[8])
    heads = heads_for_task(both, config.task)
    export_model(build_model(model_spec_for(config, both, heads)), str(tmp_path / "job" / "export"),
                 model_info_payload(config, both, heads, best_epoch=0, best_score=0.0, selected_on=SPLIT_VALIDATION))
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(tmp_path / "job"), "--data", str(tmp_path / "data"), "--report_dir",
                         str(report_dir)]) == 1
    err = capsys.readouterr().err
    written = expr.splits[SPLIT_VALIDATION].accounting.written_frames
    assert "no frame of split 'validation'" in err and "for valence_arousal" in err
    assert f"not_for_this_model {written}" in err
    assert not (report_dir / "metrics.json").exists()


def test_a_job_interrupted_before_its_export_says_how_to_finish_it(converted, exported, tmp_path, capsys):
    # A killed training job: checkpoints, no export. evaluate said "--model JOB holds no model_info.json: pass the
    # export/ directory of a training job (or the job dir)", though JOB was the job dir.
    out, _ = converted
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    (job / "train_config.json").write_text("{}")
    assert evaluate.run(["--model", str(job), "--data", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{job} is a training job that has not exported a model yet" in err
    assert f"affectstream train --job_dir {job}" in err and "resumes from its last checkpoint" in err


def test_a_report_folder_that_cannot_be_written_is_refused_before_the_split_is_scored(converted, exported, tmp_path,
                                                                                    capsys, monkeypatch):
    # --report_dir under a file: the whole split was scored, then "error: NotADirectoryError: [Errno 20] Not a
    # directory" (a file as --report_dir: "FileExistsError: [Errno 17] File exists").
    def scored(*args, **kwargs):
        raise AssertionError("the split was scored")

    monkeypatch.setattr(evaluate, "collect_predictions", scored)
    out, _ = converted
    taken = tmp_path / "metrics_here"
    taken.write_text("not a folder")
    assert evaluate.run(["--model", str(exported / "export"), "--data", str(out), "--report_dir",
                         str(taken / "validation")]) == 1
    assert f"the reports cannot be written to {taken / 'validation'}: {taken} is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("edit", ["empty", "no_task", "no_seq_len", "heads_not_a_list"])
def test_a_model_info_without_the_fields_evaluate_needs_is_refused_with_its_name(converted, exported, tmp_path, capsys,
                                                                                  edit):
    # A hand-edited or foreign model_info.json ended in a raw traceback: KeyError: 'heads' / KeyError: 'task'.
    out, _ = converted
    export = tmp_path / "export"
    shutil.copytree(exported / "export", export)
    path = export / "model_info.json"
    model_info = json.loads(path.read_text())
    if edit == "empty":
        model_info = {}
    elif edit == "no_task":
        del model_info["task"]
    elif edit == "no_seq_len":
        del model_info["seq_len"]
    else:
        model_info["heads"] = "expression"
    path.write_text(json.dumps(model_info))
    assert evaluate.run(["--model", str(export), "--data", str(out), "--report_dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert f"error: ExportError: {path} " in err and "export (or import) the model again" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_model_file_is_named_as_such(converted, exported, tmp_path, capsys, damage):
    # A truncated model.keras was reported with Keras's "File not found: filepath=.../model.keras" though it was there.
    out, _ = converted
    export = tmp_path / "export"
    shutil.copytree(exported / "export", export)
    model = export / "model.keras"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:3000])
    else:
        model.unlink()
    assert evaluate.run(["--model", str(export), "--data", str(out), "--report_dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    if damage == "truncated":
        assert f"{model} cannot be loaded: not a complete .keras archive (truncated or corrupt?)" in err
        assert "File not found" not in err
    else:
        assert f"{model} not found: the export is incomplete" in err


def test_a_corrupt_record_fails_with_one_clean_line_naming_the_shard(converted, exported, tmp_path, capsys):
    # The message was TensorFlow's whole graph report: "{{function_node __wrapped__IteratorGetNext_output_types_8_
    # device_/job:localhost/replica:0/task:0/device:CPU:0}} assertion failed: ... [[{{function_node Assert_AssertGuard_
    # false_452}}{{node Assert/AssertGuard/Assert}}]] [Op:IteratorGetNext] name: ".
    out, info = converted
    data = tmp_path / "data"
    shutil.copytree(out, data)
    path = shard_path(data, info, SPLIT_VALIDATION)
    corrupt_shard(path)
    assert evaluate.run(["--model", str(exported / "export"), "--data", str(data), "--report_dir",
                         str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert line.startswith(f"error: InvalidArgumentError: assertion failed: [corrupt or truncated shard] [{path}]")
    assert line.endswith("[(pass --skip_corrupt to skip and count the loss)]")
    assert "function_node" not in err and "[Op:" not in err


def test_skip_corrupt_scores_no_record_a_shard_holds_beyond_its_listed_count(converted, exported, tmp_path):
    # A shard whose records were appended twice (a copy gone wrong): --skip_corrupt read both copies and reported
    # "validation: 22 of 15 labelled frames scored (coverage 1.4667); not scored: not_for_this_model -7".
    out, info = converted
    data = tmp_path / "data"
    shutil.copytree(out, data)
    path = shard_path(data, info, SPLIT_VALIDATION)
    with open(path, "rb") as f:
        records = f.read()
    with open(path, "wb") as f:
        f.write(records + records)
    report_dir = tmp_path / "report"
    assert evaluate.run(["--model", str(exported / "export"), "--data", str(data), "--skip_corrupt",
                         "--report_dir", str(report_dir)]) == 0
    metrics = json.loads((report_dir / "metrics.json").read_text())
    written = info.splits[SPLIT_VALIDATION].accounting.written_frames
    assert metrics["coverage"]["scored_frames"] == metrics["expression"]["frames"] == written
    assert metrics["coverage"]["not_scored"] == {} and metrics["coverage"]["coverage"] == 1.0
