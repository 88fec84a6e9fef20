"""Finding ABAW tracks: annotation files, the dataset's label names, media and crops, one track per split.

Runs once, when the pipeline is built. Every folder is listed through a :class:`FolderScan`, so link
loops and unlistable folders are reported (dead letters, ``Discovery.unlisted_folders``) instead of
multiplying files, hanging or silently losing frames. Rules: ``docs/abaw.md``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import posixpath

from beam_jobs.media.video import VIDEO_EXTENSIONS
from beam_jobs.sources import base
from beam_jobs.sources.abaw_format import (
    ACTION_UNITS_12,
    ANNOTATION_SUFFIX,
    EXPRESSION_NAMES_7,
    EXPRESSION_NAMES_8,
    MTL_FOLDER,
    MTL_FRAME_MARGIN,
    SPLIT_FOLDERS,
    TASK_FOLDERS,
    VALENCE_AROUSAL_NAMES,
    au_sort_key,
    basename,
    content_lines,
    first_line,
    is_mtl_file,
    mtl_frame,
    mtl_frame_limit,
    mtl_split,
    nfc,
    parse_header,
    read_lines,
    stem,
)
from beam_jobs.sources.abaw_labels import mtl_au_names
from beam_jobs.sources.folder_scan import FolderScan, Listing, file_identity
from tfrecords_schema import HEAD_OF_TASK, HEADS, TASK_ACTION_UNITS, TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASKS

# Names with these suffixes are taken as files without asking the file system (saves a call per crop
# image on gs:// when --annotations is a parent of the crops); a local video-like name is still checked (FolderScan).
FILE_SUFFIXES = (ANNOTATION_SUFFIX, ".jpg", ".jpeg", ".png", ".json", ".csv", ".zip", ".tar", ".gz") + VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class AnnotationFile:
    """One task's annotation of one subject (a per-task file, or one subject of a multi-task file)."""

    task: str
    split: str
    media_id: str
    path: str


@dataclasses.dataclass
class Findings:
    """Problems met while listing, gathered for the :class:`base.Discovery`."""

    dead_letters: list[base.DeadLetter] = dataclasses.field(default_factory=list)
    split_drops: list[base.SplitDrop] = dataclasses.field(default_factory=list)
    unlisted_folders: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add_scan(self, scan: FolderScan) -> None:
        """Takes over a finished scan's dead letters, unlisted folders and notes."""
        self.dead_letters.extend(scan.dead_letters)
        self.notes.extend(scan.notes)
        self.unlisted_folders.extend(p for p in scan.unlisted_folders if p not in self.unlisted_folders)


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as ``(first, last)``."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def _norm_dir(folder: str) -> str:
    if "://" in folder:
        return folder.rstrip("/")
    return os.path.normcase(os.path.abspath(folder))


# ---------------------------------------------------------------- annotation files


def find_annotation_files(annotations: str, tasks: tuple[str, ...] | None, skip: list[str],
                          findings: Findings) -> tuple[list[AnnotationFile], list[str]]:
    """Every annotation file of the selected tasks under ``annotations``, and the tasks seen at all.

    Args:
        annotations: The root (the annotation folders may be anywhere below).
        tasks: Tasks to keep; None = all.
        skip: Folders not to enter (``--videos``, ``--cropped_aligned``).
        findings: Receives loops, unlisted folders and multi-task rows that belong to no track.
    """
    skip_dirs = {_norm_dir(d) for d in skip}
    scan = FolderScan(FILE_SUFFIXES)
    files: list[AnnotationFile] = []
    seen_tasks: set[str] = set()
    stack = [(annotations, ())]
    while stack:
        folder, parents = stack.pop()
        if folder != annotations and _norm_dir(folder) in skip_dirs:
            continue
        listing = scan.list(folder, parents)
        if listing is None:
            continue
        name = basename(folder).lower()
        if name in TASK_FOLDERS:
            task = TASK_FOLDERS[name]
            seen_tasks.add(task)
            if tasks is None or task in tasks:
                files.extend(_task_folder_files(scan, listing, task))
        elif name == MTL_FOLDER:
            files.extend(_mtl_files(scan, listing, tasks, seen_tasks, findings))
        else:
            stack.extend((sub, listing.chain) for sub in reversed(listing.subdirs))
    findings.add_scan(scan)
    files.sort(key=lambda f: (f.split, f.media_id, TASKS.index(f.task), f.path))
    return files, [t for t in TASKS if t in seen_tasks]


def _task_folder_files(scan: FolderScan, listing: Listing, task: str) -> list[AnnotationFile]:
    found = []
    for split_dir in listing.subdirs:
        split = SPLIT_FOLDERS.get(basename(split_dir).lower())
        if split is None:
            continue  # Test_Set and the like: not listed at all.
        split_listing = scan.list(split_dir, listing.chain)
        for path in split_listing.files if split_listing else ():
            name = basename(path)
            if name.lower().endswith(ANNOTATION_SUFFIX):
                found.append(AnnotationFile(task, split, nfc(name[:-len(ANNOTATION_SUFFIX)]), path))
    return found


def _mtl_files(scan: FolderScan, listing: Listing, tasks: tuple[str, ...] | None, seen_tasks: set[str],
               findings: Findings) -> list[AnnotationFile]:
    """Subjects of each multi-task file (the selected tasks of each)."""
    found = []
    wanted = [t for t in TASKS if tasks is None or t in tasks]
    for path in listing.files:
        split = mtl_split(basename(path))
        if split is None:
            continue
        seen_tasks.update(TASKS)
        try:
            subjects = _mtl_subjects(path, split, findings)
        except OSError as e:
            scan.unlisted(path, f"the multi-task file cannot be read ({e}), so its subjects are unknown")
            continue
        for media_id in sorted(subjects):
            found.extend(AnnotationFile(task, split, media_id, path) for task in wanted)
    return found


def _mtl_subjects(path: str, split: str, findings: Findings) -> set[str]:
    """Subjects a multi-task file lists; rows that belong to no track are dead letters and split drops.

    Such rows: no ``<video>/<frame>.jpg`` image name, or a frame number beyond
    :func:`mtl_frame_limit` of the file's rows (read twice: once to count the rows).

    Raises:
        OSError: the file cannot be read.
    """
    rows = sum(1 for _ in content_lines(read_lines(path))) - 1
    limit = mtl_frame_limit(max(rows, 0))
    subjects: set[str] = set()
    nameless: list[int] = []
    too_far: list[int] = []
    lines = content_lines(read_lines(path))
    next(lines, None)
    for number, text in lines:
        image = text.split(",", 1)[0].strip()
        media_id = posixpath.dirname(image)
        frame = mtl_frame(image, media_id) if media_id else None
        if frame is None:
            nameless.append(number)
        elif frame > limit:
            too_far.append(number)
        else:
            subjects.add(nfc(media_id))
    for bad, what in ((nameless, "without a '<video>/<frame>.jpg' image name"),
                      (too_far, f"naming a frame beyond {limit} (twice the file's {rows} rows + {MTL_FRAME_MARGIN})")):
        for first, last in _ranges(bad):
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            findings.dead_letters.append(base.DeadLetter(
                source=f"{path}:{where}", reason=base.DROP_MALFORMED_LINE,
                message=f"multi-task row(s) {what} ({where} of the file)", frames=last - first + 1))
    if nameless or too_far:
        findings.split_drops.append(base.SplitDrop(split, base.DROP_MALFORMED_LINE, len(nameless) + len(too_far)))
    return subjects


# ---------------------------------------------------------------- label names


def _file_label_names(f: AnnotationFile, mtl_aus: dict[str, tuple[str, ...] | None]) -> tuple[str, ...] | None:
    """Expression or AU names one file declares (None: none usable; an unreadable file declares none)."""
    try:
        if not is_mtl_file(f.path):
            return parse_header(f.task, first_line(f.path))
        if f.task == TASK_EXPRESSION:
            return EXPRESSION_NAMES_8
        if f.path not in mtl_aus:
            mtl_aus[f.path] = mtl_au_names(f.path)
        return mtl_aus[f.path]
    except OSError:
        return None  # Reading its labels fails later, and is counted there.


def label_names(files: list[AnnotationFile], tasks: list[str]) -> dict[str, list[str]]:
    """The dataset's ``label_names`` block: 7 or 8 expression classes, the AU set most files use.

    Args:
        files: The annotation files found.
        tasks: Tasks with at least one file.
    """
    expression = set()
    au_sets = collections.Counter()
    mtl_aus: dict[str, tuple[str, ...] | None] = {}
    for f in files:
        if f.task == TASK_VALENCE_AROUSAL:
            continue
        names = _file_label_names(f, mtl_aus)
        if names is None:
            continue
        if f.task == TASK_EXPRESSION:
            expression.add(names)
        else:
            au_sets[tuple(sorted(names, key=au_sort_key))] += 1
    found = {head: [] for head in HEADS}
    if TASK_EXPRESSION in tasks:
        found[HEAD_OF_TASK[TASK_EXPRESSION]] = list(
            EXPRESSION_NAMES_7 if expression == {EXPRESSION_NAMES_7} else EXPRESSION_NAMES_8)
    if TASK_VALENCE_AROUSAL in tasks:
        found[HEAD_OF_TASK[TASK_VALENCE_AROUSAL]] = list(VALENCE_AROUSAL_NAMES)
    if TASK_ACTION_UNITS in tasks:
        if au_sets:  # Most files; ties: the larger set, then the lower AU numbers.
            best = max(au_sets.items(), key=lambda item: (item[1], len(item[0]), [-au_sort_key(n) for n in item[0]]))
            found[HEAD_OF_TASK[TASK_ACTION_UNITS]] = list(best[0])
        else:
            found[HEAD_OF_TASK[TASK_ACTION_UNITS]] = list(ACTION_UNITS_12)
    return found


# ---------------------------------------------------------------- media and crops


def media_index(videos: str | None, findings: Findings) -> dict[str, list[str]]:
    """Stem (NFC) → media paths relative to ``videos``, sorted; every FFmpeg container, any letter case.

    A file reached under one stem by two paths (a link, a hard link) counts once: the first path.
    """
    if videos is None:
        return {}
    scan = FolderScan(FILE_SUFFIXES)
    found: dict[str, list[tuple[str, object]]] = collections.defaultdict(list)
    stack = [("", videos, ())]
    while stack:
        relative, folder, parents = stack.pop()
        listing = scan.list(folder, parents)
        if listing is None:
            continue
        stack.extend((posixpath.join(relative, basename(sub)), sub, listing.chain) for sub in reversed(listing.subdirs))
        for path in listing.files:
            name = basename(path)
            if name.lower().endswith(VIDEO_EXTENSIONS):
                found[nfc(stem(name))].append((posixpath.join(relative, name), file_identity(path)))
    findings.add_scan(scan)
    index = {}
    for key, entries in found.items():
        paths, identities = [], set()
        for relative, identity in sorted(entries, key=lambda e: e[0]):
            if identity not in identities:
                identities.add(identity)
                paths.append(relative)
        index[key] = paths
    return index


def crop_folders(cropped_aligned: str | None, findings: Findings) -> dict[str, str]:
    """Annotation name (NFC) → its folder of provided crops."""
    if cropped_aligned is None:
        return {}
    scan = FolderScan(FILE_SUFFIXES)
    listing = scan.list(cropped_aligned)
    findings.add_scan(scan)
    return {nfc(basename(d)): d for d in listing.subdirs} if listing else {}


def match_media(media_id: str, media: dict[str, list[str]]) -> tuple[list[str], str | None]:
    """Media candidates of an annotation name and the side (``<name>_left``/``_right`` share ``<name>``)."""
    if media.get(media_id):
        return media[media_id], None
    for side in ("left", "right"):
        suffix = "_" + side
        if media_id.endswith(suffix) and media.get(media_id[: -len(suffix)]):
            return media[media_id[: -len(suffix)]], side
    return [], None


# ---------------------------------------------------------------- tracks


def _duplicate_message(group: list[AnnotationFile]) -> str:
    f = group[0]
    files = "; ".join(f"{g.path} ({g.split})" for g in sorted(group, key=lambda g: (g.split, g.path)))
    return (f"{f.task} annotation of {f.media_id!r} found in {len(group)} files: {files}. "
            "All are rejected: a duplicate subject id never silently picks one.")


def _ambiguous_message(media_id: str, candidates: list[str], outcome: str) -> str:
    return f"several media files match {media_id!r}: {', '.join(candidates)}; {outcome}"


@dataclasses.dataclass
class TrackBuilder:
    """Turns annotation files into one :class:`base.TrackSpec` per (annotation name, split).

    Args:
        files: Every annotation file found.
        media: :func:`media_index`.
        crops: :func:`crop_folders`.
        au_names: The dataset's AU names.
        videos: The ``--videos`` root (media paths are joined to it).
        findings: Receives the ambiguous-media dead letters of tracks that use crops instead.
    """

    files: list[AnnotationFile]
    media: dict[str, list[str]]
    crops: dict[str, str]
    au_names: tuple[str, ...]
    videos: str | None
    findings: Findings

    def build(self) -> tuple[list[base.TrackSpec], list[str]]:
        """``(tracks sorted by id, media paths no track uses)``."""
        by_subject = collections.defaultdict(list)
        for f in self.files:
            by_subject[(f.task, f.media_id)].append(f)
        rejected = {f for group in by_subject.values() if len(group) > 1 for f in group}
        by_track = collections.defaultdict(list)
        for f in self.files:
            by_track[(f.media_id, f.split)].append(f)
        used_media: set[str] = set()
        reported_ambiguous: set[str] = set()
        tracks = []
        for (media_id, split), group in sorted(by_track.items()):
            good = tuple((f.task, f.path) for f in sorted(group, key=lambda f: TASKS.index(f.task))
                         if f not in rejected)
            bad = tuple(
                base.RejectedAnnotation(f.task, f.path, base.DROP_DUPLICATE_TRACK,
                                        _duplicate_message(by_subject[(f.task, media_id)]))
                for f in sorted(group, key=lambda f: (TASKS.index(f.task), f.path)) if f in rejected)
            candidates, side = match_media(media_id, self.media)
            used_media.update(candidates)
            track = self._track(media_id, split, candidates, side, reported_ambiguous)
            track = dataclasses.replace(track, annotation_files=good, rejected_files=bad)
            if not good:  # Every file of the track is a duplicate: nothing to convert, whatever the media.
                track = dataclasses.replace(track, problem=base.DROP_DUPLICATE_TRACK, problem_message="")
            tracks.append(track)
        tracks.sort(key=lambda t: t.track_id)
        unused = sorted(p for paths in self.media.values() for p in paths if p not in used_media)
        return tracks, unused

    def _track(self, media_id: str, split: str, candidates: list[str], side: str | None,
               reported_ambiguous: set[str]) -> base.TrackSpec:
        """The track's media, crops and media problem (annotation files set by the caller)."""
        crops_dir = self.crops.get(nfc(media_id))
        problem, message = None, ""
        media_path, data_path = None, ""
        if len(candidates) == 1:
            data_path = candidates[0]
            import tensorflow as tf  # Late import: importing the adapters must not load TensorFlow.

            media_path = tf.io.gfile.join(self.videos, *data_path.split("/"))
        elif crops_dir is None:
            problem = base.DROP_NO_MEDIA if not candidates else base.DROP_AMBIGUOUS_MEDIA
            if candidates:
                message = f"track not converted: {problem}: " + _ambiguous_message(media_id, candidates, "none is used")
            else:  # Names are matched as written (as the challenge's files are): say when only the letter case differs.
                near, _ = match_media(media_id.casefold(), {stem.casefold(): paths for stem, paths in self.media.items()})
                if near:
                    message = (f"track not converted: {problem}: no video named {media_id!r}; "
                               f"{', '.join(near[:3])} differs only in letter case: rename it (or the annotation file)")
        elif candidates and media_id not in reported_ambiguous:
            reported_ambiguous.add(media_id)
            self.findings.dead_letters.append(base.DeadLetter(
                source=media_id, reason=base.DROP_AMBIGUOUS_MEDIA, message=_ambiguous_message(
                    media_id, candidates, "none is used, the track uses the crops in --cropped_aligned")))
        return base.TrackSpec(media_id=media_id, split=split, annotation_files=(), media_path=media_path,
                              data_path=data_path, side=side, crops_dir=crops_dir, problem=problem,
                              action_unit_names=self.au_names, problem_message=message)
