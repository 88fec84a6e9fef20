"""tfrecords_schema.storage: local paths through the standard library behave as tf.io.gfile does on them."""

import os

import pytest
import tensorflow as tf

from tfrecords_schema import storage


def test_local_files_answer_as_tf_io_gfile_does(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.txt").write_bytes(b"one\r\ntwo\n")
    (tmp_path / "linked").symlink_to(tmp_path / "a", target_is_directory=True)
    local, tfg = storage.gfile(str(tmp_path)), tf.io.gfile
    assert local is storage.LOCAL and storage.gfile("gs://bucket/x") is tf.io.gfile
    for path in (tmp_path, tmp_path / "a", tmp_path / "a" / "x.txt", tmp_path / "missing", tmp_path / "linked"):
        assert local.exists(str(path)) == tfg.exists(str(path)), path
        assert local.isdir(str(path)) == tfg.isdir(str(path)), path
    assert sorted(local.listdir(str(tmp_path / "a"))) == sorted(n.rstrip("/") for n in tfg.listdir(str(tmp_path / "a")))

    def tree(walk):
        return sorted((os.path.relpath(top, tmp_path), sorted(d.rstrip("/") for d in dirs), sorted(files))
                      for top, dirs, files in walk(str(tmp_path)))

    assert tree(local.walk) == tree(tfg.walk)  # linked folders entered by both
    for mode in ("r", "rb"):  # no newline translation in text mode
        with local.GFile(str(tmp_path / "a" / "x.txt"), mode) as f, tfg.GFile(str(tmp_path / "a" / "x.txt"), mode) as g:
            assert f.read() == g.read()
    with pytest.raises(FileNotFoundError):
        local.GFile(str(tmp_path / "missing"), "r")


def test_rename_and_copy_refuse_to_replace_unless_asked(tmp_path):
    local = storage.LOCAL
    (tmp_path / "src").write_text("new")
    (tmp_path / "dst").write_text("old")
    with pytest.raises(FileExistsError):
        local.rename(str(tmp_path / "src"), str(tmp_path / "dst"))
    with pytest.raises(FileExistsError):
        local.copy(str(tmp_path / "src"), str(tmp_path / "dst"))
    local.copy(str(tmp_path / "src"), str(tmp_path / "copy"))
    local.rename(str(tmp_path / "src"), str(tmp_path / "dst"), overwrite=True)
    assert (tmp_path / "dst").read_text() == "new" == (tmp_path / "copy").read_text()
    assert not (tmp_path / "src").exists()
    local.makedirs(str(tmp_path / "p" / "q"))
    local.makedirs(str(tmp_path / "p" / "q"))  # existing: fine, as tf.io.gfile.makedirs
    assert (tmp_path / "p" / "q").is_dir()


def test_a_path_that_is_a_broken_or_looping_link_is_said_to_be_one(tmp_path, capsys):
    # `predict --videos x.mp4` (and every command's "not found") said "does not exist" of a link that is there but
    # leads nowhere: the user looked for a missing file instead of the link.
    from tfrecords_schema.filesystems import missing_hint
    from trainer.prediction import predict

    loop, dangling = tmp_path / "loop.mp4", tmp_path / "dangling.mp4"
    loop.symlink_to("loop.mp4")
    gone = tmp_path / "gone.mp4"  # (never made)
    dangling.symlink_to(gone)
    looping = "is a symbolic link that loops (a chain of links that never reaches a file)"
    assert missing_hint(str(loop)) == f"; {loop} {looping}"
    assert missing_hint(str(dangling)) == f"; {dangling} is a symbolic link to {gone}, which does not exist"
    assert missing_hint(str(tmp_path / "absent.mp4")) == ""
    assert predict.run(["--model", str(tmp_path / "m"), "--videos", str(loop), "--output", str(tmp_path / "o")]) == 1
    assert looping in capsys.readouterr().err
