"""CSV manifest adapter: one row per labelled video or per labelled time segment of a video.

``--dataset manifest --manifest FILE.csv`` (a local path, ``gs://`` or ``s3://``). Columns are
found by header name (case and surrounding spaces ignored; other columns are ignored):

``path``
    The video, relative to ``--videos`` (or, without ``--videos``, to the manifest's folder), or an
    absolute path / URL. A path without a container extension matches the one video with that
    stem (``clips/0042`` → ``clips/0042.avi``).
``split``
    ``train``, ``validation`` or ``test`` (also ``training``, ``val``, ``valid``, ``testing``,
    any case). Leave the column out and give ``--folds K --fold I`` for a dataset without
    official splits (:mod:`beam_jobs.sources.folds`).
``expression``
    A class name. ``--class_names A,B,C`` fixes the class order (names match case-insensitively);
    without it the sorted names found are the classes, recorded in ``dataset_info.json``.
``subject`` (optional)
    The person; default the path's stem. Subjects are the unit of split safety.
``start``, ``end`` (optional, seconds)
    A labelled segment; a video may have several rows. Frame ``i`` (1-based) is at time
    ``(i - 1) / fps`` and belongs to the segment when ``start <= t < end``; frames outside every
    segment are unlabelled. Empty cells (or no columns): the row labels every frame of the video.
``valence``, ``arousal`` (optional)
    Floats in [-1, 1]; both empty: no valence/arousal label on that row.

Bad rows never raise. Each becomes a dead letter naming ``FILE:line N`` and its labelled frames are
counted as dropped with its reason (accounting units are frames): ``unknown_class``,
``bad_segment`` (``end <= start``), ``no_media`` / ``ambiguous_media``, ``split_conflict`` (a
subject or a video found in two splits: all its rows), ``unknown_split``, ``malformed_line`` (a number that does not parse,
a row without a label, a wrong cell count), ``out_of_range`` (valence/arousal outside [-1, 1],
a negative start, a segment longer than a day) and ``conflicting_labels`` (frames two rows label
differently). A missing column is ``bad_header``: one dead letter, no track.

Frames are known only on the worker: ``read_labels`` probes the video's frame rate and frame count
(the container's count, else a count of the frames). Rows of a video that is missing or does not
open count 0 frames (their frames cannot be known) but still give a dead letter. Rows whose frames
can be counted but that are rejected — wrong class, unknown split, split conflict, bad numbers —
travel with their video as rejected segments, so their frames are counted (and dropped) on the
worker too. Tracks whose split the conversion cannot write are counted under the split ``test``
or ``unassigned`` (:data:`beam_jobs.sources.media_rows.UNASSIGNED_SPLIT`).

The row machinery (:class:`MediaRow` → :class:`LabelledTrack` → per-frame labels) is shared with
the folder-per-class adapter (:mod:`beam_jobs.sources.folders`).

Example::

    source = ManifestSource("data/manifest.csv", videos="data/videos", class_names=["neutral", "happy"])
    found = source.discover()
    labels = source.read_labels(found.tracks[0])
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import math
import os
import posixpath
import sys
import unicodedata
from collections.abc import Iterator, Sequence

from beam_jobs.media.video import VIDEO_EXTENSIONS, is_remote
from beam_jobs.sources import base
from beam_jobs.sources import folds as folds_lib
from beam_jobs.sources.media_rows import (
    DROP_BAD_SEGMENT,
    LabelledMediaSource,
    MediaRow,
    build_discovery,
    canonical_split,
    list_videos,
    parse_class_names,
    select_tasks,
)
from beam_jobs.sources.text_lines import detect_encoding
from tfrecords_schema import TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASKS

COLUMN_PATH = "path"
COLUMN_SPLIT = "split"
COLUMN_EXPRESSION = "expression"
COLUMN_SUBJECT = "subject"
COLUMN_START = "start"
COLUMN_END = "end"
COLUMN_VALENCE = "valence"
COLUMN_AROUSAL = "arousal"
COLUMNS = (COLUMN_PATH, COLUMN_SPLIT, COLUMN_EXPRESSION, COLUMN_SUBJECT, COLUMN_START, COLUMN_END, COLUMN_VALENCE,
           COLUMN_AROUSAL)

# ---------------------------------------------------------------------------------------- the manifest


def _seconds(text: str, column: str) -> tuple[float | None, str | None, str]:
    """A seconds cell → ``(value, problem reason, message)``."""
    try:
        value = float(text)
    except ValueError:
        return None, base.DROP_MALFORMED_LINE, f"{column} {text!r} is not a number of seconds"
    if not math.isfinite(value):
        return None, base.DROP_MALFORMED_LINE, f"{column} {text!r} is not a finite number"
    if not 0 <= value <= base.MAX_SEGMENT_SECONDS:
        return None, base.DROP_OUT_OF_RANGE, f"{column} {text!r} is not in [0, {base.MAX_SEGMENT_SECONDS:g}] seconds"
    return value, None, ""


def _valence_arousal(cells: dict[str, str]) -> tuple[tuple[float, float] | None, str | None, str]:
    texts = [cells.get(COLUMN_VALENCE, ""), cells.get(COLUMN_AROUSAL, "")]
    if not any(texts):
        return None, None, ""
    if not all(texts):
        return None, base.DROP_MALFORMED_LINE, "valence and arousal must be given together"
    try:
        pair = tuple(float(t) for t in texts)
    except ValueError:
        return None, base.DROP_MALFORMED_LINE, f"valence/arousal {','.join(texts)!r} are not numbers"
    if not all(-1.0 <= v <= 1.0 for v in pair):  # (NaN fails too.)
        return None, base.DROP_OUT_OF_RANGE, f"valence/arousal {','.join(texts)} not in [-1, 1]"
    return pair, None, ""


def _stem(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    return name.rsplit(".", 1)[0] if "." in name else name


def _norm_root(root: str) -> str:
    return root.rstrip("/") if is_remote(root) else os.path.normpath(os.path.abspath(root))


# A Unicode noncharacter (not in text files) that stands in for NUL while Python 3.10 parses a manifest (_table).
_NUL_STAND_IN = "\ufdd0"


class _MediaIndex:
    """Finds the video a manifest path names: under the media root (listed once) or at an absolute path/URL.

    Args:
        root: Folder relative paths are resolved against.
        eager: List ``root`` now (``--videos`` given: its unused videos are reported); else only when a
            relative path needs it, so a manifest of URLs lists nothing.
    """

    def __init__(self, root: str, eager: bool):
        from apache_beam.io.filesystems import FileSystems

        self._exists = FileSystems.exists
        self._join = FileSystems.join
        self.root = root
        self.listed: dict[str, str] = {}  # NFC relative path → the path as on disk.
        self.used: set[str] = set()
        self.scan = None
        self._by_stem: dict[str, list[str]] = collections.defaultdict(list)
        if eager:
            self._list()

    def _list(self) -> None:
        if self.scan is not None:
            return
        listed, self.scan = list_videos(self.root)
        self.listed = {unicodedata.normalize("NFC", rel): rel for rel in listed}
        for key in sorted(self.listed):
            self._by_stem[key.rsplit(".", 1)[0]].append(key)

    def resolve(self, text: str) -> tuple[str, str | None, str | None, str]:
        """``(media key, full path or None, no_media/ambiguous_media or None, message)``."""
        path = unicodedata.normalize("NFC", text.strip()).replace("\\", "/")
        if is_remote(path) or os.path.isabs(path):
            rel = self._relative(path)
            if rel is None:
                if not path.lower().endswith(VIDEO_EXTENSIONS):
                    return path, None, base.DROP_NO_MEDIA, f"{path} is not a video ({', '.join(VIDEO_EXTENSIONS)})"
                if not self._exists(path):
                    return path, None, base.DROP_NO_MEDIA, f"{path} not found"
                return path, path, None, ""
            path = rel
        key = posixpath.normpath(path)
        if key == ".." or key.startswith("../"):  # Relative to the root, but above it: not in its listing.
            return self._above_root(key)
        self._list()
        if key.lower().endswith(VIDEO_EXTENSIONS):
            candidates = [key] if key in self.listed else []
        else:
            candidates = self._by_stem.get(key, [])
        if len(candidates) == 1:
            self.used.add(candidates[0])
            return candidates[0], self._join(self.root, *self.listed[candidates[0]].split("/")), None, ""
        if candidates:
            self.used.update(candidates)
            return key, None, base.DROP_AMBIGUOUS_MEDIA, f"several videos match {key!r}: {', '.join(candidates)}"
        return key, None, base.DROP_NO_MEDIA, f"no video {key!r} under {self.root} ({', '.join(VIDEO_EXTENSIONS)})"

    def _above_root(self, key: str) -> tuple[str, str | None, str | None, str]:
        """:meth:`resolve` of a relative path that climbs out of the root (``../clips/a.mp4``): the file it names (a
        path that climbs back in is the root's own video)."""
        root = _norm_root(self.root)
        if is_remote(root):
            scheme, rest = root.split("://", 1)
            joined = posixpath.normpath(posixpath.join(rest, key))
            if joined.split("/", 1)[0] != rest.split("/", 1)[0]:  # Above the bucket: another bucket's name.
                return key, None, base.DROP_NO_MEDIA, f"{key} climbs above the bucket of {self.root}"
            full = f"{scheme}://{joined}"
        else:
            full = os.path.normpath(os.path.join(root, key))
        inside = self._relative(full)
        if inside is not None:
            return self.resolve(inside)
        if not full.lower().endswith(VIDEO_EXTENSIONS):
            return full, None, base.DROP_NO_MEDIA, (f"{key} ({full}) is not a video ({', '.join(VIDEO_EXTENSIONS)}): "
                                                    f"a path above {self.root} needs its extension")
        if not self._exists(full):
            return full, None, base.DROP_NO_MEDIA, f"{key} ({full}) not found"
        return full, full, None, ""

    def _relative(self, path: str) -> str | None:
        """``path`` relative to the root when it lies under it, else None."""
        root = _norm_root(self.root)
        full = path.rstrip("/") if is_remote(path) else os.path.normpath(path)
        sep = "/" if is_remote(root) else os.sep
        if full.startswith(root + sep):
            return full[len(root) + 1:].replace(os.sep, "/")
        return None


class ManifestSource(LabelledMediaSource):
    """A CSV manifest: one row per labelled video or per labelled segment (see the module docstring).

    Args:
        manifest: The CSV file (local, ``gs://``, ``s3://``).
        videos: Root of relative video paths (default: the manifest's folder).
        tasks: Tasks to convert among ``expr``, ``va`` (None: every task the columns give).
        class_names: Class order (list or ``"A,B,C"``); None: the sorted names found.
        folds: With ``fold``: assign splits by subject hash (the manifest then has no split column).
        fold: The fold that forms the validation split.

    Raises:
        ValueError: a missing manifest or media folder, bad ``--folds``/``--fold``, bad class names
            or tasks.
    """

    name = "manifest"

    def __init__(self, manifest: str, videos: str | None = None, tasks: Sequence[str] | None = None,
                 class_names: str | Sequence[str] | None = None, folds: int | None = None, fold: int | None = None):
        folds_lib.check_folds(folds, fold)
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        unknown = [t for t in tasks or () if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
        if not is_remote(str(manifest)) and not os.path.isfile(manifest):  # (A URL is checked when it is read.)
            raise ValueError(f"--manifest {manifest!r} does not exist or is not a file")
        if videos is not None and not is_remote(videos) and not os.path.isdir(videos):
            raise ValueError(f"--videos folder {videos!r} does not exist or is not a folder")
        self.manifest = str(manifest)
        self.videos = None if videos is None else str(videos)
        self.tasks = None if tasks is None else list(tasks)
        self.class_names = parse_class_names(class_names)
        self.folds, self.fold = folds, fold

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds ``--manifest``."""
        parser.add_argument("--manifest", default=None,
                            help="--dataset manifest: CSV with columns path,split,expression[,subject,start,end,"
                                 "valence,arousal] (local, gs:// or s3://)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, tasks: Sequence[str] | None) -> ManifestSource:
        """Builds the adapter from ``--manifest`` and the common options."""
        if getattr(args, "manifest", None) is None:
            raise ValueError("--dataset manifest needs --manifest FILE.csv")
        return cls(args.manifest, videos=getattr(args, "videos", None), tasks=tasks,
                   class_names=getattr(args, "class_names", None), folds=getattr(args, "folds", None),
                   fold=getattr(args, "fold", None))

    def discover(self) -> base.Discovery:
        """Reads the manifest and lists the media root; bad rows become dead letters or rejected segments.

        Folders under the media root that cannot be listed are in ``unlisted_folders`` (the conversion
        fails unless ``--allow_partial``; with it, the rows of videos there are ``no_media``).

        Raises:
            ValueError: the manifest cannot be read or parsed as CSV, a requested task has no column, or
                ``--folds`` with a split column.
        """
        dead: list[base.DeadLetter] = []
        table = self._table()
        line, header = next(table, (1, []))
        columns = [h.strip().lower() for h in header]
        problem = self._header_problem(columns)
        if problem:
            dead.append(base.DeadLetter(f"{self.manifest}:line {line}", base.DROP_BAD_HEADER,
                                        f"{problem}; header {','.join(header)[:200]!r}", 0))
            return build_discovery([], class_names=self.class_names, tasks=[], annotation_path=self.manifest,
                                   dead_letters=dead)
        available = [t for t, cols in ((TASK_EXPRESSION, [COLUMN_EXPRESSION]),
                                       (TASK_VALENCE_AROUSAL, [COLUMN_VALENCE, COLUMN_AROUSAL]))
                     if all(c in columns for c in cols)]
        if self.class_names is not None and TASK_EXPRESSION not in available and self.tasks is None:
            # Unknown columns are ignored: a misspelt expression column would silently leave a conversion of the
            # other tasks, every expression label lost and not counted, although --class_names asks for them.
            ignored = [h.strip() for h, c in zip(header, columns) if c not in COLUMNS]
            raise ValueError(f"--class_names names expression classes, but {self.manifest} has no "
                             f"{COLUMN_EXPRESSION!r} column (line {line}: {','.join(header)[:200]!r}"
                             + (f"; ignored as unknown: {ignored}" if ignored else "")
                             + f"): rename the column, or give --tasks {TASK_VALENCE_AROUSAL} without --class_names")
        tasks = select_tasks(available, self.tasks, f"manifest {self.manifest}")
        index = self._media_index()
        rows = []
        for line, cells in table:
            if any(c.strip() for c in cells):
                row = self._row(f"{self.manifest}:line {line}", columns, cells, index)
                if isinstance(row, MediaRow):
                    rows.append(row)
                else:
                    dead.append(row)
        unused = sorted(set(index.listed) - index.used)
        if index.scan is not None:
            dead.extend(index.scan.dead_letters)
        return build_discovery(rows, class_names=self.class_names, tasks=tasks, annotation_path=self.manifest,
                               dead_letters=dead, unused_media=unused,
                               unlisted_folders=index.scan.unlisted_folders if index.scan else (),
                               notes=index.scan.notes if index.scan else ())

    def _table(self) -> Iterator[tuple[int, list[str]]]:
        """``(line number, cells)`` of every CSV record (UTF-8; UTF-16 or UTF-32 with their byte-order mark)."""
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        try:
            with FileSystems.open(self.manifest, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        except OSError as e:  # (BeamIOError too.)
            raise ValueError(f"cannot read --manifest {self.manifest}: {e}") from e
        # A byte-order mark names the encoding (UTF-16 or UTF-32 too), as for annotation files.
        encoding, skip = detect_encoding(data[:4])
        try:
            text = data[skip:].decode(encoding)
        except UnicodeDecodeError as e:  # Replacing the bytes would make up class names and paths that match nothing.
            line = data[skip:].count("\n".encode(encoding), 0, e.start) + 1
            guess = encoding if skip else "cp1252"  # (Without a mark, a Windows export is the usual culprit.)
            raise ValueError(f"--manifest {self.manifest} line {line} is not {encoding.upper()} ({e.reason} at byte "
                             f"{skip + e.start}); save it as UTF-8 (e.g. iconv -f {guess} -t utf-8)") from e
        # Python 3.10's csv refuses a NUL ("line contains NUL"; 3.11 reads it): a stand-in carries it through, so a
        # NUL in a class name or a path is refused by the same checks as on 3.11.
        nul = sys.version_info < (3, 11) and "\0" in text and _NUL_STAND_IN not in text
        if nul:
            text = text.replace("\0", _NUL_STAND_IN)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # An unclosed quote is an error.
        start = 1
        try:
            for cells in reader:
                yield start, [c.replace(_NUL_STAND_IN, "\0") for c in cells] if nul else cells
                start = reader.line_num + 1
        except csv.Error as e:  # E.g. an unclosed quote swallowing the rest of the file into one field.
            raise ValueError(f"{self.manifest}: the CSV cannot be parsed from line {start} on: {e}") from e

    def _header_problem(self, columns: list[str]) -> str:
        """What is wrong with the header ("" when it is usable)."""
        duplicates = sorted({c for c in columns if columns.count(c) > 1 and c in COLUMNS})
        if duplicates:
            return f"column(s) {duplicates} appear twice"
        if COLUMN_PATH not in columns:
            return f"no {COLUMN_PATH!r} column"
        if COLUMN_EXPRESSION not in columns and not {COLUMN_VALENCE, COLUMN_AROUSAL} <= set(columns):
            return f"no label column: {COLUMN_EXPRESSION!r} or {COLUMN_VALENCE!r} and {COLUMN_AROUSAL!r}"
        for a, b in ((COLUMN_START, COLUMN_END), (COLUMN_VALENCE, COLUMN_AROUSAL)):
            if (a in columns) != (b in columns):
                return f"{a!r} and {b!r} columns go together"
        if self.folds is not None and COLUMN_SPLIT in columns:
            raise ValueError(f"--folds assigns the splits, but {self.manifest} has a {COLUMN_SPLIT!r} column: "
                             "drop one of them")
        if self.folds is None and COLUMN_SPLIT not in columns:
            return f"no {COLUMN_SPLIT!r} column (give --folds K --fold I for a dataset without official splits)"
        return ""

    def _media_index(self) -> _MediaIndex:
        """The media root: ``--videos``, else the manifest's folder (listed only if a relative path needs it)."""
        root = self.videos
        if root is None:
            root = self.manifest.rsplit("/", 1)[0] if is_remote(self.manifest) else \
                os.path.dirname(os.path.abspath(self.manifest))
        return _MediaIndex(root, eager=self.videos is not None)

    def _row(self, source: str, columns: list[str], cells: list[str], index: _MediaIndex) -> MediaRow | base.DeadLetter:
        """One CSV record → a row, or a dead letter when none of its frames can be known."""
        if len(cells) != len(columns):
            # Its labels cannot be read (an unquoted comma shifts them), but its path cell usually can: the video is
            # named in the message and is not reported as unused.
            at = columns.index(COLUMN_PATH)
            named = index.resolve(cells[at])[0] if at < len(cells) and cells[at].strip() else ""
            video = f" of video {named!r}" if named else ""
            return base.DeadLetter(source, base.DROP_MALFORMED_LINE,
                                   f"{len(cells)} cells for {len(columns)} columns (a comma inside a cell needs "
                                   f"quotes): the row's labels{video} cannot be read; it counts 0 frames", 0)
        cell = {c: v.strip() for c, v in zip(columns, cells)}
        if not cell[COLUMN_PATH]:
            return base.DeadLetter(source, base.DROP_MALFORMED_LINE, "empty path", 0)
        start = end = None
        if cell.get(COLUMN_START) or cell.get(COLUMN_END):
            if not (cell.get(COLUMN_START) and cell.get(COLUMN_END)):
                return base.DeadLetter(source, base.DROP_MALFORMED_LINE, "start and end must be given together", 0)
            start, reason, message = _seconds(cell[COLUMN_START], COLUMN_START)
            if reason is None:
                end, reason, message = _seconds(cell[COLUMN_END], COLUMN_END)
            if reason is not None:
                return base.DeadLetter(source, reason, message + "; its frames cannot be known", 0)
            if end <= start:
                return base.DeadLetter(source, DROP_BAD_SEGMENT, f"end {end:g} s <= start {start:g} s", 0)
        key, media_path, media_problem, media_message = index.resolve(cell[COLUMN_PATH])
        subject = cell.get(COLUMN_SUBJECT) or _stem(key)
        split_text = cell.get(COLUMN_SPLIT, "")
        split = folds_lib.fold_split(subject, self.folds, self.fold) if self.folds else canonical_split(split_text)
        va, reason, message = _valence_arousal(cell)
        hint = "" if cell.get(COLUMN_SUBJECT) else ("the video's file stem: the row has no subject cell; give each "
                                                    "person's id in a subject column")
        return MediaRow(source=source, media_key=key, media_path=media_path, subject=folds_lib.subject_key(subject),
                        split=split, split_text=split_text, media_problem=media_problem,
                        media_message=media_message, start=start, end=end,
                        expression=cell.get(COLUMN_EXPRESSION) or None, valence_arousal=va, reason=reason,
                        message=message, subject_hint=hint)
