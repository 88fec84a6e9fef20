"""Predict on new video: every frame of every video through the conversion's face stage and an exported model.

Example::

    affectstream predict --model /jobs/expr-1/export --videos clips/ talk.mp4 --output preds/
    affectstream predict --model JOB --videos gs://bucket/abaw/videos --output preds --side left --smooth 15 \\
        --render --annotations /data/abaw/annotations

For each video (a file, or every container of ``beam_jobs.media.video.VIDEO_EXTENSIONS`` below a folder, in any
letter case; local, ``gs://`` or ``s3://``):

* the frames are streamed (one decoded frame, one window of JPEG crops and a couple of batches in memory);
* the crops are the ones the model was trained on (:mod:`trainer.prediction.crops`): the conversion's own face stage
  (:class:`beam_jobs.faces.stage.FaceCropper`), rebuilt from ``model_info.json["face_stage"]`` and run over every
  frame as the conversion runs it, or with ``--cropped_aligned DIR`` the dataset's provided crops, prepared as the
  conversion prepares them; each crop is JPEG-encoded as the records hold it and decoded to the trainer's pixels
  (:data:`tfrecords_schema.image_codec.JPEG_DCT_METHOD`), and given to the model as uint8 pixels like the trainer's
  pipelines (the model scales them itself). A model trained on provided crops is not served through the face stage
  unless ``--detect_faces`` asks for it (the summary then says that the crops differ from training);
* the model runs on consecutive windows of the training ``seq_len`` frames from frame 1 (the last one
  padded), several windows per call (``--runtime``: the export's TF Lite copy on the CPU, without importing
  TensorFlow, or the Keras model on TensorFlow, on the GPU when it sees one; :mod:`trainer.prediction.serving`);
  the evaluation windows of a converted split are the same when the clip length is a multiple of ``seq_len``;
* every frame gets a prediction (``--no_face``), optionally smoothed (``--smooth``), written as
  ``OUT/<stem>.csv`` and the ABAW files ``OUT/<EXPR|VA|AU>/<stem>.txt`` (:mod:`trainer.prediction.outputs`);
  ``--render`` adds ``OUT/<stem>.mp4`` and ``OUT/<stem>.png`` (:mod:`trainer.prediction.render`).

``OUT/predict_summary.json`` lists every video, its outputs and the videos that failed; ``--annotations``
scores the ABAW files against annotation files (``OUT/scores.json``: the predicted frames, every labelled frame as
the challenge would score it, and the coverage). Exit status: 0 when every video was predicted, 1 when one failed
(the others are still written) or on an error, 2 on bad options or inputs that do not fit together (nothing is
written then).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import posixpath
import sys
import time
from collections.abc import Sequence

from tfrecords_schema import filesystems
from tfrecords_schema.atomic import NAME_MAX
from tfrecords_schema.cli import add_verbose_flag, command_prog, first_of
from trainer.common import errors
from trainer.model.export import is_per_frame, serving_window
from trainer.model.lite import SERVING_BATCH
from trainer.prediction import outputs as preds_lib
from trainer.prediction import ownership, scoring
from trainer.prediction.crops import CROPS_FACE_STAGE, CROPS_PROVIDED, ServedCrops, crop_counts, crop_source
from trainer.prediction.errors import PredictError, PredictUsageError
from trainer.prediction.ownership import SUMMARY_FILENAME
from trainer.prediction.progress import PROGRESS_EVERY_S, Progress
from trainer.prediction.serving import RUNTIME_AUTO, RUNTIMES, load_export, load_predictor, predict_video
from trainer.prediction.videos import LOCAL_COPY_PREFIX, check_output_place, list_videos, local_video, plan_tracks

log = logging.getLogger("trainer.prediction.predict")

MAX_SERVING_BATCH = 1024  # --batch_size's bound: far past the speed-up of bigger batches, short of the memory it takes.


# --------------------------------------------------------------------------------------------------
# One video.


def _average_fps(raw: preds_lib.VideoPredictions) -> float:
    """The video's frame rate for the summary: the container's, or for a variable-rate stream the average over its
    presentation times (the container's figure is then a guess: Matroska's is often 24 whatever the stream)."""
    stamps = raw.timestamps_us
    if raw.stream is None or not raw.stream.variable_frame_rate or len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return raw.fps
    return round((len(stamps) - 1) * 1e6 / float(stamps[-1] - stamps[0]), 3)


def _stream_fields(video: str, stream) -> dict:
    """The summary's facts of one video's stream; a truncated one (an ABAW file from it is short) gets a warning."""
    if stream is None:
        return {"rotation": 0, "variable_frame_rate": False, "declared_frames": None, "truncated": False}
    if stream.truncated:
        print(f"[predict] warning: {video}: {stream.describe_truncation()}; its files hold the frames that "
              "decode (an ABAW submission from it would be short)", file=sys.stderr, flush=True)
    return {"rotation": stream.rotation, "variable_frame_rate": stream.variable_frame_rate,
            "declared_frames": stream.declared_frames, "truncated": stream.truncated}


def _write_outputs(args, video: str, raw: preds_lib.VideoPredictions) -> dict:
    """Applies the no-face rule and smoothing, writes the CSV, ABAW files and renders; returns the paths."""
    from tfrecords_schema import join_path

    final = preds_lib.postprocess(raw, no_face=args.no_face, smooth_frames=args.smooth)
    written = {"csv": preds_lib.write_csv(join_path(args.output, f"{raw.stem}.csv"), final),
               "abaw": preds_lib.write_submission(args.output, final)}
    if args.render:
        from trainer.prediction import render

        written["plot"] = render.write_plot(join_path(args.output, f"{raw.stem}.png"), final)
        written["render"] = render.write_video(join_path(args.output, f"{raw.stem}.mp4"), video, final)
    return written


# --------------------------------------------------------------------------------------------------
# Entry point.


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``affectstream predict``."""
    p = argparse.ArgumentParser(
        prog=command_prog("trainer.prediction.predict"), description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Outputs per video: OUT/<stem>.csv (frame, timestamp_s, decoded, has_face, box_ymin..box_xmax, "
               "expr_<class> probabilities, expr_index, expr_label, valence, arousal, au_<AU> probabilities: the "
               "heads the model has) and OUT/EXPR|VA|AU/<stem>.txt (ABAW: header, then one line per frame). "
               "See docs/predict.md.")
    p.add_argument("--model", required=True, help="export/ directory of a training job (or the job directory)")
    p.add_argument("--videos", required=True, nargs="+", metavar="PATH",
                   help="video files and/or folders (searched recursively); local, gs:// or s3://")
    p.add_argument("--output", required=True, metavar="OUT_DIR",
                   help="output folder (local, gs:// or s3://); files of the same names that the tool wrote there are "
                        "replaced, and one it did not write is refused before any work")
    p.add_argument("--side", choices=("left", "right"), default=None,
                   help="two people in the video: predict the face on this side; outputs are named <stem>_<side>")
    p.add_argument("--cropped_aligned", default=None, metavar="DIR",
                   help="the dataset's provided face crops, DIR/<stem>/00001.jpg (DIR/<stem>_left, _right for two "
                        "people): every crops folder is a track, predicted on its video's frames; what a model "
                        "trained on provided crops (convert --cropped_aligned) must be served")
    p.add_argument("--detect_faces", action="store_true",
                   help="serve a model trained on provided crops through the face stage anyway (its crops then "
                        "differ from training; the summary says so)")
    p.add_argument("--no_face", choices=preds_lib.NO_FACE_RULES, default=preds_lib.NO_FACE_MODEL,
                   help="frames without a face: 'model' = the model on the crop the face stage gives them (held or "
                        "last-seen face place, as evaluation scores them); 'interpolate' = linear interpolation "
                        "between the nearest face frames")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="centred moving average over N frames of probabilities and valence/arousal (0: off)")
    p.add_argument("--batch_size", type=int, default=SERVING_BATCH,
                   help="windows of seq_len frames per model call (a per-frame model, which has no seq_len: windows "
                        "of 8 frames)")
    p.add_argument("--runtime", choices=RUNTIMES, default=RUNTIME_AUTO,
                   help="the model's runtime: 'tflite' = the export's TF Lite copy on the CPU, without TensorFlow "
                        "(starts in a fraction of a second; only for the --batch_size it was made for); "
                        "'tensorflow' = the Keras model (the GPU when there is one); 'auto' = tflite when the export "
                        "has a copy for this --batch_size and no NVIDIA GPU is present")
    p.add_argument("--workers", type=int, default=1,
                   help="videos whose face stages run at once, each in its own process, the model here fed batches "
                        "of windows across them (the files are the same as with 1; use about one per core)")
    p.add_argument("--render", action="store_true",
                   help="also write OUT/<stem>.mp4 (box, label, valence/arousal trace) and OUT/<stem>.png (plot)")
    p.add_argument("--annotations", default=None, metavar="DIR",
                   help="ABAW annotation root: score the ABAW files against it (OUT/scores.json)")
    p.add_argument("--score_split", choices=scoring.SCORE_SPLITS, default="validation",
                   help="annotation split scored with --annotations")
    p.add_argument("--progress_every", type=float, default=PROGRESS_EVERY_S,
                   help="seconds between progress lines (0: one line per video)")
    add_verbose_flag(p)
    return p


def choose_crops(served: ServedCrops, args) -> dict:
    """Which crops the run serves, checked against the export's: ``{"source", "trained_on", "matches_training"}``.

    Raises:
        PredictUsageError: an export trained on provided crops without ``--cropped_aligned`` (or ``--detect_faces``),
            or both options at once.
    """
    if args.cropped_aligned and args.detect_faces:
        raise PredictUsageError("--cropped_aligned and --detect_faces: choose the provided crops or the face stage")
    if served.source == CROPS_PROVIDED and not (args.cropped_aligned or args.detect_faces):
        raise PredictUsageError(f"{args.model} was trained on provided crops (convert --cropped_aligned): pass "
                                "--cropped_aligned DIR with the crops of these videos (or --detect_faces to run the "
                                "face stage anyway; its crops differ from training)")
    source = CROPS_PROVIDED if args.cropped_aligned else CROPS_FACE_STAGE
    choice = {"source": source, "trained_on": served.source, "matches_training": source == served.source}
    if not choice["matches_training"]:
        log.warning("the model was trained on %s crops but is served %s crops: they differ from training, and so may "
                    "its predictions", served.source.replace("_", " "), source.replace("_", " "))
    return choice


def predict(args) -> int:
    """Predicts every track of ``args``; returns the exit status (1 when a video failed)."""
    if args.workers > 1:  # First: the workers' fork server starts while this process loads the rest.
        from trainer.prediction.parallel import start_fork_server

        start_fork_server()
    from beam_jobs.media.video import VideoError
    from tfrecords_schema import join_path
    from tfrecords_schema.atomic import write_atomically

    def track_errors() -> tuple:  # what fails one video (TensorFlow's errors where it was imported: URLs, Keras)
        return (VideoError, OSError, *errors.tensorflow_errors())

    filesystems.register_filesystems(args.model, args.output, args.annotations, args.cropped_aligned)
    duplicates: list[str] = []
    notes: list[str] = []
    videos = list_videos(args.videos, duplicates, output=args.output, notes=notes)
    tracks = plan_tracks(videos, args.side, args.cropped_aligned, notes)
    for note in duplicates + notes:
        print(f"[predict] note: {note}", file=sys.stderr, flush=True)
    check_output_place(args.output, tracks, args.render, args.videos)
    annotated = None
    if args.annotations:  # Scored at the end: an empty or mistyped folder is said now, not after every video.
        try:
            annotated = scoring.annotated_tracks(args.annotations, args.score_split)
        except ValueError as e:
            raise PredictUsageError(str(e)) from e
    model_info, served, model_dir = load_export(args.model)
    crops = choose_crops(served, args)
    heads = list(model_info["heads"])
    # Files of these names the tool did not write (the user's, beside the videos) are refused now, not replaced.
    ledger = ownership.Ledger.read(args.output)
    planned = ownership.planned_files(args.output, [t.stem for t in tracks],
                                      [preds_lib.SUBMISSION_DIRS[h] for h in preds_lib.HEADS if h in heads],
                                      args.render, bool(args.annotations))
    too_long = [os.path.basename(p) for p in planned if len(os.fsencode(os.path.basename(p))) > NAME_MAX]
    if too_long:  # Said now: the file system refuses them only once every video has been predicted.
        raise PredictUsageError(f"{len(too_long)} output name(s) longer than the {NAME_MAX} bytes a file name may "
                                f"have: {first_of(too_long, 3, '; ')}; rename the video(s) shorter")
    ledger.check(planned)
    if annotated:  # What cannot be scored is said now, not after the last video.
        try:
            scoring_notes = scoring.check_scorable(annotated, args.score_split, heads, model_info["label_names"],
                                                   [t.stem for t in tracks])
        except ValueError as e:
            raise PredictUsageError(f"--annotations {args.annotations}: {e}") from e
        for note in scoring_notes:
            print(f"[predict] note: {note}", file=sys.stderr, flush=True)
        notes += scoring_notes
    window = serving_window(model_info)
    # The face stages take a core each (the workers, or this process's main thread with one worker).
    threads = max(1, len(os.sched_getaffinity(0)) - args.workers)
    predictor, runtime, why, device = load_predictor(model_dir, model_info, args.runtime, heads, window,
                                                     served.crop_size, args.batch_size, served.codec, threads)
    stage = f"face stage {served.face_stage.to_dict()}" if crops["source"] == CROPS_FACE_STAGE else "provided crops"
    print(f"[predict] {len(tracks)} track(s); model {model_dir} (heads {', '.join(heads)}, "
          f"{'per frame' if is_per_frame(model_info) else 'seq_len'} {window}) on {device} ({why}); {stage}",
          file=sys.stderr, flush=True)
    ledger.record(planned)
    try:
        progress = Progress(len(tracks), args.progress_every)
        done, failed = {}, {}

        def fail(number: int, error: str) -> None:
            track = tracks[number]
            # The reader's errors start with the path it read (this video, or a remote one's local copy): said once.
            head, colon, rest = error.partition(": ")
            if colon and (head == track.video or os.path.basename(head).startswith(LOCAL_COPY_PREFIX)):
                error = rest
            print(f"[predict] error: {track.video}: {error} (skipped)", file=sys.stderr, flush=True)
            failed[number] = {"video": track.video, "stem": track.stem, "error": error}

        def finish(number: int, raw, counts: dict, seconds: float, local: str | None = None) -> None:
            track = tracks[number]
            if local is None:  # --workers: the video was read in a worker; only a render reads it again, here
                with local_video(track.video) if args.render else contextlib.nullcontext(track.video) as video:
                    written = _write_outputs(args, video, raw)
            else:
                written = _write_outputs(args, local, raw)
            done[number] = {"video": track.video, "stem": track.stem, "frames": raw.num_frames,
                            "frames_with_face": int(raw.has_face.sum()),
                            "frames_not_decoded": int((~raw.decoded).sum()),
                            "fps": _average_fps(raw), **_stream_fields(track.video, raw.stream),
                            "seconds": round(seconds, 3), **counts, **written}
            print(f"[predict] {track.stem}: {raw.num_frames} frames, face in {int(raw.has_face.sum())} -> "
                  f"{written['csv']}", flush=True)

        if args.workers > 1:
            from trainer.prediction.parallel import predict_tracks

            def finish_parallel(number: int, raw, end, seconds: float) -> None:
                try:
                    finish(number, raw, end.counts, seconds)
                except track_errors() as e:
                    fail(number, str(e))

            predict_tracks(tracks, served, predictor, model_info["label_names"], args.workers, progress,
                           on_track=finish_parallel, on_failure=fail)
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                for number, track in enumerate(tracks):
                    progress.start_video(number + 1, posixpath.basename(track.video))
                    started = time.monotonic()
                    try:
                        with local_video(track.video) as local:
                            frames = crop_source(track, local, served)
                            raw = predict_video(frames, track.stem, predictor, model_info["label_names"], pool,
                                                progress)
                            finish(number, raw, crop_counts(frames), time.monotonic() - started, local)
                    except track_errors() as e:
                        fail(number, str(e))
                        continue
                    progress.end_video()
        done, failed = [done[n] for n in sorted(done)], [failed[n] for n in sorted(failed)]
        summary = {"model": model_dir, "crops": crops, "face_stage": served.face_stage.to_dict(), "side": args.side,
                   "cropped_aligned": args.cropped_aligned, "no_face": args.no_face, "smooth": args.smooth,
                   "seq_len": window, "per_frame": is_per_frame(model_info), "workers": args.workers,
                   "runtime": {"name": runtime, "why": why}, "videos": done,
                   "failed": failed,
                   "truncated_videos": sum(v["truncated"] for v in done),
                   "variable_frame_rate_videos": sum(v["variable_frame_rate"] for v in done), "duplicates": duplicates,
                   "notes": notes}
        scoring_failed = False
        if args.annotations:  # This run's predictions only: files an earlier run left in OUT are not scored.
            try:
                scores = scoring.score_predictions(args.output, args.annotations, args.score_split,
                                                   stems={v["stem"] for v in done}, annotated=annotated)
            except (ValueError, preds_lib.PredictionFileError) as e:
                # (Every video failed): the summary is written anyway.
                scoring_failed = True
                summary["scores_error"] = str(e)
                print(f"[predict] error: scoring against {args.annotations}: {e}", file=sys.stderr, flush=True)
            else:
                summary["scores"] = scoring.write_scores(args.output, scores)
                print(f"scores against {args.annotations} [{args.score_split}] -> {summary['scores']}\n"
                      f"{scoring.format_scores(scores)}", flush=True)
        path = write_atomically(join_path(args.output, SUMMARY_FILENAME), json.dumps(summary, indent=2) + "\n")
    except BaseException:
        # Ctrl-C, a worker process that died: the names this run did not write leave the list (a file of the user's put
        # there later under one of them was replaced by the next run without a word); those it wrote stay the tool's.
        ledger.finish(planned)
        raise
    ledger.finish(planned)  # What was written, with its size and time: a failed video's names are free again.
    seconds = time.monotonic() - progress.started
    note = "" if crops["matches_training"] else (f"; the crops ({crops['source']}) differ from the model's training "
                                                 f"crops ({crops['trained_on']})")
    print(f"[predict] {len(done)} track(s) predicted, {len(failed)} failed in {seconds:.0f}s"
          f" ({progress.total_frames} frames){note}; summary {path}", flush=True)
    return 1 if failed or scoring_failed else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a failed video or a reported error, 2 on invalid options."""
    errors.log_to_stderr()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    for option, value, low in (("--batch_size", args.batch_size, 1), ("--smooth", args.smooth, 0),
                               ("--workers", args.workers, 1)):
        if value < low:
            print(f"error: {option} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    if args.batch_size > MAX_SERVING_BATCH:  # Every call fills its batch: memory grows with it, not with the video.
        print(f"error: --batch_size must be <= {MAX_SERVING_BATCH} windows a call, got {args.batch_size} (every call "
              "holds a full batch: 1024 windows took ~1.7 GB on a 1-frame video)", file=sys.stderr)
        return 2
    try:
        return predict(args)
    except PredictUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line and an exit code for expected failures.
        from beam_jobs.media.video import VideoError
        from tfrecords_schema import DatasetInfoError
        from trainer.evaluation.evaluate import EvaluationError

        return errors.report_failure(e, (PredictError, EvaluationError, preds_lib.PredictionFileError, VideoError,
                                         DatasetInfoError, ValueError, OSError, ImportError))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
