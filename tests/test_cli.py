"""The `affectstream` command dispatches to the jobs and lists what is valid."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from typing import ClassVar

import abaw_layout as abaw
import conversion_fixtures as cf
import pytest

from affectstream import cli
from beam_jobs import convert
from beam_jobs.faces import stage as faces
from beam_jobs.pipeline.config import ConvertConfig
from beam_jobs.sources import SOURCES
from beam_jobs.sources.abaw import AbawSource
from tfrecords_schema import cli as cli_flags


def test_unknown_command_lists_valid_commands(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "convert" in err and "train" in err


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_console_script_runs_make_demo_data(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "affectstream.cli", "make-demo-data", str(tmp_path), "--frames_per_video", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "20 videos" in result.stdout


def test_tensorboard_of_the_readme_starts():
    # README: `.venv/bin/tensorboard --logdir JOB/logs`. TensorBoard 2.17 (TensorFlow's) imports pkg_resources at
    # start, which setuptools 82 removed: pyproject.toml keeps setuptools below it.
    script = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "tensorboard.main"]
    done = subprocess.run([*command, "--version_tb"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("2.17."), (done.stdout, done.stderr[-2000:])


# --- the conversion's command line -------------------------------------------------------------------

LOCAL = ["--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"]
# The options a conversion recorded before adapters could add their own: outputs keep these bytes. (Schema
# version 2 added the face stage's align and redetect_change; near_input came later, without a new version: a model
# rebuilds its face stage from them.)
RECORDED = {"align", "annotations", "beam_args", "bucket_by", "clip_length", "codec", "crop_size", "cropped_aligned", "dataset",
            "detect_every", "detect_width", "detector", "max_hold", "min_shards", "near_input", "output",
            "redetect_change", "select_fraction", "shard_bytes", "tasks", "videos"}


def _convert(argv, source=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = convert.run([str(a) for a in argv], source=source)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def crops_dataset(tmp_path):
    """One train track of provided crops: converts without decoding any video."""
    ann, crops = tmp_path / "annotations", tmp_path / "crops"
    abaw.write_annotation(ann, "expr", "train", "c1", [4, 4, 1])
    cf.write_crops(crops / "c1", {1: None, 2: None, 3: None})
    return ["--annotations", ann, "--cropped_aligned", crops]


def test_convert_help_lists_the_common_dataset_options_and_defaults_from_the_configs(capsys):
    assert cli.main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--folds", "--fold", "--class_names", "--allow_partial", "--annotations"):
        assert flag in out
    face, job = faces.FaceStageConfig(), ConvertConfig("", "", {}, ())
    args, _ = convert.build_parser().parse_known_args(["--output", "o"])
    assert (args.crop_size, args.detector, args.detect_every, args.detect_width, args.max_hold) == (
        face.crop_size, face.detector, face.detect_every, face.detect_width, face.max_hold)
    assert (args.clip_length, args.bucket_by, args.min_shards, args.shard_bytes) == (
        job.clip_length, job.bucket_by, job.min_shards, job.shard_bytes)
    assert faces.FaceStageConfig.from_dict(vars(args)) == face  # How the conversion builds its face stage.


@pytest.mark.parametrize("argv, expected", [
    (["--dataset", "nope"], "valid datasets: abaw"),
    (["--videos", "v"], "--annotations"),  # The ABAW adapter reads annotation files...
    (["--annotations", "a"], "needs --videos or --cropped_aligned"),  # ...and media or provided crops.
    (["--videos", "v", "--folds", "5"], "--folds K and --fold I go together"),
    (["--videos", "v", "--folds", "5", "--fold", "5"], "--fold must be an integer in [0, 5)"),
    (["--videos", "v", "--folds", "1", "--fold", "0"], "--folds must be an integer >= 2"),
    (["--videos", "v", "--codec", "png"], "--codec: invalid choice: 'png' (choose from 'jpeg', 'raw')"),
])
def test_bad_conversion_options_exit_2_with_the_reason(tmp_path, argv, expected):
    rc, _, err = _convert(["--output", tmp_path / "o", *argv, *LOCAL])
    assert rc == 2 and expected in err, err
    assert not (tmp_path / "o").exists()


class _HookedSource(AbawSource):
    """The ABAW adapter with an option of its own, added to the command line through the hook."""

    seen: ClassVar[dict] = {}

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--subject_pattern", default=None, help="(test adapter)")

    @classmethod
    def from_args(cls, args, tasks):
        cls.seen = {"subject_pattern": args.subject_pattern, "class_names": args.class_names, "tasks": tasks}
        return super().from_args(args, tasks)


def test_adapters_add_their_options_and_build_themselves_from_them(tmp_path, monkeypatch, crops_dataset):
    monkeypatch.setitem(SOURCES, "hooked", _HookedSource)
    rc, _, err = _convert(["--dataset", "hooked", "--subject_pattern", "s*", "--class_names", "A,B", "--tasks",
                           "expr", "--output", tmp_path / "out", *crops_dataset, *LOCAL])
    assert rc == 0, err
    assert _HookedSource.seen == {"subject_pattern": "s*", "class_names": "A,B", "tasks": ["expr"]}
    options = json.loads((tmp_path / "out" / "dataset_info.json").read_text())["options"]
    assert options["subject_pattern"] == "s*" and options["class_names"] == "A,B"  # Given: recorded.
    assert set(options) == RECORDED | {"subject_pattern", "class_names"}


def test_options_not_given_are_not_recorded_so_outputs_keep_their_bytes(tmp_path, crops_dataset):
    rc, _, err = _convert(["--output", tmp_path / "out", *crops_dataset, *LOCAL])
    assert rc == 0, err
    options = json.loads((tmp_path / "out" / "dataset_info.json").read_text())["options"]
    assert set(options) == RECORDED
    assert options["max_hold"] is None and options["videos"] is None  # The job's own options: always.


class _PartlyListedSource(AbawSource):
    """The ABAW adapter reporting an input folder it could not list."""

    def discover(self):
        return dataclasses.replace(super().discover(), unlisted_folders=["/data/locked"])


def test_unlisted_input_folders_fail_the_run_unless_partial_input_is_allowed(tmp_path, crops_dataset):
    source = _PartlyListedSource(str(crops_dataset[1]), cropped_aligned=str(crops_dataset[3]))
    rc, _, err = _convert(["--output", tmp_path / "out", *crops_dataset, *LOCAL], source=source)
    assert rc == 1 and "/data/locked" in err and "--allow_partial" in err
    assert not (tmp_path / "out" / "dataset_info.json").exists()
    rc, _, err = _convert(["--output", tmp_path / "out2", "--allow_partial", "--verbose", *crops_dataset, *LOCAL],
                          source=source)
    assert rc == 0, err
    options = json.loads((tmp_path / "out2" / "dataset_info.json").read_text())["options"]
    assert "allow_partial" not in options and "verbose" not in options  # Run-control flags: never recorded.


# --- a command line that answers at once and quietly ---------------------------------------------------

HEAVY_MODULES = ("tensorflow", "keras", "apache_beam", "cv2")
# Runs `affectstream ARGS...` as the console script does, in a fresh interpreter, then reports on its last
# stdout line the exit status, the heavy modules it loaded and the TensorFlow log level its children would see.
_PROBE = """
import json, os, runpy, sys
heavy, variable = sys.argv[1].split(","), sys.argv[2]
sys.argv = ["affectstream", *sys.argv[3:]]
try:
    runpy.run_module("affectstream.cli", run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules),
                  "tf_log_level": os.environ.get(variable)}))
"""


def _probe(*args: str, env_level: str | None = None) -> tuple[dict, str, str]:
    """(report, stdout before the report, stderr) of ``affectstream ARGS`` in a child interpreter."""
    env = {k: v for k, v in os.environ.items() if k != cli.TF_LOG_LEVEL_VARIABLE}
    if env_level is not None:
        env[cli.TF_LOG_LEVEL_VARIABLE] = env_level
    result = subprocess.run([sys.executable, "-c", _PROBE, ",".join(HEAVY_MODULES), cli.TF_LOG_LEVEL_VARIABLE, *args],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    *out, report = result.stdout.rstrip("\n").split("\n")
    return json.loads(report), "\n".join(out), result.stderr


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in cli.COMMANDS], ids=" ".join)
def test_help_answers_without_heavy_imports_and_prints_nothing_on_stderr(argv):
    report, out, err = _probe(*argv)
    assert report["code"] == 0, err
    assert out.startswith("usage:"), out[:200]
    assert err == ""
    assert report["heavy"] == [], f"`affectstream {' '.join(argv)}` imported {report['heavy']}"
    assert cli.VERBOSE_FLAG in out  # Every command takes --verbose (the top level says so).


@pytest.mark.parametrize("flags, env_level, expected", [
    ([], None, cli_flags.TF_LOG_QUIET),  # Quiet by default.
    (["--verbose"], None, None),  # --verbose: TensorFlow's own default (0).
    (["--verbose=true"], None, None),  # `train` takes a value...
    (["--verbose", "off"], None, cli_flags.TF_LOG_QUIET),  # ...which can turn it off.
    (["--verbose", "--verbose=no"], None, cli_flags.TF_LOG_QUIET),  # The last one counts.
    ([], "1", "1"),  # The user's setting wins...
    (["--verbose"], "1", "1"),  # ...with --verbose too.
])
def test_tensorflow_log_level_the_command_sees(flags, env_level, expected):
    report, _, err = _probe("inspect", "--help", *flags, env_level=env_level)
    assert report["code"] == 0, err
    assert report["tf_log_level"] == expected


def test_tensorflow_start_up_errors_are_hidden_unless_verbose(tmp_path):
    """Where TensorFlow prints CUDA factory errors (no GPU, CUDA libraries installed), only --verbose shows them."""
    missing = str(tmp_path / "missing")  # `inspect` imports TensorFlow to look for dataset_info.json there.
    report, _, verbose_err = _probe("inspect", missing, "--verbose")
    assert report["code"] == 1 and "tensorflow" in report["heavy"], verbose_err
    if "Unable to register" not in verbose_err:
        pytest.skip("this TensorFlow prints no CUDA factory errors here")
    report, _, err = _probe("inspect", missing)
    assert report["code"] == 1 and "tensorflow" in report["heavy"]
    assert "Unable to register" not in err and err.startswith("inspect: error:"), err


@pytest.mark.parametrize("verbose", [False, True])
def test_ffmpeg_log_inside_opencv_is_hidden_unless_verbose(tmp_path, verbose):
    # A file named .mp4 without its index box: FFmpeg logs "moov atom not found" to stderr, where the commands already
    # say "OpenCV cannot open it" in their own words.
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    code = ("import sys, cv2\nfrom tfrecords_schema.cli import quiet_tensorflow\n"
            f"quiet_tensorflow(sys.argv[1:])\nprint(cv2.VideoCapture({str(broken)!r}).isOpened())")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    done = subprocess.run([sys.executable, "-c", code, *(["--verbose"] if verbose else [])], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert ("moov atom not found" in done.stderr) == verbose, done.stderr


@pytest.mark.parametrize("module", sorted({module for module, _ in cli.COMMANDS.values()}))
def test_every_command_module_also_runs_as_python_dash_m(module):
    # docs/architecture.md: "Each also runs as python -m MODULE". One had no __main__ guard: --help printed nothing.
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout.startswith("usage:"), (done.stdout[:300], done.stderr[-2000:])


def test_usage_names_the_command_as_it_was_run(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert capsys.readouterr().out.startswith("usage: affectstream demo ")  # (It said "usage: affectstream [-h]".)
    from trainer.training.config import build_parser

    assert build_parser().prog == "python -m trainer.train"  # Outside the dispatcher: the module's own name.


def test_first_of_names_the_first_items_and_counts_the_rest():
    from tfrecords_schema.cli import first_of

    assert first_of(range(7), 5) == "0, 1, 2, 3, 4 and 2 more"
    assert first_of(["a", "b"], 2) == "a, b"
    assert first_of((x for x in "xyz"), 1, "; ") == "x and 2 more"
    assert first_of([], 3) == ""


def test_sigterm_drops_the_tracebacks_of_the_beam_threads_waiting_for_the_workers_it_ended(monkeypatch):
    # `kill PID` of a conversion with --direct_num_workers 2 printed, before its one line, a traceback per worker:
    # "Exception in thread run_worker: ... RuntimeError: Worker subprocess exited with return code -15".
    import signal
    import threading

    monkeypatch.setattr(cli_flags, "_end_descendants", lambda: None)  # This test process's children are not ours.
    reported = []  # What reaches the hook in place before the SIGTERM (the default one prints a traceback).
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(str(args.exc_value)))

    def raising(message):
        def run():
            raise RuntimeError(message)
        return run

    with pytest.raises(KeyboardInterrupt), cli_flags.sigterm_unwinds():
        os.kill(os.getpid(), signal.SIGTERM)  # The handler runs between bytecodes, right after the kill.
    assert cli_flags.interruption() == ("terminated", 143)
    for name, message in ((cli_flags.BEAM_WORKER_THREAD, "Worker subprocess exited with return code -15"),
                          ("other", "a real error")):
        thread = threading.Thread(target=raising(message), name=name)
        thread.start()
        thread.join()
    assert reported == ["a real error"]


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test, as a command starts with (a pytest-xdist worker ignores SIGINT)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_run_after_an_interrupted_one_still_reports_its_worker_crashes(monkeypatch, python_ctrl_c):
    # Several conversions in one process (the tests, a notebook): each Ctrl-C wrapped threading.excepthook once more,
    # and the hook that dropped the runner's "Worker subprocess exited" errors stayed on for every later run, so a
    # worker that really died (killed for memory: -9) in a run never interrupted left no trace.
    import signal
    import threading

    reported = []  # What reaches the hook in place before the interrupts (the default one prints a traceback).
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(str(args.exc_value)))

    def worker_exits(code):
        def run():
            raise RuntimeError(f"Worker subprocess exited with return code {code}")
        thread = threading.Thread(target=run, name=cli_flags.BEAM_WORKER_THREAD)
        thread.start()
        thread.join()

    for _ in range(3):
        with pytest.raises(KeyboardInterrupt), cli_flags.interrupts_said_once():
            os.kill(os.getpid(), signal.SIGINT)  # The handler runs between bytecodes, right after the kill.
        worker_exits(-2)  # The interrupted run's workers, seen ending after its context: still quiet.
    assert reported == []

    with cli_flags.interrupts_said_once():  # The next run, not interrupted.
        worker_exits(-9)
    assert reported == ["Worker subprocess exited with return code -9"]
    hook, wrapped = threading.excepthook, 0  # Hooks wrapping hooks, down to the one in place before.
    while wrapped < 10 and (inner := [c.cell_contents for c in hook.__closure__ or () if callable(c.cell_contents)]):
        hook, wrapped = inner[0], wrapped + 1
    assert wrapped == 1  # One hook, not one per interrupt.
