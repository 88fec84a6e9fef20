"""Learning on the embedded demo dataset: drawn faces whose expression is visible, through the whole chain.

Generate (ABAW layout, the demo's defaults) → convert (Beam, the demo's face stage and flags) → the demo's own
training, whole budget (:func:`affectstream.demo.train_two_stage`: the per-frame CNN, then the GRU stack on its
frozen features) → whole-split validation macro-F1 of the one exported model. Eight classes, so chance is about
0.125.
"""

import contextlib
import io
import json

from affectstream import demo, demo_data
from beam_jobs import convert
from tfrecords_schema import HEAD_EXPRESSION

# Measured with the demo's settings (bench/learning.py and the demo itself, whole validation split, shared 2-core
# box, 2026-11-26): seed 0 gives 0.92 after the CNN's 300 steps and 0.95 after the GRU's 200 (best epoch); other
# seeds end at 0.885 and 0.889 (docs/benchmarks.md). Runs on other machines are not bit-identical, so the bar
# sits below every measured run while far above a model that has not learned (chance ~0.125).
MACRO_F1_BAR = 0.8


def test_the_demo_model_learns_expressions_from_converted_demo_faces(tmp_path):
    made = demo_data.make_demo_dataset(str(tmp_path / "src"))
    records = tmp_path / "records"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run([
            "--videos", made["videos"], "--annotations", made["annotations"], "--output", str(records),
            *demo.DEMO_CONVERT_FLAGS, "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
            "--progress_every", "0",
        ])
    assert rc == 0
    job = tmp_path / "job"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = demo.train_two_stage(str(records), str(tmp_path / "cnn_job"), str(job), extra=("--log_every", "100"))
    assert rc == 0
    info = json.loads((job / "export" / "model_info.json").read_text())
    assert (info["stage"], info["rnn"], info["heads"]) == ("sequence", "gru", [HEAD_EXPRESSION])
    expression = json.loads((job / "metrics.json").read_text())["expression"]
    assert expression["frames"] > 300
    assert expression["macro_f1"] > MACRO_F1_BAR, expression
