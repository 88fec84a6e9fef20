"""Finishing a conversion: summaries → the checked :class:`DatasetInfo`, the dead letters, and the one
writer of ``dataset_info.json``.

    (split, SplitSummary) ─ CombineSummaries (MergeSummariesFn) ┐
    ShardInfo (every index) ────────────────────────────────────┼─ BuildDatasetInfo ─ DatasetInfo (checked)
    dead-letter dicts ──────────────────────────────────────────┘
    dead-letter dicts ─ WriteDeadLetters ─ DIR/errors/dead_letters.jsonl
    DatasetInfo (shards in place) ─ StageDatasetInfo ─ DIR/.tmp-convert/dataset_info.json

``dataset_info.json`` marks a finished output, so it is written once, last: the pipeline stages the
checked info in its temp folder, and the driver, after the pipeline has finished, adds the run's
timing (``DatasetInfo.run``, see ``RUN_TIMING_FIELDS``) and writes ``DIR/dataset_info.json``. Both go
through :func:`save_dataset_info`, the only code that writes the file.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import apache_beam as beam

from beam_jobs.media.video import StreamFacts
from beam_jobs.pipeline import files
from beam_jobs.pipeline.clips import SplitSummary
from beam_jobs.sources.base import DeadLetter, SplitDrop
from tfrecords_schema import DATASET_INFO_FILENAME, Accounting, DatasetInfo, ShardInfo, SplitInfo, join_path
from tfrecords_schema.dataset_info import MEDIA_KEY

if TYPE_CHECKING:
    from beam_jobs.pipeline.config import ConvertConfig

ERRORS_DIRNAME = "errors"  # Folder of the dead letters under the output.
DEAD_LETTERS_FILENAME = "dead_letters.jsonl"  # One JSON object per line: :func:`dead_letter_dict`.
DEAD_LETTERS_PATH = f"{ERRORS_DIRNAME}/{DEAD_LETTERS_FILENAME}"  # Relative to the output, as recorded.


def dead_letter_dict(letter: DeadLetter, track: str = "") -> dict:
    """A dead letter as the JSON object written to ``DIR/errors/dead_letters.jsonl``.

    Args:
        letter: The failure.
        track: Id of the track it belongs to ("" for discovery problems).

    Returns:
        ``{"source", "reason", "message", "frames", "track"}``.
    """
    return {"source": letter.source, "reason": letter.reason, "message": letter.message,
            "frames": int(letter.frames), "track": track}


def media_note_dict(media: str, track: str, stream: StreamFacts | None) -> dict | None:
    """What decoding a track's video found, when worth saying (turned upright, variable frame rate, truncated).

    Returns:
        ``{"media", "track", "rotation", "variable_frame_rate", "truncated", "declared_frames", "decoded_frames"}``,
        or None for an upright constant-rate video that is not truncated (or no video).
    """
    if stream is None or not (stream.rotation or stream.variable_frame_rate or stream.truncated):
        return None
    return {"media": media, "track": track, "rotation": stream.rotation,
            "variable_frame_rate": stream.variable_frame_rate, "truncated": stream.truncated,
            "declared_frames": stream.declared_frames, "decoded_frames": stream.decoded_frames}


def media_summary(notes: Iterable[dict]) -> dict:
    """``DatasetInfo.run["media"]``: the videos turned upright, of variable frame rate, or truncated (by media).

    ``{"rotated": {media: clockwise degrees}, "variable_frame_rate": [media], "truncated": {media: {"declared_frames",
    "decoded_frames"}}}``, each key only when it has an entry (tracks of one video say the same).
    """
    rotated, vfr, truncated = {}, set(), {}
    for note in notes:
        if note["rotation"]:
            rotated[note["media"]] = note["rotation"]
        if note["variable_frame_rate"]:
            vfr.add(note["media"])
        if note["truncated"]:
            previous = truncated.get(note["media"], {"decoded_frames": 0})
            truncated[note["media"]] = {"declared_frames": note["declared_frames"],
                                        "decoded_frames": max(note["decoded_frames"], previous["decoded_frames"])}
    summary = {"rotated": dict(sorted(rotated.items())), "variable_frame_rate": sorted(vfr),
               "truncated": dict(sorted(truncated.items()))}
    return {k: v for k, v in summary.items() if v}


def split_drop_summary(drop: SplitDrop) -> tuple[str, SplitSummary]:
    """A discovery drop as an accounting entry of its split (labelled and dropped)."""
    frames = int(drop.frames)
    return drop.split, SplitSummary(accounting=Accounting(labelled_frames=frames, dropped={drop.reason: frames}))


def save_dataset_info(info: DatasetInfo, folder: str) -> str:
    """Writes ``<folder>/dataset_info.json`` atomically; returns its path. The file's only writer."""
    return files.write_atomically(join_path(folder, DATASET_INFO_FILENAME), info.to_json().encode("utf-8"))


def load_dataset_info(folder: str) -> DatasetInfo:
    """Reads ``<folder>/dataset_info.json`` through Beam's file systems (the job's own options apply).

    Raises:
        DatasetInfoError: the file is malformed or of another schema version.
        OSError: it cannot be read.
    """
    path = join_path(folder, DATASET_INFO_FILENAME)
    return DatasetInfo.from_json(files.read_bytes(path).decode("utf-8"), source=path)


class MergeSummariesFn(beam.CombineFn):
    """Merges :class:`SplitSummary` values (accounting, histograms, counts)."""

    def create_accumulator(self):
        """An empty summary."""
        return SplitSummary()

    def add_input(self, acc, summary):
        """Adds one summary."""
        return acc.merge(summary)

    def merge_accumulators(self, accs):
        """Merges partial summaries."""
        out = SplitSummary()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc):
        """The merged summary."""
        return acc


def dataset_info_skeleton(config: ConvertConfig, options: dict, unused_media: list[str]) -> DatasetInfo:
    """A :class:`DatasetInfo` with the run's options and label names and no split yet.

    Args:
        config: Worker options.
        options: Options recorded in ``dataset_info.json``.
        unused_media: Media without annotation.
    """
    bucketer = config.bucketer()
    return DatasetInfo(
        name=config.dataset_name, tasks=list(config.tasks), label_names=dict(config.label_names),
        bucket_by=config.bucket_by, bucket_names=list(bucketer.names), crop_size=config.face.crop_size,
        clip_length=config.clip_length, splits={}, options=dict(options), unused_media=list(unused_media),
    )


def _split_info(summary: SplitSummary, shards: list[ShardInfo], bucketer) -> SplitInfo:
    """A split's entry: its summary, sorted, its shards and each bucket's class per task."""
    acc = summary.accounting
    return SplitInfo(
        num_clips=summary.num_clips, num_frames=summary.num_frames,
        bucket_clips=dict(sorted(summary.bucket_clips.items())),
        bucket_frames=dict(sorted(summary.bucket_frames.items())),
        class_frames={t: dict(sorted(h.items())) for t, h in sorted(summary.class_frames.items())},
        shards=shards,
        accounting=Accounting(acc.labelled_frames, acc.written_frames_with_face, acc.written_frames_without_face,
                              dict(sorted(acc.dropped.items()))),
        faces=dict(sorted(summary.faces.items())),
        task_frames=dict(sorted(summary.task_frames.items())),
        bucket_classes={b: bucketer.bucket_classes(b) for b in sorted(summary.bucket_clips)},
        bucket_class_frames={b: {t: dict(sorted(h.items())) for t, h in sorted(tasks.items())}
                             for b, tasks in sorted(summary.bucket_class_frames.items())},
        bucket_task_frames={b: dict(sorted(n.items())) for b, n in sorted(summary.bucket_task_frames.items())},
    )


class BuildDatasetInfoFn(beam.DoFn):
    """Runs once: builds the :class:`DatasetInfo` and checks it (no file is written here).

    Checks that each split's accounting adds up (every labelled frame written or dropped
    with a reason) and that the shards hold exactly the clips encoded; raises otherwise,
    so nothing is renamed into place and no ``dataset_info.json`` appears.

    Args:
        config: Worker options.
        splits: Splits of the run (each gets an entry, even an empty one).
        options: Options recorded in ``dataset_info.json``.
        unused_media: Media without annotation.
    """

    def __init__(self, config: ConvertConfig, splits: list[str], options: dict, unused_media: list[str]):
        self._config = config
        self._splits = list(splits)
        self._options = dict(options)
        self._unused = list(unused_media)

    def process(self, _, shards: list[ShardInfo], summaries: list[tuple[str, SplitSummary]], dead_letters: list[dict],
                media_notes: list[dict] = ()):
        """Yields the checked DatasetInfo (side inputs: all shards, ``(split, SplitSummary)``, dead letters, media notes)."""
        info = dataset_info_skeleton(self._config, self._options, self._unused)
        bucketer = self._config.bucketer()
        by_split = {split: SplitSummary() for split in self._splits}
        for split, summary in summaries:
            by_split[split] = by_split.get(split, SplitSummary()).merge(summary)
        shards = sorted(shards, key=lambda s: s.path)
        for split, summary in sorted(by_split.items()):
            info.splits[split] = _split_info(summary, [s for s in shards if s.split == split], bucketer)
            written = sum(s.num_records for s in info.splits[split].shards)
            if written != summary.num_clips:
                raise RuntimeError(f"split {split}: {written} records in shards but {summary.num_clips} clips encoded")
        info.check()  # The job's own check: every labelled frame is written or dropped with a reason.
        by_reason = collections.Counter(d["reason"] for d in dead_letters)
        info.failures = {"dead_letters": len(dead_letters), "by_reason": dict(sorted(by_reason.items())),
                         "files": [DEAD_LETTERS_PATH] if dead_letters else []}
        info.run = {"tracks": sum(s.tracks for s in by_split.values()),
                    "worker_seconds": round(sum(s.seconds for s in by_split.values()), 3)}
        media = media_summary(media_notes)
        if media:  # Only when a video was turned upright, of variable frame rate or truncated.
            info.run[MEDIA_KEY] = media
        yield info


def _natural(text: str) -> tuple:
    """``text`` with its digit runs as numbers: ``m.csv:line 9`` sorts before ``m.csv:line 15``."""
    # re.split with a group alternates text and digit runs; int() only those (str.isdigit also takes "²").
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"([0-9]+)", text)))


def sorted_dead_letters(dead_letters: Iterable[dict]) -> list[dict]:
    """Dead-letter dicts in file order: by track, source (its line numbers as numbers), reason, message."""
    return sorted(dead_letters, key=lambda d: (d["track"], _natural(d["source"]), d["reason"], d["message"]))


class WriteDeadLettersFn(beam.DoFn):
    """Runs once: writes every dead letter, sorted, to ``DIR/errors/dead_letters.jsonl``.

    No file when there is none (some object stores refuse zero-byte multipart uploads).

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, _, dead_letters: list[dict]):
        """Writes the file (side input ``dead_letters``); yields its path relative to the output, if any."""
        letters = sorted_dead_letters(dead_letters)
        if letters:
            body = "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in letters)
            files.write_atomically(join_path(self._config.output, DEAD_LETTERS_PATH), body.encode("utf-8"))
            yield DEAD_LETTERS_PATH


class StageDatasetInfoFn(beam.DoFn):
    """DatasetInfo → ``DIR/.tmp-convert/dataset_info.json``: the pipeline's result, for the driver.

    The driver reads it back once the pipeline has finished, adds the run's timing and writes
    ``DIR/dataset_info.json`` (see the module docstring).

    Args:
        config: Worker options.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config

    def process(self, info: DatasetInfo):
        """Writes the staged file; yields its path."""
        yield save_dataset_info(info, self._config.tmp_dir)
