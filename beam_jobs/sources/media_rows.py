"""Rows of labelled video → subject tracks with per-frame labels: shared by the manifest and folder adapters.

An adapter turns its input (a CSV manifest, a folder tree) into :class:`MediaRow` objects: a video,
a split, a subject, optionally a time segment, a class name and valence/arousal, or the reason the
row is rejected. :func:`build_discovery` checks the rows together (class names, split safety per
subject and per video) and groups them into one :class:`LabelledTrack` per (split, video) that
carries every row as a :class:`Segment`. On the worker, :class:`LabelledMediaSource.read_labels`
probes the video's frame rate and frame count and lays the segments on its frames
(:func:`beam_jobs.sources.segments.build_labels`).

Accounting units are frames. A row that labels the whole video labels every frame the container
reports; a segment ``[start, end)`` seconds labels frame ``i`` (1-based) when the frame is shown in it,
``start <= t_i < end``, with ``t_i`` the frame's presentation time (one decoding pass over a video labelled by
time segments reads them, :func:`beam_jobs.media.video.probe_video`: the frames of a variable-frame-rate video
are not ``(i - 1) / fps`` apart), cut at the video's end (time past the end labels no frame: a
``beyond_video_end`` dead letter with 0 frames). The times are those the conversion stores with each frame. Rejected rows travel with their video as rejected
segments, so their frames are counted (and dropped with their reason) on the worker. The rows of a
video that is missing or does not open count 0 frames, since its frames cannot be known, and still
give a dead letter. Tracks whose split the conversion cannot write are accounted under the split
``test`` (until the schema has one) or :data:`UNASSIGNED_SPLIT`.

Listing goes through ``FolderScan`` (``tf.io.gfile``); no Apache Beam import at module level.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import posixpath
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from beam_jobs.media import video as video_lib
from beam_jobs.media.video import DEFAULT_FPS, VIDEO_EXTENSIONS, VideoError, VideoReader, local_copy
from beam_jobs.sources import base
from beam_jobs.sources.folder_scan import FolderScan, file_identity
from beam_jobs.sources.segments import Segment, build_labels
from tfrecords_schema import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_VALENCE_AROUSAL,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VALIDATION,
    SPLITS,
    TASK_EXPRESSION,
    TASK_VALENCE_AROUSAL,
    keys,
)
from tfrecords_schema.tasks import LabelNameError, label_name_problem

# Reasons a labelled frame is not written, beyond those of ``base``.
DROP_UNKNOWN_CLASS = "unknown_class"  # a class name not in --class_names (or no class folder).
DROP_BAD_SEGMENT = "bad_segment"  # end <= start.
DROP_SPLIT_CONFLICT = "split_conflict"  # a subject or a video in two splits: all its rows.
DROP_UNKNOWN_SPLIT = "unknown_split"  # a split value or folder that is not a split.
DROP_NO_SUBJECT = "no_subject"  # the folder adapter's --subject_regex does not match the path.
# A note (0 frames): a video named under two names in one split; its rows join those of the first name.
DROP_DUPLICATE_MEDIA = "duplicate_media"

UNASSIGNED_SPLIT = "unassigned"  # accounting entry of rows without a valid split.
SPLIT_ALIASES = {
    "train": SPLIT_TRAIN, "training": SPLIT_TRAIN, "train_set": SPLIT_TRAIN, "training_set": SPLIT_TRAIN,
    "validation": SPLIT_VALIDATION, "val": SPLIT_VALIDATION, "valid": SPLIT_VALIDATION,
    "validation_set": SPLIT_VALIDATION, "test": SPLIT_TEST, "testing": SPLIT_TEST, "test_set": SPLIT_TEST,
}

VALENCE_AROUSAL_NAMES = ("valence", "arousal")  # label_names of the valence/arousal head.

# Names taken as files without asking the file system (one call less per entry on gs://).
_FILE_SUFFIXES = VIDEO_EXTENSIONS + (".csv", ".txt", ".json", ".jpg", ".jpeg", ".png")


def canonical_split(text: str) -> str | None:
    """``train``/``validation``/``test`` for a split name or alias (any case), else None."""
    return SPLIT_ALIASES.get(str(text).strip().lower())


def class_key(name: str) -> str:
    """What two spellings of one class share: the Unicode NFC form (a name typed on macOS is NFD, elsewhere NFC: the
    same letters), letter case ignored."""
    return unicodedata.normalize("NFC", name).casefold()


def parse_class_names(value: str | Sequence[str] | None) -> list[str] | None:
    """``"A,B,C"`` or a list → the class names in order; None stays None.

    Raises:
        ValueError: an empty list, an empty name, or two names equal up to letter case.
    """
    if value is None:
        return None
    names = [unicodedata.normalize("NFC", n.strip()) for n in (value.split(",") if isinstance(value, str) else value)]
    if not names or "" in names:
        raise ValueError(f"--class_names needs non-empty comma-separated names, got {value!r}")
    for name in names:
        problem = label_name_problem(name)
        if problem:
            raise ValueError(f"--class_names {name!r}: {problem}")
    folded = [class_key(n) for n in names]
    if len(set(folded)) != len(folded):
        raise ValueError(f"--class_names repeats a name (letter case is ignored): {names}")
    return names


def writable_split(split: str | None) -> str:
    """The split a track is accounted under: a schema split or :data:`UNASSIGNED_SPLIT`."""
    return split if split in SPLITS else UNASSIGNED_SPLIT


@dataclasses.dataclass(frozen=True)
class LabelledTrack(base.TrackSpec):
    """A :class:`~beam_jobs.sources.base.TrackSpec` that carries its rows as segments."""

    segments: tuple[Segment, ...] = ()


@dataclasses.dataclass
class MediaRow:
    """One labelled row before class indexing (what the manifest or the folder tree says).

    Attributes:
        source: ``"<file>:line N"`` or the video path.
        media_key: Unique id of the video (path relative to the media root, or the URL).
        media_path: Full path of the video; None when it was not found.
        media_problem: ``no_media`` / ``ambiguous_media`` with ``media_message``, else None.
        split: ``train``/``validation``/``test``, or None when the row names no valid split.
        split_text: The split as written (for messages).
        subject: Subject id.
        start: Segment start in seconds (None: the whole video).
        end: Segment end in seconds.
        expression: Class name as written, or None.
        valence_arousal: ``(valence, arousal)`` or None.
        reason: A DROP_* reason found while parsing, with ``message``.
        subject_hint: Where ``subject`` came from when the data does not say it (e.g. "the file's stem: the row has
            no subject cell"), for the message of a subject found in two splits; "" when the data names it.
    """

    source: str
    media_key: str
    media_path: str | None
    subject: str
    split: str | None
    split_text: str = ""
    media_problem: str | None = None
    media_message: str = ""
    start: float | None = None
    end: float | None = None
    expression: str | None = None
    valence_arousal: tuple[float, float] | None = None
    reason: str | None = None
    message: str = ""
    subject_hint: str = ""


# ---------------------------------------------------------------------------------------- media


def list_videos(root: str) -> tuple[list[str], FolderScan]:
    """Every video under ``root`` (any depth, :data:`VIDEO_EXTENSIONS` in any letter case).

    Listing goes through :class:`~beam_jobs.sources.folder_scan.FolderScan`: link loops and repeated
    folders are not followed twice, and folders that cannot be listed (``root`` included) are in
    ``scan.unlisted_folders`` with a dead letter each (the conversion then fails unless
    ``--allow_partial``).

    Returns:
        ``(relative paths with '/' separators, as on disk, sorted; the finished scan)``.
    """
    scan = FolderScan(_FILE_SUFFIXES)
    found = []
    stack = [("", root, ())]
    while stack:
        relative, folder, parents = stack.pop()
        listing = scan.list(folder, parents)
        if listing is None:
            continue
        for sub in reversed(listing.subdirs):
            stack.append((posixpath.join(relative, _basename(sub)), sub, listing.chain))
        found.extend(posixpath.join(relative, _basename(f)) for f in listing.files
                     if f.lower().endswith(VIDEO_EXTENSIONS))
    return sorted(found), scan


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/").replace("\\", "/"))


def presentation_times(path: str) -> tuple[float, int | None, str, np.ndarray | None]:
    """Frame rate, decodable frames and when each is shown (seconds), from one decoding pass over the video.

    Returns:
        ``(fps, frames, "", times_s)``, or ``(DEFAULT_FPS, None, why, None)`` when the video cannot be read.
    """
    try:
        probe = video_lib.probe_video(path)
    except (VideoError, OSError) as e:
        return DEFAULT_FPS, None, str(e), None
    return probe.fps, probe.frames, "", probe.timestamps_us / 1e6


def container_frames(path: str) -> tuple[float, int | None, str]:
    """Frame rate and frame count of a video (one download for a remote one).

    The frame rate is :class:`~beam_jobs.media.video.VideoReader`'s, so segment times map to the same
    frames the conversion decodes. The count is the container's where it stores one
    (:func:`~beam_jobs.media.video.stores_frame_count`: MP4/MOV, AVI); otherwise (Matroska, WebM, MPEG streams), or
    when it is absurd, the frames are counted by decoding them without colour conversion, as the conversion will
    (a corrupt frame counts), up to :data:`~beam_jobs.sources.base.MAX_SEGMENT_SECONDS`. A count is absurd past
    that length, or past the file's size in bytes: every frame takes at least a byte of the file, and the labels of
    the track are laid out per frame, so a header that lies (80 million frames in a 50 KB file) would otherwise set
    the worker's memory and the accounting's frames.

    Returns:
        ``(fps, frames, "")``, or ``(DEFAULT_FPS, None, why)`` when the video cannot be read.
    """
    import cv2

    try:
        with local_copy(path) as local, VideoReader(local) as video:
            fps, count = video.fps, video.declared_frames if video.counts_frames else None
            limit = int(fps * base.MAX_SEGMENT_SECONDS)
            if count is not None and count <= min(limit, os.path.getsize(local)):
                return fps, count, ""
            frames = 0
            while frames < limit and video.next_frame(decode=False).status is not video_lib.FrameStatus.END:
                frames += 1
    except (VideoError, OSError, cv2.error) as e:
        return DEFAULT_FPS, None, str(e)
    return (fps, frames, "") if frames else (DEFAULT_FPS, None, f"{path}: no frame decodes")


class LabelledMediaSource(base.DatasetSource):
    """Worker side shared by the manifest and folder adapters: tracks carry their rows as segments.

    Subclasses implement :meth:`discover` (rows → :func:`build_discovery`).
    """

    def read_labels(self, track: base.TrackSpec) -> base.TrackLabels:
        """Probes the video (frame rate and count; presentation times for time segments), lays the segments on it."""
        segments = getattr(track, "segments", ())
        if track.media_path is None:  # (Discovery reported the missing video and its rows' 0 frames.)
            return build_labels(segments, DEFAULT_FPS, None, unknown_reason=None)
        if any(s.start is not None for s in segments):
            fps, frames, why, times_s = presentation_times(track.media_path)
            return build_labels(segments, fps, frames, where=track.media_path, why_unknown=why, times_s=times_s)
        fps, frames, why = container_frames(track.media_path)
        return build_labels(segments, fps, frames, where=track.media_path, why_unknown=why)

    def count_labelled_lines(self, track: base.TrackSpec) -> tuple[int, list[str]]:
        """Used only when :meth:`read_labels` raised: without the video nothing can be counted (0 frames)."""
        return 0, [track.media_path] if track.media_path else []


# ---------------------------------------------------------------------------------------- discovery


def resolve_class_names(rows: Iterable[MediaRow], class_names: Sequence[str] | None) -> list[str]:
    """``class_names`` as given, else the names of ``rows``, sorted by :func:`class_key`, each spelt as first found (in
    NFC)."""
    if class_names is not None:
        return list(class_names)
    found: dict[str, str] = {}
    for row in rows:
        if row.expression:
            found.setdefault(class_key(row.expression), unicodedata.normalize("NFC", row.expression))
    return [found[k] for k in sorted(found)]


def _split_conflicts(rows: list[MediaRow]) -> tuple[dict[str, set[str]], dict[str, str], dict[str, str]]:
    """Splits of each subject in more than one split, the problem of each video in more than one split, and the
    first name of each video named otherwise too within one split (``{other name: first name}``).

    A video is its file: paths to one file (a symbolic link, a hard link) are one video, so its pixels cannot reach
    two splits under two names, nor one split twice (as two subjects, which the selection split could part).
    """
    identities: dict[str, object] = {}
    by_subject, by_media, keys_of = (collections.defaultdict(set), collections.defaultdict(set),
                                     collections.defaultdict(set))
    for row in rows:
        if row.media_key not in identities:
            identities[row.media_key] = file_identity(row.media_path) if row.media_path else row.media_key
        if row.split is not None:
            identity = identities[row.media_key]
            by_subject[row.subject].add(row.split)
            by_media[identity].add(row.split)
            keys_of[identity].add(row.media_key)
    media_problems, first_name = {}, {}
    for identity, splits in by_media.items():
        if len(splits) > 1:
            for key in keys_of[identity]:
                others = sorted(keys_of[identity] - {key})
                also = f" (the same file as {others})" if others else ""
                media_problems[key] = f"video {key!r}{also} is in splits {sorted(splits)}; all its rows are rejected"
        elif len(keys_of[identity]) > 1:
            first, *others = sorted(keys_of[identity])
            first_name.update((key, first) for key in others)
    return {k: v for k, v in by_subject.items() if len(v) > 1}, media_problems, first_name


def _row_problem(row: MediaRow, names: list[str], class_index: dict[str, int], subject_splits, media_problems,
                 use_expression: bool) -> tuple[str | None, str]:
    """The first reason a row is rejected for, with its message (None: the row is good)."""
    if row.reason is not None:
        return row.reason, row.message
    if row.split is None:
        return DROP_UNKNOWN_SPLIT, f"split {row.split_text!r} is not one of {sorted(SPLIT_ALIASES)}"
    if row.subject in subject_splits:
        hint = f" (the subject is {row.subject_hint})" if row.subject_hint else ""
        return DROP_SPLIT_CONFLICT, (f"subject {row.subject!r}{hint} is in splits "
                                     f"{sorted(subject_splits[row.subject])}; all its rows are rejected")
    if row.media_key in media_problems:
        return DROP_SPLIT_CONFLICT, media_problems[row.media_key]
    if row.media_problem is not None:  # Its track says why (one dead letter per row): the class is not judged.
        return None, ""
    if use_expression and row.expression and class_key(row.expression) not in class_index:
        return DROP_UNKNOWN_CLASS, f"class {row.expression!r} is not one of {names}"
    if (not use_expression or not row.expression) and row.valence_arousal is None:
        return base.DROP_MALFORMED_LINE, "the row has no label for the converted tasks"
    return None, ""


def build_discovery(rows: list[MediaRow], *, class_names: Sequence[str] | None, tasks: Sequence[str],
                    annotation_path: str, dead_letters: list[base.DeadLetter],
                    unused_media: Sequence[str] = (), unlisted_folders: Sequence[str] = (),
                    notes: Sequence[str] = ()) -> base.Discovery:
    """Rows → one :class:`LabelledTrack` per (split, video) with every row as a segment.

    Args:
        rows: Parsed rows (problems found while parsing already set).
        class_names: The class order, or None for the sorted names found.
        tasks: Tasks to convert (``expr`` and/or ``va``).
        annotation_path: The manifest or the folder root (recorded as the tracks' annotation file).
        dead_letters: Problems found while listing and parsing (rows whose frames cannot be counted).
        unused_media: Videos under the media root that no row names.
        unlisted_folders: Folders that could not be listed (their dead letters are in ``dead_letters``).
        notes: What the listing left out on purpose (:attr:`FolderScan.notes`); the classes found without
            ``class_names`` and a validation split no video reached are added to them.
    """
    use_expression = TASK_EXPRESSION in tasks
    subject_splits, media_problems, first_name = _split_conflicts(rows)
    # Found classes come from rows of a split whose video is there: a class named only on rows of a mistyped path
    # would be a class without a frame, moving every index after it. (Rows rejected for their subject or cells keep
    # their class: the data declares it, as a class folder does.)
    declaring = [row for row in rows if row.split is not None and row.media_problem is None]
    names = resolve_class_names(declaring, class_names) if use_expression else []
    naming = declaring if use_expression and class_names is None else []  # the rows the found classes come from
    for row in naming:
        problem = row.expression and label_name_problem(row.expression)
        if problem:  # (Refused before any video is read, naming the row: convert exits 2.)
            raise LabelNameError(f"{row.source}: expression label {row.expression!r}: {problem}; rename that class "
                                 "(or pass --class_names)")
    class_index = {class_key(n): i for i, n in enumerate(names)}
    out_tasks = tuple(t for t in tasks if t != TASK_EXPRESSION or names)
    grouped: dict[tuple[str, str], list[tuple[MediaRow, Segment]]] = collections.defaultdict(list)
    noted: set[str] = set()
    for row in rows:
        reason, message = _row_problem(row, names, class_index, subject_splits, media_problems, use_expression)
        expression = keys.EXPRESSION_INVALID
        if use_expression and row.expression and class_key(row.expression) in class_index:
            expression = class_index[class_key(row.expression)]
        va = row.valence_arousal if TASK_VALENCE_AROUSAL in tasks else None
        segment = Segment(row.start, row.end, expression, va, reason, message, row.source)
        media_key = first_name.get(row.media_key, row.media_key)
        if media_key != row.media_key and row.media_key not in noted:
            noted.add(row.media_key)
            dead_letters.append(base.DeadLetter(row.source, DROP_DUPLICATE_MEDIA, (
                f"video {row.media_key!r} is the same file as {media_key!r}, in the same split: its rows are converted "
                f"as rows of {media_key!r} (one video, one subject)"), 0))
        grouped[(writable_split(row.split), media_key)].append((row, segment))
    tracks = []
    for (split, media_key), members in sorted(grouped.items()):
        # The track is the video under its first name (the row of another name of it may come first).
        first = next((row for row, _ in members if row.media_key == media_key), members[0][0])
        segments = tuple(s for _, s in members)
        problem = first.media_problem
        if problem is None and all(s.reason is not None for s in segments):
            problem = segments[0].reason  # Nothing to write: its frames are counted, no pixel decoded.
        if first.media_problem is not None:  # A dead letter per row, each naming its line (docs/datasets.md).
            dead_letters.extend(base.DeadLetter(
                row.source, first.media_problem, f"{first.media_message}; no frame of it is counted (its frames "
                "cannot be known)" + (f"; {len(members)} rows name it" if len(members) > 1 else ""), 0)
                for row, _ in members)
        tracks.append(LabelledTrack(
            media_id=media_key, split=split, annotation_files=tuple((t, annotation_path) for t in out_tasks),
            media_path=first.media_path, data_path=media_key, problem=problem, segments=segments,
            subject=first.subject or ""))
    notes = [*notes, *_discovery_notes(naming, names, tracks)]
    label_names = {HEAD_EXPRESSION: names, HEAD_VALENCE_AROUSAL: [], HEAD_ACTION_UNITS: []}
    if TASK_VALENCE_AROUSAL in out_tasks:
        label_names[HEAD_VALENCE_AROUSAL] = list(VALENCE_AROUSAL_NAMES)
    return base.Discovery(tracks=tracks, label_names=label_names, tasks=list(out_tasks),
                          unused_media=sorted(unused_media), dead_letters=dead_letters,
                          unlisted_folders=list(unlisted_folders), notes=list(notes))


def _discovery_notes(found_from: list[MediaRow], names: list[str], tracks: list[LabelledTrack]) -> list[str]:
    """What a user should see before the videos are read: the classes found when ``--class_names`` was not given
    (``found_from``: the rows they come from), and a validation split that no video reached."""
    notes = []
    if found_from and names:
        rows = collections.Counter(class_key(row.expression) for row in found_from if row.expression)
        listed = ", ".join(f"{name} {rows[class_key(name)]}" for name in names)
        notes.append(f"classes found, in label order, with the rows (manifest lines, or videos of a class folder) "
                     f"naming each: {listed}; "
                     "a misspelt name is a class of its own: give --class_names to fix the order and refuse other "
                     "names")
    splits = {track.split for track in tracks if track.problem is None}
    if SPLIT_TRAIN in splits and SPLIT_VALIDATION not in splits:
        notes.append(f"no video to convert is in the {SPLIT_VALIDATION} split, which training reports on by "
                     "default (with --folds K --fold I: that fold holds no subject; use fewer folds, or train with "
                     "--eval_split naming another split)")
    return notes


def select_tasks(available: Sequence[str], tasks: Sequence[str] | None, where: str) -> list[str]:
    """The requested tasks (None: all available) that ``where`` can give.

    Raises:
        ValueError: a requested task the layout has no labels for.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        return list(available)
    missing = [t for t in tasks if t not in available]
    if missing:
        raise ValueError(f"{where} has no labels for task(s) {missing}; it has: {list(available)}")
    return [t for t in available if t in tasks]
