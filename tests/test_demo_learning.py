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
# Measured at 400 steps on the shared 2-core box (bench/learning.py, whole validation split, seed 0): 0.51 on
# 2026-11-26, 0.34 in issue 9's fresh clone, 0.34-0.51 over earlier runs; the demo's curve is still climbing
# there (0.13 / 0.26 / 0.36 / 0.51 at 100-400 steps, ~0.97 at 800). The short CPU training is not bit-for-bit
# repeatable, so the bar is twice chance (8 classes: ~0.125), below the lowest measured score with room for
# run-to-run noise, yet above what a model that has not learned reaches (0.13 after 100 steps).
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
