"""The `affectstream` command dispatches to the jobs and lists what is valid."""

import subprocess
import sys

from affectstream import cli


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
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "19 videos" in result.stdout
