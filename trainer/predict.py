"""Predict on new video: every frame of every video through the conversion's face stage and an exported model.

Example::

    affectstream predict --model /jobs/expr-1/export --videos clips/ talk.mp4 --output preds/
    affectstream predict --model JOB --videos gs://bucket/abaw/videos --output preds --side left --smooth 15 \\
        --render --annotations /data/abaw/annotations

For each video (a file, or every container of ``beam_jobs.video.VIDEO_EXTENSIONS`` below a folder, in any
letter case; local, ``gs://`` or ``s3://``):

* the frames are streamed (one decoded frame, one window of JPEG crops and a couple of batches in memory);
* the face stage is the conversion's own (:class:`beam_jobs.faces.FaceCropper`), rebuilt from
  ``model_info.json["face_stage"]``; each crop is JPEG-encoded with the stage's quality and decoded by the
  trainer's own decode (:func:`trainer.frames.decode_frames`), exactly as the training records are read, and
  given to the model as uint8 pixels like the trainer's pipelines (the model scales them itself);
* the model runs on consecutive windows of the training ``seq_len`` frames from frame 1 (the last one
  padded), several windows per call, on the GPU when TensorFlow sees one; the evaluation windows of a
  converted split are the same when the clip length is a multiple of ``seq_len``;
* every frame gets a prediction (``--no_face``), optionally smoothed (``--smooth``), written as
  ``OUT/<stem>.csv`` and the ABAW files ``OUT/<EXPR|VA|AU>/<stem>.txt`` (:mod:`trainer.predictions`);
  ``--render`` adds ``OUT/<stem>.mp4`` and ``OUT/<stem>.png`` (:mod:`trainer.render`).

``OUT/predict_summary.json`` lists every video, its outputs and the videos that failed; ``--annotations``
scores the ABAW files against annotation files (``OUT/scores.json``). Exit status: 0 when every video was
predicted, 1 when one failed (the others are still written) or on an error, 2 on bad options.
"""

from __future__ import annotations

import argparse
import array
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

import numpy as np

from affectstream.cli import add_verbose_flag
from trainer import errors, filesystems
from trainer import predictions as preds_lib

log = logging.getLogger("trainer.predict")

PROGRESS_EVERY_S = 5.0
MAX_BATCHES_IN_FLIGHT = 2  # One batch in the model while the next one fills: frames keep flowing.
SUMMARY_FILENAME = "predict_summary.json"
SCORES_FILENAME = "scores.json"
MISSING_FACE_STAGE = "export made before face_stage was recorded; re-export"
COPY_CHUNK_BYTES = 8 << 20  # Remote videos are copied locally in pieces of this size.


class PredictError(ValueError):
    """An export or input that cannot be predicted on (missing face stage, no videos, clashing names)."""


# --------------------------------------------------------------------------------------------------
# Inputs and the export.


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def list_videos(paths: Sequence[str]) -> list[str]:
    """The videos to predict: files as given, folders searched recursively for every container in any case.

    Raises:
        PredictError: a path that does not exist, or no video at all.
    """
    import tensorflow as tf

    from beam_jobs.video import VIDEO_EXTENSIONS

    found: list[str] = []
    for path in paths:
        filesystems.register_filesystems(path)
        if tf.io.gfile.isdir(path):
            inside = sorted(posixpath.join(folder, name) if "://" in folder else os.path.join(folder, name)
                            for folder, _, names in tf.io.gfile.walk(path)
                            for name in names if _ext(name) in VIDEO_EXTENSIONS)
            if not inside:
                raise PredictError(f"no video ({', '.join(VIDEO_EXTENSIONS)}, any case) under folder {path!r}")
            found += inside
        elif tf.io.gfile.exists(path):
            found.append(path)
        else:
            raise PredictError(f"--videos {path!r} does not exist")
    return list(dict.fromkeys(found))


def output_stems(videos: Sequence[str], side: str | None) -> list[str]:
    """Output name of each video: its stem, ``_left``/``_right`` appended for a side (the ABAW names).

    Raises:
        PredictError: two videos with the same stem (their files would overwrite each other).
    """
    stems = [os.path.splitext(posixpath.basename(v.replace("\\", "/")))[0] + (f"_{side}" if side else "")
             for v in videos]
    seen: dict[str, str] = {}
    for stem, video in zip(stems, videos):
        if stem in seen:
            raise PredictError(f"two videos share the output name {stem!r}: {seen[stem]} and {video}; predict them "
                               f"into different --output folders")
        seen[stem] = video
    return stems


def load_export(model_dir: str):
    """``(model, model_info, face stage config, export dir)`` of an exported model (or its job dir).

    Raises:
        PredictError: the export has no ``face_stage`` (made by an older trainer), or its crop size
            disagrees with the model's.
    """
    import keras
    import tensorflow as tf

    from beam_jobs.faces import FaceStageConfig
    from tfrecords_schema import join_path
    from trainer import layers  # noqa: F401  (registers the trainer's custom layers for load_model)
    from trainer.evaluate import resolve_model_dir
    from trainer.export import MODEL_FILENAME, MODEL_INFO_FILENAME

    model_dir = resolve_model_dir(model_dir)
    with tf.io.gfile.GFile(join_path(model_dir, MODEL_INFO_FILENAME), "r") as f:
        model_info = json.load(f)
    if "face_stage" not in model_info:
        raise PredictError(f"{model_dir}: {MISSING_FACE_STAGE} (the face stage of the training crops is unknown, "
                           f"so prediction cannot rebuild it)")
    face_stage = FaceStageConfig.from_dict(model_info["face_stage"])
    if face_stage.crop_size != int(model_info["crop_size"]):
        raise PredictError(f"{model_dir}: face_stage crop_size {face_stage.crop_size} != model crop_size "
                           f"{model_info['crop_size']}")
    model = keras.saving.load_model(join_path(model_dir, MODEL_FILENAME), compile=False)
    return model, model_info, face_stage, model_dir


@contextlib.contextmanager
def local_video(path: str) -> Iterator[str]:
    """A local path for ``path``: remote videos are copied to a temporary file in chunks, then removed.

    The copy goes through TensorFlow's file systems (``gs://`` natively, ``s3://`` through tensorflow-io
    with the trainer's ``S3_ENDPOINT``/``AWS_*`` settings): the same storage stack as ``--model``,
    ``--output`` and the folder listing, so a video that lists also reads. (``beam_jobs.video`` copies
    remote media with Beam's file systems, whose S3 needs pipeline options a prediction run does not have.)
    """
    import tensorflow as tf

    if "://" not in path:
        yield path
        return
    fd, local = tempfile.mkstemp(suffix=_ext(path), prefix="affectstream-predict-")
    try:
        with os.fdopen(fd, "wb") as out, tf.io.gfile.GFile(path, "rb") as src:
            while chunk := src.read(COPY_CHUNK_BYTES):
                out.write(chunk)
        yield local
    finally:
        os.remove(local)


# --------------------------------------------------------------------------------------------------
# The model on windows of JPEG crops.


class WindowPredictor:
    """Runs the model on batches of windows of JPEG crops, decoded and scaled as the trainer reads records.

    Args:
        model: The exported Keras model (``{head: [B, T, D]}`` outputs).
        heads: Heads to return.
        seq_len: Frames per window (the training ``seq_len``).
        crop_size: Side of the crops.
        batch_size: Windows per model call (a short last batch is padded with empty windows, so the
            function is traced once).
    """

    def __init__(self, model, heads: Sequence[str], seq_len: int, crop_size: int, batch_size: int):
        import tensorflow as tf

        from trainer.frames import decode_frames

        self.heads, self.seq_len, self.batch_size = tuple(heads), seq_len, batch_size
        window_spec = tf.TensorSpec([seq_len, crop_size, crop_size, 3], tf.uint8)
        # The trainer's models take the decoded uint8 pixels and scale them in their first layer. Exports made
        # before that change declare a float input and were trained on the pixels divided by 255.
        float_input = tf.as_dtype(model.inputs[0].dtype).is_floating

        @tf.function(input_signature=[tf.TensorSpec([batch_size, seq_len], tf.string),
                                      tf.TensorSpec([batch_size], tf.int32)])
        def run(jpegs, num_valid):
            frames = tf.map_fn(lambda w: decode_frames(w, crop_size, seq_len), {"image": jpegs, "num_valid": num_valid},
                               fn_output_signature=window_spec)
            if float_input:
                frames = tf.cast(frames, tf.float32) * (1.0 / 255.0)
            outputs = model(frames, training=False)
            return {h: outputs[h] for h in self.heads}

        self._run = run

    def __call__(self, windows: Sequence[Sequence[bytes]]) -> dict[str, np.ndarray]:
        """Outputs ``{head: [frames, D]}`` of the windows' frames, in order (padding left out)."""
        import tensorflow as tf

        jpegs = np.full((self.batch_size, self.seq_len), b"", dtype=object)
        num_valid = np.zeros(self.batch_size, np.int32)
        for i in range(self.batch_size):
            # A short batch is filled up with copies of its first window (an empty window does not decode).
            window = windows[i] if i < len(windows) else windows[0]
            jpegs[i, :len(window)] = window
            num_valid[i] = len(window)
        outputs = self._run(tf.constant(jpegs, tf.string), tf.constant(num_valid))
        keep = np.arange(self.seq_len)[None, :] < num_valid[:, None]
        keep[len(windows):] = False
        return {h: outputs[h].numpy()[keep].astype(np.float32) for h in self.heads}


# --------------------------------------------------------------------------------------------------
# One video.


class Progress:
    """Prints a line every few seconds: the current video, frames and fps, and the totals."""

    def __init__(self, num_videos: int, every_s: float = PROGRESS_EVERY_S):
        self.num_videos, self.every_s = num_videos, every_s
        self.started = self._last = time.monotonic()
        self.total_frames = 0
        self.videos_done = 0
        self._video, self._video_index, self._video_frames, self._video_started = "", 0, 0, self.started

    def start_video(self, index: int, name: str) -> None:
        self._video, self._video_index, self._video_frames = name, index, 0
        self._video_started = time.monotonic()

    def frame(self) -> None:
        self._video_frames += 1
        self.total_frames += 1
        if self.every_s > 0 and self.total_frames % 16 == 0 and time.monotonic() - self._last >= self.every_s:
            self._print()

    def end_video(self) -> None:
        self.videos_done += 1
        self._print()

    def _print(self) -> None:
        now = time.monotonic()
        self._last = now
        video_fps = self._video_frames / max(now - self._video_started, 1e-9)
        total_fps = self.total_frames / max(now - self.started, 1e-9)
        print(f"[predict] video {self._video_index}/{self.num_videos} {self._video}: {self._video_frames} frames "
              f"({video_fps:.1f} fps); all: {self.total_frames} frames, {self.videos_done}/{self.num_videos} videos "
              f"done in {now - self.started:.0f}s ({total_fps:.1f} fps)", file=sys.stderr, flush=True)


class _VideoRun:
    """Collects one video's frames into windows and batches, and the model's outputs in frame order."""

    def __init__(self, predictor: WindowPredictor, pool: concurrent.futures.Executor):
        self._predictor, self._pool = predictor, pool
        self._window: list[bytes] = []
        self._batch: list[list[bytes]] = []
        self._in_flight: collections.deque = collections.deque()
        self._outputs: dict[str, list[np.ndarray]] = {h: [] for h in predictor.heads}
        # Per-frame facts in compact arrays (about 30 bytes a frame).
        self.timestamps, self.boxes = array.array("q"), array.array("f")
        self.decoded, self.has_face = bytearray(), bytearray()

    def add(self, timestamp_us: int, jpeg: bytes, bbox, decoded: bool) -> None:
        self.timestamps.append(timestamp_us)
        self.decoded.append(decoded)
        self.has_face.append(bbox is not None)
        self.boxes.extend((np.nan,) * 4 if bbox is None else bbox)
        self._window.append(jpeg)
        if len(self._window) == self._predictor.seq_len:
            self._end_window()

    def _end_window(self) -> None:
        self._batch.append(self._window)
        self._window = []
        if len(self._batch) == self._predictor.batch_size:
            self._submit()

    def _submit(self) -> None:
        self._in_flight.append(self._pool.submit(self._predictor, self._batch))
        self._batch = []
        while len(self._in_flight) > MAX_BATCHES_IN_FLIGHT:
            self._collect()

    def _collect(self) -> None:
        for head, values in self._in_flight.popleft().result().items():
            self._outputs[head].append(values)

    def finish(self) -> dict[str, np.ndarray]:
        """Runs what is left (the last window padded) and returns ``{head: [frames, D]}``."""
        if self._window:
            self._end_window()
        if self._batch:
            self._submit()
        while self._in_flight:
            self._collect()
        return {h: np.concatenate(parts) for h, parts in self._outputs.items()}


def predict_video(path: str, stem: str, predictor: WindowPredictor, face_stage, side: str | None,
                  label_names: dict, pool: concurrent.futures.Executor,
                  progress: Progress) -> preds_lib.VideoPredictions:
    """The model's raw per-frame outputs for every frame of one video (no no-face rule, no smoothing).

    Frames that do not decode in the middle of the video keep their place: they repeat the previous crop,
    without a face (``decoded`` 0), so line ``i`` of every output stays frame ``i``.

    Raises:
        beam_jobs.video.VideoError: the video cannot be opened or no frame decodes.
    """
    from beam_jobs.faces import FaceCropper, blank_crop, encode_jpeg
    from beam_jobs.video import VideoReader, frame_timestamp_us

    cropper = FaceCropper.from_config(face_stage, side=side)
    run = _VideoRun(predictor, pool)
    last_jpeg = encode_jpeg(blank_crop(face_stage.crop_size), face_stage.jpeg_quality)
    with VideoReader(path) as video:
        expected = 1
        for index, timestamp_us, image in video.frames():
            for missing in range(expected, index):  # Frames the decoder lost: same crop, no face.
                run.add(frame_timestamp_us(missing, video.fps), last_jpeg, None, decoded=False)
                progress.frame()
            face = cropper.process(image)
            last_jpeg = encode_jpeg(face.crop, face_stage.jpeg_quality)
            run.add(timestamp_us, last_jpeg, face.bbox, decoded=True)
            progress.frame()
            expected = index + 1
        fps = video.fps
    outputs = run.finish()
    return preds_lib.VideoPredictions(
        stem=stem, fps=fps, timestamps_us=np.frombuffer(run.timestamps, np.int64).copy(),
        decoded=np.frombuffer(run.decoded, np.uint8).astype(bool),
        has_face=np.frombuffer(run.has_face, np.uint8).astype(bool),
        boxes=np.frombuffer(run.boxes, np.float32).reshape(-1, 4).copy(), outputs=outputs,
        label_names={h: list(label_names.get(h, [])) for h in outputs})


def _write_outputs(args, video: str, raw: preds_lib.VideoPredictions) -> dict:
    """Applies the no-face rule and smoothing, writes the CSV, ABAW files and renders; returns the paths."""
    from tfrecords_schema import join_path

    final = preds_lib.postprocess(raw, no_face=args.no_face, smooth_frames=args.smooth)
    written = {"csv": preds_lib.write_csv(join_path(args.output, f"{raw.stem}.csv"), final),
               "abaw": preds_lib.write_submission(args.output, final)}
    if args.render:
        from trainer import render

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
    p.add_argument("--batch_size", type=int, default=16, help="windows of seq_len frames per model call")
    p.add_argument("--render", action="store_true",
                   help="also write OUT/<stem>.mp4 (box, label, valence/arousal trace) and OUT/<stem>.png (plot)")
    p.add_argument("--annotations", default=None, metavar="DIR",
                   help="ABAW annotation root: score the ABAW files against it (OUT/scores.json)")
    p.add_argument("--score_split", choices=preds_lib.SCORE_SPLITS, default="validation",
                   help="annotation split scored with --annotations")
    p.add_argument("--progress_every", type=float, default=PROGRESS_EVERY_S,
                   help="seconds between progress lines (0: one line per video)")
    add_verbose_flag(p)
    return p


def predict(args) -> int:
    """Predicts every video of ``args``; returns the exit status (1 when a video failed)."""
    import tensorflow as tf

    from beam_jobs.video import VideoError
    from tfrecords_schema import join_path
    from tfrecords_schema.atomic import write_atomically

    filesystems.register_filesystems(args.model, args.output, args.annotations)
    videos = list_videos(args.videos)
    stems = output_stems(videos, args.side)
    model, model_info, face_stage, model_dir = load_export(args.model)
    heads = list(model_info["heads"])
    predictor = WindowPredictor(model, heads, int(model_info["seq_len"]), face_stage.crop_size, args.batch_size)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"[predict] {len(videos)} video(s); model {model_dir} (heads {', '.join(heads)}, seq_len "
          f"{model_info['seq_len']}) on {'GPU ' + gpus[0].name if gpus else 'CPU'}; face stage {face_stage.to_dict()}",
          file=sys.stderr, flush=True)
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
               "smooth": args.smooth, "seq_len": int(model_info["seq_len"]), "videos": done, "failed": failed}
    if args.annotations:
        scores = preds_lib.score_predictions(args.output, args.annotations, args.score_split)
        summary["scores"] = write_atomically(join_path(args.output, SCORES_FILENAME),
                                             json.dumps(scores, indent=2, sort_keys=True) + "\n")
        print(f"scores against {args.annotations} [{args.score_split}] -> {summary['scores']}\n"
              f"{preds_lib.format_scores(scores)}", flush=True)
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
        from beam_jobs.video import VideoError
        from tfrecords_schema import DatasetInfoError
        from trainer.evaluate import EvaluationError

        return errors.report_failure(e, (PredictError, EvaluationError, preds_lib.PredictionFileError, VideoError,
                                         DatasetInfoError, ValueError, FileNotFoundError, ImportError))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
