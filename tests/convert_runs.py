"""Real conversions of a tiny generated ABAW dataset, run in this process, for the tests of outputs and transactions.

Example::

    import convert_runs as cr   # tests/ is on sys.path under pytest

    ann, videos = cr.write_inputs(tmp_path / "inputs")
    rc, out, err = cr.run_convert(ann, videos, tmp_path / "out", "--overwrite")
    before = cr.tree(tmp_path / "out")             # {relative path: sha256}
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib

import abaw_layout as abaw
import video_fixtures as vf

from beam_jobs import convert

COMMON = ["--clip_length", "3", "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
          "--progress_every", "0"]


def run_convert(ann, videos, output, *extra, source=None) -> tuple[int, str, str]:
    """``convert --videos VIDEOS --annotations ANN --output OUTPUT`` (in memory) + ``extra``: (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["--videos", str(videos), "--annotations", str(ann), "--output", str(output), *COMMON, *map(str, extra)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = convert.run(argv, source=source)
    return rc, out.getvalue(), err.getvalue()


def tree(folder) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    root = pathlib.Path(folder)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_inputs(root) -> tuple[pathlib.Path, pathlib.Path]:
    """Two drawn-face videos with expression annotations, one train and one validation: (annotations, videos)."""
    root = pathlib.Path(root)
    ann, videos = root / "annotations", root / "videos"
    vf.write_face_video(videos / "a.avi", [4, 4, 4, 1, 1, 1])
    abaw.write_annotation(ann, "expr", "train", "a", [4, 4, 4, 1, 1, 1])
    vf.write_face_video(videos / "b.avi", [5] * 5)
    abaw.write_annotation(ann, "expr", "validation", "b", [5] * 5)
    return ann, videos
