"""Progress of a running conversion, across worker processes: markers written by workers, polled by the driver;
and the job's Beam counters (:func:`counter`).

Each finished track leaves a tiny JSON marker under ``<output>/.tmp-convert/progress/``
(through Beam's ``FileSystems``, so it works with multi_processing workers and on
Dataflow with a ``gs://`` output); a thread in the driver counts them and prints
tracks done / total, videos done / total (a video is done when all its subject
tracks are), labelled frames and those written, and written frames per second, e.g.
``[convert] tracks 6/21 (videos 5/19) done, 5120 labelled frames, 5080 written, 80.2 written frames/s``.

Example:
    monitor = ProgressMonitor(progress_dir, total=len(tracks), every=5.0,
                              media=[media_key(t) for t in tracks])
    monitor.start()
    ...                      # run the pipeline; each worker calls write_marker(...)
    monitor.stop()
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import sys
import threading
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs.pipeline import files
from tfrecords_schema import join_path

_LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "affectstream"  # Namespace of every Beam counter of the job.


def counter(name: str):
    """The job's Beam counter ``name`` (e.g. ``dropped_no_media``, ``clips_written``)."""
    return Metrics.counter(METRICS_NAMESPACE, name)


def media_key(track) -> str:
    """The video a track reads: its media path relative to ``--videos``, else its annotation name.

    Args:
        track: A :class:`beam_jobs.sources.base.TrackSpec` (anything with ``data_path`` and ``media_id``).
    """
    return track.data_path or track.media_id


def write_marker(progress_dir: str, track_id: str, labelled: int, written: int, seconds: float,
                 media: str = "") -> None:
    """Records that a track is done (never raises: progress must not fail a track).

    Args:
        progress_dir: Folder of the markers.
        track_id: The finished track.
        labelled: Its labelled frames.
        written: Its labelled frames written to clips.
        seconds: Worker seconds it took.
        media: Its :func:`media_key` (videos are counted done when all their tracks are).
    """
    name = hashlib.sha1(track_id.encode("utf-8")).hexdigest() + ".json"
    body = {"track": track_id, "labelled": int(labelled), "written": int(written),
            "seconds": round(seconds, 3), "pid": os.getpid(), "media": media}
    try:
        files.write_bytes(join_path(progress_dir, name), json.dumps(body).encode("utf-8"))
    except OSError as e:
        _LOG.debug("progress marker not written: %s", e)


class ProgressMonitor(threading.Thread):
    """Polls the markers of finished tracks and prints a line when the count changes.

    Args:
        progress_dir: Folder of the markers.
        total: Tracks in the run.
        every: Seconds between polls.
        out: Stream to print to (default: ``sys.stdout`` at print time).
        media: The :func:`media_key` of every track of the run (one entry per track); when
            given, lines also say how many videos are done (all of their tracks finished).
    """

    def __init__(self, progress_dir: str, total: int, every: float, out=None, media: list[str] | None = None):
        super().__init__(daemon=True)
        self._dir = progress_dir
        self._total = total
        self._media_tracks = collections.Counter(media or [])
        self._videos_done = 0
        self._every = every
        self._out = out
        self._halt = threading.Event()
        self._start = time.monotonic()
        self._last = None

    def poll(self) -> tuple[int, int, int, set]:
        """(tracks done, labelled frames in them, those written, worker process ids) from the markers."""
        done, frames, written, pids = 0, 0, 0, set()
        media_done: collections.Counter = collections.Counter()
        try:
            markers = files.list_files(self._dir, ".json")
        except Exception:  # noqa: BLE001 - the folder may not exist yet or be gone already.
            return done, frames, written, pids
        for path in markers:
            try:
                with FileSystems.open(path) as f:
                    marker = json.loads(f.read())
            except (OSError, ValueError):
                continue
            frames += int(marker.get("labelled", 0))
            written += int(marker.get("written", 0))
            pids.add(marker.get("pid"))
            media_done[marker.get("media", "")] += 1
            done += 1
        self._videos_done = sum(1 for key, n in self._media_tracks.items() if media_done[key] >= n)
        return done, frames, written, pids

    def report(self, force: bool = False) -> None:
        """Prints one progress line when something changed (or always with ``force``)."""
        done, frames, written, _ = self.poll()
        if force or (done, frames) != self._last:
            # The rate of frames written: a track rejected whole (no video, a split conflict) is counted, not decoded.
            rate = written / max(1e-9, time.monotonic() - self._start)
            videos = f" (videos {self._videos_done}/{len(self._media_tracks)})" if self._media_tracks else ""
            print(f"[convert] tracks {done}/{self._total}{videos} done, {frames} labelled frames, {written} written, "
                  f"{rate:.1f} written frames/s", file=self._out or sys.stdout, flush=True)
            self._last = (done, frames)

    def run(self):
        """Polls every ``every`` seconds until :meth:`stop`."""
        while not self._halt.wait(self._every):
            self.report()

    def stop(self):
        """Stops polling (the thread ends within one period)."""
        self._halt.set()
