"""Predict on new video: every frame of every video through the conversion's face stage and an exported model.

Example::

    affectstream predict --model /jobs/expr-1/export --videos clips/ talk.mp4 --output preds/
    affectstream predict --model JOB --videos gs://bucket/abaw/videos --output preds --side left --smooth 15 \\
        --render --annotations /data/abaw/annotations

For each video (a file, or every container of ``beam_jobs.media.video.VIDEO_EXTENSIONS`` below a folder, in any
letter case; local, ``gs://`` or ``s3://``):

* the frames are streamed (one decoded frame, one window of JPEG crops and a couple of batches in memory);
* the face stage is the conversion's own (:class:`beam_jobs.faces.stage.FaceCropper`), rebuilt from
  ``model_info.json["face_stage"]``; each crop is JPEG-encoded with the stage's quality and decoded by the
  trainer's own decode (:func:`trainer.input.frames.decode_frames`), exactly as the training records are read, and
  given to the model as uint8 pixels like the trainer's pipelines (the model scales them itself);
* the model runs on consecutive windows of the training ``seq_len`` frames from frame 1 (the last one
  padded), several windows per call, on the GPU when TensorFlow sees one; the evaluation windows of a
  converted split are the same when the clip length is a multiple of ``seq_len``;
* every frame gets a prediction (``--no_face``), optionally smoothed (``--smooth``), written as
  ``OUT/<stem>.csv`` and the ABAW files ``OUT/<EXPR|VA|AU>/<stem>.txt`` (:mod:`trainer.prediction.outputs`);
  ``--render`` adds ``OUT/<stem>.mp4`` and ``OUT/<stem>.png`` (:mod:`trainer.prediction.render`).

``OUT/predict_summary.json`` lists every video, its outputs and the videos that failed; ``--annotations``
scores the ABAW files against annotation files (``OUT/scores.json``). Exit status: 0 when every video was
predicted, 1 when one failed (the others are still written) or on an error, 2 on bad options.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import posixpath
import sys
import time
from collections.abc import Sequence

from tfrecords_schema.cli import add_verbose_flag
from trainer.common import errors, filesystems
from trainer.prediction import outputs as preds_lib
from trainer.prediction import scoring
from trainer.prediction.errors import PredictError
from trainer.prediction.progress import PROGRESS_EVERY_S, Progress
from trainer.prediction.serving import WindowPredictor, load_export, predict_video
from trainer.prediction.videos import list_videos, local_video, output_stems

log = logging.getLogger("trainer.prediction.predict")

SUMMARY_FILENAME = "predict_summary.json"
SCORES_FILENAME = "scores.json"


# --------------------------------------------------------------------------------------------------
# Inputs and the export.


# --------------------------------------------------------------------------------------------------
# The model on windows of JPEG crops.


# --------------------------------------------------------------------------------------------------
# One video.


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
        prog="affectstream predict", description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Outputs per video: OUT/<stem>.csv (frame, timestamp_s, decoded, has_face, box_ymin..box_xmax, "
               "expr_<class> probabilities, expr_index, expr_label, valence, arousal, au_<AU> probabilities: the "
               "heads the model has) and OUT/EXPR|VA|AU/<stem>.txt (ABAW: header, then one line per frame). "
               "See docs/predict.md.")
    p.add_argument("--model", required=True, help="export/ directory of a training job (or the job directory)")
    p.add_argument("--videos", required=True, nargs="+", metavar="PATH",
                   help="video files and/or folders (searched recursively); local, gs:// or s3://")
    p.add_argument("--output", required=True, metavar="OUT_DIR",
                   help="output folder (local, gs:// or s3://); files of the same names are replaced")
    p.add_argument("--side", choices=("left", "right"), default=None,
                   help="two people in the video: predict the face on this side; outputs are named <stem>_<side>")
    p.add_argument("--no_face", choices=preds_lib.NO_FACE_RULES, default=preds_lib.NO_FACE_MODEL,
                   help="frames without a face: 'model' = the model on the crop the face stage gives them (held or "
                        "last-seen face place, as evaluation scores them); 'interpolate' = linear interpolation "
                        "between the nearest face frames")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="centred moving average over N frames of probabilities and valence/arousal (0: off)")
    p.add_argument("--batch_size", type=int, default=16,
                   help="windows of seq_len frames per model call (a per-frame model, which has no seq_len: windows "
                        "of 8 frames)")
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


def predict(args) -> int:
    """Predicts every video of ``args``; returns the exit status (1 when a video failed)."""
    import tensorflow as tf

    from beam_jobs.media.video import VideoError
    from tfrecords_schema import join_path
    from tfrecords_schema.atomic import write_atomically

    filesystems.register_filesystems(args.model, args.output, args.annotations)
    videos = list_videos(args.videos)
    stems = output_stems(videos, args.side)
    from trainer.model.export import is_per_frame, serving_window

    model, model_info, face_stage, model_dir = load_export(args.model)
    heads = list(model_info["heads"])
    window = serving_window(model_info)
    predictor = WindowPredictor(model, heads, window, face_stage.crop_size, args.batch_size)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"[predict] {len(videos)} video(s); model {model_dir} (heads {', '.join(heads)}, "
          f"{'per frame' if is_per_frame(model_info) else 'seq_len'} {window}) on "
          f"{'GPU ' + gpus[0].name if gpus else 'CPU'}; face stage {face_stage.to_dict()}", file=sys.stderr, flush=True)
    progress = Progress(len(videos), args.progress_every)
    done, failed = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        for i, (video, stem) in enumerate(zip(videos, stems), start=1):
            progress.start_video(i, posixpath.basename(video))
            started = time.monotonic()
            try:
                with local_video(video) as local:
                    raw = predict_video(local, stem, predictor, face_stage, args.side, model_info["label_names"],
                                        pool, progress)
                    written = _write_outputs(args, local, raw)
            except (VideoError, OSError, tf.errors.OpError) as e:
                print(f"[predict] error: {video}: {e} (skipped)", file=sys.stderr, flush=True)
                failed.append({"video": video, "error": str(e)})
                continue
            progress.end_video()
            done.append({"video": video, "stem": stem, "frames": raw.num_frames,
                         "frames_with_face": int(raw.has_face.sum()), "frames_not_decoded": int((~raw.decoded).sum()),
                         "fps": raw.fps, "seconds": round(time.monotonic() - started, 3), **written})
            print(f"[predict] {stem}: {raw.num_frames} frames, face in {int(raw.has_face.sum())} -> {written['csv']}",
                  flush=True)
    summary = {"model": model_dir, "face_stage": face_stage.to_dict(), "side": args.side, "no_face": args.no_face,
               "smooth": args.smooth, "seq_len": window, "per_frame": is_per_frame(model_info), "videos": done,
               "failed": failed}
    if args.annotations:
        scores = scoring.score_predictions(args.output, args.annotations, args.score_split)
        summary["scores"] = write_atomically(join_path(args.output, SCORES_FILENAME),
                                             json.dumps(scores, indent=2, sort_keys=True) + "\n")
        print(f"scores against {args.annotations} [{args.score_split}] -> {summary['scores']}\n"
              f"{scoring.format_scores(scores)}", flush=True)
    path = write_atomically(join_path(args.output, SUMMARY_FILENAME), json.dumps(summary, indent=2) + "\n")
    seconds = time.monotonic() - progress.started
    print(f"[predict] {len(done)} video(s) predicted, {len(failed)} failed in {seconds:.0f}s"
          f" ({progress.total_frames} frames); summary {path}", flush=True)
    return 1 if failed else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on a failed video or a reported error, 2 on invalid options."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    for option, value, low in (("--batch_size", args.batch_size, 1), ("--smooth", args.smooth, 0)):
        if value < low:
            print(f"error: {option} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    try:
        return predict(args)
    except Exception as e:  # noqa: BLE001 - one clear line and an exit code for expected failures.
        from beam_jobs.media.video import VideoError
        from tfrecords_schema import DatasetInfoError
        from trainer.evaluation.evaluate import EvaluationError

        return errors.report_failure(e, (PredictError, EvaluationError, preds_lib.PredictionFileError, VideoError,
                                         DatasetInfoError, ValueError, FileNotFoundError, ImportError))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
