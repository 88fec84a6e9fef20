"""The benchmark scripts' documented commands parse: defaults that work in the environment ``make env`` builds.

Only the option handling is exercised (no conversion, training or timing runs here).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_runs_by_default_the_configs_it_can_without_features_from():
    learning = _bench("learning")
    # `bench/learning.py --out DIR --budgets 300,800` (the docstring's first example) must not be refused.
    assert learning.chosen_configs(None, None) == ["constant", "cosine", "two_stage"]
    assert learning.chosen_configs(None, "models/fer") == ["constant", "cosine", "two_stage", "features"]
    assert learning.chosen_configs("two_stage,features", "models/fer") == ["two_stage", "features"]
    assert learning.chosen_configs("", None) == []  # --configs "" only replots --add_job jobs
    with pytest.raises(ValueError, match="needs --features_from"):
        learning.chosen_configs("features", None)
    with pytest.raises(ValueError, match="unknown"):
        learning.chosen_configs("two_stage,nope", None)


def test_learning_refuses_features_without_an_export_before_making_its_folder(tmp_path, capsys):
    learning = _bench("learning")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        learning.main(["--out", str(out), "--configs", "features"])
    assert exit_info.value.code == 2
    assert "--configs features needs --features_from EXPORT" in capsys.readouterr().err
    assert not out.exists()


def test_detectors_leave_mtcnn_out_by_default_when_its_package_is_missing(monkeypatch, capsys):
    detectors = _bench("detectors")
    monkeypatch.setattr(detectors, "mtcnn_installed", lambda: False)
    assert detectors.chosen_detectors(None) == ["haar", "blazeface_short", "blazeface_full", "blazeface"]
    assert "mtcnn left out" in capsys.readouterr().out
    assert detectors.chosen_detectors(["haar", "blazeface"]) == ["haar", "blazeface"]
    with pytest.raises(SystemExit) as exit_info:  # asked for by name: refused in one line, no traceback
        detectors.main(["--parts", "lfw", "--detectors", "mtcnn"])
    assert exit_info.value.code == 2
    assert 'pip install -e ".[mtcnn]"' in capsys.readouterr().err

    monkeypatch.setattr(detectors, "mtcnn_installed", lambda: True)
    assert detectors.chosen_detectors(None) == list(detectors.ALL_DETECTORS)


def test_predict_quick_look_has_a_short_run_shorter_than_the_long_one(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # bench/predict.py imports bench/convert.py and bench/videos.py
    for name in ("convert", "videos"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    predict = _bench("predict")
    # The docstring's quick look, `--videos 2 --video_seconds 20`, once ran both lengths at 20 s and ended in a
    # ZeroDivisionError after every run: the steady state needs two lengths.
    assert predict.parse_args(["--videos", "2", "--video_seconds", "20"]).short_seconds == 7.0
    assert predict.parse_args([]).short_seconds == 20.0  # 4 x 60 s against 4 x 20 s, as measured
    assert predict.parse_args(["--video_seconds", "30", "--short_seconds", "10"]).short_seconds == 10.0
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args(["--video_seconds", "20", "--short_seconds", "20"])
    assert exit_info.value.code == 2
    assert "--short_seconds must be" in capsys.readouterr().err
    for name in ("convert", "videos"):  # the bench's modules of those names, not the project's
        sys.modules.pop(name, None)


def test_predict_compares_the_runs_outputs_not_the_times_in_their_file_list(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("convert", "videos"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    predict = _bench("predict")
    from tfrecords_schema.prediction_files import LEDGER_FILENAME, ledger_text

    runs = []
    for mtime in (1, 2):  # two runs writing the same files at different times
        run = tmp_path / f"run{mtime}"
        (run / "EXPR").mkdir(parents=True)
        (run / "EXPR" / "v0.txt").write_text("Neutral\n")
        (run / "predict_summary.json").write_text(f'{{"output": "{run}"}}')
        (run / LEDGER_FILENAME).write_text(ledger_text({"EXPR/v0.txt": [8, mtime], "predict_summary.json": None}))
        runs.append(run)
    assert predict.same_files(*runs) == []
    (runs[1] / "EXPR" / "v0.txt").write_text("Anger\n")
    (runs[1] / "EXPR" / "v1.txt").write_text("Anger\n")
    (runs[1] / LEDGER_FILENAME).write_text(ledger_text({"EXPR/v0.txt": None, "EXPR/v1.txt": None}))
    assert predict.same_files(*runs) == ["EXPR/v0.txt", "EXPR/v1.txt", LEDGER_FILENAME]
    for name in ("convert", "videos"):
        sys.modules.pop(name, None)


def test_gpu_step_projects_from_the_input_rate_line_and_refuses_other_files_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # gpu_step imports bench/train_step.py
    gpu_step = _bench("gpu_step")
    line = {"codec": "raw", "windows_per_clip": 8, "frames_per_cpu_second": 30000.0, "crop_size": 112}
    (tmp_path / "line.json").write_text(json.dumps(line))
    assert gpu_step.input_rates(str(tmp_path / "line.json"), 112) == {"raw w8": 30000.0}
    bench_json = {"figures": {"jpeg": {"frames_per_cpu_second": 6000.0}, "raw": {"frames_per_cpu_second": 7000.0}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench_json))
    assert gpu_step.input_rates(str(tmp_path / "bench.json"), 112) == {"jpeg": 6000.0, "raw": 7000.0}
    (tmp_path / "small.json").write_text(json.dumps({**line, "crop_size": 32}))
    (tmp_path / "other.json").write_text(json.dumps({"frames": 3}))
    (tmp_path / "service.json").write_text(json.dumps({**line, "data_service": "grpc://localhost:5050"}))
    for name, expected in [("small.json", "give --crop_size 32"), ("other.json", "is neither"),
                           ("service.json", "measured through a tf.data service"),
                           ("missing.json", "No such file")]:
        with pytest.raises(SystemExit) as exit_info:  # before any counting or timing: one line, exit 2
            gpu_step.main(["--macs_only", "--input_rate_json", str(tmp_path / name)])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--macs_only", "--utilisation", "35"], "--utilisation is a fraction of the peak"),
    (["--precision", "bf16"], "argument --precision: invalid choice: 'bf16'"),
    (["--jpeg", "JPEG_DATA"], "--jpeg and --raw go together"),
])
def test_gpu_step_refuses_bad_options_before_counting_or_converting(argv, expected, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # gpu_step imports bench/train_step.py
    with pytest.raises(SystemExit) as exit_info:
        _bench("gpu_step").main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_gpu_step_refuses_swapped_codecs_and_two_crop_sizes_before_timing(tmp_path, monkeypatch, capsys):
    from trainer_data import write_dataset

    monkeypatch.syspath_prepend(str(BENCH))  # gpu_step imports bench/train_step.py
    gpu_step = _bench("gpu_step")
    for name, codec, crop_size in [("jpeg", "jpeg", 16), ("raw", "raw", 16), ("raw24", "raw", 24)]:
        write_dataset(tmp_path / name, num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=crop_size,
                      codec=codec, num_validation_clips_per_class=1)
    for jpeg, raw, expected in [("raw", "jpeg", "--jpeg RAW holds raw crops: give it as --raw"),
                                ("jpeg", "raw24", "must hold crops of --crop_size 112 (both feed one model, whose "
                                 "multiply-adds are counted at that size): --jpeg 16², --raw 24²"),
                                ("jpeg", "raw", "must hold crops of --crop_size 112")]:  # (both 16²: not 112²)
        with pytest.raises(SystemExit) as exit_info:
            gpu_step.main(["--jpeg", str(tmp_path / jpeg), "--raw", str(tmp_path / raw), "--backbones", "simple_cnn"])
        assert exit_info.value.code == 2
        assert expected.replace("RAW", str(tmp_path / "raw")) in capsys.readouterr().err


def test_gpu_step_macs_only_counts_the_backbones_asked_for(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # gpu_step imports bench/train_step.py
    assert _bench("gpu_step").main(["--macs_only", "--backbones", "mobilenet_v3_small", "--crop_size", "32"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small" in out and "simple_cnn" not in out and "efficientnet_b0" not in out


@pytest.mark.parametrize("option, value", [("--rounds", "0"), ("--seconds", "0"), ("--video_seconds", "-1")])
def test_input_rate_bench_refuses_options_that_measure_nothing_before_converting(tmp_path, monkeypatch, option,
                                                                                 value):
    # --rounds 0 (or --seconds 0) converted the videos for minutes, then failed in statistics.median.
    monkeypatch.syspath_prepend(str(BENCH))  # bench/input_rate.py imports bench/convert.py and bench/videos.py
    input_rate = _bench("input_rate")
    with pytest.raises(SystemExit) as e:
        input_rate.main([option, value, "--cache_dir", str(tmp_path / "cache")])
    assert e.value.code == 2 and not (tmp_path / "cache").exists()
