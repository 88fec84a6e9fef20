"""Folder-per-class adapter: ``ROOT/<split>/<class name>/<any nesting>/<video>``.

``--dataset folders --videos ROOT`` — the layout ``tf.keras.utils.image_dataset_from_directory``
users know (AFEW's ``Train/<Class>/<clip>.avi``, CAER's ``train/<Class>/<clip>.avi``). Every frame
of a video carries its class folder's class. Split folders are matched in any letter case
(``train``/``training``, ``validation``/``val``/``valid``, ``test``/``testing``); videos are every
:data:`~beam_jobs.media.video.VIDEO_EXTENSIONS` container in any letter case; other files are ignored.

Without official splits: ``--folds K --fold I`` with ``ROOT/<class name>/<any nesting>/<video>``
(no split level; a split level with ``--folds``, or none without, is refused with a clear error).
Each subject goes to validation when its hash modulo K is I (:mod:`beam_jobs.sources.folds`).

Subjects: by default each video is its own subject (the folders say nothing about people), so
folds are then video-independent only. ``--subject_regex`` reads the subject from the video's path
relative to ROOT (its ``subject`` group, else group 1, else the whole match), e.g.
``--subject_regex '(?P<subject>actor\\d+)'``; the split-safety check (a subject in two splits) and
the folds then work per subject, and a video the pattern does not match is ``no_subject``.

Counted, dead-lettered problems (frames counted on the worker, see :mod:`beam_jobs.sources.media_rows`):
a top-level folder that is not a split (``unknown_split``, accounted under ``unassigned``), a video with no class
folder or a class not in ``--class_names`` (``unknown_class``), a subject in two splits
(``split_conflict``). ``--class_names A,B,C`` fixes the class order (case-insensitive match);
without it the sorted class folder names found are the classes.

Example::

    source = FoldersSource("data/afew", class_names="Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise")
    found = source.discover()
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
from collections.abc import Sequence

from beam_jobs.media.video import is_remote
from beam_jobs.sources import base
from beam_jobs.sources import folds as folds_lib
from beam_jobs.sources.folder_scan import file_identity
from beam_jobs.sources.media_rows import (
    DROP_NO_SUBJECT,
    DROP_UNKNOWN_CLASS,
    LabelledMediaSource,
    MediaRow,
    build_discovery,
    canonical_split,
    list_videos,
    parse_class_names,
    select_tasks,
)
from tfrecords_schema import TASK_EXPRESSION
from tfrecords_schema.filesystems import register_filesystems


class FoldersSource(LabelledMediaSource):
    """Videos in class folders (see the module docstring).

    Args:
        videos: The root folder (local, ``gs://``, ``s3://``).
        tasks: Tasks to convert: only ``expr`` exists here (None: it).
        class_names: Class order (list or ``"A,B,C"``); None: the sorted folder names found.
        folds: With ``fold``: no split level; splits assigned by subject hash.
        fold: The fold that forms the validation split.
        subject_regex: Reads the subject from the path relative to ``videos`` (None: one per video).

    Raises:
        ValueError: ``videos`` missing or not a folder; bad folds, class names or regular expression.
    """

    name = "folders"

    def __init__(self, videos: str, tasks: Sequence[str] | None = None, class_names: str | Sequence[str] | None = None,
                 folds: int | None = None, fold: int | None = None, subject_regex: str | None = None):
        folds_lib.check_folds(folds, fold)
        if not videos:
            raise ValueError("--dataset folders needs --videos ROOT (ROOT/<split>/<class>/.../<video>)")
        import tensorflow as tf  # Late import: importing the adapters must not load TensorFlow.

        register_filesystems(videos)
        if not tf.io.gfile.isdir(videos):
            raise ValueError(f"--videos folder {videos!r} does not exist or is not a folder")
        self.tasks = select_tasks([TASK_EXPRESSION], tasks, "--dataset folders")
        try:
            self.subject_pattern = None if subject_regex is None else re.compile(subject_regex)
        except re.error as e:
            raise ValueError(f"--subject_regex {subject_regex!r} is not a regular expression: {e}") from e
        self.videos = str(videos)
        self._first_names: dict[str, str] = {}  # Set by discover(): other names of one file -> its first name.
        self.class_names = parse_class_names(class_names)
        self.folds, self.fold = folds, fold

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds ``--subject_regex``."""
        parser.add_argument("--subject_regex", default=None,
                            help="--dataset folders: regular expression reading the subject id from each video's "
                                 "path under --videos (group 'subject', else group 1); default: one subject per video")

    @classmethod
    def from_args(cls, args: argparse.Namespace, tasks: Sequence[str] | None) -> FoldersSource:
        """Builds the adapter from ``--videos``, ``--subject_regex`` and the common options."""
        return cls(getattr(args, "videos", None), tasks=tasks, class_names=getattr(args, "class_names", None),
                   folds=getattr(args, "folds", None), fold=getattr(args, "fold", None),
                   subject_regex=getattr(args, "subject_regex", None))

    def discover(self) -> base.Discovery:
        """Lists every video under the root and turns its folders into a split and a class.

        Folders that cannot be listed are in ``unlisted_folders`` with a dead letter each (the
        conversion fails unless ``--allow_partial``: their videos would be missing).

        Raises:
            ValueError: a split level with ``--folds``, or none without.
        """
        listed, scan = list_videos(self.videos)
        self._check_split_level(listed)
        self._first_names = self._first_names_of(listed) if self.subject_pattern is None else {}
        rows = [self._row(rel) for rel in listed]
        return build_discovery(rows, class_names=self.class_names, tasks=self.tasks, annotation_path=self.videos,
                               dead_letters=list(scan.dead_letters), unlisted_folders=scan.unlisted_folders,
                               notes=scan.notes)

    def _check_split_level(self, listed: list[str]) -> None:
        tops = sorted({rel.split("/", 1)[0] for rel in listed if "/" in rel})
        splits = [t for t in tops if canonical_split(t) is not None]
        if self.folds is not None and splits:
            raise ValueError(f"{self.videos} has split folders {splits}; --folds is for ROOT/<class>/.../<video> "
                             "(drop --folds to use the split folders)")
        if self.folds is None and listed and not splits:
            raise ValueError(f"{self.videos} has no split folder (train, validation, test) above the class folders "
                             f"(found {tops[:10]}); give --folds K --fold I for ROOT/<class>/.../<video>")

    def _row(self, rel: str) -> MediaRow:
        """One video → a row: split and class from its folders, subject from ``--subject_regex``."""
        parts = rel.split("/")
        path = self._join(rel)
        if self.folds is None:
            split_text = parts[0] if len(parts) > 1 else ""
            expression = parts[1] if len(parts) > 2 else None
        else:
            split_text, expression = "", parts[0] if len(parts) > 1 else None
        subject, reason, message = self._subject(rel)
        if self.folds is not None:
            split = folds_lib.fold_split(subject, self.folds, self.fold) if subject is not None else None
        else:
            split = canonical_split(split_text)
        if reason is None and expression is not None and expression.startswith("."):
            # A tool's hidden folder (.ipynb_checkpoints, .cache) holds copies, not a class: counted, not learnt.
            reason, message = DROP_UNKNOWN_CLASS, f"{expression!r} is a hidden folder, not a class folder"
            expression = None
        below = parts[2:] if self.folds is None else parts[1:]  # inside the class folder, the video's name included
        hidden = next((part for part in below if part.startswith(".")), None)
        if reason is None and expression is not None and hidden is not None:
            # The same inside a class folder (Happy/.ipynb_checkpoints/clip-checkpoint.mp4 is a copy of another
            # class's clip as often as of this one's), and macOS's "._clip.mp4" files hold metadata, not video.
            reason, message = DROP_UNKNOWN_CLASS, (f"{hidden!r} inside class folder {expression!r} is hidden (a tool's "
                                                   "copies or metadata), not a video of the class")
            expression = None
        if reason is None and expression is None and (split is not None or self.folds is not None):
            reason, message = DROP_UNKNOWN_CLASS, "the video is not in a class folder"
        return MediaRow(source=path, media_key=rel, media_path=path, subject=subject or rel, split=split,
                        split_text=split_text, expression=expression, reason=reason, message=message)

    def _first_names_of(self, listed: list[str]) -> dict[str, str]:
        """``{name: first name}`` of the videos listed under several names of one file (links): one video is one
        subject, so ``--folds`` puts its names in one fold. (Objects in a store have one name each.)"""
        if is_remote(self.videos):
            return {}
        first: dict[object, str] = {}
        return {rel: first.setdefault(file_identity(self._join(rel)), rel) for rel in sorted(listed)}

    def _subject(self, rel: str) -> tuple[str | None, str | None, str]:
        """``(subject, None, "")``, or ``(None, no_subject, message)`` when the pattern does not match."""
        if self.subject_pattern is None:  # One subject a video, under whichever name.
            return folds_lib.subject_key(self._first_names.get(rel, rel)), None, ""
        match = self.subject_pattern.search(rel)
        subject = None
        if match is not None:
            subject = match.groupdict().get("subject") or (match.group(1) if match.re.groups else match.group(0))
        if not subject:  # (No match, or an optional group that matched nothing.)
            return None, DROP_NO_SUBJECT, f"--subject_regex {self.subject_pattern.pattern!r} finds no subject in {rel!r}"
        return folds_lib.subject_key(subject), None, ""

    def _join(self, rel: str) -> str:
        if is_remote(self.videos):
            return posixpath.join(self.videos.rstrip("/"), rel)
        return os.path.join(self.videos, *rel.split("/"))
