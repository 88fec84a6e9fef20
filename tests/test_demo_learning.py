"""Learning on the embedded demo dataset: drawn faces whose expression is visible, through the whole chain.

Generate (ABAW layout, the demo's defaults) → convert (Beam, real Haar detection) → train the CNN+RNN with
the demo's settings → whole-split validation macro-F1. Eight classes, so chance is about 0.125.
"""

import contextlib
import io
import json

from affectstream import demo, demo_data
from beam_jobs import convert
from trainer import train

# Measured with these settings on 2 cores: 0.34 to 0.51 over our runs (best of the 4 epochs). The bar is twice
# chance, leaving room for the run-to-run noise of a 400-step CPU training on a small validation split.
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
