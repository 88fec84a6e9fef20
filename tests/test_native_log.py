"""TensorFlow's log that ignores TF_CPP_MIN_LOG_LEVEL (absl's: TF Lite's converter; TF Lite's interpreter's own) held
to it, as the rest of its C++ log is."""

import os
import re
import subprocess
import sys

import pytest

from tfrecords_schema.cli import TF_LOG_LEVEL_VARIABLE, TF_LOG_QUIET, native_log_at_tensorflow_level

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = [
    "a line of someone else's\n",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796616880.708445   20643 devices.cc:67] Number of eligible GPUs: 0\n",
    "W0000 00:00:1796616880.740270   20643 tf_tfl_flatbuffer_helpers.cc:392] Ignored output_format.\n",
    "\tthe second line of that warning\n",
    "E0000 00:00:1796616880.740323   20643 something.cc:1] an error\n",
    "\tthe second line of that error\n",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",  # TF Lite's interpreter, its own logger
    "ERROR: a TF Lite error\n",
]


def _native_write(lines):
    os.write(2, "".join(lines).encode())  # below Python's sys.stderr, as TensorFlow's C++ writes


# A line that is not absl's follows the absl line before it (the rest of its message), and passes when there is none.
@pytest.mark.parametrize("level, shown", [("3", [0]), ("2", [0, 5, 6, 8]), ("1", [0, 1, 3, 4, 5, 6, 8]),
                                          ("0", list(range(9))), ("not a number", list(range(9)))])
def test_absl_lines_below_the_level_are_held_back_and_others_pass(capfd, monkeypatch, level, shown):
    monkeypatch.setenv(TF_LOG_LEVEL_VARIABLE, level)
    with native_log_at_tensorflow_level():
        _native_write(LINES)
    assert capfd.readouterr().err == "".join(LINES[i] for i in shown)


def test_the_held_lines_follow_when_the_block_raises(capfd, monkeypatch):
    monkeypatch.setenv(TF_LOG_LEVEL_VARIABLE, TF_LOG_QUIET)
    with pytest.raises(RuntimeError, match="converter failed"), native_log_at_tensorflow_level():
        _native_write(LINES)
        raise RuntimeError("converter failed")
    assert capfd.readouterr().err == LINES[0] + "".join(LINES[1:])


def test_nothing_is_lost_from_a_long_stream(capfd, monkeypatch):
    # More than a pipe holds (64 KiB), written at once, and a last line without its newline.
    monkeypatch.setenv(TF_LOG_LEVEL_VARIABLE, "1")
    lines = [LINES[2], LINES[3]] + [f"line {i} of someone else's\n" for i in range(20000)] + ["the end"]
    with native_log_at_tensorflow_level():
        _native_write(lines)
    assert capfd.readouterr().err == "".join(lines[1:])


EXPORT = """
import keras
from trainer.model import lite
frames = keras.Input((4, 8, 8, 3), dtype="uint8")
x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(frames))
flatbuffer, heads = lite._convert(keras.Model(frames, {"expression": keras.layers.Dense(8)(x)}), (1, 4, 8, 8, 3))
assert flatbuffer and heads == ["expression"], heads
print("ok")
"""


def _stderr_of(script: str, level: str) -> str:
    """The stderr of ``script`` run in a fresh process at ``TF_CPP_MIN_LOG_LEVEL`` ``level`` (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": REPO, TF_LOG_LEVEL_VARIABLE: level}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    return done.stderr


def _absl_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"^[IWEF]\d{4} |(INFO|WARNING|ERROR): ", line)]


def test_a_quiet_tf_lite_export_prints_no_absl_line():
    if not any("Ignored output_format" in line for line in _absl_lines(_stderr_of(EXPORT, "0"))):
        pytest.skip("this TensorFlow's TF Lite converter logs nothing through absl")
    assert _absl_lines(_stderr_of(EXPORT, TF_LOG_QUIET)) == []


DETECTOR = """
from beam_jobs.faces import stage
stage.FaceStageConfig().build_detector()
print("ok")
"""


def test_a_quiet_face_detector_prints_no_tf_lite_line():
    if not any("XNNPACK" in line for line in _absl_lines(_stderr_of(DETECTOR, "0"))):
        pytest.skip("this TF Lite says nothing when it builds an interpreter")
    assert _absl_lines(_stderr_of(DETECTOR, TF_LOG_QUIET)) == []
