"""What a dataset adapter hands the Beam job: subject tracks with per-frame labels.

Adding a dataset means adding one module under ``beam_jobs/sources/`` with a
:class:`DatasetSource` subclass. Nothing here imports Apache Beam: discovery runs
when the pipeline is built, :meth:`DatasetSource.read_labels` runs inside a DoFn.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
from collections.abc import Sequence

import numpy as np

from beam_jobs.sources.text_lines import iter_lines
from tfrecords_schema import keys

# Reasons a labelled frame is not written (keys of the accounting's `dropped`).
DROP_NO_MEDIA = "no_media"  # the annotation names a video that is not under --videos.
DROP_AMBIGUOUS_MEDIA = "ambiguous_media"  # several media files match the annotation name.
DROP_DUPLICATE_TRACK = "duplicate_track"  # the same subject id is annotated twice for one task.
DROP_BAD_HEADER = "bad_header"  # an annotation file whose header is not one of the known ones.
DROP_MALFORMED_LINE = "malformed_line"  # a line that does not parse; its frame had no other valid label.
DROP_OUT_OF_RANGE = "out_of_range"  # values outside the task's range; the frame had no other valid label.
DROP_UNREADABLE_MEDIA = "unreadable_media"  # zero-byte, corrupt or unsupported video: no frame decodes.
DROP_BEYOND_VIDEO_END = "beyond_video_end"  # annotation lines past the last decodable frame.
DROP_UNDECLARED_FRAMES = "undeclared_frames"  # A note: frames after those the container declares (0 frames).
# A manifest segment may be no longer (longer ones are out_of_range: it bounds the label arrays), and a video without
# a declared frame count is counted by decoding up to this length.
MAX_SEGMENT_SECONDS = 24 * 3600.0
DROP_DECODE_ERROR = "decode_error"  # an exception while converting a track; its remaining frames.
DROP_READ_LABELS_ERROR = "read_labels_error"  # the adapter raised on a track's annotations: its lines are lost.

# Reasons of dead letters found while listing the input folders (they cost no labelled frame by themselves).
SCAN_SYMLINK_LOOP = "symlink_loop"  # a folder link leading back to a folder being listed: not followed.
SCAN_REPEATED_FOLDER = "repeated_folder"  # a second path to a folder already listed: not listed twice.
SCAN_UNLISTED_FOLDER = "unlisted_folder"  # a folder that could not be listed: whatever it holds is missing.

# Longest dead-letter message and source kept (a 10 MB annotation line must not reach errors/ whole).
MAX_MESSAGE_CHARS = 500
MAX_SOURCE_CHARS = 500


@dataclasses.dataclass(frozen=True)
class RejectedAnnotation:
    """An annotation file whose labels are rejected as a whole for one track.

    Attributes:
        task: The task the file labels (from ``tfrecords_schema.TASKS``).
        path: The file.
        reason: A DROP_* reason, e.g. ``DROP_DUPLICATE_TRACK``.
        message: Human-readable detail (for duplicates: every file involved).
    """

    task: str
    path: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class TrackSpec:
    """One subject track to convert: one annotation name in one split.

    A video whose tasks fall in different splits gives one TrackSpec per split, each
    carrying only the annotation files of the tasks that split owns, so no label
    reaches another split.

    Attributes:
        media_id: Annotation name, e.g. ``"10-60-1280x720_right"``.
        split: ``"train"`` or ``"validation"``.
        annotation_files: ``{task: path}`` for the tasks this split owns (tasks from
            ``tfrecords_schema.TASKS``).
        media_path: Full path or URL of the video; None when none was found.
        data_path: Media path relative to the ``--videos`` root ("" when none).
        side: ``"left"`` / ``"right"`` when two subjects share the media, else None.
        crops_dir: Folder of provided crops (``{i:05d}.jpg``) in ``--cropped_aligned`` mode.
        problem: A DROP_* reason that stops the whole track (its labelled frames are
            counted as dropped with that reason), else None.
        action_unit_names: The dataset's action-unit names, in column order of
            ``TrackLabels.action_units`` (so every track of a run has the same
            number of AU columns, even one without an AU file). Empty when the run has
            no AU task.
        rejected_files: Annotation files of this split that are read only to count and
            reject their frames (e.g. the same task and subject annotated twice:
            ``DROP_DUPLICATE_TRACK``). Their labels never reach the output.
        problem_message: Human-readable detail of ``problem`` for the track's dead letter
            (e.g. the candidate files of ``DROP_AMBIGUOUS_MEDIA``); "" for the generic one.
        subject: The person the track shows, when the adapter knows it (a manifest's ``subject`` column); ""
            means the track is its own subject (ABAW: one annotation name per person). See :attr:`subject_id`.
    """

    media_id: str
    split: str
    annotation_files: tuple[tuple[str, str], ...]
    media_path: str | None = None
    data_path: str = ""
    side: str | None = None
    crops_dir: str | None = None
    problem: str | None = None
    action_unit_names: tuple[str, ...] = ()
    rejected_files: tuple[RejectedAnnotation, ...] = ()
    problem_message: str = ""
    subject: str = ""

    @property
    def subject_id(self) -> str:
        """The track's subject: :attr:`subject`, or the annotation name when the adapter knows no other."""
        return self.subject or self.media_id

    @property
    def track_id(self) -> str:
        """Unique id of the track: ``"<split>/<media_id>"``."""
        return f"{self.split}/{self.media_id}"

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks this track has labels for, in annotation-file order."""
        return tuple(task for task, _ in self.annotation_files)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A failure worth a line in ``DIR/errors/``: where, why, and how many frames it cost.

    ``message`` and ``source`` are bounded here, the one place every dead letter passes: a message
    keeps its first :data:`MAX_MESSAGE_CHARS` characters and says how many were cut; a source (file
    and line) keeps both ends, so the line number survives a long path.
    """

    source: str  # file (and line) or track id.
    reason: str  # one of the DROP_* / SCAN_* reasons or another short snake_case reason.
    message: str  # human-readable detail.
    # Labelled frames whose labels of this source it lost. A frame can lose labels to two sources (its VA and its
    # AU line) or keep another task's: the split's accounting counts each dropped frame once, under one reason.
    frames: int = 0

    def __post_init__(self):
        message, source = str(self.message), str(self.source)
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... [{len(message) - MAX_MESSAGE_CHARS} more characters]"
        if len(source) > MAX_SOURCE_CHARS:
            half = MAX_SOURCE_CHARS // 2
            source = f"{source[:half]}...{source[-half:]}"
        object.__setattr__(self, "message", message)  # Frozen: set once, here.
        object.__setattr__(self, "source", source)


@dataclasses.dataclass
class TrackLabels:
    """Per-frame labels of a track; row ``i`` is frame ``i + 1`` (annotation line ``i + 1``).

    Attributes:
        expression: int64 ``[N]``, ``keys.EXPRESSION_INVALID`` where unlabelled.
        valence_arousal: float32 ``[N, 2]``, ``keys.VA_INVALID`` where unlabelled.
        action_units: int64 ``[N, K]``, ``keys.AU_INVALID`` where unlabelled.
        rejected: str ``[N]``: a DROP_* reason for frames whose only labels were
            rejected (malformed or out of range), "" elsewhere. Such frames count as
            labelled and, since nothing valid is left, as dropped with that reason.
        dead_letters: One entry per rejected line or file, naming file and line number.
        open_end: The labels were meant to run to the video's last frame (a manifest row without ``start``/``end``),
            and were sized by the frame count the container declares: a decoder that finds more frames reports
            them (:data:`DROP_UNDECLARED_FRAMES`).
    """

    expression: np.ndarray
    valence_arousal: np.ndarray
    action_units: np.ndarray
    rejected: np.ndarray
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    open_end: bool = False

    @property
    def num_frames(self) -> int:
        """Annotation lines (frames) of the track."""
        return len(self.expression)

    @property
    def valid(self) -> np.ndarray:
        """bool ``[N]``: the frame has at least one valid label."""
        return (
            (self.expression != keys.EXPRESSION_INVALID)
            | (self.valence_arousal != keys.VA_INVALID).all(axis=1)
            | ((self.action_units != keys.AU_INVALID).all(axis=1) & (self.action_units.shape[1] > 0))
        )

    @property
    def labelled(self) -> np.ndarray:
        """bool ``[N]``: the frame counts in the accounting (valid or rejected labels)."""
        return self.valid | (self.rejected != "")


@dataclasses.dataclass(frozen=True)
class SplitDrop:
    """Labelled annotation lines lost before any track exists (found while listing).

    They count in their split's accounting as labelled and as dropped with ``reason``,
    e.g. multi-task rows that name no ``<video>/<frame>.jpg`` and so belong to no track.

    Attributes:
        split: The split the annotation file assigns (``"train"`` or ``"validation"``).
        reason: A DROP_* reason.
        frames: Lines (frames) lost.
    """

    split: str
    reason: str
    frames: int


@dataclasses.dataclass
class Discovery:
    """What an adapter found under the input folders.

    Attributes:
        tracks: Subject tracks, sorted by track id.
        label_names: ``{"expression": [...], "valence_arousal": [...], "action_units": [...]}``.
        tasks: Tasks with at least one annotation file.
        unused_media: Media paths (relative to ``--videos``) that no annotation names.
        dead_letters: Problems found while listing (bad headers, duplicates, ...).
        split_drops: Labelled lines lost while listing, per split (they belong to no track
            but must still reach the split's accounting).
        unlisted_folders: Folders that could not be listed (permissions, a broken link, a
            transient object-store error): what they hold is missing from the run, so the
            conversion fails unless partial input is allowed. Each also has a
            ``SCAN_UNLISTED_FOLDER`` dead letter.
        notes: What the listing left out on purpose, the classes found when none were named, a validation split no
            video reached: one line each (the conversion prints them before any video is read).
    """

    tracks: list[TrackSpec]
    label_names: dict[str, list[str]]
    tasks: list[str]
    unused_media: list[str] = dataclasses.field(default_factory=list)
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    split_drops: list[SplitDrop] = dataclasses.field(default_factory=list)
    unlisted_folders: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


class DatasetSource(abc.ABC):
    """A dataset layout: finds subject tracks and reads their labels.

    Instances are pickled to Beam workers: hold paths and options only.

    The conversion's command line is built from the registered adapters: each may add
    its own options (:meth:`add_arguments`) and builds itself from the parsed options
    (:meth:`from_args`), so a new adapter needs no change to ``beam_jobs/convert.py``.
    """

    name: str = ""

    @classmethod  # noqa: B027 - an optional hook whose default adds nothing.
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds this adapter's own command-line options to the conversion's parser (default: none).

        Option names are shared by every adapter, so an adapter adds only options no other one has;
        give them ``default=None`` and check them in :meth:`from_args`.
        """

    @classmethod
    def from_args(cls, args: argparse.Namespace, tasks: Sequence[str] | None) -> DatasetSource:
        """Builds the adapter from the parsed conversion options.

        The default passes the common options (``--annotations``, ``--videos``, ``--cropped_aligned``)
        and the requested tasks (None: every task found) to the constructor.

        Raises:
            ValueError: an option the adapter needs is missing or wrong (reported as a usage error).
        """
        return cls(annotations=args.annotations, videos=args.videos, tasks=tasks,
                   cropped_aligned=args.cropped_aligned)

    def count_labelled_lines(self, track: TrackSpec) -> tuple[int, list[str]]:
        """Labelled lines of a track counted without parsing them (used when :meth:`read_labels` raised).

        The default counts, per annotation file of the track (rejected files included), the
        non-blank lines after the header, and takes the most over the files: an upper bound of
        the track's labelled frames, since invalid-marker lines count too. Adapters whose files
        hold several subjects override it.

        Returns:
            ``(frames, unreadable)``: the count and the files that could not be read.
        """
        paths = sorted({path for _, path in track.annotation_files} | {r.path for r in track.rejected_files})
        frames, unreadable = 0, []
        for path in paths:
            try:
                frames = max(frames, self._count_file_lines(path, track))
            except (OSError, ValueError):
                unreadable.append(path)
        return frames, unreadable

    def _count_file_lines(self, path: str, track: TrackSpec) -> int:
        """Non-blank lines after the header of one annotation file (see :meth:`count_labelled_lines`)."""
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            lines = iter_lines(f)  # Any line end and BOM-marked encoding: a CR-only file is not one line.
            next(lines, None)  # The header.
            return sum(bool(line.strip()) for line in lines)

    @abc.abstractmethod
    def discover(self) -> Discovery:
        """Lists the tracks (runs once, when the pipeline is built)."""

    @abc.abstractmethod
    def read_labels(self, track: TrackSpec) -> TrackLabels:
        """Parses the annotation files of one track (runs on a worker).

        Bad lines are never raised: they are marked in ``rejected`` and reported in
        ``dead_letters``. A file that cannot be used at all (bad header) makes every
        frame it labels rejected with DROP_BAD_HEADER unless another task labels it.
        """
