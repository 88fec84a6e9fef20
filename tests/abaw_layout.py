"""Helpers that write Aff-Wild2 / ABAW annotation trees for tests.

Every helper writes real files under a folder you give (normally pytest's
``tmp_path``) and returns the path it wrote. Nothing here imports Beam or the
adapter, so any test can use it.

Example::

    import abaw_layout as abaw   # tests/ is on sys.path under pytest (no __init__.py)

    abaw.write_annotation(tmp_path / "ann", "expr", "train", "vid1", [0, 4, -1, 7])
    abaw.write_annotation(tmp_path / "ann", "va", "validation", "vid1_left",
                          [(0.1, -0.2), (-5, -5)], layout="2020")
    abaw.write_annotation(tmp_path / "ann", "au", "train", "vid2",
                          [[0] * 12, "not,a,line"])          # a str row is written as is
    abaw.write_media(tmp_path / "videos", "batch1/vid1.mp4")  # placeholder bytes
    abaw.rewrite_text(path, newline="\r", encoding="utf-16")  # CR-only line ends, UTF-16 with BOM

Layouts (``layout=``):
    ``"2020"``: ``annotations/{VA_Set,EXPR_Set,AU_Set}/{Training_Set,Validation_Set}/<id>.txt``
    ``"abaw3"``: ``{VA_Estimation_Challenge,EXPR_Classification_Challenge,AU_Detection_Challenge}/
    {Train_Set,Validation_Set}/<id>.txt`` (also ABAW-5)
    ``"abaw6"``: as ``"abaw3"`` with the expression folder ``EXPR_Recognition_Challenge``.
Splits: ``"train"``, ``"validation"`` and ``"test"`` (a test folder the adapter must ignore).
"""

from __future__ import annotations

import codecs
import pathlib
from collections.abc import Iterable, Sequence

EXPR_NAMES_7 = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
EXPR_NAMES_8 = EXPR_NAMES_7 + ["Other"]
AU_NAMES_8 = ["AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25"]
AU_NAMES_12 = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"]

EXPR_HEADER_7 = ",".join(EXPR_NAMES_7)
EXPR_HEADER_8 = ",".join(EXPR_NAMES_8)
VA_HEADER = "valence,arousal"
AU_HEADER_8 = ",".join(AU_NAMES_8)
AU_HEADER_12 = ",".join(AU_NAMES_12)
MTL_HEADER = "image,valence,arousal,expression,aus"

DEFAULT_HEADERS = {"expr": EXPR_HEADER_8, "va": VA_HEADER, "au": AU_HEADER_12}

LAYOUTS = ("2020", "abaw3", "abaw6")

_TASK_FOLDERS = {
    "2020": {"expr": "EXPR_Set", "va": "VA_Set", "au": "AU_Set"},
    "abaw3": {"expr": "EXPR_Classification_Challenge", "va": "VA_Estimation_Challenge",
              "au": "AU_Detection_Challenge"},
    "abaw6": {"expr": "EXPR_Recognition_Challenge", "va": "VA_Estimation_Challenge",
              "au": "AU_Detection_Challenge"},
}
_SPLIT_FOLDERS = {
    "2020": {"train": "Training_Set", "validation": "Validation_Set", "test": "Test_Set"},
    "abaw3": {"train": "Train_Set", "validation": "Validation_Set", "test": "Test_Set"},
    "abaw6": {"train": "Train_Set", "validation": "Validation_Set", "test": "Test_Set"},
}


def split_dir(root, task: str, split: str, layout: str = "abaw3") -> pathlib.Path:
    """The folder holding ``<id>.txt`` files of one task and split in a layout (not created)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    root = pathlib.Path(root)
    if layout == "2020":
        root = root / "annotations"
    return root / _TASK_FOLDERS[layout][task] / _SPLIT_FOLDERS[layout][split]


def format_row(task: str, row) -> str:
    """One annotation line: ``4`` (expr), ``(0.1, -0.2)`` (va), ``[0, 1, ...]`` (au); a str as is."""
    if isinstance(row, str):
        return row
    if task == "expr":
        return str(int(row))
    return ",".join(_num(v) for v in row)


def write_annotation(root, task: str, split: str, media_id: str, rows: Iterable, *,
                     layout: str = "abaw3", header: str | None = None,
                     trailing_blank_lines: int = 0) -> pathlib.Path:
    """Writes ``<split folder>/<media_id>.txt``: the header, then one line per row (row i = frame i).

    Args:
        root: The ``--annotations`` folder to write under.
        task: ``"expr"``, ``"va"`` or ``"au"``.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        media_id: Annotation name (file stem), may be non-ASCII or end in ``_left``/``_right``.
        rows: Values per frame (see :func:`format_row`); a str row is written verbatim (bad lines).
        layout: One of :data:`LAYOUTS`.
        header: Header line; default :data:`DEFAULT_HEADERS` ``[task]`` (8 classes, 12 AUs).
        trailing_blank_lines: Empty lines appended at the end.
    """
    folder = split_dir(root, task, split, layout)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [DEFAULT_HEADERS[task] if header is None else header]
    lines += [format_row(task, row) for row in rows]
    lines += [""] * trailing_blank_lines
    path = folder / f"{media_id}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_mtl(root, split: str, rows: Sequence, *, header: str = MTL_HEADER,
              filename: str | None = None) -> pathlib.Path:
    """Writes ``MTL_Challenge/<split>_set_annotations.txt`` (multi-task, one row per listed frame).

    Args:
        root: The ``--annotations`` folder.
        split: ``"train"`` / ``"validation"`` (file ``training_set_annotations.txt`` /
            ``validation_set_annotations.txt``) or anything else (``test_set_annotations.txt``).
        rows: ``(media_id, frame, (v, a), expr, [au, ...])`` tuples, written as
            ``media_id/{frame:05d}.jpg,v,a,expr,au...``; a str row is written verbatim.
        header: Header line.
        filename: Override the file name.
    """
    folder = pathlib.Path(root) / "MTL_Challenge"
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": "training_set_annotations.txt", "validation": "validation_set_annotations.txt"}
    path = folder / (filename or names.get(split, "test_set_annotations.txt"))
    lines = [header]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        media_id, frame, va, expr, aus = row
        values = [f"{media_id}/{int(frame):05d}.jpg", _num(va[0]), _num(va[1]), str(int(expr))]
        lines.append(",".join(values + [_num(v) for v in aus]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rewrite_text(path, *, newline: str = "\n", encoding: str = "utf-8") -> pathlib.Path:
    """Rewrites a text file (as the helpers above write it: UTF-8, LF) with other line ends and encoding.

    Args:
        path: The file.
        newline: ``"\n"``, ``"\r\n"`` or ``"\r"`` (old Mac exports).
        encoding: A Python codec; ``"utf-8-sig"`` and ``"utf-16"`` write a byte-order mark,
            ``"utf-16-be-bom"`` writes big-endian UTF-16 with its mark.
    """
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8").replace("\n", newline)
    if encoding == "utf-16-be-bom":
        path.write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
    else:
        path.write_bytes(text.encode(encoding))
    return path


def write_media(videos_root, relpath: str, data: bytes = b"placeholder video") -> pathlib.Path:
    """Writes a media file at ``videos_root/relpath`` (placeholder bytes unless ``data`` given)."""
    path = pathlib.Path(videos_root) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_crops_dir(cropped_root, media_id: str, num_frames: int = 0, data: bytes = b"jpeg") -> pathlib.Path:
    """Creates ``cropped_root/media_id/`` with ``{i:05d}.jpg`` placeholders for frames 1..num_frames."""
    folder = pathlib.Path(cropped_root) / media_id
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, num_frames + 1):
        (folder / f"{i:05d}.jpg").write_bytes(data)
    return folder


def _num(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
