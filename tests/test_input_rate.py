"""`affectstream input-rate`: the training stream of a job's options, measured; one JSON line last."""

import contextlib
import io
import json

import pytest
from trainer_data import write_dataset

from affectstream import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rate")
    write_dataset(root / "jpeg", num_clips_per_class={"A": 3, "B": 3}, clip_length=8, crop_size=16, seed=1)
    write_dataset(root / "raw", num_clips_per_class={"A": 3, "B": 3}, clip_length=8, crop_size=16, seed=1,
                  codec="raw")
    return root


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["input-rate", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("codec, extra", [("jpeg", []), ("raw", []), ("raw", ["--windows_per_clip", "2"]),
                                          ("jpeg", ["--stage", "frames"])])
def test_input_rate_prints_one_json_line_last_with_the_figures(data, codec, extra):
    code, out, err = _run("--data", data / codec, "--task", "expr", "--batch_size", "4", "--seq_len", "4",
                          "--seconds", "0.3", "--warmup_batches", "2", *extra)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    seq_len = 1 if "frames" in extra else 4
    assert result["codec"] == codec and result["crop_size"] == 16 and result["seq_len"] == seq_len
    assert result["batches"] >= 1 and result["frames"] == result["batches"] * 4 * seq_len
    assert result["frames_per_second"] > 0 and result["frames_per_cpu_second"] > 0 and result["seconds"] >= 0.3
    assert "frames per CPU-second" in err
    assert result["clip_length"] == 8 and result["record_bytes"] > 0
    # Raw clips of 8 frames read whole for one 4-frame window each: the line names the repeated sampling that reads
    # each byte once (each frame in two windows on average), and the records of one window that would; none for JPEG
    # or with several windows per clip.
    hint = "is read, checksummed and parsed for one 4-frame window: --windows_per_clip 4"
    assert (hint in err) == (codec == "raw" and not extra), err
    assert ("(convert --clip_length 4)" in err) == (codec == "raw" and not extra), err


@pytest.mark.parametrize("argv, expected", [
    (["--seconds", "0"], "--seconds must be a finite number > 0"),
    (["--seconds", "inf"], "--seconds must be a finite number > 0"),  # (It measured for ever.)
    (["--stage", "sequence", "--features_from", "x"], "input-rate measures the clip stages"),
    (["--windows_per_clip", "0"], "--windows_per_clip must be a positive integer"),
    # A worker's iterator yields its share of the global batch (counted whole before), and the worker that ends
    # first takes down the others' collectives: refused before any cluster is joined.
    (["--strategy", "multi_worker"], "input-rate measures one host's stream; run it on one worker"),
])
def test_bad_options_exit_2_with_one_line(data, argv, expected):
    code, out, err = _run("--data", data / "jpeg", *argv)
    assert code == 2 and expected in err and not out


def test_windows_longer_than_the_clips_are_warned_about(data, caplog):
    with caplog.at_level("WARNING", logger="trainer.train"):
        code, _, err = _run("--data", data / "jpeg", "--task", "expr", "--batch_size", "4", "--seq_len", "16",
                            "--seconds", "0.2", "--warmup_batches", "1")
    assert code == 0, err
    assert "--seq_len 16 is longer than the clips" in caplog.text
    assert "(8 frames): every window is at least 50% padding" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer.train"):
        code, _, err = _run("--data", data / "jpeg", "--task", "expr", "--batch_size", "4", "--seq_len", "8",
                            "--seconds", "0.2", "--warmup_batches", "1")
    assert code == 0 and "is longer than the clips" not in caplog.text


def test_no_line_about_selecting_an_epoch(data, caplog):
    # input-rate selects nothing: the plan's lines on the selection split (here the validation split, which the
    # score is also reported on: "optimistic") would describe a selection that never happens.
    with caplog.at_level("INFO", logger="trainer.train"):
        code, _, err = _run("--data", data / "jpeg", "--task", "expr", "--batch_size", "4", "--seq_len", "4",
                            "--seconds", "0.2", "--warmup_batches", "1")
    assert code == 0, err
    assert "strategy" in caplog.text  # the plan was logged,
    assert "selected on" not in caplog.text and "optimistic" not in caplog.text  # its selection lines were not


def test_through_a_data_service_the_cpu_figure_is_said_to_be_this_process_receiving_only(data, monkeypatch):
    from trainer.training import input_rate

    def measured(config, seconds, warmup):  # the figures of a run through a service, without starting one
        return {"frames": 64, "crop_size": 16, "codec": "jpeg", "batches": 4, "frames_per_second": 100.0,
                "frames_per_cpu_second": 9000.0, "data_service": config.data_service, "windows_per_clip": 1,
                "seq_len": 4, "clip_length": 8, "record_bytes": 1}

    monkeypatch.setattr(input_rate, "measure", measured)
    code, out, err = _run("--data", data / "jpeg", "--task", "expr", "--data_service", "grpc://localhost:5050")
    assert code == 0, err
    assert "9000 frames per CPU-second of this process only (receiving: the service's workers decode)" in err
    code, out, err = _run("--data", data / "jpeg", "--task", "expr")
    assert code == 0 and "9000 frames per CPU-second\n" in err


@pytest.mark.parametrize("precision, native_bfloat16, warned", [
    ("mixed_bfloat16", True, False), ("mixed_bfloat16", False, True), ("mixed_float16", True, True),
])
def test_16_bit_precision_on_a_cpu_is_called_slow_only_where_it_is(data, monkeypatch, caplog, precision,
                                                                     native_bfloat16, warned):
    # On a CPU with bfloat16 instructions (AVX512_BF16, AMX) mixed_bfloat16 is faster than float32; float16 is
    # emulated on every CPU.
    from trainer.training import distribution

    monkeypatch.setattr(distribution, "has_gpu", lambda: False)
    monkeypatch.setattr(distribution, "cpu_has_bfloat16", lambda: native_bfloat16)
    with caplog.at_level("WARNING", logger="trainer.train"):
        code, _, err = _run("--data", data / "jpeg", "--task", "expr", "--batch_size", "4", "--seq_len", "4",
                            "--precision", precision, "--seconds", "0.1", "--warmup_batches", "1")
    assert code == 0, err
    assert ("is emulated and slow" in caplog.text) == warned, caplog.text


def test_help_says_job_dir_is_ignored_and_a_train_command_s_job_dir_is_taken():
    # input-rate takes the train options as they are, --job_dir included; its help said "checkpoints, logs, export and
    # reports go here", though input-rate writes nothing.
    from trainer.training import config as config_lib
    from trainer.training import input_rate

    text = " ".join(input_rate.build_parser().format_help().split())
    assert "--job_dir JOB_DIR ignored: input-rate writes nothing" in text and "reports go here" not in text
    assert "reports go here" in " ".join(config_lib.build_parser().format_help().split())
    assert input_rate.build_parser().parse_args(["--job_dir", "x"]).job_dir == "x"
