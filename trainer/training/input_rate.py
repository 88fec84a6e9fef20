"""``affectstream input-rate``: how fast the training stream of a job's options delivers frames, on this host.

Takes the options of ``affectstream train`` (``--data`` and any of the others, or ``--config FILE``) and builds the
very stream that job would consume: the same plan (:func:`trainer.training.plan.plan_job`: strategy, batch size per
replica), the same stage's :meth:`trainer.training.stages.Stage.train_dataset` (sampling, class weights, sequence
length, codec, ``--data_service``), distributed as the job distributes it. No model is built and nothing is written
(``--job_dir`` is not needed; with ``--data_service`` the measurement is its own service job, so it never takes
batches from a running training).

After ``--warmup_batches`` (tracing, opening files, filling the shuffle buffers) it pulls batches for ``--seconds``
and prints, last, one JSON line::

    {"frames_per_second": ..., "frames_per_cpu_second": ..., "batches": ..., "seconds": ..., ...}

``frames_per_cpu_second`` is frames over the CPU time of this process (every thread: reading, parsing, decoding):
what one core delivers, the figure that sizes the CPU of a GPU host (``docs/benchmarks.md``). With
``--data_service`` the decoding runs on the service's workers: the CPU figure is then this process's receiving only.
On raw crops read one window per clip, a line before it says which ``--windows_per_clip`` uses every frame read
twice on average (:func:`repeated_sampling_hint`).

Example::

    affectstream input-rate --data /data/affectstream/abaw --task expr --batch_size 64 --seq_len 16 --seconds 30
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence

from tfrecords_schema import filesystems
from tfrecords_schema.cli import command_prog
from tfrecords_schema.image_codec import CODEC_RAW
from trainer.common import errors
from trainer.common.allocator import recycle_large_buffers
from trainer.common.choices import STAGE_SEQUENCE, STRATEGY_MULTI_WORKER
from trainer.training import config as config_lib

log = logging.getLogger("trainer.train")

DEFAULT_SECONDS = 20.0
DEFAULT_WARMUP_BATCHES = 10


def build_parser():
    """The train options (``affectstream train --help``) and the measurement's own."""
    # (--job_dir taken, so that a train command's options can be given as they are, but nothing is written there.)
    p = config_lib.build_parser(job_dir_help="ignored: input-rate writes nothing")
    p.prog = command_prog("trainer.training.input_rate")
    p.description = ("Frames per second (wall clock and per CPU-second of this process) of the training stream a job "
                     "with these train options would consume; nothing is trained or written. The last line printed "
                     "is one JSON object.")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                   help=f"measuring time after the warm-up (default {DEFAULT_SECONDS:g})")
    p.add_argument("--warmup_batches", type=int, default=DEFAULT_WARMUP_BATCHES,
                   help=f"batches pulled before the clock starts (default {DEFAULT_WARMUP_BATCHES})")
    return p


def parse(argv: Sequence[str] | None):
    """``(TrainConfig, seconds, warmup_batches)``.

    Raises:
        config_lib.ConfigError: invalid train options, ``--stage sequence``, ``--strategy multi_worker``, or a
            measuring time that is not > 0.
        SystemExit: argparse errors and ``--help``.
    """
    args = build_parser().parse_args(argv)
    seconds, warmup = args.seconds, args.warmup_batches
    del args.seconds, args.warmup_batches
    if not 0 < seconds < math.inf or warmup < 0:
        raise config_lib.ConfigError(f"--seconds must be a finite number > 0 and --warmup_batches >= 0, got {seconds} "
                                     f"and {warmup}")
    args.job_dir = f"input-rate-{os.getpid()}"  # Never written; its own tf.data service job, if any.
    config = config_lib.config_from_args(args)
    if config.stage == STAGE_SEQUENCE:
        raise config_lib.ConfigError("--stage sequence trains on features computed by the job itself (no decoding); "
                                     "input-rate measures the clip stages (end_to_end, frames)")
    if config.strategy == STRATEGY_MULTI_WORKER:
        # Each worker's iterator yields its share of a global batch (the figures counted whole ones), and the
        # worker that ends its measurement first takes down the others' collective runtime.
        raise config_lib.ConfigError(f"--strategy {STRATEGY_MULTI_WORKER}: input-rate measures one host's stream; "
                                     f"run it on one worker without --strategy, with --batch_size the global batch "
                                     f"size over the workers (one worker's share)")
    return config, seconds, warmup


def measure(config, seconds: float, warmup_batches: int = DEFAULT_WARMUP_BATCHES) -> dict:
    """Pulls the job's training batches for ``seconds`` after ``warmup_batches``; returns the figures.

    Returns:
        ``frames_per_second``, ``frames_per_cpu_second``, ``batches``, ``seconds`` (the measured wall time), and
        ``frames``, ``cpu_seconds``, ``frames_per_batch``, ``batch_size``, ``seq_len``, ``codec``, ``crop_size``,
        ``replicas``, ``warmup_batches``, ``cpus`` (the cores this process may use), ``data_service``.
    """
    import dataclasses

    from tfrecords_schema import SPLIT_TRAIN, read_dataset_info
    from trainer.input.records import SkippedRecords
    from trainer.training import distribution
    from trainer.training.plan import frame_mix_setup, plan_job
    from trainer.training.stages import make_stage

    strategy, role = distribution.make_strategy(config.strategy)
    splits = read_dataset_info(config.data).splits
    if (config.select_split or config.eval_split) not in splits or config.eval_split not in splits:
        # Nothing is evaluated here: data without the evaluated splits is measured all the same.
        config = dataclasses.replace(config, eval_split=SPLIT_TRAIN, select_split=None)
    plan = plan_job(config, strategy, role, evaluates=False)
    skipped = SkippedRecords() if config.skip_corrupt else None
    stage = make_stage(config, plan)
    frame_mix_setup(config, plan, stage.train_seq_len, config.seed, skipped, log_mix=False)

    def dataset_fn(input_context):
        return stage.train_dataset(input_context.get_per_replica_batch_size(config.batch_size), config.seed,
                                   input_context, skipped)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    for _ in range(warmup_batches):
        next(iterator)
    frames_per_batch = config.batch_size * stage.train_seq_len
    batches, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < seconds or batches == 0:
        next(iterator)
        batches += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    frames = batches * frames_per_batch
    return {"frames_per_second": round(frames / elapsed, 1),
            "frames_per_cpu_second": round(frames / max(cpu, 1e-9), 1),
            "batches": batches, "seconds": round(elapsed, 3), "frames": frames, "cpu_seconds": round(cpu, 3),
            "frames_per_batch": frames_per_batch, "batch_size": config.batch_size, "seq_len": stage.train_seq_len,
            "codec": plan.info.codec, "crop_size": plan.info.crop_size, "replicas": strategy.num_replicas_in_sync,
            "warmup_batches": warmup_batches, "cpus": len(os.sched_getaffinity(0)),
            "data_service": config.data_service, "windows_per_clip": config.windows_per_clip,
            "clip_length": plan.info.clip_length, "record_bytes": _mean_record_bytes(plan.info)}


def _mean_record_bytes(info) -> int:
    """Mean bytes of a train record (a clip) on disk: what the stream reads, checksums and parses per clip read."""
    from tfrecords_schema import SPLIT_TRAIN

    split = info.splits[SPLIT_TRAIN]
    return round(sum(s.num_bytes for s in split.shards) / max(1, split.num_clips))


def repeated_sampling_hint(result: dict) -> str | None:
    """A line for raw clips read whole for one window each (see ``train --windows_per_clip``), else None.

    A raw record is read, CRC-checked and parsed whole whatever part of it a window uses, so with one window per clip
    most of its bytes serve nothing (docs/benchmarks.md: one 16-frame window of a 64-frame record of 112² crops
    cannot reach 20,000 frames per CPU-second); taking each frame into two windows on average makes every byte read
    serve; so does converting records of one window (``convert --clip_length`` the window's length).
    """
    from trainer.input.frames import window_spans_clip

    if (result["codec"] != CODEC_RAW or result["windows_per_clip"] != 1
            or window_spans_clip(result["clip_length"], result["seq_len"])):
        return None
    k = 2 * result["clip_length"] // result["seq_len"]
    return (f"[input-rate] each raw record ({result['clip_length']} frames, {result['record_bytes'] / 1e6:.1f} MB) is "
            f"read, checksummed and parsed for one {result['seq_len']}-frame window: --windows_per_clip {k} (repeated "
            f"sampling) serves {k} windows per read, as records of {result['seq_len']} frames would (convert "
            f"--clip_length {result['seq_len']})")


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 with the JSON line printed last, 1 on a reported failure, 2 on invalid options."""
    errors.log_to_stderr()
    try:
        config, seconds, warmup = parse(argv)
    except SystemExit as e:
        return int(e.code or 0)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    recycle_large_buffers()  # as a training job does (trainer.train)
    try:
        filesystems.register_filesystems(config.data)
        result = measure(config, seconds, warmup)
    except Exception as e:  # noqa: BLE001 - one clear line and an exit code for expected failures.
        from tfrecords_schema import DatasetInfoError
        from trainer.common.errors import TrainingError

        return errors.report_failure(e, (DatasetInfoError, TrainingError, ValueError, OSError))
    # Through a tf.data service the reading and decoding ran on its workers: this process's CPU only received.
    cpu_of = " of this process only (receiving: the service's workers decode)" if result["data_service"] else ""
    print(f"[input-rate] {result['frames']} frames of {result['crop_size']}² ({result['codec']}) in "
          f"{result['batches']} batches: {result['frames_per_second']:.0f} frames/s, "
          f"{result['frames_per_cpu_second']:.0f} frames per CPU-second{cpu_of}", file=sys.stderr, flush=True)
    hint = repeated_sampling_hint(result)
    if hint:
        print(hint, file=sys.stderr, flush=True)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
