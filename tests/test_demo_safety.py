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
