"""Beam job: labelled face video → sharded TFRecord clips + ``dataset_info.json``.

Runs locally on the DirectRunner (parallel worker processes by default) and, unchanged,
on Dataflow. Example::

    python -m beam_jobs.convert --dataset abaw --videos data/videos --annotations data/annotations \\
        --output /tmp/affect_tfrecords --clip_length 64 --detect_every 5 --bucket_by expression

    # Dataflow (workers install this package from --setup_file):
    python -m beam_jobs.convert --dataset abaw --videos gs://B/videos --annotations gs://B/annotations \\
        --output gs://B/tfrecords --runner DataflowRunner --project P --region europe-west1 \\
        --temp_location gs://B/tmp --setup_file ./pyproject.toml

Output: ``DIR/<split>/<dataset>-<split>[-<bucket>].tfrecord-SSSSS-of-NNNNN`` (the train split one
shard set per rebalancing bucket), ``DIR/dataset_info.json`` and ``DIR/errors/dead_letters.jsonl``.
Exit status: 0 on success, 1 when nothing could be written or the job failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from beam_jobs import faces as faces_lib
from beam_jobs.progress import ProgressMonitor, media_key
from beam_jobs.sources.base import DatasetSource
from tfrecords_schema import DATASET_INFO_FILENAME, TASKS, DatasetInfo, join_path
from tfrecords_schema.buckets import BUCKET_BY

DEFAULT_RUNNER = "DirectRunner"


class UsageError(ValueError):
    """Bad command-line options."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of the job's own options (Beam's options pass through unparsed).

    Returns:
        A parser whose ``parse_known_args`` leaves the Beam pipeline options in its second value.
    """
    parser = argparse.ArgumentParser(
        prog="beam_jobs.convert",
        description="Convert labelled face video to sharded TFRecord clips. Other flags are Beam pipeline "
        "options (--runner, --direct_num_workers, --direct_running_mode, --project, --region, "
        "--temp_location, --setup_file, ...).",
    )
    parser.add_argument("--dataset", default="abaw", help="dataset adapter (default: abaw)")
    parser.add_argument("--videos", default=None,
                        help="folder searched for the media files (optional with --cropped_aligned)")
    parser.add_argument("--annotations", required=True, help="annotation root folder")
    parser.add_argument("--output", required=True, help="output folder (local path or gs://...)")
    parser.add_argument("--tasks", default="", help=f"comma-separated subset of {','.join(TASKS)} (default: all found)")
    parser.add_argument("--cropped_aligned", default=None, help="use the dataset's provided face crops from DIR")
    parser.add_argument("--crop_size", type=int, default=112, help="side of the square face crops (default 112)")
    parser.add_argument("--clip_length", type=int, default=64, help="frames per record (default 64)")
    parser.add_argument("--detector", default="haar", help=f"face detector, one of {sorted(faces_lib.DETECTORS)}")
    parser.add_argument("--detect_every", type=int, default=5, help="detect every N frames, hold the box between")
    parser.add_argument("--max_hold", type=int, default=None,
                        help="frames a face box is held after a missed detection (default 2 x detect_every)")
    parser.add_argument("--detect_width", type=int, default=320, help="width of the downscaled detection image")
    parser.add_argument("--bucket_by", default="expression", help=f"rebalancing buckets, one of {list(BUCKET_BY)}")
    parser.add_argument("--min_shards", type=int, default=1, help="least shards per shard set (>= training workers)")
    parser.add_argument("--shard_bytes", type=int, default=128 << 20, help="target bytes per shard (default 128 MiB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--progress_every", type=float, default=5.0, help="seconds between progress lines (0: off)")
    return parser


def _check(args: argparse.Namespace) -> list[str]:
    if args.videos is None and args.cropped_aligned is None:
        raise UsageError("give --videos (media to decode) or --cropped_aligned (provided crops), or both")
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else []
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown tasks {unknown}; valid tasks: {list(TASKS)}")
    if args.detector not in faces_lib.DETECTORS:
        raise UsageError(f"unknown detector {args.detector!r}; valid detectors: {sorted(faces_lib.DETECTORS)}")
    if args.bucket_by not in BUCKET_BY:
        raise UsageError(f"unknown --bucket_by {args.bucket_by!r}; valid values: {list(BUCKET_BY)}")
    for name, low in (("crop_size", 8), ("clip_length", 1), ("detect_every", 1), ("detect_width", 32),
                      ("min_shards", 1), ("shard_bytes", 1), ("max_hold", 0)):
        if getattr(args, name) is None:
            continue
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    return tasks


def _prepare_output(output: str, overwrite: bool) -> None:
    """Refuses an existing non-empty output unless --overwrite (and then only a conversion output)."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in output:
        if os.path.exists(output) and not os.path.isdir(output):
            raise UsageError(f"output {output} exists and is not a folder")
        entries = os.listdir(output) if os.path.isdir(output) else []
    else:
        entries = [m.path for m in FileSystems.match([join_path(output, "*")])[0].metadata_list]
    if not entries:
        return
    if not overwrite:
        raise UsageError(f"output {output} already exists and is not empty; pass --overwrite to replace it")
    names = {os.path.basename(e.rstrip("/")) for e in entries}
    if not names & {DATASET_INFO_FILENAME, ".tmp-convert", "errors"}:
        raise UsageError(f"--overwrite refused: {output} does not look like a conversion output "
                         "(no dataset_info.json); delete it yourself")
    FileSystems.delete([output if "://" not in output else output.rstrip("/") + "/"])


def _pipeline_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # Local workers are chatty at INFO.
    options = PipelineOptions(args)
    runner = options.view_as(StandardOptions).runner or DEFAULT_RUNNER
    if runner in ("DirectRunner", "direct") and not any(a.startswith("--direct_running_mode") for a in args):
        # Local speed: one worker process per core unless the user says otherwise.
        given = any(a.startswith("--direct_num_workers") for a in args)
        workers = options.view_as(DirectOptions).direct_num_workers if given else (os.cpu_count() or 1)
        mode = "multi_processing" if workers > 1 else "in_memory"  # One worker: no process to start.
        options = PipelineOptions(args + [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"])
    return options


def _opencv_threads(options) -> int:
    """1 when the DirectRunner runs one worker process per core (parallelism comes from Beam), else 0."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    direct = options.view_as(DirectOptions)
    if (options.view_as(StandardOptions).runner or DEFAULT_RUNNER) in ("DirectRunner", "direct") and \
            direct.direct_running_mode == "multi_processing" and (direct.direct_num_workers or 1) > 1:
        return 1
    return 0


def format_summary(info: DatasetInfo) -> str:
    """Short per-split summary: clips, frames, faces found, dropped by reason, throughput."""
    lines = []
    seconds = float(info.run.get("seconds", 0.0)) or 1e-9
    for split, s in sorted(info.splits.items()):
        a = s.accounting
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(a.dropped.items())) or "none"
        lines.append(
            f"  {split}: {s.num_clips} clips, {s.num_frames} frames in {len(s.shards)} shards; labelled "
            f"{a.labelled_frames} = with face {a.written_frames_with_face} + without face "
            f"{a.written_frames_without_face} + dropped {a.dropped_frames} ({dropped}); "
            f"{a.written_frames / seconds:.1f} labelled frames/s"
        )
    if info.failures.get("dead_letters"):
        lines.append(f"  dead letters: {info.failures['dead_letters']} {info.failures.get('by_reason', {})} "
                     f"-> {', '.join(info.failures.get('files', []))}")
    if info.unused_media:
        lines.append(f"  media without annotation (skipped): {len(info.unused_media)}")
    return "\n".join(lines)


def _read_info(output: str) -> DatasetInfo:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(join_path(output, DATASET_INFO_FILENAME)) as f:
        return DatasetInfo.from_json(f.read().decode("utf-8"))


def _write_info(info: DatasetInfo, output: str, tmp_dir: str) -> None:
    """Rewrites ``dataset_info.json`` atomically (temp file under ``tmp_dir``, then rename)."""
    from beam_jobs.transforms import write_atomically

    write_atomically(join_path(output, DATASET_INFO_FILENAME), info.to_json().encode("utf-8"), tmp_dir)


def run(argv: list[str] | None = None, *, source: DatasetSource | None = None) -> int:
    """Runs the conversion; returns the process exit code.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
        source: A ready dataset adapter (tests); default: built from ``--dataset``.
    """
    parser = build_parser()
    try:
        args, beam_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        tasks = _check(args)
        if source is None:
            from beam_jobs.sources import make_source

            source = make_source(args.dataset, annotations=args.annotations, videos=args.videos,
                                 tasks=tasks or None, cropped_aligned=args.cropped_aligned)
        options = _pipeline_options(beam_args)
        from apache_beam.io.filesystems import FileSystems

        FileSystems.set_options(options)  # Credentials/endpoints of gs:// or s3:// outputs, here in the driver too.
        _prepare_output(args.output, args.overwrite)
    except (UsageError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2

    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems

    from beam_jobs import transforms

    started = time.monotonic()
    try:
        discovery = source.discover()
    except (ValueError, OSError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    letters = [transforms.dead_letter_dict(d) for d in discovery.dead_letters]
    if not discovery.tracks:
        print(f"convert: error: no annotated tracks found under {args.annotations}", file=sys.stderr)
        for d in letters:
            print(f"  {d['reason']}: {d['source']}: {d['message']}", file=sys.stderr)
        return 1
    out_tasks = tuple(t for t in TASKS if t in discovery.tasks and (not tasks or t in tasks))
    config = transforms.ConvertConfig(
        dataset_name=source.name or args.dataset, output=args.output, label_names=discovery.label_names,
        tasks=out_tasks, crop_size=args.crop_size, clip_length=args.clip_length, detector=args.detector,
        detect_every=args.detect_every, detect_width=args.detect_width, max_hold=args.max_hold, bucket_by=args.bucket_by,
        min_shards=args.min_shards, shard_bytes=args.shard_bytes, opencv_threads=_opencv_threads(options),
    )
    recorded = {k: v for k, v in vars(args).items() if k not in ("overwrite", "progress_every")}
    recorded["beam_args"] = list(beam_args)
    splits = sorted({t.split for t in discovery.tracks} | {d.split for d in discovery.split_drops})
    media = [media_key(t) for t in discovery.tracks]
    print(f"[convert] {len(discovery.tracks)} tracks ({len(set(media))} videos) in {splits}; "
          f"tasks {list(out_tasks)}; output {args.output}", flush=True)
    progress = ProgressMonitor(config.progress_dir, len(discovery.tracks), args.progress_every, media=media)
    if args.progress_every > 0:
        progress.start()
    try:
        with beam.Pipeline(options=options) as p:
            _ = (
                p
                | "CreateTracks" >> beam.Create(discovery.tracks)
                | "ConvertTracks" >> transforms.ConvertTracks(
                    source, config, splits, recorded, letters, discovery.unused_media, discovery.split_drops)
            )
    except Exception as e:  # noqa: BLE001 - any pipeline failure is reported and turns into exit status 1.
        print(f"convert: error: the pipeline failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if progress.is_alive():
            progress.stop()
            progress.join(timeout=5)
            progress.report()  # The final count, whatever the polling missed.
    seconds = time.monotonic() - started
    info = _read_info(args.output)
    written = sum(s.accounting.written_frames for s in info.splits.values())
    _, _, pids = progress.poll()
    info.run = {**info.run, "seconds": round(seconds, 3),
                "frames_per_second": round(written / max(seconds, 1e-9), 2), "worker_processes": len(pids)}
    _write_info(info, args.output, config.tmp_dir)
    try:
        FileSystems.delete([config.tmp_dir if "://" not in config.tmp_dir else config.tmp_dir + "/"])
    except Exception:  # noqa: BLE001 - the temp folder may already be gone.
        pass
    try:
        info.check()
    except ValueError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(f"[convert] done in {seconds:.1f} s ({info.run['tracks']} tracks in {len(pids)} worker processes)\n"
          f"{format_summary(info)}", flush=True)
    if sum(s.num_clips for s in info.splits.values()) == 0:
        reasons = {}
        for s in info.splits.values():
            for k, v in s.accounting.dropped.items():
                reasons[k] = reasons.get(k, 0) + v
        print(f"convert: error: nothing could be written; dropped frames by reason: {reasons}; "
              f"see {join_path(args.output, 'errors', 'dead_letters.jsonl')}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    """Console entry point: runs with ``sys.argv`` and exits with the run's status."""
    sys.exit(run())


if __name__ == "__main__":
    main()
