"""Aff-Wild2 / ABAW adapter: annotation folders → subject tracks with per-frame labels.

Every challenge edition's layout is accepted (2020 ``*_Set/Training_Set``, ABAW-3/5
``*_Challenge/Train_Set``, ABAW-6+ ``EXPR_Recognition_Challenge``, multi-task ``MTL_Challenge`` files),
found anywhere under ``--annotations``. One track per (annotation name, split), so no label leaks across
splits; duplicates are rejected, never resolved by picking one. The full rules (headers, lines, invalid
markers, media matching, what each problem costs) are in ``docs/abaw.md``.

Modules: ``abaw_format`` (headers, values, line status), ``abaw_discovery`` (files, media, tracks),
``abaw_labels`` (one track's label arrays); this one wires them into a :class:`base.DatasetSource`.
Listing and reading go through ``tf.io.gfile``, so ``gs://`` paths work. No Apache Beam import.

Example::

    source = AbawSource(annotations="data/annotations", videos="data/videos", tasks=["expr", "va"])
    found = source.discover()
    labels = source.read_labels(found.tracks[0])
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from beam_jobs.sources import abaw_discovery as discovery
from beam_jobs.sources import base
from beam_jobs.sources.abaw_format import (  # noqa: F401 (re-exported: the adapter's public names)
    ACTION_UNITS_8,
    ACTION_UNITS_12,
    EXPRESSION_NAMES_7,
    EXPRESSION_NAMES_8,
    MTL_FOLDER,
    SPLIT_FOLDERS,
    TASK_FOLDERS,
    VALENCE_AROUSAL_NAMES,
    LineStatus,
    parse_header,
)
from beam_jobs.sources.abaw_labels import count_file_lines, read_track_labels
from tfrecords_schema import HEAD_ACTION_UNITS, TASKS
from tfrecords_schema.cli import first_of
from tfrecords_schema.filesystems import register_filesystems


class AbawLayoutError(ValueError):
    """The annotation folder holds nothing this adapter can use."""


class MissingFolderError(FileNotFoundError, ValueError):
    """A folder option names no folder (a ValueError too, like every argument error)."""


class AbawSource(base.DatasetSource):
    """Aff-Wild2 / ABAW annotation folders (every challenge edition's layout).

    Args:
        annotations: Folder holding the annotation folders (or a parent of them).
        videos: Root of the media files (every FFmpeg container, any letter case, anywhere
            below); may be None when ``cropped_aligned`` provides the frames.
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
        import tensorflow as tf  # Late import: parsing `affectstream convert --help` must not load TensorFlow.

        for option, folder in (("--annotations", annotations), ("--videos", videos),
                               ("--cropped_aligned", cropped_aligned)):
            register_filesystems(folder)  # (s3://: tensorflow-io's, in this process)
            if folder is not None and not tf.io.gfile.isdir(folder):
                raise MissingFolderError(f"{option} folder {folder!r} does not exist or is not a folder")
        self.annotations = str(annotations)
        self.videos = None if videos is None else str(videos)
        self.tasks = tasks
        self.cropped_aligned = None if cropped_aligned is None else str(cropped_aligned)

    @classmethod
    def from_args(cls, args: argparse.Namespace, tasks: Sequence[str] | None) -> AbawSource:
        """Builds the adapter from the conversion options (``--annotations`` is required here).

        Raises:
            ValueError: ``--annotations`` is missing, or any error of the constructor.
        """
        if not getattr(args, "annotations", None):
            raise ValueError("--dataset abaw needs --annotations (the folder holding the ABAW annotation folders)")
        return cls(annotations=args.annotations, videos=getattr(args, "videos", None), tasks=tasks,
                   cropped_aligned=getattr(args, "cropped_aligned", None))

    def discover(self) -> base.Discovery:
        """Lists the tracks, their media and crops, the label names and the unused media.

        Folders that loop or cannot be listed are dead letters; those that cannot be listed are
        also in ``Discovery.unlisted_folders``.

        Raises:
            AbawLayoutError: no annotation file of the selected tasks was found.
        """
        findings = discovery.Findings()
        skip = [d for d in (self.videos, self.cropped_aligned) if d is not None]
        files, found_tasks = discovery.find_annotation_files(self.annotations, self.tasks, skip, findings)
        if not files:
            raise AbawLayoutError(self._nothing_found(found_tasks, findings.unlisted_folders))
        tasks = [t for t in TASKS if any(f.task == t for f in files)]
        label_names = discovery.label_names(files, tasks)
        media = discovery.media_index(self.videos, findings)
        crops = discovery.crop_folders(self.cropped_aligned, findings)
        tracks, unused = discovery.TrackBuilder(files, media, crops, tuple(label_names[HEAD_ACTION_UNITS]),
                                                self.videos, findings).build()
        if self.cropped_aligned is not None:
            detected = sorted(t.track_id for t in tracks if t.crops_dir is None and t.media_path and not t.problem)
            if detected:  # Said, not silent: these tracks' crops come from the face stage, not the dataset's.
                findings.notes.append(
                    f"{len(detected)} track(s) have no folder in --cropped_aligned {self.cropped_aligned} and are "
                    f"cropped by the face stage (detected) from their video instead: {first_of(detected, 10)}")
        return base.Discovery(tracks=tracks, label_names=label_names, tasks=tasks, unused_media=unused,
                              dead_letters=findings.dead_letters, split_drops=findings.split_drops,
                              unlisted_folders=findings.unlisted_folders, notes=findings.notes)

    def _nothing_found(self, found_tasks: list[str], unlisted: list[str]) -> str:
        wanted = ", ".join(self.tasks or TASKS)
        return (f"no ABAW annotation files for task(s) {wanted} under {self.annotations!r}"
                + (f" (found only: {', '.join(found_tasks)})" if found_tasks else "")
                + (f" (could not list: {', '.join(unlisted)})" if unlisted else "")
                + "; expected folders like EXPR_Set/Training_Set, VA_Estimation_Challenge/Train_Set, "
                "EXPR_Recognition_Challenge/Validation_Set or MTL_Challenge/*annotations*.txt")

    def read_labels(self, track: base.TrackSpec) -> base.TrackLabels:
        """Parses the track's annotation files into per-frame label arrays.

        Bad lines never raise: they are marked in ``rejected`` (when the frame has no other
        valid label) and reported in grouped dead letters naming file and line numbers.
        Rejected files (duplicates) are parsed only to count and reject their frames.
        Call it for every track, also one with a ``problem``: its labelled frames are
        what that problem drops.
        """
        return read_track_labels(track)

    def _count_file_lines(self, path: str, track: base.TrackSpec) -> int:
        """Lines of one file that label this track: in a multi-task file, this subject's rows only."""
        return count_file_lines(path, track.media_id)
