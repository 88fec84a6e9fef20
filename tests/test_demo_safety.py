"""The demo replaces only a folder an earlier demo made; it never deletes a user's files."""

from affectstream import demo


def test_demo_refuses_a_non_empty_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "project"
    (out / "errors").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert demo.run(["--output", str(out)]) == 2
    assert "not made by the demo" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "errors").is_dir()


def test_demo_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert demo.run(["--output", str(target)]) == 2
    assert target.read_text() == "x"


def test_demo_never_deletes_what_a_user_put_into_its_folder(tmp_path, capsys):
    out = tmp_path / "demo_output"
    demo.claim_demo_folder(str(out))  # An earlier demo run's folder: its marker and what it made.
    (out / "records" / "train").mkdir(parents=True)
    (out / "job").mkdir()
    (out / "my_notes.txt").write_text("mine")  # Put there since (or during) that run.
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.png").write_bytes(b"png")
    assert demo.run(["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 entries the demo did not write: analysis/, my_notes.txt" in err
    assert "nothing was deleted" in err
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "analysis" / "plot.png").exists()
    assert (out / "records" / "train").is_dir() and (out / "job").is_dir()
    (out / "my_notes.txt").unlink()
    (out / "analysis" / "plot.png").unlink()
    (out / "analysis").rmdir()
    demo.claim_demo_folder(str(out))  # Only the demo's own entries: cleared for the next run.
    assert sorted(p.name for p in out.iterdir()) == [demo.DEMO_MARKER]


def test_demo_with_a_bad_size_says_so_in_one_line_before_touching_its_folder(tmp_path, capsys):
    assert demo.run(["--output", str(tmp_path / "out"), "--frames_per_video", "5"]) == 2
    assert capsys.readouterr().err == "demo: error: --frames_per_video must be >= 60, got 5\n"
    assert not (tmp_path / "out").exists()


def test_a_file_put_inside_a_folder_of_the_demo_is_the_users_too(tmp_path, capsys):
    out = tmp_path / "demo_output"
    demo.claim_demo_folder(str(out))
    (out / "predictions").mkdir()
    (out / "predictions" / "talk.csv").write_text("demo's")
    demo.record_demo_files(str(out))  # As a demo run does when it ends.
    (out / "predictions" / "my_other_video.csv").write_text("mine")
    (out / "job").mkdir()
    (out / "job" / "notes.txt").write_text("mine")
    assert demo.run(["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "job/notes.txt" in err and "predictions/my_other_video.csv" in err and "nothing was deleted" in err
    assert (out / "predictions" / "talk.csv").exists() and (out / "job" / "notes.txt").read_text() == "mine"
    (out / "job" / "notes.txt").unlink()
    (out / "predictions" / "my_other_video.csv").unlink()
    demo.claim_demo_folder(str(out))  # Only what the last run listed: cleared.
    assert sorted(p.name for p in out.iterdir()) == [demo.DEMO_MARKER]


def test_without_the_list_of_what_the_last_run_wrote_its_files_are_not_deleted(tmp_path, capsys):
    out = tmp_path / "demo_output"
    demo.claim_demo_folder(str(out))  # A run killed outright (or an older version): no list of its files.
    (out / "records").mkdir()
    (out / "records" / "dataset_info.json").write_text("{}")
    assert demo.run(["--output", str(out)]) == 2
    assert "holds no record of the files its last run wrote" in capsys.readouterr().err
    assert (out / "records" / "dataset_info.json").exists()


def test_a_users_file_under_the_name_of_a_demo_folder_is_kept(tmp_path, capsys):
    out = tmp_path / "demo_output"
    demo.claim_demo_folder(str(out))
    demo.record_demo_files(str(out))
    (out / "job").write_text("mine")  # A file, where the demo would make its folder.
    assert demo.run(["--output", str(out)]) == 2
    assert "job" in capsys.readouterr().err and (out / "job").read_text() == "mine"


def test_the_reports_of_the_readmes_evaluate_command_do_not_stop_the_next_demo_run(tmp_path, capsys):
    # `affectstream evaluate --model demo_output/job/export --data demo_output/records` (the README's command) writes
    # its reports to demo_output/job/evaluation/validation/: the next `make demo` refused, naming them as the user's.
    out = tmp_path / "demo_output"
    demo.claim_demo_folder(str(out))
    (out / "job" / "export").mkdir(parents=True)
    (out / "job" / "export" / "model_info.json").write_text("{}")
    demo.record_demo_files(str(out))  # As a demo run does when it ends.
    reports = out / "job" / "evaluation" / "validation"
    reports.mkdir(parents=True)
    for name in ("metrics.json", "per_video.csv", "confusion_matrix.png", "confusion_matrix.json"):
        (reports / name).write_text("evaluate's")
    (reports / "my_analysis.txt").write_text("mine")  # Not a report evaluate writes: the user's.
    assert demo.run(["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 entry the demo did not write: job/evaluation/validation/my_analysis.txt" in err
    (reports / "my_analysis.txt").unlink()
    demo.claim_demo_folder(str(out))
    assert sorted(p.name for p in out.iterdir()) == [demo.DEMO_MARKER]
