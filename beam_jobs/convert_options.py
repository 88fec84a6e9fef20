"""The options of ``beam_jobs.convert``: the job's own flags, the dataset adapter's, and their checks.

Beam's own options (``--runner``, ``--direct_num_workers``, Dataflow's) pass through untouched; the options that shape
the output are recorded in ``dataset_info.json`` (:func:`recorded_options`).
"""

from __future__ import annotations

import argparse
import dataclasses

from beam_jobs.faces import options as face_options
from beam_jobs.sources.selection import DEFAULT_SELECT_FRACTION
from tfrecords_schema import TASKS
from tfrecords_schema.buckets import BUCKET_BY
from tfrecords_schema.cli import add_verbose_flag, command_prog
from tfrecords_schema.image_codec import CODECS, DEFAULT_CODEC

DEFAULT_RUNNER = "DirectRunner"


# Run-control flags: they do not shape the output, so dataset_info.json does not record them.
NOT_RECORDED = ("overwrite", "progress_every", "allow_partial", "verbose")


class UsageError(ValueError):
    """Bad command-line options (exit status 2)."""


def _defaults(cls) -> dict:
    """Field defaults of a dataclass: the one place the conversion's defaults are written."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _add_job_options(parser: argparse.ArgumentParser) -> list[str]:
    """Adds the conversion's own options; returns their names (always recorded in dataset_info.json)."""
    from beam_jobs.pipeline.config import ConvertConfig

    job = _defaults(ConvertConfig)
    add = parser.add_argument
    actions = [
        add("--dataset", default="abaw", help="dataset adapter (default: abaw)"),
        add("--videos", default=None, help="folder searched for the media files (optional with --cropped_aligned)"),
        add("--annotations", default=None, help="annotation root folder (adapters that read annotation files)"),
        add("--output", required=True, help="output folder (local path or gs://...)"),
        add("--tasks", default="", help=f"comma-separated subset of {','.join(TASKS)} (default: all found)"),
        add("--cropped_aligned", default=None, help="use the dataset's provided face crops from DIR"),
        add("--clip_length", type=int, default=job["clip_length"],
            help=f"frames per record (default {job['clip_length']})"),
        *face_options.add_face_stage_arguments(parser),
        add("--codec", default=DEFAULT_CODEC, choices=CODECS,
            help="how the records store each crop: jpeg (quality 90, about 4-6 KiB at 112², decoded on the training "
                 "host's CPU) or raw (the uint8 RGB pixels, crop_size² x 3 bytes: 37,632 at 112², about 6-9x the disk "
                 f"and a fraction of the CPU to read; see the README) (default {DEFAULT_CODEC})"),
        add("--bucket_by", default=job["bucket_by"],
            help=f"rebalancing buckets of the train split, one of {list(BUCKET_BY)} (default {job['bucket_by']}: "
                 "the clip's class for every converted task, so that one conversion serves every --task)"),
        add("--select_fraction", type=float, default=DEFAULT_SELECT_FRACTION, metavar="F",
            help="about this fraction of the train subjects (by a stable hash of their id) goes to a split of its own, "
                 "'selection', on which training selects its best epoch, so that validation is touched only by "
                 f"the final evaluation (default {DEFAULT_SELECT_FRACTION}; 0: none)"),
        add("--min_shards", type=int, default=job["min_shards"],
            help="least shards per shard set (>= training workers)"),
        add("--shard_bytes", type=int, default=job["shard_bytes"],
            help=f"target bytes per shard (default {job['shard_bytes'] >> 20} MiB)"),
        add("--overwrite", action="store_true", help="replace an existing output folder"),
        add("--progress_every", type=float, default=5.0, help="seconds between progress lines (0: off)"),
    ]
    return [a.dest for a in actions]


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """Options every adapter may read (recorded in dataset_info.json only when given)."""
    add = parser.add_argument
    add("--folds", type=int, default=None,
        help="for data without official splits: subjects split into K folds by a stable hash of their id")
    add("--fold", type=int, default=None, help="with --folds: the fold used as validation, 0..K-1")
    add("--class_names", default=None, help="comma-separated expression class names, in label order")
    add("--allow_partial", action="store_true",
        help="convert even when some input folders could not be listed (what they hold is missing)")
    add_verbose_flag(parser)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of the job's own options (Beam's options pass through unparsed).

    Every registered adapter (``beam_jobs.sources.SOURCES``) adds its own options.

    Returns:
        A parser whose ``parse_known_args`` leaves the Beam pipeline options in its second value.
    """
    from beam_jobs.sources import SOURCES

    parser = argparse.ArgumentParser(
        prog=command_prog("beam_jobs.convert"),
        description="Convert labelled face video to sharded TFRecord clips. Other flags are Beam pipeline "
        "options (--runner, --direct_num_workers, --direct_running_mode, --project, --region, "
        "--temp_location, --setup_file, ...).",
    )
    _add_job_options(parser)
    _add_dataset_options(parser)
    for source_class in SOURCES.values():
        source_class.add_arguments(parser)
    return parser


def check_options(args: argparse.Namespace) -> list[str]:
    """Checks the parsed options; returns the requested tasks (empty: every task found).

    Raises:
        UsageError: an unknown name or a value out of range; the message gives the valid ones.
    """
    from beam_jobs.sources import SOURCES
    from beam_jobs.sources.folds import check_folds

    if args.dataset not in SOURCES:
        raise UsageError(f"unknown dataset {args.dataset!r}; valid datasets: {', '.join(sorted(SOURCES))}")
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else []
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown tasks {unknown}; valid tasks: {list(TASKS)}")
    try:
        face_options.check_face_stage_options(args)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.bucket_by not in BUCKET_BY:
        raise UsageError(f"unknown --bucket_by {args.bucket_by!r}; valid values: {list(BUCKET_BY)}")
    if not 0.0 <= args.select_fraction < 0.5:
        raise UsageError(f"--select_fraction must be in [0, 0.5), got {args.select_fraction}")
    for name, low in (("clip_length", 1), ("min_shards", 1), ("shard_bytes", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UsageError(f"--{name} must be >= {low}, got {value}")
    try:
        check_folds(args.folds, args.fold)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return tasks


def recorded_options(args: argparse.Namespace, beam_args: list[str]) -> dict:
    """The options dataset_info.json records: the job's own always, others (adapter, dataset) when given."""
    always = set(_add_job_options(argparse.ArgumentParser()))
    recorded = {k: v for k, v in vars(args).items()
                if k not in NOT_RECORDED and (k in always or v not in (None, False))}
    recorded["beam_args"] = list(beam_args)
    return recorded
