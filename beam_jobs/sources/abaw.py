"""Aff-Wild2 / ABAW adapter: annotation folders → subject tracks with per-frame labels.

Layouts accepted (folder names matched case-insensitively, found anywhere under
``--annotations``, so the user may point at the parent folder or at ``annotations/``):

* 2020: ``annotations/{VA_Set,EXPR_Set,AU_Set}/{Training_Set,Validation_Set}/<id>.txt``
* ABAW-3/5: ``{VA_Estimation_Challenge,EXPR_Classification_Challenge,AU_Detection_Challenge}/
  {Train_Set,Validation_Set}/<id>.txt``
* ABAW-6+: the expression folder renamed ``EXPR_Recognition_Challenge``.
* Multi-task: ``MTL_Challenge/*annotations*.txt``; the split comes from the file name
  (``train`` → train, ``valid`` → validation, anything else such as ``test`` is ignored).
  Rows are ``<id>/<frame>.jpg,V,A,EXPR,AU...``; the frame number is read from the image
  name and frames the file does not list stay unlabelled. The header is
  ``image,valence,arousal,expression,`` followed by ``aus`` (the AU count is then read
  from the first row: 8 or 12 gives the ABAW AU names) or by the AU names. Expressions
  in a multi-task file have the 8 ABAW-3 classes. A frame listed twice for one subject:
  the first row is kept and the later one is a ``malformed_line`` naming both lines. A
  row with no ``<id>/<frame>.jpg`` name belongs to no track: it is a discovery dead
  letter and counts in the file's split as labelled and dropped (``malformed_line``,
  through ``Discovery.split_drops``). Every row of the file is scanned for each of its subjects: simple, and cheap
  next to decoding the video.

Test folders (``Test_Set`` and the like) are ignored.

Splits and label leakage:
    ``Train_Set``/``Training_Set`` is ``train`` and ``Validation_Set`` is ``validation``,
    per task. There is one :class:`TrackSpec` per ``(annotation name, split)``, and it
    carries only the annotation files of the tasks whose folder assigns that split. A
    video annotated for EXPR in ``Train_Set`` and for VA in ``Validation_Set`` therefore
    gives two tracks: ``train/<id>`` with only expression labels and ``validation/<id>``
    with only valence/arousal. A label is only ever read into the track of its own
    split, so none can leak into the other split.

Duplicates:
    The same (task, annotation name) found in more than one file — two layouts side by
    side, both Train and Validation, two multi-task files — is never resolved by picking
    one: every one of those files is rejected (``DROP_DUPLICATE_TRACK``). Its frames are
    counted as labelled and dropped (unless another task labels them), and each affected
    track gets a dead letter naming all the files. Several media files with the same stem
    give ``DROP_AMBIGUOUS_MEDIA``.

Headers (whitespace and case are ignored):
    EXPR ``Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise`` (7 classes) or with
    ``,Other`` (8). Both may be mixed: the class indices agree, the dataset uses the 8
    names and each file's values are checked against its own class count. VA
    ``valence,arousal``. AU: the AU names of the file (``AU1,AU2,...``); columns are
    reordered to ascending AU number. Mixing AU sets is refused (the alternative, a
    union with missing AUs marked invalid, would make those frames' AU rows partly
    invalid): the dataset's AU names are the set used by most AU annotations (a file, or
    one subject of a multi-task file; ties: the larger set), and a file with another set
    is rejected as ``bad_header`` with a message saying so. When no file of a task
    has a usable header the task's names are the ABAW-3+ ones (8 classes, 12 AUs).
    A header that is not recognised rejects all lines of the file (``bad_header``, one
    dead letter quoting the header).

Lines:
    Annotation line i (after the header) is frame i, counted from 1. Invalid markers are
    EXPR −1, VA −5, AU −1 (a whole AU row of −1). A VA line where exactly one of the two
    values is −5 marks the pair invalid (the other value is not used). Wrong field count,
    a value that is not a number, NaN or a non-integer class/AU value is
    ``malformed_line``; a value outside its range (EXPR not in ``[0, classes)``, V/A not
    in ``[-1, 1]``, AU not in ``{0, 1}`` or an AU row mixing −1 with 0/1) is
    ``out_of_range``. A rejected line leaves that task invalid for the frame; the frame's
    ``rejected`` reason is set only when no other task has a valid label for it. Dead
    letters are grouped: consecutive bad lines of one file with one reason give one dead
    letter, ``<file>:lines 5-900`` (annotation line numbers = frame numbers; the message
    also gives the file's own line numbers, one more because of the header). Blank lines
    at the end are ignored; a blank line in the middle is malformed. A single trailing
    comma on a line is tolerated.

Media:
    Every ``.mp4``/``.avi`` (any case) under ``--videos`` is indexed by stem (Unicode
    NFC). ``<name>_left``/``<name>_right`` use ``<name>`` when no exact match exists and
    set ``side``. No match gives ``DROP_NO_MEDIA`` unless ``--cropped_aligned`` holds a
    folder ``<id>``: the track then uses those crops and media is optional (an ambiguous
    media match is then not used at all, and reported in a dead letter). Media that no
    track of the selected tasks uses is listed in ``Discovery.unused_media``.

All listing and reading goes through ``tf.io.gfile``, so ``gs://`` paths work. No
Apache Beam import here.

Example::

    source = AbawSource(annotations="data/annotations", videos="data/videos", tasks=["expr", "va"])
    found = source.discover()
    labels = source.read_labels(found.tracks[0])
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import posixpath
import re
import unicodedata
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from beam_jobs.sources import base
from tfrecords_schema import TASK_ACTION_UNITS, TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASKS, keys

EXPRESSION_NAMES_7 = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
EXPRESSION_NAMES_8 = EXPRESSION_NAMES_7 + ("Other",)
ACTION_UNITS_8 = ("AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25")
ACTION_UNITS_12 = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
VALENCE_AROUSAL_NAMES = ("valence", "arousal")

# Folder name (lower case) → task.
TASK_FOLDERS = {
    "expr_set": TASK_EXPRESSION,
    "va_set": TASK_VALENCE_AROUSAL,
    "au_set": TASK_ACTION_UNITS,
    "expr_classification_challenge": TASK_EXPRESSION,
    "expr_recognition_challenge": TASK_EXPRESSION,
    "va_estimation_challenge": TASK_VALENCE_AROUSAL,
    "au_detection_challenge": TASK_ACTION_UNITS,
}
# Split folder name (lower case) → split. Other folders (Test_Set, ...) are ignored.
SPLIT_FOLDERS = {"training_set": "train", "train_set": "train", "validation_set": "validation"}
MTL_FOLDER = "mtl_challenge"
MEDIA_EXTENSIONS = (".mp4", ".avi")
LABEL_KEYS = {TASK_EXPRESSION: "expression", TASK_VALENCE_AROUSAL: "valence_arousal",
              TASK_ACTION_UNITS: "action_units"}

# Names with these suffixes are taken as files without asking the file system (saves a
# call per crop image on gs:// when --annotations is a parent of the crops).
_FILE_SUFFIXES = (".txt", ".jpg", ".jpeg", ".png", ".mp4", ".avi", ".json", ".csv", ".zip", ".tar", ".gz")
_AU_NAME = re.compile(r"^au\s*0*(\d+)$")

# Per-line status while parsing one task of one file.
_OK, _INVALID, _MALFORMED, _OUT_OF_RANGE, _BAD_HEADER = 0, 1, 2, 3, 4
_REASONS = {_MALFORMED: base.DROP_MALFORMED_LINE, _OUT_OF_RANGE: base.DROP_OUT_OF_RANGE,
            _BAD_HEADER: base.DROP_BAD_HEADER}


class AbawLayoutError(ValueError):
    """The annotation folder holds nothing this adapter can use."""


class MissingFolderError(FileNotFoundError, ValueError):
    """A folder option names no folder (a ValueError too, like every argument error)."""


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/").replace("\\", "/"))


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _canonical_au(field: str) -> str | None:
    match = _AU_NAME.match(field.strip().lower())
    return f"AU{int(match.group(1))}" if match else None


def _au_sort_key(name: str) -> int:
    return int(name[2:])


def _header_fields(line: str) -> list[str]:
    return [f.strip().lower() for f in line.lstrip("\ufeff").strip().split(",")]


def parse_header(task: str, line: str) -> tuple[str, ...] | None:
    """Label names a per-task header declares, or None when it is not recognised.

    Args:
        task: ``"expr"``, ``"va"`` or ``"au"``.
        line: The first line of the file.

    Returns:
        The expression class names (7 or 8), ``("valence", "arousal")``, or the AU names
        in the file's column order (``"AU12"`` style).
    """
    fields = _header_fields(line)
    if task == TASK_EXPRESSION:
        for names in (EXPRESSION_NAMES_7, EXPRESSION_NAMES_8):
            if fields == [n.lower() for n in names]:
                return names
        return None
    if task == TASK_VALENCE_AROUSAL:
        return VALENCE_AROUSAL_NAMES if fields == list(VALENCE_AROUSAL_NAMES) else None
    names = tuple(_canonical_au(f) for f in fields)
    if not names or None in names or len(set(names)) != len(names):
        return None
    return names


def _mtl_header(line: str) -> tuple[str, ...] | None | bool:
    """AU names of a multi-task header, True for ``...,aus`` (count from rows), None if unknown."""
    fields = _header_fields(line)
    if len(fields) < 5 or fields[1:4] != ["valence", "arousal", "expression"]:
        return None
    if fields[4:] in (["aus"], ["au"], ["action_units"]):
        return True
    names = tuple(_canonical_au(f) for f in fields[4:])
    if None in names or len(set(names)) != len(names):
        return None
    return names


def _default_au_names(count: int) -> tuple[str, ...] | None:
    return {8: ACTION_UNITS_8, 12: ACTION_UNITS_12}.get(count)


def _mtl_split(filename: str) -> str | None:
    lower = filename.lower()
    if "annotation" not in lower or not lower.endswith(".txt"):
        return None
    if "valid" in lower:
        return "validation"
    if "train" in lower:
        return "train"
    return None


def _is_mtl_file(path: str) -> bool:
    parent = posixpath.dirname(path.rstrip("/").replace("\\", "/"))
    return _basename(parent).lower() == MTL_FOLDER


def _read_lines(path: str) -> Iterator[str]:
    """Lines of a text file without line ends (UTF-8, undecodable bytes replaced)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        first = True
        for raw in f:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if first:
                line = line.lstrip("\ufeff")
                first = False
            yield line


def _first_line(path: str) -> str:
    """The first line of a text file ("" when empty)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _content_lines(lines: Iterator[str]) -> Iterator[tuple[int, str]]:
    """``(number, text)`` counting from 1, with blank lines at the very end left out."""
    pending = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            pending.append((number, text))
            continue
        yield from pending
        pending = []
        yield number, text


def _fields(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    if len(fields) > 1 and fields[-1] == "":
        fields.pop()
    return fields


def _number(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError("NaN")
    return value


class _Values:
    """Parses one task's values from text fields; returns (status, values, detail).

    Args:
        task: ``"expr"``, ``"va"`` or ``"au"``.
        num_classes: Expression classes of the file.
        au_order: File AU column → dataset AU column.
    """

    def __init__(self, task: str, num_classes: int = 8, au_order: Sequence[int] = ()):
        self.task = task
        self.num_classes = num_classes
        self.au_order = list(au_order)  # file column → dataset column (-1: not kept).
        self.width = len(self.au_order)

    def parse(self, fields: list[str]) -> tuple[int, object, str]:
        if self.task == TASK_EXPRESSION:
            return self._expression(fields)
        if self.task == TASK_VALENCE_AROUSAL:
            return self._valence_arousal(fields)
        return self._action_units(fields)

    def _expression(self, fields):
        if len(fields) != 1:
            return _MALFORMED, None, f"expected 1 value, got {len(fields)}"
        try:
            value = _number(fields[0])
        except ValueError:
            return _MALFORMED, None, f"not a number: {fields[0]!r}"
        if math.isfinite(value) and not value.is_integer():
            return _MALFORMED, None, f"not an integer class: {fields[0]!r}"
        if value == keys.EXPRESSION_INVALID:
            return _INVALID, None, ""
        if not 0 <= value < self.num_classes:
            return _OUT_OF_RANGE, None, f"class {fields[0]} not in [0, {self.num_classes}) nor -1"
        return _OK, int(value), ""

    def _valence_arousal(self, fields):
        if len(fields) != 2:
            return _MALFORMED, None, f"expected 2 values, got {len(fields)}"
        try:
            pair = [_number(f) for f in fields]
        except ValueError:
            return _MALFORMED, None, f"not a number: {','.join(fields)!r}"
        if keys.VA_INVALID in pair:
            return _INVALID, None, ""
        if not all(-1.0 <= v <= 1.0 for v in pair):
            return _OUT_OF_RANGE, None, f"valence/arousal {','.join(fields)} not in [-1, 1] nor -5"
        return _OK, pair, ""

    def _action_units(self, fields):
        if len(fields) != self.width:
            return _MALFORMED, None, f"expected {self.width} values, got {len(fields)}"
        try:
            values = [_number(f) for f in fields]
        except ValueError:
            return _MALFORMED, None, f"not a number in {','.join(fields)!r}"
        if not all(not math.isfinite(v) or v.is_integer() for v in values):
            return _MALFORMED, None, f"not an integer AU value in {','.join(fields)!r}"
        if not all(v in (-1, 0, 1) for v in values):
            return _OUT_OF_RANGE, None, f"AU values {','.join(fields)} not in {{0, 1}} nor -1"
        invalid = [v == keys.AU_INVALID for v in values]
        if all(invalid):
            return _INVALID, None, ""
        if any(invalid):
            return _OUT_OF_RANGE, None, f"AU row {','.join(fields)} mixes -1 (invalid) with 0/1"
        row = [keys.AU_INVALID] * self.width
        for column, target in enumerate(self.au_order):
            row[target] = int(values[column])
        return _OK, row, ""  # In the dataset's column order.


@dataclasses.dataclass
class _Run:
    """Consecutive bad lines of one file with one reason."""

    reason: str
    first_line: int
    last_line: int
    detail: str
    frames: list[int]


class _Parsed:
    """One task of one annotation file, parsed for one track.

    Args:
        task: The task.
        path: The annotation file.
        num_aus: AU columns of the dataset.
    """

    def __init__(self, task: str, path: str, num_aus: int):
        self.task = task
        self.path = path
        self.num_aus = num_aus
        self.frames: list[int] = []
        self.status: list[int] = []
        self.values: dict[int, object] = {}
        self.runs: list[_Run] = []
        self.file_problem: tuple[str, str] | None = None  # (reason, message) for the whole file.

    def add(self, frame: int, line: int, status: int, value, detail: str) -> None:
        self.frames.append(frame)
        self.status.append(status)
        if status == _OK:
            self.values[frame] = value
        elif status in _REASONS and status != _BAD_HEADER:
            reason = _REASONS[status]
            last = self.runs[-1] if self.runs else None
            if last is not None and last.reason == reason and last.last_line == line - 1:
                last.last_line = line
                last.frames.append(frame)
            else:
                self.runs.append(_Run(reason, line, line, detail, [frame]))

    @property
    def num_frames(self) -> int:
        return max(self.frames, default=0)


def _au_order(file_names: Sequence[str], dataset_names: Sequence[str]) -> list[int] | None:
    """File column → dataset column, or None when the sets differ."""
    if set(file_names) != set(dataset_names):
        return None
    return [list(dataset_names).index(name) for name in file_names]


def _parse_task_file(task: str, path: str, au_names: tuple[str, ...]) -> _Parsed:
    """Parses a per-task file (header, then line i = frame i)."""
    parsed = _Parsed(task, path, len(au_names))
    lines = _content_lines(_read_lines(path))
    header_line = next(lines, (1, ""))[1]
    names = parse_header(task, header_line)
    values = None
    if names is None:
        problem = (base.DROP_BAD_HEADER,
                   f"{task} header {header_line[:200]!r} not recognised; expected {_expected_header(task)}")
    elif task == TASK_ACTION_UNITS:
        order = _au_order(names, au_names or tuple(sorted(names, key=_au_sort_key)))
        if order is None:
            problem = (base.DROP_BAD_HEADER,
                       f"AU header {header_line[:200]!r} has another AU set than the dataset's "
                       f"{','.join(au_names)}; mixing AU sets is refused")
        else:
            problem, values = None, _Values(task, au_order=order)
            parsed.num_aus = len(order)
    else:
        problem, values = None, _Values(task, num_classes=len(names))
    parsed.file_problem = problem
    for number, text in lines:
        frame = number - 1
        if values is None:
            parsed.add(frame, frame, _BAD_HEADER, None, "")
            continue
        status, value, detail = values.parse(_fields(text))
        parsed.add(frame, frame, status, value, detail)
    return parsed


def _expected_header(task: str) -> str:
    if task == TASK_EXPRESSION:
        return f"{','.join(EXPRESSION_NAMES_7)}[,Other]"
    if task == TASK_VALENCE_AROUSAL:
        return ",".join(VALENCE_AROUSAL_NAMES)
    return f"{','.join(ACTION_UNITS_8)} or {','.join(ACTION_UNITS_12)}"


def _parse_mtl_file(path: str, media_id: str, tasks: Sequence[str], au_names: tuple[str, ...]) -> dict[str, _Parsed]:
    """Parses the rows of one subject in a multi-task file, for the given tasks."""
    parsed = {task: _Parsed(task, path, len(au_names)) for task in tasks}
    lines = _content_lines(_read_lines(path))
    header_line = next(lines, (1, ""))[1]
    header = _mtl_header(header_line)
    prefix = media_id + "/"
    seen: dict[int, int] = {}
    width = order = None
    parsers: dict[str, _Values] = {}
    problem = None
    if header is None:
        problem = (base.DROP_BAD_HEADER, f"multi-task header {header_line[:200]!r} not recognised; expected "
                   "image,valence,arousal,expression,aus (or AU names)")
    for number, text in lines:
        fields = _fields(text)
        if width is None and header is not None:
            file_aus = header if header is not True else _default_au_names(len(fields) - 4)
            if file_aus is None:
                problem = (base.DROP_BAD_HEADER, f"multi-task header {header_line[:200]!r} with {len(fields) - 4} "
                           "AU columns in the first row (8 or 12 expected)")
            else:
                width = len(file_aus)
                order = _au_order(file_aus, au_names or tuple(sorted(file_aus, key=_au_sort_key)))
                parsers = {task: _Values(task, num_classes=len(EXPRESSION_NAMES_8), au_order=order or ())
                           for task in parsed}
                if TASK_ACTION_UNITS in parsed and order is not None:
                    parsed[TASK_ACTION_UNITS].num_aus = len(order)
                if order is None and TASK_ACTION_UNITS in parsed:
                    parsed[TASK_ACTION_UNITS].file_problem = (
                        base.DROP_BAD_HEADER, f"AU set {','.join(file_aus)} differs from the dataset's "
                        f"{','.join(au_names)}; mixing AU sets is refused")
            header = header if width is not None else None
        image = _nfc(fields[0])
        if not image.startswith(prefix):
            continue
        frame = _mtl_frame(image, media_id)
        if frame is None:
            continue  # Reported once by discovery: the row names no frame.
        if problem is not None:
            for p in parsed.values():
                p.file_problem = problem
                p.add(frame, number, _BAD_HEADER, None, "")
            continue
        if frame in seen:
            for p in parsed.values():
                p.add(frame, number, _MALFORMED, None, f"frame {frame} already listed on line {seen[frame]}")
            continue
        seen[frame] = number
        if len(fields) != 4 + width:
            for p in parsed.values():
                p.add(frame, number, _MALFORMED, None, f"expected {4 + width} values, got {len(fields)}")
            continue
        columns = {TASK_VALENCE_AROUSAL: fields[1:3], TASK_EXPRESSION: fields[3:4],
                   TASK_ACTION_UNITS: fields[4:]}
        for task, p in parsed.items():
            if p.file_problem is not None:
                p.add(frame, number, _BAD_HEADER, None, "")
                continue
            status, value, detail = parsers[task].parse(columns[task])
            p.add(frame, number, status, value, detail)
    if problem is not None:
        for p in parsed.values():
            p.file_problem = problem
    return parsed


def _mtl_frame(image: str, media_id: str) -> int | None:
    """Frame number of ``<media_id>/<frame>.jpg``, None when the name holds none."""
    name = image.strip()[len(media_id) + 1:]
    stem = _stem(name)
    if "/" in name or not stem.isdigit() or int(stem) < 1:
        return None
    return int(stem)


@dataclasses.dataclass(frozen=True)
class _AnnotationFile:
    task: str
    split: str
    media_id: str
    path: str


class AbawSource(base.DatasetSource):
    """Aff-Wild2 / ABAW annotation folders (every challenge edition's layout).

    Args:
        annotations: Folder holding the annotation folders (or a parent of them).
        videos: Root of the media files (``.mp4``/``.avi`` anywhere below); may be None
            when ``cropped_aligned`` provides the frames.
        tasks: Tasks to read, any of ``expr, va, au`` (a comma-separated string works
            too); None = every task found.
        cropped_aligned: Root of the provided crops ``<id>/{i:05d}.jpg``; optional.

    Raises:
        ValueError: an unknown task, or neither ``videos`` nor ``cropped_aligned``.
        MissingFolderError: a folder that does not exist (a FileNotFoundError and a
            ValueError).
    """

    name = "abaw"

    def __init__(self, annotations: str, videos: str | None = None, tasks: Sequence[str] | None = None,
                 cropped_aligned: str | None = None):
        if isinstance(tasks, str):
            tasks = [t for t in tasks.split(",") if t.strip()]
        if tasks is not None:
            chosen = [str(t).strip().lower() for t in tasks]
            unknown = [t for t in chosen if t not in TASKS]
            if unknown or not chosen:
                raise ValueError(f"unknown task(s) {unknown or tasks!r}; valid tasks: {', '.join(TASKS)}")
            tasks = tuple(t for t in TASKS if t in chosen)
        if videos is None and cropped_aligned is None:
            raise ValueError("AbawSource needs --videos or --cropped_aligned (or both)")
        for option, folder in (("--annotations", annotations), ("--videos", videos),
                               ("--cropped_aligned", cropped_aligned)):
            if folder is not None and not tf.io.gfile.isdir(folder):
                raise MissingFolderError(f"{option} folder {folder!r} does not exist or is not a folder")
        self.annotations = str(annotations)
        self.videos = None if videos is None else str(videos)
        self.tasks = tasks
        self.cropped_aligned = None if cropped_aligned is None else str(cropped_aligned)

    # ------------------------------------------------------------------ discovery

    def discover(self) -> base.Discovery:
        """Lists the tracks, their media and crops, the label names and the unused media.

        Raises:
            AbawLayoutError: no annotation file of the selected tasks was found.
        """
        dead_letters: list[base.DeadLetter] = []
        split_drops: list[base.SplitDrop] = []
        files, found_tasks = self._annotation_files(dead_letters, split_drops)
        if not files:
            wanted = ", ".join(self.tasks or TASKS)
            raise AbawLayoutError(
                f"no ABAW annotation files for task(s) {wanted} under {self.annotations!r}"
                + (f" (found only: {', '.join(found_tasks)})" if found_tasks else "")
                + "; expected folders like EXPR_Set/Training_Set, VA_Estimation_Challenge/Train_Set, "
                "EXPR_Recognition_Challenge/Validation_Set or MTL_Challenge/*annotations*.txt")
        tasks = [t for t in TASKS if any(f.task == t for f in files)]
        label_names = self._label_names(files, tasks)
        au_names = tuple(label_names["action_units"])

        by_subject = collections.defaultdict(list)
        for f in files:
            by_subject[(f.task, f.media_id)].append(f)
        rejected = set()
        for (task, media_id), group in sorted(by_subject.items()):
            if len(group) > 1:
                rejected.update(group)

        media = self._media_index()
        crops = self._crop_folders()
        used_media: set[str] = set()
        by_track = collections.defaultdict(list)
        for f in files:
            by_track[(f.media_id, f.split)].append(f)
        tracks = []
        reported_ambiguous: set[str] = set()
        for (media_id, split), group in sorted(by_track.items()):
            good = tuple((f.task, f.path) for f in sorted(group, key=lambda f: TASKS.index(f.task))
                         if f not in rejected)
            bad = tuple(
                base.RejectedAnnotation(f.task, f.path, base.DROP_DUPLICATE_TRACK,
                                        _duplicate_message(by_subject[(f.task, media_id)]))
                for f in sorted(group, key=lambda f: (TASKS.index(f.task), f.path)) if f in rejected)
            candidates, side = self._match_media(media_id, media)
            used_media.update(candidates)
            crops_dir = crops.get(_nfc(media_id))
            problem = None
            media_path, data_path = None, ""
            if len(candidates) == 1:
                data_path = candidates[0]
                media_path = self._video_path(data_path)
            elif crops_dir is None:
                problem = base.DROP_NO_MEDIA if not candidates else base.DROP_AMBIGUOUS_MEDIA
            elif candidates and media_id not in reported_ambiguous:
                reported_ambiguous.add(media_id)
                dead_letters.append(base.DeadLetter(
                    source=media_id, reason=base.DROP_AMBIGUOUS_MEDIA,
                    message=f"several media files match {media_id!r}: {', '.join(candidates)}; "
                            "none is used, the track uses the crops in --cropped_aligned"))
            if not good:
                problem = base.DROP_DUPLICATE_TRACK
            tracks.append(base.TrackSpec(
                media_id=media_id, split=split, annotation_files=good, media_path=media_path,
                data_path=data_path, side=side, crops_dir=crops_dir, problem=problem,
                action_unit_names=au_names, rejected_files=bad))
        tracks.sort(key=lambda t: t.track_id)
        unused = sorted(p for paths in media.values() for p in paths if p not in used_media)
        return base.Discovery(tracks=tracks, label_names=label_names, tasks=tasks, unused_media=unused,
                              dead_letters=dead_letters, split_drops=split_drops)

    def _annotation_files(self, dead_letters: list[base.DeadLetter],
                          split_drops: list[base.SplitDrop]) -> tuple[list[_AnnotationFile], list[str]]:
        """Every annotation file of the selected tasks (and the tasks seen at all).

        Args:
            dead_letters: Receives the problems found while listing.
            split_drops: Receives labelled lines that belong to no track.
        """
        skip = {self._norm_dir(d) for d in (self.videos, self.cropped_aligned) if d is not None}
        files: list[_AnnotationFile] = []
        seen_tasks: set[str] = set()
        stack = [self.annotations]
        while stack:
            folder = stack.pop()
            if folder != self.annotations and self._norm_dir(folder) in skip:
                continue
            name = _basename(folder).lower()
            if name in TASK_FOLDERS:
                task = TASK_FOLDERS[name]
                seen_tasks.add(task)
                if self.tasks is None or task in self.tasks:
                    files.extend(self._task_folder_files(folder, task))
                continue
            if name == MTL_FOLDER:
                files.extend(self._mtl_files(folder, seen_tasks, dead_letters, split_drops))
                continue
            subdirs, _ = self._list(folder)
            stack.extend(sorted(subdirs, reverse=True))
        files.sort(key=lambda f: (f.split, f.media_id, TASKS.index(f.task), f.path))
        return files, [t for t in TASKS if t in seen_tasks]

    def _task_folder_files(self, folder: str, task: str) -> list[_AnnotationFile]:
        found = []
        subdirs, _ = self._list(folder)
        for split_dir in subdirs:
            split = SPLIT_FOLDERS.get(_basename(split_dir).lower())
            if split is None:
                continue
            _, names = self._list(split_dir)
            for path in names:
                name = _basename(path)
                if name.lower().endswith(".txt"):
                    found.append(_AnnotationFile(task, split, _nfc(name[:-4]), path))
        return found

    def _mtl_files(self, folder: str, seen_tasks: set[str], dead_letters: list[base.DeadLetter],
                   split_drops: list[base.SplitDrop]) -> list[_AnnotationFile]:
        """Subjects of each multi-task file (scans the image column once).

        Rows without a ``<video>/<frame>.jpg`` name get a dead letter and a
        ``malformed_line`` entry in ``split_drops`` for the file's split.
        """
        found = []
        wanted = [t for t in TASKS if self.tasks is None or t in self.tasks]
        _, names = self._list(folder)
        for path in names:
            split = _mtl_split(_basename(path))
            if split is None:
                continue
            seen_tasks.update(TASKS)
            subjects: set[str] = set()
            bad_lines: list[int] = []
            lines = _content_lines(_read_lines(path))
            next(lines, None)
            for number, text in lines:
                image = text.split(",", 1)[0].strip()
                media_id = posixpath.dirname(image)
                if not media_id or _mtl_frame(image, media_id) is None:
                    bad_lines.append(number)
                    continue
                subjects.add(_nfc(media_id))
            for first, last in _ranges(bad_lines):
                where = f"line {first}" if first == last else f"lines {first}-{last}"
                dead_letters.append(base.DeadLetter(
                    source=f"{path}:{where}", reason=base.DROP_MALFORMED_LINE,
                    message=f"multi-task row(s) without a '<video>/<frame>.jpg' image name ({where} of the file)",
                    frames=last - first + 1))
            if bad_lines:
                split_drops.append(base.SplitDrop(split, base.DROP_MALFORMED_LINE, len(bad_lines)))
            for media_id in sorted(subjects):
                found.extend(_AnnotationFile(task, split, media_id, path) for task in wanted)
        return found

    def _label_names(self, files: list[_AnnotationFile], tasks: list[str]) -> dict[str, list[str]]:
        expression = set()
        au_sets = collections.Counter()
        mtl_aus: dict[str, tuple[str, ...] | None] = {}
        for f in files:
            if f.task == TASK_VALENCE_AROUSAL:
                continue
            if _is_mtl_file(f.path):
                if f.task == TASK_EXPRESSION:
                    expression.add(EXPRESSION_NAMES_8)
                else:
                    if f.path not in mtl_aus:
                        mtl_aus[f.path] = self._mtl_au_names(f.path)
                    names = mtl_aus[f.path]
                    if names:
                        au_sets[tuple(sorted(names, key=_au_sort_key))] += 1
                continue
            header = _first_line(f.path)
            names = parse_header(f.task, header)
            if names is None:
                continue
            if f.task == TASK_EXPRESSION:
                expression.add(names)
            else:
                au_sets[tuple(sorted(names, key=_au_sort_key))] += 1
        label_names = {key: [] for key in LABEL_KEYS.values()}
        if TASK_EXPRESSION in tasks:
            label_names["expression"] = list(EXPRESSION_NAMES_7 if expression == {EXPRESSION_NAMES_7}
                                             else EXPRESSION_NAMES_8)
        if TASK_VALENCE_AROUSAL in tasks:
            label_names["valence_arousal"] = list(VALENCE_AROUSAL_NAMES)
        if TASK_ACTION_UNITS in tasks:
            if au_sets:
                best = max(au_sets.items(), key=lambda item: (item[1], len(item[0]), [-_au_sort_key(n) for n in item[0]]))
                label_names["action_units"] = list(best[0])
            else:
                label_names["action_units"] = list(ACTION_UNITS_12)
        return label_names

    @staticmethod
    def _mtl_au_names(path: str) -> tuple[str, ...] | None:
        with tf.io.gfile.GFile(path, "rb") as f:
            header = _mtl_header(f.readline().decode("utf-8", errors="replace").lstrip("\ufeff"))
            if header is None or header is not True:
                return header
            first = f.readline().decode("utf-8", errors="replace").strip()
        return _default_au_names(len(_fields(first)) - 4) if first else None

    def _media_index(self) -> dict[str, list[str]]:
        """Stem (NFC) → media paths relative to ``--videos``, sorted."""
        index = collections.defaultdict(list)
        if self.videos is None:
            return index
        stack = [("", self.videos)]
        while stack:
            relative, folder = stack.pop()
            subdirs, names = self._list(folder)
            for sub in subdirs:
                stack.append((posixpath.join(relative, _basename(sub)), sub))
            for path in names:
                name = _basename(path)
                if name.lower().endswith(MEDIA_EXTENSIONS):
                    index[_nfc(_stem(name))].append(posixpath.join(relative, name))
        return {stem: sorted(paths) for stem, paths in index.items()}

    def _crop_folders(self) -> dict[str, str]:
        if self.cropped_aligned is None:
            return {}
        subdirs, _ = self._list(self.cropped_aligned)
        return {_nfc(_basename(d)): d for d in subdirs}

    @staticmethod
    def _match_media(media_id: str, media: dict[str, list[str]]) -> tuple[list[str], str | None]:
        if media.get(media_id):
            return media[media_id], None
        for side in ("left", "right"):
            suffix = "_" + side
            if media_id.endswith(suffix) and media.get(media_id[: -len(suffix)]):
                return media[media_id[: -len(suffix)]], side
        return [], None

    def _video_path(self, relative: str) -> str:
        return tf.io.gfile.join(self.videos, *relative.split("/"))

    @staticmethod
    def _norm_dir(folder: str) -> str:
        if "://" in folder:
            return folder.rstrip("/")
        return os.path.normcase(os.path.abspath(folder))

    @staticmethod
    def _list(folder: str) -> tuple[list[str], list[str]]:
        """``(subfolders, files)`` of a folder as full paths, sorted; [] when unreadable."""
        try:
            entries = tf.io.gfile.listdir(folder)
        except tf.errors.OpError:
            return [], []
        subdirs, files = [], []
        for entry in sorted(entries):
            is_dir = entry.endswith("/")
            entry = entry.rstrip("/")
            path = tf.io.gfile.join(folder, entry)
            if not is_dir and not entry.lower().endswith(_FILE_SUFFIXES):
                is_dir = tf.io.gfile.isdir(path)
            (subdirs if is_dir else files).append(path)
        return subdirs, files

    # ------------------------------------------------------------------ labels

    def read_labels(self, track: base.TrackSpec) -> base.TrackLabels:
        """Parses the track's annotation files into per-frame label arrays.

        Bad lines never raise: they are marked in ``rejected`` (when the frame has no other
        valid label) and reported in grouped dead letters naming file and line numbers.
        Rejected files (duplicates) are parsed only to count and reject their frames.
        Call it for every track, also one with a ``problem``: its labelled frames are
        what that problem drops.
        """
        au_names = tuple(track.action_unit_names)
        parts: list[_Parsed] = []
        for path, tasks in _group_by_path(track.annotation_files):
            parts.extend(self._parse(path, tasks, track.media_id, au_names))
        rejected_parts: list[tuple[base.RejectedAnnotation, _Parsed]] = []
        for path, tasks in _group_by_path([(r.task, r.path) for r in track.rejected_files]):
            for parsed in self._parse(path, tasks, track.media_id, au_names):
                match = next(r for r in track.rejected_files if r.path == path and r.task == parsed.task)
                rejected_parts.append((match, parsed))

        n = max([p.num_frames for p in parts] + [p.num_frames for _, p in rejected_parts] + [0])
        num_aus = len(au_names) or max((p.num_aus for p in parts if p.task == TASK_ACTION_UNITS), default=0)
        expression = np.full(n, keys.EXPRESSION_INVALID, dtype=np.int64)
        valence_arousal = np.full((n, 2), keys.VA_INVALID, dtype=np.float32)
        action_units = np.full((n, num_aus), keys.AU_INVALID, dtype=np.int64)
        for p in parts:
            for frame, value in p.values.items():
                if p.task == TASK_EXPRESSION:
                    expression[frame - 1] = value
                elif p.task == TASK_VALENCE_AROUSAL:
                    valence_arousal[frame - 1] = value
                elif len(value) == num_aus:
                    action_units[frame - 1] = value
        labels = base.TrackLabels(expression, valence_arousal, action_units, np.full(n, "", dtype=object))
        valid = labels.valid
        rejected = labels.rejected
        for p in parts:
            for frame, status in zip(p.frames, p.status):
                if status in _REASONS and not valid[frame - 1] and not rejected[frame - 1]:
                    rejected[frame - 1] = _REASONS[status]
        for r, p in rejected_parts:
            for frame, status in zip(p.frames, p.status):
                if status != _INVALID and not valid[frame - 1] and not rejected[frame - 1]:
                    rejected[frame - 1] = r.reason

        dead = labels.dead_letters
        for p in parts:
            if p.file_problem is not None:
                frames = sorted({f for f, s in zip(p.frames, p.status) if s == _BAD_HEADER})
                dead.append(base.DeadLetter(source=p.path, reason=p.file_problem[0], message=p.file_problem[1],
                                            frames=int(sum(not valid[f - 1] for f in frames))))
            for run in p.runs:
                where = f"line {run.first_line}" if run.first_line == run.last_line else \
                    f"lines {run.first_line}-{run.last_line}"
                if _is_mtl_file(p.path):
                    detail = f"{p.task} of {track.media_id}, file {where}: {run.detail}"
                else:
                    file_lines = f"{run.first_line + 1}" if run.first_line == run.last_line else \
                        f"{run.first_line + 1}-{run.last_line + 1}"
                    detail = (f"{p.task}, frame(s) {where.split(' ', 1)[1]} (file line(s) {file_lines}); "
                              f"first: {run.detail}")
                dead.append(base.DeadLetter(source=f"{p.path}:{where}", reason=run.reason, message=detail,
                                            frames=int(sum(not valid[f - 1] for f in set(run.frames)))))
        for r, p in rejected_parts:
            frames = {f for f, s in zip(p.frames, p.status) if s != _INVALID}
            dead.append(base.DeadLetter(source=f"{p.path} ({track.track_id})", reason=r.reason, message=r.message,
                                        frames=int(sum(not valid[f - 1] for f in frames))))
        return labels

    @staticmethod
    def _parse(path: str, tasks: list[str], media_id: str, au_names: tuple[str, ...]) -> list[_Parsed]:
        if _is_mtl_file(path):
            return list(_parse_mtl_file(path, media_id, tasks, au_names).values())
        return [_parse_task_file(task, path, au_names) for task in tasks]


def _group_by_path(pairs) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for task, path in pairs:
        grouped.setdefault(path, []).append(task)
    return list(grouped.items())


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as ``(first, last)``."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def _duplicate_message(group: list[_AnnotationFile]) -> str:
    f = group[0]
    files = "; ".join(f"{g.path} ({g.split})" for g in sorted(group, key=lambda g: (g.split, g.path)))
    return (f"{f.task} annotation of {f.media_id!r} found in {len(group)} files: {files}. "
            "All are rejected: a duplicate subject id never silently picks one.")
