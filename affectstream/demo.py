"""The demo: generate → convert → inspect → train → evaluate → predict → report, on the embedded dataset.

It makes the demo dataset (labels visible in drawn faces, ABAW-5 layout, see
:mod:`affectstream.demo_data`), converts it with the Beam job on DirectRunner,
verifies the shards, trains the CNN+RNN on the expression task with balanced
sampling in the paper's two stages (the CNN per frame, then the GRU stack on
its frozen features: one exported model), evaluates the exported model on the
whole validation split and prints the metrics and where the confusion matrix is. It also converts a real video
that nobody on the team made (OpenCV's ``Megamind.avi`` from Debian's
``opencv-doc``) through real face detection; that track carries placeholder
labels (every frame "Neutral") only to exercise detection and the accounting
on real footage, goes to its own output and is never trained on. Last, it runs
``affectstream predict`` with the exported model on one demo validation video
(scored against its annotation files) and on the real video, and prints where
the CSVs, the ABAW files and the plots went.

Example:
    python -m affectstream.demo --output demo_output
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from affectstream import demo_data, real_videos
from tfrecords_schema import read_dataset_info
from tfrecords_schema.cli import add_verbose_flag, command_prog

# How the demo converts and trains; tests/test_demo_learning.py and bench/learning.py use the same settings.
# 32 px crops: the drawn expressions stay legible (tests/test_demo_learning.py) at a quarter of the CNN's work
# at 64 px, which is what keeps the demo near 3 minutes on 2 cores (docs/benchmarks.md, "Learning").
DEMO_CONVERT_FLAGS = ("--crop_size", "32", "--clip_length", "32", "--detect_every", "3", "--bucket_by", "expression",
                      "--min_shards", "2")
# The model and the options both stages share (and an end-to-end run of the same model: bench/learning.py).
DEMO_TRAIN_FLAGS = ("--task", "expr", "--batch_size", "16", "--seq_len", "4", "--cnn_width", "0.5",
                    "--learning_rate", "0.001", "--sampling", "balanced", "--backbone", "simple_cnn", "--rnn", "gru",
                    "--seed", "0")
# The demo trains the paper's way (Rangulov & Fahim 2020): the CNN per frame, 64 frames a step (as many as an
# end-to-end step's 16 clips x 4 frames), then the GRU stack on its frozen features. On this dataset the per-frame
# CNN learns far faster than the CNN+RNN end to end (docs/benchmarks.md: 0.92 after 300 steps against 0.76 after
# 400), and the recurrent stage costs little: its features are computed once.
DEMO_FRAMES_BATCH_SIZE = 64  # frames a step of the CNN stage (its --batch_size overrides DEMO_TRAIN_FLAGS')
DEMO_FRAMES_FLAGS = ("--stage", "frames", "--batch_size", str(DEMO_FRAMES_BATCH_SIZE))
DEMO_SEQUENCE_FLAGS = ("--stage", "sequence")
DEMO_STEPS_PER_EPOCH = 50  # one validation pass (and best-epoch candidate) every 50 steps
DEMO_CNN_STEPS = 300
DEMO_RNN_STEPS = 200


def train_two_stage(records: str, cnn_job: str, job: str, *, cnn_steps: int = DEMO_CNN_STEPS,
                    rnn_steps: int = DEMO_RNN_STEPS, extra: tuple[str, ...] = ()) -> int:
    """Trains the demo's model: ``--stage frames`` into ``cnn_job``, then ``--stage sequence`` into ``job``.

    ``job/export`` is the one exported model (CNN + GRU stack). Steps are rounded up to whole epochs of
    ``DEMO_STEPS_PER_EPOCH``. Returns 0, or the exit code of the stage that failed.
    """
    from trainer import train

    def stage(job_dir: str, steps: int, *flags: str) -> int:
        epochs = max(1, -(-steps // DEMO_STEPS_PER_EPOCH))
        return train.run(["--data", records, "--job_dir", job_dir, "--epochs", str(epochs), "--steps_per_epoch",
                          str(DEMO_STEPS_PER_EPOCH), *DEMO_TRAIN_FLAGS, *flags, *extra])

    return (stage(cnn_job, cnn_steps, *DEMO_FRAMES_FLAGS)
            or stage(job, rnn_steps, *DEMO_SEQUENCE_FLAGS, "--features_from", cnn_job))


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def _check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"demo: {what} failed with exit code {code}")


def demo_validation_video(videos_dir: str, num_train_videos: int) -> str:
    """The media path of the demo's first validation video (all of its tasks in the validation split)."""
    video = next(v for v in demo_data.demo_videos(num_train_videos)
                 if v.expr_split == v.va_split == v.au_split == "validation")
    return os.path.join(videos_dir, video.media)


def _predict_new_videos(export: str, videos: list[str], annotations: str, out: str) -> list[str]:
    """Runs ``affectstream predict`` on ``videos``; returns report lines naming its outputs."""
    from trainer.prediction import predict

    _check(predict.run(["--model", export, "--videos", *videos, "--output", out, "--render",
                        "--annotations", annotations, "--progress_every", "0"]), "prediction")
    with open(os.path.join(out, predict.SUMMARY_FILENAME), encoding="utf-8") as f:
        summary = json.load(f)
    lines = []
    for video in summary["videos"]:
        abaw = ", ".join(sorted(video["abaw"].values()))
        lines.append(f"predictions for {os.path.basename(video['video'])} ({video['frames']} frames, face in "
                     f"{video['frames_with_face']}):\n  CSV {video['csv']}\n  ABAW {abaw}\n  plot {video['plot']}"
                     f"\n  video {video['render']}")
    if "scores" in summary:
        from trainer.prediction.scoring import format_scores

        with open(summary["scores"], encoding="utf-8") as f:
            scores = format_scores(json.load(f)).splitlines()[0]
        lines.append(f"predicted validation video against its annotation files: {scores} ({summary['scores']})")
    return lines


DEMO_MARKER = ".affectstream-demo"  # Written first into the demo's folder: only such a folder is replaced.
# What the demo makes under its folder (the marker aside); anything else there is the user's.
SOURCE_DIRNAME, RECORDS_DIRNAME, CNN_JOB_DIRNAME, JOB_DIRNAME = "source", "records", "cnn_job", "job"
REAL_SOURCE_DIRNAME, REAL_RECORDS_DIRNAME, PREDICTIONS_DIRNAME = "real_source", "real_records", "predictions"
DEMO_ENTRIES = (SOURCE_DIRNAME, RECORDS_DIRNAME, CNN_JOB_DIRNAME, JOB_DIRNAME, REAL_SOURCE_DIRNAME,
                REAL_RECORDS_DIRNAME, PREDICTIONS_DIRNAME)
# The files a demo run wrote under DEMO_ENTRIES (written as the run ends, however it ends): a file in them that is
# not listed was put there since, and is the user's.
DEMO_FILES = ".affectstream-demo-files.json"


def _evaluate_report(rel: str) -> bool:
    """Whether ``rel`` (under ``out``) is a report ``affectstream evaluate`` writes by default next to the export of one
    of the demo's jobs (``job/evaluation/<split>/metrics.json``, ...): the tool's, as the README's evaluate command
    puts them there (the next demo run refused, calling them the user's)."""
    from trainer.evaluation.reports import EVALUATION_DIRNAME, REPORT_FILENAMES

    parts = rel.split("/")
    return (len(parts) >= 4 and parts[0] in (JOB_DIRNAME, CNN_JOB_DIRNAME) and parts[1] == EVALUATION_DIRNAME
            and parts[-1] in REPORT_FILENAMES)


def _files_under_entries(out: str) -> list[str]:
    """Files (and links) under the demo's entries of ``out``, as ``/``-separated paths relative to it, sorted."""
    found = []
    for entry in DEMO_ENTRIES:
        top = os.path.join(out, entry)
        if os.path.lexists(top) and (not os.path.isdir(top) or os.path.islink(top)):
            found.append(entry)  # A file (or link) under an entry's name: listed only if the demo wrote it.
            continue
        if not os.path.isdir(top):
            continue
        for folder, dirs, files in os.walk(top):
            names = files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]
            found += [os.path.relpath(os.path.join(folder, n), out).replace(os.sep, "/") for n in names]
    return sorted(found)


def record_demo_files(out: str) -> None:
    """Lists what this run wrote under the demo's entries (:data:`DEMO_FILES`), so the next run deletes only that."""
    if os.path.isdir(out):
        with open(os.path.join(out, DEMO_FILES), "w", encoding="utf-8") as f:
            json.dump(_files_under_entries(out), f)


def _demo_files_written(out: str) -> set[str] | None:
    """The files the last run listed (:data:`DEMO_FILES`), or None without a readable list."""
    try:
        with open(os.path.join(out, DEMO_FILES), encoding="utf-8") as f:
            listed = json.load(f)
    except (OSError, ValueError):
        return None
    return set(listed) if isinstance(listed, list) else None


def claim_demo_folder(out: str) -> None:
    """Clears ``out`` of an earlier demo run's entries, if the demo made it; creates it otherwise.

    Never deletes what the tool did not write: a non-empty folder without the demo's marker is refused, and so is
    one holding anything besides the marker and :data:`DEMO_ENTRIES` (files put there since the last demo run).

    Raises:
        ValueError: ``out`` is a file, a non-empty folder the demo did not create, or holds entries of the user's.
    """
    from tfrecords_schema.transaction import describe_foreign

    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"--output {out} exists and is not a folder")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if entries:
        if not os.path.isfile(os.path.join(out, DEMO_MARKER)):
            raise ValueError(f"--output {out} is not empty and was not made by the demo (no {DEMO_MARKER}); "
                             "choose another folder or empty it yourself")
        foreign = [f"{e}/" if os.path.isdir(os.path.join(out, e)) else e for e in entries
                   if e not in DEMO_ENTRIES and e not in (DEMO_MARKER, DEMO_FILES)]
        written = _demo_files_written(out)
        inside = [f for f in _files_under_entries(out) if written is None or f not in written]
        if inside and written is None:
            raise ValueError(f"--output {out} was made by the demo, but holds no record of the files its last run "
                             f"wrote ({DEMO_FILES}: an older version, or a run killed outright), so its "
                             f"{len(inside)} files cannot be told from yours; nothing was deleted: delete the folder "
                             "yourself or choose another one")
        foreign += [f for f in inside if not _evaluate_report(f)]
        if foreign:
            raise ValueError(f"--output {out} was made by the demo, but {describe_foreign(foreign, 'the demo')}; "
                             "nothing was deleted: move them elsewhere or choose another folder")
        for entry in (e for e in entries if e in DEMO_ENTRIES):
            path = os.path.join(out, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    os.makedirs(out, exist_ok=True)
    if os.path.lexists(os.path.join(out, DEMO_FILES)):  # The last run's list: this run writes its own as it ends.
        os.unlink(os.path.join(out, DEMO_FILES))
    with open(os.path.join(out, DEMO_MARKER), "w", encoding="utf-8") as f:
        f.write("made by `affectstream demo`; the next demo run into this folder replaces what it made here\n")


def run(argv: list[str] | None = None) -> int:
    """Runs the whole demo; returns 0 on success."""
    parser = argparse.ArgumentParser(prog=command_prog("affectstream.demo"), description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo_output", help="folder for everything the demo makes (replaced only if an earlier demo made it)")
    parser.add_argument("--frames_per_video", type=int, default=150)
    parser.add_argument("--num_train_videos", type=int, default=16)
    parser.add_argument("--cnn_steps", type=int, default=DEMO_CNN_STEPS,
                        help="training steps of the per-frame CNN (stage 1; whole epochs of 50 steps)")
    parser.add_argument("--rnn_steps", type=int, default=DEMO_RNN_STEPS,
                        help="training steps of the GRU stack on the CNN's features (stage 2)")
    parser.add_argument("--workers", type=int, default=2, help="Beam DirectRunner workers")
    parser.add_argument("--skip_real_video", action="store_true", help="do not fetch/convert the real video")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)

    out = os.path.abspath(args.output)
    try:
        demo_data.check_sizes(args.frames_per_video, args.num_train_videos)
        claim_demo_folder(out)
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    try:
        return _demo_steps(args, out)
    finally:
        try:  # However the run ends: the next one deletes what this one wrote, and only that.
            record_demo_files(out)
        except OSError as e:  # (A full disk, say: the run's own error, if any, is the one to see.)
            print(f"demo: warning: cannot list the files this run wrote in {out} ({e}); the next run will delete "
                  "nothing there", file=sys.stderr)


def _demo_steps(args, out: str) -> int:
    """The demo's six steps into its claimed folder ``out``; returns 0."""
    from beam_jobs import convert, inspect_dataset
    from trainer.evaluation import evaluate
    from trainer.evaluation.reports import EVALUATION_DIRNAME, format_summary

    source, records, job = (os.path.join(out, n) for n in (SOURCE_DIRNAME, RECORDS_DIRNAME, JOB_DIRNAME))
    cnn_job = os.path.join(out, CNN_JOB_DIRNAME)
    started = time.time()

    t = _step("1/6 generate the demo dataset (ABAW-5 layout)")
    made = demo_data.make_demo_dataset(source, frames_per_video=args.frames_per_video,
                                       num_train_videos=args.num_train_videos)
    print(f"{made['num_videos']} videos, {made['num_frames']} frames in {time.time() - t:.1f}s")

    t = _step("2/6 convert with Apache Beam (DirectRunner)")
    beam_args = ["--runner", "DirectRunner", "--direct_num_workers", str(args.workers),
                 "--direct_running_mode", "multi_processing"]
    _check(convert.run([
        "--dataset", "abaw", "--videos", made["videos"], "--annotations", made["annotations"],
        "--output", records, *DEMO_CONVERT_FLAGS, *beam_args,
    ]), "conversion")
    print(f"converted in {time.time() - t:.1f}s")

    _step("3/6 inspect and verify the shards")
    _check(inspect_dataset.run([records, "--verify"]), "inspect --verify")

    t = _step("4/6 train the CNN+RNN in the paper's two stages (expression, balanced sampling): the CNN per frame, "
              "then the GRU stack on its features")
    _check(train_two_stage(records, cnn_job, job, cnn_steps=args.cnn_steps, rnn_steps=args.rnn_steps), "training")
    print(f"trained in {time.time() - t:.1f}s")

    _step("5/6 evaluate the exported model on the whole validation split")
    report_dir = os.path.join(job, EVALUATION_DIRNAME)
    _check(evaluate.run(["--model", os.path.join(job, "export"), "--data", records, "--report_dir", report_dir]),
           "evaluation")

    real_summary = "skipped (--skip_real_video)"
    real_video = None
    if not args.skip_real_video:
        _step("extra: a real video through real face detection")
        try:
            video = real_videos.opencv_sample_videos()[0]
        except real_videos.RealVideoUnavailable as e:
            real_summary = f"unavailable: {e}"
            print(real_summary)
        else:
            real_videos_dir, real_ann, frames = real_videos.write_placeholder_layout(video,
                                                                                     os.path.join(out, REAL_SOURCE_DIRNAME))
            real_records = os.path.join(out, REAL_RECORDS_DIRNAME)
            _check(convert.run([
                "--dataset", "abaw", "--videos", real_videos_dir, "--annotations", real_ann,
                "--output", real_records, "--crop_size", "112", "--clip_length", "32", "--detect_every", "2",
                "--bucket_by", "none", *beam_args,
            ]), "conversion of the real video")
            _check(inspect_dataset.run([real_records, "--verify"]), "inspect of the real video")
            acc = read_dataset_info(real_records).splits["validation"].accounting
            real_summary = (f"{os.path.basename(video)}: {frames} frames, face found in "
                            f"{acc.written_frames_with_face}, without face {acc.written_frames_without_face},"
                            f" dropped {acc.dropped} -> {real_records}")
            real_video = video

    t = _step("6/6 predict on new video: a demo validation video" + (" and the real video" if real_video else ""))
    new_videos = [demo_validation_video(made["videos"], args.num_train_videos)] + ([real_video] if real_video else [])
    predicted = _predict_new_videos(os.path.join(job, "export"), new_videos, made["annotations"],
                                    os.path.join(out, PREDICTIONS_DIRNAME))
    print(f"predicted in {time.time() - t:.1f}s")

    with open(os.path.join(report_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    print("\n=== report ===")
    print(format_summary(metrics, read_dataset_info(records).expression_names))
    pngs = sorted(os.path.join(report_dir, f) for f in os.listdir(report_dir) if f.endswith(".png"))
    print(f"confusion matrix: {', '.join(pngs) or 'none written'}")
    print(f"records: {records}\njob: {job} (its CNN: {cnn_job})\nreal video: {real_summary}")
    print("\n".join(predicted))
    print(f"demo finished in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run())
