"""Learning on the embedded demo dataset: drawn faces whose expression is visible, through the whole chain.

Generate (ABAW layout, the demo's defaults) → convert (Beam, the demo's face stage and flags) → train the CNN+RNN
with the demo's training flags for the first half of its budget → whole-split validation macro-F1. Eight classes,
so chance is about 0.125.
"""

import contextlib
import io
import json

from affectstream import demo, demo_data
from beam_jobs import convert
from trainer import train

# The demo trains DEMO_TRAIN_FLAGS (constant learning rate 0.001) for 8 epochs x 100 steps; this test runs the
# same flags for the first half of that budget, 4 x 100 steps (the whole 800 would make it the suite's slowest
# test by far). With a constant rate and the same seed, the demo's first 400 steps are this same training.
# Measured (bench/learning.py and the demo itself, whole validation split, seed 0, shared 2-core box, 2026-11-26):
# 0.13 / 0.26 / 0.36 / 0.51 after 100-400 steps, then 0.82 / 0.93 / 0.92 / 0.93 up to the demo's 800 (identical
# to 4 decimals between the bench's job and the demo's run on this machine); issue 9's fresh clone had 0.34 at
# 400. So at 400 steps the model is mid-climb and runs on other machines differ: the bar is twice chance
# (8 classes: ~0.125), below the lowest score measured there (0.34), yet above a model that has not learned
# (0.13 after 100 steps). The ≥ 0.9 of the full budget is too slow to assert here (docs/benchmarks.md).
MACRO_F1_BAR = 0.25


def test_cnn_rnn_learns_expressions_from_converted_demo_faces(tmp_path):
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
    rc = train.run(["--data", str(records), "--job_dir", str(job), "--epochs", "4", "--steps_per_epoch", "100",
                    "--log_every", "100", *demo.DEMO_TRAIN_FLAGS])
    assert rc == 0
    expression = json.loads((job / "metrics.json").read_text())["expression"]
    assert expression["frames"] > 300
    assert expression["macro_f1"] > MACRO_F1_BAR, expression
