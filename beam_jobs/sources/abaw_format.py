"""The Aff-Wild2 / ABAW annotation text format: folder names, headers, values, line status.

Pure parsing (no listing, no label arrays): what one header declares, what one line's fields mean, and
what status a line gets. The format is described in ``docs/abaw.md``.
"""

from __future__ import annotations

import enum
import math
import posixpath
import re
import unicodedata
from collections.abc import Iterator, Sequence

from beam_jobs.sources import base
from beam_jobs.sources.text_lines import iter_lines
from tfrecords_schema import TASK_ACTION_UNITS, TASK_EXPRESSION, TASK_VALENCE_AROUSAL, keys
from tfrecords_schema.filesystems import register_filesystems

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
ANNOTATION_SUFFIX = ".txt"
# Multi-task header: ``image,valence,arousal,expression,`` then AU names or one of these words (words of the
# ABAW file format, lower-cased; not the schema's head names).
MTL_LABEL_COLUMNS = ("valence", "arousal", "expression")
MTL_AU_COUNT_COLUMNS = ("aus", "au", "action_units")

_AU_NAME = re.compile(r"^au\s*0*(\d+)$")


class LineStatus(enum.IntEnum):
    """What one line gives one task."""

    OK = 0  # a valid label.
    INVALID = 1  # the invalid marker (-1, -5): no label, nothing wrong.
    MALFORMED = 2  # wrong field count, not a number, NaN, a non-integer class.
    OUT_OF_RANGE = 3  # a number outside the task's range.
    BAD_HEADER = 4  # any line of a file whose header is not recognised.

    @property
    def reason(self) -> str | None:
        """The DROP_* reason a frame rejected with this status gets (None: not rejected)."""
        return _REASON_OF_STATUS.get(self)


_REASON_OF_STATUS = {LineStatus.MALFORMED: base.DROP_MALFORMED_LINE, LineStatus.OUT_OF_RANGE: base.DROP_OUT_OF_RANGE,
                     LineStatus.BAD_HEADER: base.DROP_BAD_HEADER}


# ---------------------------------------------------------------- names and paths


def nfc(text: str) -> str:
    """Unicode NFC form: names typed on macOS (NFD) match names typed elsewhere."""
    return unicodedata.normalize("NFC", text)


def basename(path: str) -> str:
    """Last component of a local path or URL (trailing slash and backslashes allowed)."""
    return posixpath.basename(path.rstrip("/").replace("\\", "/"))


def stem(name: str) -> str:
    """File name without its last extension."""
    return name.rsplit(".", 1)[0] if "." in name else name


def au_sort_key(name: str) -> int:
    """Sort key of an ``"AU12"`` style name: its number."""
    return int(name[2:])


def is_mtl_file(path: str) -> bool:
    """True for a file directly inside an ``MTL_Challenge`` folder."""
    parent = posixpath.dirname(path.rstrip("/").replace("\\", "/"))
    return basename(parent).lower() == MTL_FOLDER


def mtl_split(filename: str) -> str | None:
    """Split of a multi-task file from its name (``train``/``valid``), None for others (``test``)."""
    lower = filename.lower()
    if "annotation" not in lower or not lower.endswith(ANNOTATION_SUFFIX):
        return None
    if "valid" in lower:
        return "validation"
    if "train" in lower:
        return "train"
    return None


def mtl_frame(image: str, media_id: str) -> int | None:
    """Frame number of ``<media_id>/<frame>.jpg``, None when the name holds none."""
    name = image.strip()[len(media_id) + 1:]
    number = stem(name)
    if "/" in name or not number.isdigit() or int(number) < 1:
        return None
    return int(number)


# Frames a multi-task file may name beyond twice its rows: an hour of 30 fps video listed sparsely is
# accepted, and a track's label arrays stay under ~15 MB.
MTL_FRAME_MARGIN = 100_000


def mtl_frame_limit(rows: int) -> int:
    """Highest frame number a multi-task file of ``rows`` rows may name.

    Label arrays are sized by the highest frame listed, so a row such as ``v2/99999999999.jpg``
    must not reach them: a number far beyond the file's rows (twice as many, plus
    :data:`MTL_FRAME_MARGIN` for sparse annotation) is a ``malformed_line``. Frames past the
    video's end are counted later, when it is decoded (``beyond_video_end``).
    """
    return 2 * rows + MTL_FRAME_MARGIN


# ---------------------------------------------------------------- reading text


def read_lines(path: str) -> Iterator[str]:
    """Lines of an annotation file (any line end; UTF-8, UTF-16 or UTF-32 by BOM; see ``text_lines``).

    Raises:
        OSError: the file cannot be opened or read (also for ``gs://`` errors).
    """
    import tensorflow as tf  # Late import: importing the adapters must not load TensorFlow.

    register_filesystems(path)  # (Read on the workers: each process registers s3:// itself.)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            yield from iter_lines(f)
    except tf.errors.OpError as e:
        raise OSError(f"cannot read {path}: {e.message}") from e


def first_line(path: str) -> str:
    """The first line of a text file ("" when empty)."""
    lines = read_lines(path)
    try:
        return next(lines, "")
    finally:
        lines.close()


def content_lines(lines: Iterator[str]) -> Iterator[tuple[int, str]]:
    """``(number, text)`` counting from 1, with blank lines at the very end left out."""
    pending = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            pending.append((number, text))
            continue
        yield from pending
        pending = []
        yield number, text


def fields(text: str) -> list[str]:
    """Comma-separated fields, stripped; a single trailing comma is tolerated."""
    values = [f.strip() for f in text.split(",")]
    if len(values) > 1 and values[-1] == "":
        values.pop()
    return values


# ---------------------------------------------------------------- headers


def _header_fields(line: str) -> list[str]:
    return [f.strip().lower() for f in line.lstrip("\ufeff").strip().split(",")]


def _canonical_au(field: str) -> str | None:
    match = _AU_NAME.match(field.strip().lower())
    return f"AU{int(match.group(1))}" if match else None


def parse_header(task: str, line: str) -> tuple[str, ...] | None:
    """Label names a per-task header declares, or None when it is not recognised.

    Args:
        task: ``TASK_EXPRESSION``, ``TASK_VALENCE_AROUSAL`` or ``TASK_ACTION_UNITS``.
        line: The first line of the file.

    Returns:
        The expression class names (7 or 8), ``("valence", "arousal")``, or the AU names
        in the file's column order (``"AU12"`` style).
    """
    names = _header_fields(line)
    if task == TASK_EXPRESSION:
        for known in (EXPRESSION_NAMES_7, EXPRESSION_NAMES_8):
            if names == [n.lower() for n in known]:
                return known
        return None
    if task == TASK_VALENCE_AROUSAL:
        return VALENCE_AROUSAL_NAMES if names == list(VALENCE_AROUSAL_NAMES) else None
    aus = tuple(_canonical_au(f) for f in names)
    if not aus or None in aus or len(set(aus)) != len(aus):
        return None
    return aus


def parse_mtl_header(line: str) -> tuple[str, ...] | None | bool:
    """AU names of a multi-task header, True for ``...,aus`` (count from rows), None if unknown."""
    names = _header_fields(line)
    if len(names) < 5 or tuple(names[1:4]) != MTL_LABEL_COLUMNS:
        return None
    if len(names) == 5 and names[4] in MTL_AU_COUNT_COLUMNS:
        return True
    aus = tuple(_canonical_au(f) for f in names[4:])
    if None in aus or len(set(aus)) != len(aus):
        return None
    return aus


def default_au_names(count: int) -> tuple[str, ...] | None:
    """The ABAW AU names of an ``aus`` multi-task file with ``count`` AU columns (8 or 12)."""
    return {8: ACTION_UNITS_8, 12: ACTION_UNITS_12}.get(count)


def au_order(file_names: Sequence[str], dataset_names: Sequence[str]) -> list[int] | None:
    """File column → dataset column, or None when the sets differ."""
    if set(file_names) != set(dataset_names):
        return None
    return [list(dataset_names).index(name) for name in file_names]


def expected_header(task: str) -> str:
    """The headers a per-task file may have, for error messages."""
    if task == TASK_EXPRESSION:
        return f"{','.join(EXPRESSION_NAMES_7)}[,Other]"
    if task == TASK_VALENCE_AROUSAL:
        return ",".join(VALENCE_AROUSAL_NAMES)
    return f"{','.join(ACTION_UNITS_8)} or {','.join(ACTION_UNITS_12)}"


# ---------------------------------------------------------------- values


def _number(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError("NaN")
    return value


class ValueParser:
    """Parses one task's values from the text fields of a line.

    Args:
        task: ``TASK_EXPRESSION``, ``TASK_VALENCE_AROUSAL`` or ``TASK_ACTION_UNITS``.
        num_classes: Expression classes of the file.
        au_order: File AU column → dataset AU column.
    """

    def __init__(self, task: str, num_classes: int = 8, au_order: Sequence[int] = ()):
        self.task = task
        self.num_classes = num_classes
        self.au_order = list(au_order)
        self.width = len(self.au_order)

    def parse(self, values: list[str]) -> tuple[LineStatus, object, str]:
        """``(status, value, detail)``: the value when OK (AUs in the dataset's column order), else a reason."""
        if self.task == TASK_EXPRESSION:
            return self._expression(values)
        if self.task == TASK_VALENCE_AROUSAL:
            return self._valence_arousal(values)
        return self._action_units(values)

    def _expression(self, values):
        if len(values) != 1:
            return LineStatus.MALFORMED, None, f"expected 1 value, got {len(values)}"
        try:
            value = _number(values[0])
        except ValueError:
            return LineStatus.MALFORMED, None, f"not a number: {values[0]!r}"
        if math.isfinite(value) and not value.is_integer():
            return LineStatus.MALFORMED, None, f"not an integer class: {values[0]!r}"
        if value == keys.EXPRESSION_INVALID:
            return LineStatus.INVALID, None, ""
        if not 0 <= value < self.num_classes:
            return LineStatus.OUT_OF_RANGE, None, f"class {values[0]} not in [0, {self.num_classes}) nor {keys.EXPRESSION_INVALID}"
        return LineStatus.OK, int(value), ""

    def _valence_arousal(self, values):
        if len(values) != 2:
            return LineStatus.MALFORMED, None, f"expected 2 values, got {len(values)}"
        try:
            pair = [_number(f) for f in values]
        except ValueError:
            return LineStatus.MALFORMED, None, f"not a number: {','.join(values)!r}"
        if keys.VA_INVALID in pair:
            return LineStatus.INVALID, None, ""
        if not all(-1.0 <= v <= 1.0 for v in pair):
            return LineStatus.OUT_OF_RANGE, None, f"valence/arousal {','.join(values)} not in [-1, 1] nor {keys.VA_INVALID:g}"
        return LineStatus.OK, pair, ""

    def _action_units(self, values):
        if len(values) != self.width:
            return LineStatus.MALFORMED, None, f"expected {self.width} values, got {len(values)}"
        try:
            numbers = [_number(f) for f in values]
        except ValueError:
            return LineStatus.MALFORMED, None, f"not a number in {','.join(values)!r}"
        if not all(not math.isfinite(v) or v.is_integer() for v in numbers):
            return LineStatus.MALFORMED, None, f"not an integer AU value in {','.join(values)!r}"
        if not all(v in (keys.AU_INVALID, 0, 1) for v in numbers):
            return LineStatus.OUT_OF_RANGE, None, f"AU values {','.join(values)} not in {{0, 1}} nor {keys.AU_INVALID}"
        invalid = [v == keys.AU_INVALID for v in numbers]
        if all(invalid):
            return LineStatus.INVALID, None, ""
        if any(invalid):
            return LineStatus.OUT_OF_RANGE, None, f"AU row {','.join(values)} mixes {keys.AU_INVALID} (invalid) with 0/1"
        row = [keys.AU_INVALID] * self.width
        for column, target in enumerate(self.au_order):
            row[target] = int(numbers[column])
        return LineStatus.OK, row, ""  # In the dataset's column order.
