"""The conversion job as one PTransform, :class:`ConvertTracks`, and its first steps.

Each DoFn does one step; :class:`ConvertTracks` composes them::

    tracks ─ Reshuffle ─ ReadLabels ─ DecodeAndCrop ─ EncodeClips ─ WriteShards ─ CompleteShardSets ─┐
                 (failed)  │   (accounting) │  (clip stats) │                                        │
                 CountUnreadableLabels ─────┴───────────────┴─ CombineSummaries ─ BuildDatasetInfo ◄─┘
                           (+ discovery drops)                        │
                 dead letters ─ WriteDeadLetters               FinalizeShards (rename into place)
                                                                      │
                                                               StageDatasetInfo (for the driver)

Every labelled frame ends either in a written clip or in the accounting's ``dropped`` with a
reason; dead letters go to ``DIR/errors/dead_letters.jsonl``. The steps live where their job is:
frame sources in :mod:`beam_jobs.pipeline.frame_sources`, spill files in :mod:`beam_jobs.pipeline.spill`, shards in
:mod:`beam_jobs.pipeline.shards`, the dataset info and dead letters in :mod:`beam_jobs.pipeline.finalize`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable

import apache_beam as beam
import cv2
import numpy as np

from beam_jobs.media.video import VideoError
from beam_jobs.pipeline import progress
from beam_jobs.pipeline.clips import SplitSummary, written_accounting
from beam_jobs.pipeline.config import ConvertConfig
from beam_jobs.pipeline.finalize import (
    BuildDatasetInfoFn,
    MergeSummariesFn,
    StageDatasetInfoFn,
    WriteDeadLettersFn,
    dead_letter_dict,
    media_note_dict,
    split_drop_summary,
)
from beam_jobs.pipeline.frame_sources import open_frame_source
from beam_jobs.pipeline.progress import counter
from beam_jobs.pipeline.shards import CompleteShardSetsFn, FinalizeShardsFn, WriteShards
from beam_jobs.pipeline.spill import TAG_STATS, EncodeClipsFn
from beam_jobs.sources.base import (
    DROP_BEYOND_VIDEO_END,
    DROP_DECODE_ERROR,
    DROP_NO_MEDIA,
    DROP_READ_LABELS_ERROR,
    DROP_UNREADABLE_MEDIA,
    DatasetSource,
    DeadLetter,
    SplitDrop,
    TrackLabels,
    TrackSpec,
)
from tfrecords_schema import Accounting
from tfrecords_schema.cli import first_of
from tfrecords_schema.transaction import is_disk_full

_LOG = logging.getLogger(__name__)


TAG_ACCOUNTING = "accounting"  # Per-track accounting outputs: (split, SplitSummary).
TAG_DEAD_LETTERS = "dead_letters"  # Dead-letter dict outputs.
TAG_MEDIA_NOTES = "media_notes"  # What decoding a video found out about it (finalize.media_note_dict).
_LISTED_FRAMES = 20  # Frame numbers a track's dead letter for undecodable frames lists.


class _DropTally:
    """Labelled frames of one track that are not written, by reason (mirrored in Beam counters)."""

    def __init__(self):
        self.dropped: collections.Counter = collections.Counter()

    def drop(self, reason: str, frames: int) -> None:
        """Counts ``frames`` dropped with ``reason`` (nothing for 0)."""
        if frames:
            self.dropped[reason] += int(frames)
            counter(f"dropped_{reason}").inc(int(frames))

    def drop_rejected(self, labels: TrackLabels) -> None:
        """Counts the frames whose only labels the adapter rejected, by their reason."""
        only_rejected = (labels.rejected != "") & ~labels.valid
        for reason in sorted(set(labels.rejected[only_rejected].tolist())):
            self.drop(reason, int((labels.rejected == reason)[only_rejected].sum()))

    def accounting(self) -> Accounting:
        """The dropped frames as an accounting entry."""
        return Accounting(dropped=dict(self.dropped))


class ReadLabelsFn(beam.DoFn):
    """TrackSpec → (TrackSpec, TrackLabels): parses a track's annotation files with the adapter.

    Args:
        source: The dataset adapter (pickled to workers).
    """

    def __init__(self, source: DatasetSource):
        self._source = source

    def process(self, track: TrackSpec) -> Iterable[tuple[TrackSpec, TrackLabels]]:
        """Yields the track with its labels."""
        yield track, self._source.read_labels(track)


class CountUnreadableLabelsFn(beam.DoFn):
    """A track whose labels the adapter failed to read → its lines counted as dropped, and a dead letter.

    Input: ``(TrackSpec, (exception type, repr, traceback))`` from ``ReadLabels``'s
    ``with_exception_handling()``. The track's labelled frames are estimated without parsing
    them (``source.count_labelled_lines``) and counted as labelled and dropped with
    ``read_labels_error``, so the split's accounting still holds them.

    Args:
        source: The dataset adapter (it knows how its files hold a track's lines).
        config: Worker options (for the progress markers).

    Outputs:
        main: the dead-letter dict (``frames`` = the estimate).
        :data:`TAG_ACCOUNTING`: ``(split, SplitSummary)`` for the track.
    """

    def __init__(self, source: DatasetSource, config: ConvertConfig):
        self._source = source
        self._config = config

    def process(self, element):
        """Yields the track's dead letter and its accounting entry."""
        track, error = element
        message = error[1] if isinstance(error, tuple) and len(error) > 1 else error
        frames, unreadable = self._source.count_labelled_lines(track)
        tally = _DropTally()
        tally.drop(DROP_READ_LABELS_ERROR, frames)
        counter("tracks_done").inc()
        note = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
        yield dead_letter_dict(DeadLetter(
            track.track_id, DROP_READ_LABELS_ERROR,
            f"annotations could not be read: {message}; {frames} annotation lines counted as dropped{note}",
            frames), track.track_id)
        acc = Accounting(labelled_frames=frames).merge(tally.accounting())
        yield beam.pvalue.TaggedOutput(TAG_ACCOUNTING, (track.split, SplitSummary(accounting=acc, tracks=1)))
        progress.write_marker(self._config.progress_dir, track.track_id, frames, 0, 0.0, progress.media_key(track))


class DecodeAndCropFn(beam.DoFn):
    """(TrackSpec, TrackLabels) → clips, one at a time as they fill; accounting and dead letters tagged.

    Streams the track's frames (:mod:`beam_jobs.pipeline.frame_sources`: the decoded video through the face
    stage, or the provided crops in ``--cropped_aligned`` mode) and emits a ``(split, ClipRecord)``
    whenever a clip fills, so a worker holds one clip at most.

    Args:
        config: Worker options (face stage, clip length, ...).

    Outputs:
        main: ``(split, ClipRecord)``.
        :data:`TAG_ACCOUNTING`: ``(split, SplitSummary)`` once per track.
        :data:`TAG_DEAD_LETTERS`: dicts for ``DIR/errors/``.
        :data:`TAG_MEDIA_NOTES`: a video turned upright, of variable frame rate or truncated (once per track).
    """

    def __init__(self, config: ConvertConfig):
        self._config = config
        self._detector = None
        self._bucketer = None

    def setup(self):
        """Builds the face detector and the bucketer once per worker."""
        if self._config.opencv_threads:
            cv2.setNumThreads(self._config.opencv_threads)
        self._detector = self._config.face.build_detector()
        self._bucketer = self._config.bucketer()

    def process(self, element):
        """Yields the track's clips as they fill, its dead letters, then its accounting entry."""
        track, labels = element
        started = time.monotonic()
        tally = _DropTally()
        tally.drop_rejected(labels)
        for letter in labels.dead_letters:
            yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(letter, track.track_id))

        n_valid = int(labels.valid.sum())
        problem = track.problem or (None if (track.media_path or track.crops_dir) else DROP_NO_MEDIA)
        if problem:
            tally.drop(problem, n_valid)
            written = Accounting()
            if n_valid:  # (With no valid frame left, the adapter's own dead letters say it all.)
                yield self._dead_letter(track, track.track_id, problem,
                                        track.problem_message or f"track not converted: {problem}", n_valid)
            face_counts: dict[str, int] = {}
        else:
            written, face_counts = yield from self._convert_track(track, labels, tally)

        acc = Accounting(labelled_frames=int(labels.labelled.sum())).merge(written).merge(tally.accounting())
        counter("tracks_done").inc()
        counter("frames_with_face").inc(acc.written_frames_with_face)
        counter("frames_without_face").inc(acc.written_frames_without_face)
        seconds = time.monotonic() - started
        yield beam.pvalue.TaggedOutput(TAG_ACCOUNTING, (track.split, SplitSummary(
            accounting=acc, tracks=1, seconds=seconds, faces=face_counts)))
        progress.write_marker(self._config.progress_dir, track.track_id, acc.labelled_frames, acc.written_frames,
                              seconds, progress.media_key(track))

    @staticmethod
    def _dead_letter(track: TrackSpec, source: str, reason: str, message: str, frames: int):
        return beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(
            DeadLetter(source, reason, message, frames), track.track_id))

    def _convert_track(self, track: TrackSpec, labels: TrackLabels, tally: _DropTally):
        """Yields the clips and dead letters of a track with media or crops.

        Returns ``(written accounting, {face status: labelled frames written})``. Every valid frame
        ends in a written clip or in ``tally``: a frame that does not decode with ``decode_error``
        (one dead letter per track lists them), annotation lines past the last decodable frame with
        ``beyond_video_end``; a failure part-way drops the valid frames not yet written
        (``unreadable_media`` for a video that cannot be read, ``decode_error`` for any other exception).
        """
        cfg = self._config
        valid = labels.valid
        done = np.zeros(len(valid), bool)  # Frames written in an emitted clip or counted as dropped.
        written, face_counts = Accounting(), collections.Counter()
        undecodable: list[int] = []
        where = track.media_path or track.track_id
        try:
            # One worker per core (opencv_threads 1): one decoding thread too, as every other thread pool of the worker.
            source = open_frame_source(track, labels, cfg.face, cfg.clip_length, cfg.dataset_name, self._bucketer,
                                       detector=self._detector, decoder_threads=cfg.opencv_threads or None)
            for item in source:
                if item.dead_letter is not None:
                    counter(f"no_face_{item.dead_letter.reason}").inc()
                    yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, dead_letter_dict(item.dead_letter, track.track_id))
                if item.undecodable:
                    undecodable.append(item.undecodable)
                    done[item.undecodable - 1] = True
                    tally.drop(DROP_DECODE_ERROR, int(valid[item.undecodable - 1]))
                if item.clip is not None:
                    written = written.merge(written_accounting(item.clip, valid))
                    done[item.clip.frame_index - 1] = True
                    for status, frames in (item.faces or {}).items():
                        face_counts[status] += frames
                        counter(f"frames_{status}").inc(frames)
                    counter("clips_written").inc()
                    yield track.split, item.clip
            note = media_note_dict(where, track.track_id, source.stream)
            if note is not None:
                yield beam.pvalue.TaggedOutput(TAG_MEDIA_NOTES, note)
            beyond = int((valid & ~done)[source.frames_read:].sum())
            tally.drop(DROP_BEYOND_VIDEO_END, beyond)
            if beyond:
                yield self._dead_letter(
                    track, where, DROP_BEYOND_VIDEO_END,
                    f"{labels.num_frames} annotation lines but only {source.frames_read} decodable frames", beyond)
        except VideoError as e:
            lost = int((valid & ~done).sum())
            tally.drop(DROP_UNREADABLE_MEDIA, lost)
            yield self._dead_letter(track, where, DROP_UNREADABLE_MEDIA, str(e), lost)
        except Exception as e:  # noqa: BLE001 - any failure mid-track becomes counted frames + a dead letter.
            if is_disk_full(e):
                raise  # Not the video's fault: the whole job fails and says so (the output stays as it was).
            lost = int((valid & ~done).sum())
            tally.drop(DROP_DECODE_ERROR, lost)
            _LOG.warning("decode error in %s: %r", track.track_id, e)
            last = int(np.flatnonzero(done).max()) + 1 if done.any() else 0
            yield self._dead_letter(track, where, DROP_DECODE_ERROR,
                                    f"{type(e).__name__}: {e} (after frame {last})", lost)
        if undecodable:
            lost = int(valid[np.asarray(undecodable) - 1].sum())
            shown = first_of(undecodable, _LISTED_FRAMES)
            yield self._dead_letter(track, where, DROP_DECODE_ERROR,
                                    f"{len(undecodable)} frames do not decode ({shown}); the frames after them keep "
                                    "their index", lost)
        return written, dict(sorted(face_counts.items()))


class ConvertTracks(beam.PTransform):
    """Track specs → shards and dead letters under ``config.output``, and the staged ``dataset_info.json``.

    Args:
        source: The dataset adapter (pickled to workers).
        config: Worker options.
        splits: Splits present in the discovery (each gets an entry in dataset_info).
        options: Options recorded in dataset_info.
        discovery_dead_letters: Dicts from the adapter's discovery.
        unused_media: Media without annotation.
        split_drops: Labelled lines the discovery lost outside any track (``Discovery.split_drops``);
            they enter their split's accounting.
    """

    def __init__(self, source: DatasetSource, config: ConvertConfig, splits: list[str], options: dict,
                 discovery_dead_letters: list[dict], unused_media: list[str], split_drops: Iterable[SplitDrop] = ()):
        super().__init__()
        self._source = source
        self._config = config
        self._split_drops = list(split_drops)
        self._splits = sorted(set(splits) | {d.split for d in self._split_drops})
        self._options = options
        self._discovery_letters = discovery_dead_letters
        self._unused = unused_media

    def expand(self, tracks):
        """TrackSpecs → the path of the staged ``dataset_info.json`` (one element)."""
        p, cfg = tracks.pipeline, self._config
        labelled, bad_labels = (
            tracks
            | "Reshuffle" >> beam.Reshuffle()
            # TrackSpec
            | "ReadLabels" >> beam.ParDo(ReadLabelsFn(self._source)).with_exception_handling()
        )   # (TrackSpec, TrackLabels), and (TrackSpec, error) of the tracks whose labels failed
        unreadable = bad_labels | "CountUnreadableLabels" >> beam.ParDo(
            CountUnreadableLabelsFn(self._source, cfg)).with_outputs(TAG_ACCOUNTING, main="dead_letters")
        # dead-letter dict; accounting: (split, SplitSummary)
        decoded = labelled | "DecodeAndCrop" >> beam.ParDo(DecodeAndCropFn(cfg)).with_outputs(
            TAG_ACCOUNTING, TAG_DEAD_LETTERS, TAG_MEDIA_NOTES, main="clips")
        # (split, ClipRecord); accounting: (split, SplitSummary); dead letters: dict; media notes: dict
        encoded = decoded.clips | "EncodeClips" >> beam.ParDo(EncodeClipsFn(cfg)).with_outputs(
            TAG_STATS, main="records")
        # SpilledRecord; stats: (split, SplitSummary)
        shards = encoded.records | "WriteShards" >> WriteShards(cfg)
        # ShardInfo (under temp names)
        summaries = (
            (decoded[TAG_ACCOUNTING], unreadable[TAG_ACCOUNTING], encoded[TAG_STATS],
             p | "DiscoveryDrops" >> beam.Create([split_drop_summary(d) for d in self._split_drops]))
            | "FlattenSummaries" >> beam.Flatten()
            | "CombineSummaries" >> beam.CombinePerKey(MergeSummariesFn())
        )   # (split, SplitSummary), one per split
        dead_letters = (
            (decoded[TAG_DEAD_LETTERS], unreadable.dead_letters,
             p | "DiscoveryDeadLetters" >> beam.Create(self._discovery_letters))
            | "FlattenDeadLetters" >> beam.Flatten()
        )   # dead-letter dict
        finish = p | "Finish" >> beam.Create([None])
        all_shards = finish | "CompleteShardSets" >> beam.ParDo(CompleteShardSetsFn(cfg), beam.pvalue.AsList(shards))
        # ShardInfo of every index of every shard set
        _ = finish | "WriteDeadLetters" >> beam.ParDo(WriteDeadLettersFn(cfg), beam.pvalue.AsList(dead_letters))
        # "errors/dead_letters.jsonl" when there is a dead letter
        return (
            finish
            | "BuildDatasetInfo" >> beam.ParDo(
                BuildDatasetInfoFn(cfg, self._splits, self._options, self._unused),
                beam.pvalue.AsList(all_shards), beam.pvalue.AsList(summaries), beam.pvalue.AsList(dead_letters),
                beam.pvalue.AsList(decoded[TAG_MEDIA_NOTES]))
            # DatasetInfo, checked
            | "FinalizeShards" >> beam.ParDo(FinalizeShardsFn(cfg))
            # DatasetInfo, its shards renamed into place
            | "StageDatasetInfo" >> beam.ParDo(StageDatasetInfoFn(cfg))
            # path of DIR/.tmp-convert/dataset_info.json
        )
