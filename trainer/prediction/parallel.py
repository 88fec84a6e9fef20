"""``predict --workers N``: the tracks' face stages in N processes, the model in this one, fed across tracks.

Each worker process takes the next track from a queue and runs its crop source (:mod:`trainer.prediction.crops`:
the face stage, or the provided crops; a remote video is copied to a local file there), sending the crops back in
chunks of :data:`CHUNK_FRAMES` frames, then what the source learnt (frame rate, stream facts, counts of missing
crops), or the error that stopped it. This process turns each track's frames into windows and feeds the model the
tracks' batches of windows as they fill (:class:`trainer.prediction.serving.WindowBatcher`), so the model (on the
GPU, when there is one) stays busy while the face stages, the CPU's work, run side by side. A batch holds windows of
one track in the places they have with one worker, so every file is byte for byte the one ``--workers 1`` writes
(``tests/test_predict.py::test_workers_write_the_same_files_as_one_worker``). A track's outputs are written once all
of its windows are predicted.

Memory stays bounded: the queue of chunks holds at most :data:`QUEUE_CHUNKS_PER_WORKER` per worker, and each
track in flight keeps its per-frame facts and outputs (as with one worker) until it is written.

Workers are forked from a fork server started first, which imports the face stage's modules once; a worker then
loads its detector in a fraction of a second (TF Lite without importing TensorFlow: :mod:`beam_jobs.faces.tflite`).
This process never forks itself (it may hold TensorFlow's threads). Each worker uses one OpenCV thread, as the conversion's
workers do.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import posixpath
import queue
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from tfrecords_schema import filesystems

CHUNK_FRAMES = 64  # frames a worker sends at once
QUEUE_CHUNKS_PER_WORKER = 8  # chunks waiting per worker, at most (a few MB of crops)
WORKER_EXIT_SECONDS = 10.0  # how long a worker told to stop may take to exit before it is terminated
PARENT_CHECK_SECONDS = 1.0  # how often a worker waiting on a queue checks that the run's process is still there
_FRAMES, _DONE, _FAILED = "frames", "done", "failed"


@dataclasses.dataclass(frozen=True)
class TrackEnd:
    """What a worker's crop source learnt once a track's frames are all sent."""

    fps: float
    stream: object  # beam_jobs.media.video.StreamFacts, or None
    counts: dict  # provided crops: missing, unreadable, past the video's end


def _send(results, message) -> None:
    """Puts ``message`` on ``results``; ends this worker once the process that reads them is gone (killed, out of
    memory: the queue stays full for ever, and a worker waiting on it kept itself, the fork server and the resource
    tracker alive after the run)."""
    while True:
        try:
            results.put(message, timeout=PARENT_CHECK_SECONDS)
            return
        except queue.Full:
            if not _parent_alive():
                results.cancel_join_thread()  # (What it holds will never be read: exit without handing it over.)
                raise SystemExit(1) from None


def _next_task(tasks):
    """The next task from ``tasks``, or None (stop) once the process that sends them is gone."""
    while True:
        try:
            return tasks.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if not _parent_alive():
                return None


def _exit_with_parent() -> None:
    """Ends this worker, once its tracks are done, if the process that reads its results goes: the results still in the
    queue's feeder thread are handed over at exit (multiprocessing joins that thread, and a worker holds both ends of
    the pipe), which waited for ever on a parent killed with crops unread, short of a full queue (:func:`_send` checks
    only while the queue is full)."""
    import os
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # (Its sentinel: ready once the parent is gone.)
        os._exit(1)  # (Every track is done and its local copies removed: nothing is left to tidy.)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _parent_alive() -> bool:
    parent = multiprocessing.parent_process()  # (The process that started the worker, not the fork server.)
    return parent is None or parent.is_alive()


def _worker(tasks, results, served) -> None:
    """A worker process: tracks from ``tasks`` (None: stop) → chunks of crops on ``results``."""
    import signal

    import cv2

    from beam_jobs.media.video import VideoError
    from trainer.prediction.crops import crop_counts, crop_source
    from trainer.prediction.videos import local_video

    # Ctrl-C reaches every process of the terminal's group: the parent stops the run and ends its workers (a worker
    # interrupted itself printed a KeyboardInterrupt traceback in the middle of the run's last lines).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    while (task := _next_task(tasks)) is not None:
        number, track = task
        try:
            filesystems.register_filesystems(track.video, track.crops_dir)  # (s3://: in each worker process)
            with local_video(track.video) as local:
                # One FFmpeg thread: each worker has its core (FFmpeg's own threads cost CPU the other workers need).
                source, chunk = crop_source(track, local, served, decoder_threads=1), []
                for crop in source:
                    chunk.append(crop)
                    if len(chunk) == CHUNK_FRAMES:
                        _send(results, (_FRAMES, number, chunk))
                        chunk = []
                if chunk:
                    _send(results, (_FRAMES, number, chunk))
                _send(results, (_DONE, number, TrackEnd(source.fps, source.stream, crop_counts(source))))
        except (VideoError, OSError) as e:
            _send(results, (_FAILED, number, str(e)))
        except Exception as e:  # noqa: BLE001 - the parent reports it for this track and goes on with the others
            if type(e).__module__.split(".")[0] != "tensorflow":  # a file system error says enough in one line
                traceback.print_exc(file=sys.stderr)
            _send(results, (_FAILED, number, f"{type(e).__name__}: {e}"))
    _exit_with_parent()
    if filesystems.tfio_used():  # tensorflow-io's s3:// aborts at interpreter exit: leave once the results are out.
        results.close()
        results.join_thread()
        filesystems.exit_hard_if_needed(0)


FORK_SERVER_PRELOAD = ["trainer.prediction.crops"]


def start_fork_server():
    """The multiprocessing context of the workers, its fork server started (importing :data:`FORK_SERVER_PRELOAD`
    in the background): call it early, before this process's own heavy imports, to overlap them."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_SERVER_PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context


class WorkerPool:
    """``N`` worker processes running the crop sources of tracks, in order of submission (see the module docstring).

    Use as a context manager; :meth:`results` yields ``(kind, track number, payload)``: ``("frames", n,
    [FrameCrop, ...])`` in frame order, then ``("done", n, TrackEnd)`` or ``("failed", n,
    message)``.
    """

    def __init__(self, workers: int, served):
        context = start_fork_server()
        self._tasks = context.Queue()
        self._results = context.Queue(maxsize=QUEUE_CHUNKS_PER_WORKER * workers)
        self._processes = [context.Process(target=_worker, args=(self._tasks, self._results, served), daemon=True)
                           for _ in range(workers)]

    def __enter__(self) -> WorkerPool:
        for process in self._processes:
            process.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for process in self._processes:
            if exc_type is None:
                # Every track ended and each worker was sent its stop: let it finish its exit (a worker terminated
                # while it released its queues left "leaked semaphore" warnings from the resource tracker).
                process.join(timeout=WORKER_EXIT_SECONDS)
            if process.is_alive():
                process.terminate()
            process.join()
        # Workers that stopped early leave items unread: the queues' feeder threads must not wait at exit to hand
        # them over (multiprocessing joins them from its exit handler otherwise, and the process never ends).
        for channel in (self._tasks, self._results):
            channel.cancel_join_thread()
            channel.close()

    def run(self, tracks: Sequence) -> None:
        """Queues every track (numbered in order), then one stop per worker."""
        for number, track in enumerate(tracks):
            self._tasks.put((number, track))
        for _ in self._processes:
            self._tasks.put(None)

    def results(self, tracks: Sequence):
        """Yields the workers' messages until every track of ``tracks`` is done or failed.

        Raises:
            PredictError: the worker processes died (killed, out of memory) before every track ended.
        """
        from trainer.prediction.errors import PredictError

        open_tracks = set(range(len(tracks)))
        while open_tracks:
            try:
                message = self._results.get(timeout=1.0)
            except queue.Empty:
                if not any(process.is_alive() for process in self._processes):
                    names = ", ".join(tracks[n].stem for n in sorted(open_tracks))
                    raise PredictError(f"the --workers processes ended (exit codes "
                                       f"{[process.exitcode for process in self._processes]}) with "
                                       f"{len(open_tracks)} video(s) unfinished: {names}") from None
                continue
            if message[0] != _FRAMES:
                open_tracks.discard(message[1])
            yield message


def predict_tracks(tracks: Sequence, served, predictor, label_names: dict, workers: int, progress,
                   on_track: Callable, on_failure: Callable) -> None:
    """Predicts ``tracks`` with their crop sources in ``workers`` processes and the model here, across tracks.

    Args:
        tracks: The run's :class:`trainer.prediction.videos.Track` list.
        served: The export's :class:`trainer.prediction.crops.ServedCrops`.
        predictor: The :class:`trainer.prediction.serving.WindowPredictor`.
        label_names: ``model_info.json``'s label names.
        workers: Worker processes.
        progress: The run's :class:`trainer.prediction.progress.Progress`.
        on_track: ``on_track(number, raw_predictions, track_end, seconds)`` once a track is predicted (in the order
            tracks finish; ``seconds`` from its first frames here to its last outputs).
        on_failure: ``on_failure(number, message)`` for a track whose source failed (the others go on).
    """
    import concurrent.futures

    from trainer.prediction.serving import TrackRun, WindowBatcher

    runs: dict[int, TrackRun] = {}
    ends: dict[int, TrackEnd] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, WorkerPool(workers, served) as processes:
        batcher = WindowBatcher(predictor, pool)
        processes.run(tracks)
        for kind, number, payload in processes.results(tracks):
            if kind == _FAILED:
                if number in runs:
                    batcher.discard(runs.pop(number))
                progress.end_video(number + 1)
                on_failure(number, payload)
                continue
            if number not in runs:
                runs[number] = TrackRun(predictor.heads, predictor.seq_len)
                progress.start_video(number + 1, posixpath.basename(tracks[number].video))
            if kind == _FRAMES:
                for frame in payload:
                    batcher.add_frame(runs[number], frame)
                    progress.frame(number + 1)
            else:
                batcher.end_track(runs[number])
                ends[number] = payload
            _finish_complete(runs, ends, tracks, label_names, progress, on_track)
        batcher.drain()
        _finish_complete(runs, ends, tracks, label_names, progress, on_track)


def _finish_complete(runs, ends, tracks, label_names, progress, on_track) -> None:
    """Hands over the tracks whose sources ended and whose windows all have their outputs."""
    for number in sorted(ends):
        run = runs[number]
        if not run.complete:
            continue
        end = ends.pop(number)
        del runs[number]
        progress.end_video(number + 1)
        on_track(number, run.predictions(tracks[number].stem, end.fps, label_names, end.stream), end,
                 time.monotonic() - run.started)
