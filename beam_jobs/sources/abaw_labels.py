"""Reading one ABAW track: its annotation files → per-frame label arrays, rejected frames, dead letters.

Runs on a Beam worker (no Beam import). Bad lines never raise: they mark their frame ``rejected``
(when no other task labels it) and are reported in grouped dead letters (``docs/abaw.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from beam_jobs.sources import base
from beam_jobs.sources.abaw_format import (
    EXPRESSION_NAMES_8,
    LineStatus,
    ValueParser,
    au_order,
    au_sort_key,
    content_lines,
    default_au_names,
    expected_header,
    fields,
    is_mtl_file,
    mtl_frame,
    mtl_frame_limit,
    nfc,
    parse_header,
    parse_mtl_header,
    read_lines,
)
from tfrecords_schema import TASK_ACTION_UNITS, TASK_EXPRESSION, TASK_VALENCE_AROUSAL, keys


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
        self.status: list[LineStatus] = []
        self.values: dict[int, object] = {}
        self.runs: list[_Run] = []
        self.file_problem: tuple[str, str] | None = None  # (reason, message) for the whole file.

    def add(self, frame: int, line: int, status: LineStatus, value, detail: str) -> None:
        self.frames.append(frame)
        self.status.append(status)
        if status == LineStatus.OK:
            self.values[frame] = value
        elif status in (LineStatus.MALFORMED, LineStatus.OUT_OF_RANGE):
            reason = status.reason
            last = self.runs[-1] if self.runs else None
            if last is not None and last.reason == reason and last.last_line == line - 1:
                last.last_line = line
                last.frames.append(frame)
            else:
                self.runs.append(_Run(reason, line, line, detail, [frame]))

    @property
    def num_frames(self) -> int:
        return max(self.frames, default=0)

    def frames_with(self, wanted) -> set[int]:
        """Frames whose status satisfies ``wanted(status)``."""
        return {f for f, s in zip(self.frames, self.status) if wanted(s)}


# ---------------------------------------------------------------- per-task files


def _parse_task_file(task: str, path: str, au_names: tuple[str, ...]) -> _Parsed:
    """Parses a per-task file (header, then line i = frame i)."""
    parsed = _Parsed(task, path, len(au_names))
    lines = content_lines(read_lines(path))
    header_line = next(lines, (1, ""))[1]
    names = parse_header(task, header_line)
    parser = None
    if names is None:
        problem = (base.DROP_BAD_HEADER,
                   f"{task} header {header_line[:200]!r} not recognised; expected {expected_header(task)}")
    elif task == TASK_ACTION_UNITS:
        order = au_order(names, au_names or tuple(sorted(names, key=au_sort_key)))
        if order is None:
            problem = (base.DROP_BAD_HEADER,
                       (f"AU header {header_line[:200]!r} has another AU set than the dataset's "
                        f"{','.join(au_names)}; mixing AU sets is refused"))
        else:
            problem, parser = None, ValueParser(task, au_order=order)
            parsed.num_aus = len(order)
    else:
        problem, parser = None, ValueParser(task, num_classes=len(names))
    parsed.file_problem = problem
    for number, text in lines:
        frame = number - 1
        if parser is None:
            parsed.add(frame, frame, LineStatus.BAD_HEADER, None, "")
            continue
        status, value, detail = parser.parse(fields(text))
        parsed.add(frame, frame, status, value, detail)
    return parsed


# ---------------------------------------------------------------- multi-task files


@dataclasses.dataclass
class _MtlRows:
    """One pass over a multi-task file for one subject."""

    header_line: str
    first_row: list[str] | None  # fields of the file's first row (it fixes the AU count of an ``aus`` header).
    rows: int  # rows of the file (every subject).
    subject_rows: list[tuple[int, int, list[str]]]  # (line number, frame, fields) of this subject.


def _scan_mtl_file(path: str, media_id: str) -> _MtlRows:
    lines = content_lines(read_lines(path))
    header_line = next(lines, (1, ""))[1]
    prefix = media_id + "/"
    first_row, rows, subject_rows = None, 0, []
    for number, text in lines:
        values = fields(text)
        rows += 1
        if first_row is None:
            first_row = values
        image = nfc(values[0])
        if not image.startswith(prefix):
            continue
        frame = mtl_frame(image, media_id)
        if frame is not None:  # A row that names no frame is reported once, by discovery.
            subject_rows.append((number, frame, values))
    return _MtlRows(header_line, first_row, rows, subject_rows)


def _mtl_columns(scan: _MtlRows, parsed: dict[str, _Parsed],
                 au_names: tuple[str, ...]) -> tuple[tuple[str, str] | None, int, dict[str, ValueParser]]:
    """``(file problem, AU columns, parser per task)`` from the header and the first row."""
    header = parse_mtl_header(scan.header_line)
    if header is None:
        return (base.DROP_BAD_HEADER, (f"multi-task header {scan.header_line[:200]!r} not recognised; expected "
                                       "image,valence,arousal,expression,aus (or AU names)")), 0, {}
    if scan.first_row is None:
        return None, 0, {}
    file_aus = header if header is not True else default_au_names(len(scan.first_row) - 4)
    if file_aus is None:
        return (base.DROP_BAD_HEADER, (f"multi-task header {scan.header_line[:200]!r} with "
                                       f"{len(scan.first_row) - 4} AU columns in the first row (8 or 12 expected)")), 0, {}
    order = au_order(file_aus, au_names or tuple(sorted(file_aus, key=au_sort_key)))
    parsers = {task: ValueParser(task, num_classes=len(EXPRESSION_NAMES_8), au_order=order or ()) for task in parsed}
    if TASK_ACTION_UNITS in parsed:
        if order is not None:
            parsed[TASK_ACTION_UNITS].num_aus = len(order)
        else:
            parsed[TASK_ACTION_UNITS].file_problem = (
                base.DROP_BAD_HEADER, (f"AU set {','.join(file_aus)} differs from the dataset's "
                                       f"{','.join(au_names)}; mixing AU sets is refused"))
    return None, len(file_aus), parsers


def _parse_mtl_file(path: str, media_id: str, tasks: Sequence[str], au_names: tuple[str, ...]) -> dict[str, _Parsed]:
    """Parses the rows of one subject in a multi-task file, for the given tasks."""
    scan = _scan_mtl_file(path, media_id)
    parsed = {task: _Parsed(task, path, len(au_names)) for task in tasks}
    problem, width, parsers = _mtl_columns(scan, parsed, au_names)
    limit = mtl_frame_limit(scan.rows)
    seen: dict[int, int] = {}
    for number, frame, values in scan.subject_rows:
        if frame > limit:
            continue  # Reported and counted by discovery: it must not size the label arrays.
        if problem is not None:
            for p in parsed.values():
                p.add(frame, number, LineStatus.BAD_HEADER, None, "")
            continue
        if frame in seen:
            for p in parsed.values():
                p.add(frame, number, LineStatus.MALFORMED, None, f"frame {frame} already listed on line {seen[frame]}")
            continue
        seen[frame] = number
        if len(values) != 4 + width:
            for p in parsed.values():
                p.add(frame, number, LineStatus.MALFORMED, None, f"expected {4 + width} values, got {len(values)}")
            continue
        columns = {TASK_VALENCE_AROUSAL: values[1:3], TASK_EXPRESSION: values[3:4], TASK_ACTION_UNITS: values[4:]}
        for task, p in parsed.items():
            if p.file_problem is not None:
                p.add(frame, number, LineStatus.BAD_HEADER, None, "")
                continue
            status, value, detail = parsers[task].parse(columns[task])
            p.add(frame, number, status, value, detail)
    if problem is not None:
        for p in parsed.values():
            p.file_problem = problem
    return parsed


def mtl_au_names(path: str) -> tuple[str, ...] | None:
    """AU names of a multi-task file (from its header, or from its first row's width for ``aus``)."""
    lines = read_lines(path)
    try:
        header = parse_mtl_header(next(lines, ""))
        if header is None or header is not True:
            return header
        first = next(lines, "").strip()
    finally:
        lines.close()
    return default_au_names(len(fields(first)) - 4) if first else None


def count_file_lines(path: str, media_id: str) -> int:
    """Labelled lines of one annotation file for one subject, without parsing the values.

    A per-task file: its non-blank lines after the header. A multi-task file: the distinct frames
    this subject's rows name (rows of other subjects, and rows discovery already counted, left out).
    """
    if is_mtl_file(path):
        scan = _scan_mtl_file(path, media_id)
        limit = mtl_frame_limit(scan.rows)
        return len({frame for _, frame, _ in scan.subject_rows if frame <= limit})
    lines = read_lines(path)
    next(lines, None)  # The header.
    return sum(bool(line.strip()) for line in lines)


# ---------------------------------------------------------------- one track


def _parse(path: str, tasks: list[str], media_id: str, au_names: tuple[str, ...]) -> list[_Parsed]:
    if is_mtl_file(path):
        return list(_parse_mtl_file(path, media_id, tasks, au_names).values())
    return [_parse_task_file(task, path, au_names) for task in tasks]


def _group_by_path(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for task, path in pairs:
        grouped.setdefault(path, []).append(task)
    return list(grouped.items())


def _label_arrays(parts: list[_Parsed], rejected_parts: list[tuple[base.RejectedAnnotation, _Parsed]],
                  au_names: tuple[str, ...]) -> base.TrackLabels:
    """Label arrays filled with the valid values (no rejected reasons yet)."""
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
    return base.TrackLabels(expression, valence_arousal, action_units, np.full(n, "", dtype=object))


def _mark_rejected(labels: base.TrackLabels, parts: list[_Parsed],
                   rejected_parts: list[tuple[base.RejectedAnnotation, _Parsed]]) -> None:
    """Sets ``rejected`` for frames whose labels were all rejected (the first reason found wins)."""
    valid, rejected = labels.valid, labels.rejected
    for p in parts:
        for frame, status in zip(p.frames, p.status):
            if status.reason is not None and not valid[frame - 1] and not rejected[frame - 1]:
                rejected[frame - 1] = status.reason
    for r, p in rejected_parts:
        for frame, status in zip(p.frames, p.status):
            if status != LineStatus.INVALID and not valid[frame - 1] and not rejected[frame - 1]:
                rejected[frame - 1] = r.reason


def _run_message(p: _Parsed, run: _Run, where: str, media_id: str) -> str:
    if is_mtl_file(p.path):
        return f"{p.task} of {media_id}, file {where}: {run.detail}"
    file_lines = f"{run.first_line + 1}" if run.first_line == run.last_line else \
        f"{run.first_line + 1}-{run.last_line + 1}"
    return f"{p.task}, frame(s) {where.split(' ', 1)[1]} (file line(s) {file_lines}); first: {run.detail}"


def _add_dead_letters(labels: base.TrackLabels, parts: list[_Parsed],
                      rejected_parts: list[tuple[base.RejectedAnnotation, _Parsed]], track: base.TrackSpec) -> None:
    """One dead letter per bad file, per run of bad lines and per rejected file; ``frames`` = what it cost."""
    valid = labels.valid

    def cost(frames: Iterable[int]) -> int:
        return int(sum(not valid[f - 1] for f in frames))

    dead = labels.dead_letters
    for p in parts:
        if p.file_problem is not None:
            frames = p.frames_with(lambda s: s == LineStatus.BAD_HEADER)
            dead.append(base.DeadLetter(source=p.path, reason=p.file_problem[0], message=p.file_problem[1],
                                        frames=cost(frames)))
        for run in p.runs:
            where = f"line {run.first_line}" if run.first_line == run.last_line else \
                f"lines {run.first_line}-{run.last_line}"
            dead.append(base.DeadLetter(source=f"{p.path}:{where}", reason=run.reason,
                                        message=_run_message(p, run, where, track.media_id),
                                        frames=cost(set(run.frames))))
    for r, p in rejected_parts:
        frames = p.frames_with(lambda s: s != LineStatus.INVALID)
        dead.append(base.DeadLetter(source=f"{p.path} ({track.track_id})", reason=r.reason, message=r.message,
                                    frames=cost(frames)))


def read_track_labels(track: base.TrackSpec) -> base.TrackLabels:
    """Parses a track's annotation files into per-frame label arrays (see ``DatasetSource.read_labels``).

    Rejected files (duplicates) are parsed only to count and reject their frames.
    """
    au_names = tuple(track.action_unit_names)
    parts: list[_Parsed] = []
    for path, tasks in _group_by_path(track.annotation_files):
        parts.extend(_parse(path, tasks, track.media_id, au_names))
    rejected_parts: list[tuple[base.RejectedAnnotation, _Parsed]] = []
    for path, tasks in _group_by_path([(r.task, r.path) for r in track.rejected_files]):
        for parsed in _parse(path, tasks, track.media_id, au_names):
            match = next(r for r in track.rejected_files if r.path == path and r.task == parsed.task)
            rejected_parts.append((match, parsed))
    labels = _label_arrays(parts, rejected_parts, au_names)
    _mark_rejected(labels, parts, rejected_parts)
    _add_dead_letters(labels, parts, rejected_parts, track)
    return labels
