"""Beam job: labelled face video → sharded TFRecord clips + ``dataset_info.json``.

Runs locally on the DirectRunner (parallel worker processes by default) and, unchanged,
on Dataflow. Example::

    python -m beam_jobs.convert --dataset abaw --videos data/videos --annotations data/annotations \\
        --output /tmp/affect_tfrecords --clip_length 64 --detect_every 5 --bucket_by tasks

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

from beam_jobs.convert_options import DEFAULT_RUNNER, UsageError, build_parser, check_options, recorded_options
from beam_jobs.faces import stage as faces_lib
from beam_jobs.inspect_dataset import media_lines
from beam_jobs.media.video import describe_truncation
from beam_jobs.sources.base import DatasetSource, Discovery
from tfrecords_schema import SPLIT_SELECTION, TASKS, DatasetInfo, join_path
from tfrecords_schema.dataset_info import MEDIA_KEY, sum_counts
from tfrecords_schema.tasks import LabelNameError, label_names_problem


class ConvertError(RuntimeError):
    """The conversion could not run or write anything (exit status 1)."""


def prepare_output(output: str, overwrite: bool) -> bool:
    """Refuses an existing non-empty output unless --overwrite, and then unless this tool wrote it (deletes nothing).

    Returns:
        Whether a previous output is there (replaced only once the new one is complete).

    Raises:
        UsageError: the output is a file, holds something and ``overwrite`` is off, or is not this tool's
            (the message names the entries it did not write); an object-store output that cannot be listed or
            written (checked by writing and removing a small probe object).
    """
    from beam_jobs.pipeline.output_folder import OutputRefused, check_output

    try:
        replacing = check_output(output, overwrite)
        if "://" in output:  # A bucket that does not exist failed only when the first shard was written.
            _probe_write(output)
        return replacing
    except OutputRefused as e:
        raise UsageError(str(e)) from e
    except Exception as e:  # noqa: BLE001 - each storage client has its own errors (BeamIOError, S3ClientError, ...)
        causes = getattr(e, "exception_details", None) or {}  # (BeamIOError: the storage client's own error)
        reason = (next((str(v) for v in causes.values()), "") or str(e)).strip() or type(e).__name__
        raise UsageError(f"cannot write to --output {output}: {reason.splitlines()[-1][:300]}") from e


def _check_s3_credentials(options, output: str) -> None:
    """Refuses an ``s3://`` output with no AWS credentials anywhere (options, environment, AWS files): Beam's S3
    client retried "Unable to locate credentials" for minutes before failing with a traceback.

    Raises:
        UsageError: naming where credentials are looked for.
    """
    if not output.startswith("s3://"):
        return
    from apache_beam.options.pipeline_options import S3Options

    if options.view_as(S3Options).s3_access_key_id:
        return
    try:
        import boto3
    except ImportError:
        return  # (Beam's S3 file system needs it: its own error says so.)
    if boto3.session.Session().get_credentials() is None:
        raise UsageError(f"no AWS credentials for --output {output}: pass --s3_access_key_id and "
                         "--s3_secret_access_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS "
                         "profile)")


def _probe_write(output: str) -> None:
    """Writes and removes a small object under ``output`` through Beam's file systems (the run's own)."""
    import os

    from apache_beam.io.filesystems import FileSystems

    from tfrecords_schema import join_path
    from tfrecords_schema.storage import WRITE_PROBE_PREFIX

    probe = join_path(output, f"{WRITE_PROBE_PREFIX}{os.getpid()}")
    with FileSystems.create(probe) as f:
        f.write(b"probe")
    FileSystems.delete([probe])


def pipeline_options(beam_args: list[str]):
    """Beam's pipeline options from the command line; locally, one worker process per core by default."""
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


def opencv_threads(options) -> int:
    """1 when the DirectRunner runs one worker process per core (parallelism comes from Beam), else 0."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    direct = options.view_as(DirectOptions)
    if (options.view_as(StandardOptions).runner or DEFAULT_RUNNER) in ("DirectRunner", "direct") and \
            direct.direct_running_mode == "multi_processing" and (direct.direct_num_workers or 1) > 1:
        return 1
    return 0


def format_summary(info: DatasetInfo) -> str:
    """Short per-split summary: clips, frames, faces found, dropped by reason; then the run's throughput (labelled
    frames written over the whole run's wall time, ``run.frames_per_second`` in ``dataset_info.json``)."""
    lines = []
    seconds = float(info.run.get("seconds", 0.0)) or 1e-9
    for split, s in sorted(info.splits.items()):
        a = s.accounting
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(a.dropped.items())) or "none"
        lines.append(
            f"  {split}: {s.num_clips} clips, {s.num_frames} frames in {len(s.shards)} shards; labelled "
            f"{a.labelled_frames} = with face {a.written_frames_with_face} + without face "
            f"{a.written_frames_without_face} + dropped {a.dropped_frames} ({dropped})"
        )
    written = sum(s.accounting.written_frames for s in info.splits.values())
    lines.append(f"  written: {written} labelled frames in {seconds:.1f} s of the whole run, "
                 f"{written / seconds:.1f} frames/s")
    if info.failures.get("dead_letters"):
        lines.append(f"  dead letters: {info.failures['dead_letters']} {info.failures.get('by_reason', {})} "
                     f"-> {', '.join(info.failures.get('files', []))}")
    if info.unused_media:
        lines.append(f"  media without annotation (skipped): {len(info.unused_media)}")
    lines += [f"  {line}" for line in media_lines(info)]
    return "\n".join(lines)


def _setup(argv: list[str], source: DatasetSource | None):
    """Parses and checks the options, builds the adapter and the pipeline options, prepares the output.

    Raises:
        UsageError: bad options (or the adapter refused them).
    """
    from beam_jobs.sources import SOURCES

    args, beam_args = build_parser().parse_known_args(argv)
    from apache_beam.io.filesystems import FileSystems  # After parsing: `--help` does not wait for Beam.

    tasks = check_options(args)
    try:
        if source is None:
            source = SOURCES[args.dataset].from_args(args, tasks or None)
    except ValueError as e:
        raise UsageError(str(e)) from e
    options = pipeline_options(beam_args)
    FileSystems.set_options(options)  # Credentials/endpoints of gs:// or s3:// outputs, here in the driver too.
    _check_s3_credentials(options, args.output)
    prepare_output(args.output, args.overwrite)
    return args, beam_args, tasks, source, options


def _discover(source: DatasetSource, args: argparse.Namespace) -> Discovery:
    """Lists the tracks; refuses a run with none, or with unlisted input folders unless --allow_partial.

    Raises:
        ConvertError: the listing failed, found no track, or missed folders.
        UsageError: a class (or AU) name holds a comma, quote, line break or NUL.
    """
    try:
        discovery = source.discover()
    except LabelNameError as e:  # Found by the adapter, with the file and line of the name.
        raise UsageError(str(e)) from e
    except (ValueError, OSError) as e:
        raise ConvertError(str(e)) from e
    unlisted = list(getattr(discovery, "unlisted_folders", []) or [])
    if unlisted and not args.allow_partial:
        raise ConvertError(f"{len(unlisted)} input folder(s) could not be listed: {', '.join(unlisted)}; what they "
                           "hold would be missing from the output (pass --allow_partial to convert the rest)")
    problem = label_names_problem(discovery.label_names)
    if problem:  # Before any video is read: such a name would shift the columns of every CSV written later.
        raise UsageError(f"{searched_inputs(args)}: {problem}")
    if not discovery.tracks:
        lines = [f"no annotated tracks found: searched {searched_inputs(args)}"]
        lines += [f"  {d.reason}: {d.source}: {d.message}" for d in discovery.dead_letters]
        raise ConvertError("\n".join(lines))
    return _select(discovery, args.select_fraction)


def _select(discovery: Discovery, fraction: float) -> Discovery:
    """The discovery with the selection split held out of train (:mod:`beam_jobs.sources.selection`), said in a line."""
    from beam_jobs.sources.selection import hold_out

    held = hold_out(discovery, fraction)
    moved = [t for t in held.tracks if t.split == SPLIT_SELECTION]
    if moved:
        print(f"[convert] selection split: {len({t.subject_id for t in moved})} train subject(s), {len(moved)} "
              f"track(s), held out (--select_fraction {fraction}): training selects its best epoch on them", flush=True)
    elif fraction > 0:
        print(f"[convert] selection split: none (too few train subjects for --select_fraction {fraction}); training "
              "will select its best epoch on the split it reports", flush=True)
    return held


def searched_inputs(args: argparse.Namespace) -> str:
    """The inputs a run was given, for messages: ``--dataset manifest (--manifest m.csv, --videos v)``."""
    given = [f"--{name} {getattr(args, name)}" for name in ("annotations", "manifest", "videos", "cropped_aligned")
             if getattr(args, name, None)]
    return f"--dataset {args.dataset} ({', '.join(given) or 'no input folder given'})"


def make_config(args: argparse.Namespace, tasks: list[str], source: DatasetSource, discovery: Discovery, options,
                output: str | None = None):
    """The workers' :class:`~beam_jobs.pipeline.config.ConvertConfig` from the options and the discovery.

    Args:
        output: Where the workers write (the run's staging folder); default ``--output``.
    """
    from beam_jobs.pipeline.config import ConvertConfig

    out_tasks = tuple(t for t in TASKS if t in discovery.tasks and (not tasks or t in tasks))
    return ConvertConfig(
        dataset_name=source.name or args.dataset, output=output or args.output, label_names=discovery.label_names,
        tasks=out_tasks, face=faces_lib.FaceStageConfig.from_dict(vars(args)), clip_length=args.clip_length,
        bucket_by=args.bucket_by, min_shards=args.min_shards, shard_bytes=args.shard_bytes,
        opencv_threads=opencv_threads(options),
    )


def _run_pipeline(source, config, discovery: Discovery, recorded: dict, options, progress_every: float) -> int:
    """Runs ConvertTracks over the discovered tracks, printing progress; returns the worker processes seen.

    Raises:
        ConvertError: the pipeline failed.
    """
    import apache_beam as beam

    from beam_jobs.pipeline.finalize import dead_letter_dict
    from beam_jobs.pipeline.progress import ProgressMonitor, media_key
    from beam_jobs.pipeline.transforms import ConvertTracks

    splits = sorted({t.split for t in discovery.tracks} | {d.split for d in discovery.split_drops})
    media = [media_key(t) for t in discovery.tracks]
    print(f"[convert] {len(discovery.tracks)} tracks ({len(set(media))} videos) in {splits}; "
          f"tasks {list(config.tasks)}; output {recorded['output']}"
          + (f" (built in {config.output}, moved there on success)" if config.output != recorded["output"] else ""),
          flush=True)
    for note in discovery.notes:
        print(f"[convert] note: {note}", flush=True)
    progress = ProgressMonitor(config.progress_dir, len(discovery.tracks), progress_every, media=media)
    if progress_every > 0:
        progress.start()
    letters = [dead_letter_dict(d) for d in discovery.dead_letters]
    try:
        with beam.Pipeline(options=options) as p:
            _ = (
                p
                | "CreateTracks" >> beam.Create(discovery.tracks)
                | "ConvertTracks" >> ConvertTracks(
                    source, config, splits, recorded, letters, discovery.unused_media, discovery.split_drops)
            )
    except Exception as e:
        if _interrupted(e):  # Ctrl-C reached a worker thread of this process: Beam wraps it in its error.
            raise KeyboardInterrupt from e
        raise ConvertError(f"the pipeline failed: {type(e).__name__}: {e}") from e
    finally:
        if progress.is_alive():
            progress.stop()
            progress.join(timeout=5)
            progress.report()  # The final count, whatever the polling missed.
    return len(progress.poll()[3])


def _finish(config, seconds: float, worker_processes: int) -> DatasetInfo:
    """Adds the run's timing to the staged info, writes ``DIR/dataset_info.json`` once, removes the temp folder."""
    from beam_jobs.pipeline.files import delete_tree
    from beam_jobs.pipeline.finalize import load_dataset_info, save_dataset_info

    info = load_dataset_info(config.tmp_dir)
    written = sum(s.accounting.written_frames for s in info.splits.values())
    info.run = {**info.run, "seconds": round(seconds, 3),
                "frames_per_second": round(written / max(seconds, 1e-9), 2), "worker_processes": worker_processes}
    save_dataset_info(info, config.output)
    try:
        delete_tree(config.tmp_dir)
    except OSError as e:  # Beam's BeamIOError is one; the output is complete, a leftover temp folder is not fatal.
        print(f"convert: warning: temp folder {config.tmp_dir} not removed: {e}", file=sys.stderr)
    return info


def _report(info: DatasetInfo, seconds: float) -> None:
    """Checks the accounting and prints the summary.

    Raises:
        ConvertError: the accounting does not add up.
    """
    try:
        info.check()
    except ValueError as e:
        raise ConvertError(str(e)) from e
    print(f"[convert] done in {seconds:.1f} s ({info.run['tracks']} tracks in {info.run['worker_processes']} worker "
          f"processes)\n{format_summary(info)}", flush=True)
    for media, counts in info.run.get(MEDIA_KEY, {}).get("truncated", {}).items():  # An ABAW submission would be short.
        print(f"convert: warning: {media}: "
              f"{describe_truncation(counts['declared_frames'], counts['decoded_frames'])}", file=sys.stderr, flush=True)


def _nothing_written(info: DatasetInfo, written_in: str) -> str | None:
    """The error of a run that wrote no clip (None when it wrote some), with the first dead letters."""
    from beam_jobs.pipeline.files import read_bytes
    from beam_jobs.pipeline.finalize import DEAD_LETTERS_PATH

    if sum(s.num_clips for s in info.splits.values()) > 0:
        return None
    reasons = sum_counts(*(s.accounting.dropped for s in info.splits.values()))
    lines = [f"nothing could be written; dropped frames by reason: {reasons}"]
    if info.failures.get("dead_letters"):
        try:
            letters = read_bytes(join_path(written_in, DEAD_LETTERS_PATH)).decode("utf-8").splitlines()
        except OSError:
            letters = []
        lines += [f"  {line[:300]}" for line in letters[:5]]
    return "\n".join(lines)


def _convert(args, beam_args: list[str], tasks: list[str], source: DatasetSource, options, claim) -> DatasetInfo:
    """Lists the inputs, then runs the job into ``claim.staging``; returns the written, checked info.

    Raises:
        ConvertError: no track, unlisted folders, a failed pipeline or an accounting that does not add up.
    """
    started = time.monotonic()
    discovery = _discover(source, args)
    claim.total_tracks = len(discovery.tracks)
    claim.clear_previous()  # Object stores (written in place): only now that the inputs are known to be there.
    config = make_config(args, tasks, source, discovery, options, output=claim.staging)
    try:
        config.bucketer()  # the bucket names of these classes, checked before any work (e.g. a '|' in a class)
    except ValueError as e:
        raise ConvertError(f"--bucket_by {config.bucket_by}: {e}") from e
    workers = _run_pipeline(source, config, discovery, recorded_options(args, beam_args), options, args.progress_every)
    seconds = time.monotonic() - started
    info = _finish(config, seconds, workers)
    _report(info, seconds)
    return info


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupted(error: BaseException) -> bool:
    """Whether a pipeline error is a KeyboardInterrupt that Beam re-raised as its own: by type, or by its message (a
    thread's ``KeyboardInterrupt [while running ...]``, or a worker process's traceback text ending in one)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt) or any(line.strip().startswith("KeyboardInterrupt")
                                                       for line in str(error).splitlines()):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def run(argv: list[str] | None = None, *, source: DatasetSource | None = None) -> int:
    """Runs the conversion; returns the process exit code.

    The output is built inside ``--output`` and replaces the previous one only once complete and checked, and only
    while the folder holds nothing this tool did not write (:mod:`beam_jobs.pipeline.output_folder`); ``--output``
    is locked for the whole run.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
        source: A ready dataset adapter (tests); default: built from ``--dataset`` and its options.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, beam_args, tasks, source, options = _setup(argv, source)
    except SystemExit as e:  # argparse: --help, or a missing/unknown value (it printed why).
        return int(e.code or 0)
    except (UsageError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    # Imported once the options are parsed: they load Apache Beam and OpenCV, which `--help` must not wait for.
    from beam_jobs.pipeline.output_folder import OutputRefused, claim_output
    from tfrecords_schema.cli import interruption, interrupts_said_once, sigterm_unwinds
    from tfrecords_schema.locks import LockError
    from tfrecords_schema.transaction import DiskFullError, SwapRefused, TransactionError

    command = " ".join(["beam_jobs.convert", *argv])[:500]
    try:
        # SIGTERM unwinds as Ctrl-C does while the output is held: a plain SIGTERM left the staging folder, the lock
        # and the Beam workers behind (tfrecords_schema.cli.sigterm_unwinds). Either way Beam's runner does not print
        # its tracebacks of the interrupt before our one line (tfrecords_schema.cli.interrupts_said_once).
        with sigterm_unwinds(), interrupts_said_once(), \
                claim_output(args.output, args.overwrite, command=command, log=_log) as claim:
            if claim.place is not None:  # Checked before any work: say where the run builds, in one line.
                print(f"[convert] output {claim.output}: {claim.place.describe()}", flush=True)
            info = _convert(args, beam_args, tasks, source, options, claim)
            failure = _nothing_written(info, claim.staging)
            if failure and claim.replacing:  # A typo in --videos drops everything: keep the previous output.
                raise ConvertError(f"{failure}\nthe previous output in {args.output} is kept unchanged")
        if failure:  # No previous output: the accounting and dead letters stay in --output to look at.
            from beam_jobs.pipeline.finalize import DEAD_LETTERS_PATH

            raise ConvertError(f"{failure}\nsee {join_path(args.output, DEAD_LETTERS_PATH)}")
    except (OutputRefused, SwapRefused, UsageError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    except LockError as e:
        print(f"convert: error: output {args.output} is in use: {e}", file=sys.stderr)
        return 1
    except (ConvertError, DiskFullError, TransactionError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # Taking the lock, repairing a leftover or swapping the output in (permissions...).
        print(f"convert: error: output {args.output}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # The output folder was restored and unlocked as the interrupt unwound.
        how, code = interruption()
        print(f"convert: {how}; {args.output} is as it was before the run", file=sys.stderr)
        return code
    return 0


def main() -> None:
    """Console entry point: runs with ``sys.argv`` and exits with the run's status."""
    from tfrecords_schema.filesystems import exit_hard_if_needed

    sys.exit(exit_hard_if_needed(run()))  # (tensorflow-io's s3:// aborts at interpreter exit)


if __name__ == "__main__":
    main()
