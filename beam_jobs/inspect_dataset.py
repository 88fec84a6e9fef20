"""Print a conversion output's ``dataset_info.json`` as a readable summary; ``--verify`` re-counts the shards.

Example::

    python -m beam_jobs.inspect_dataset /tmp/affect_tfrecords --verify

``--verify`` reads every record back: record and frame counts and byte sizes per shard, the crop size, and
the labelled frames with and without a face per split, compared with the accounting. The summary also names
what a conversion left behind (a staging folder or a temp folder inside the output) and a conversion that holds
the output's lock.

Exit status: 0 when the info reads (and, with ``--verify``, every shard matches it), 1 otherwise,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from tfrecords_schema import (
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_VALENCE_AROUSAL,
    DatasetInfo,
    DatasetInfoError,
    decode_clip,
    join_path,
    keys,
    read_dataset_info,
)
from tfrecords_schema.buckets import BUCKET_BY_TASKS, BUCKET_BY_VA_GRID, NO_VA, VA_GRID, composite_tasks, va_cell_names
from tfrecords_schema.cli import add_verbose_flag, command_prog, first_of, tidy_tf_message
from tfrecords_schema.dataset_info import CONVERT_TMP_DIRNAME, MEDIA_KEY
from tfrecords_schema.filesystems import exit_hard_if_needed, register_filesystems
from tfrecords_schema.image_codec import CODEC_RAW, crop_shape

_MAX_DEAD_LETTERS_SHOWN = 10


def _table(rows: list[tuple], indent: str = "    ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows]


def va_grid_legend(grid: int = VA_GRID) -> str:
    """What a ``va_grid`` cell name means: ``v<i>_a<j>``, the bins counted from -1 upwards."""
    step = 2.0 / grid
    bins = ", ".join(f"{i}: [{-1 + i * step:+.1f}, {-1 + (i + 1) * step:+.1f}{']' if i == grid - 1 else ')'}"
                     for i in range(grid))
    return (f"va_grid cells v<i>_a<j>: valence bin i, arousal bin j of a {grid}x{grid} grid over [-1, 1], "
            f"counted from -1 upwards ({bins}); {NO_VA}: clips without a valid valence/arousal label")


@dataclasses.dataclass
class Recount:
    """What the records of some shards hold, counted record by record (``--verify``).

    Attributes:
        records: Clips.
        frames: Frames.
        with_face: Frames with a valid label of any task and a face box.
        without_face: Frames with a valid label of any task and no face box.
        au_labelled: Frames whose action units are labelled (every AU valid).
        au_positives: Per AU, labelled frames where it is present.
        crop_sizes: ``(height, width)`` of the crops as found (JPEG: the first crop of each clip; raw: every crop,
            its size read from its length).
        image_formats: The codecs the records say they hold (``image/format``).
        out_of_range: Frames holding a label that is neither valid nor the schema's "no label" marker (an
            expression class past the label names, valence/arousal outside [-1, 1], an AU other than 0 or 1): the
            trainer takes such a label as no label, so the frame is counted labelled here and never trained on.
    """

    records: int = 0
    frames: int = 0
    with_face: int = 0
    without_face: int = 0
    au_labelled: int = 0
    au_positives: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    crop_sizes: set = dataclasses.field(default_factory=set)
    image_formats: set = dataclasses.field(default_factory=set)
    out_of_range: int = 0

    def add(self, other: Recount) -> None:
        self.out_of_range += other.out_of_range
        self.records += other.records
        self.frames += other.frames
        self.with_face += other.with_face
        self.without_face += other.without_face
        self.au_labelled += other.au_labelled
        if other.au_positives.size:
            base = self.au_positives if self.au_positives.size else np.zeros_like(other.au_positives)
            self.au_positives = base + other.au_positives
        self.crop_sizes |= other.crop_sizes
        self.image_formats |= other.image_formats


def _labelled_by_task(clip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool ``[T]`` each: frames labelled for expression, valence/arousal and action units by the conversion's rule
    (any value but the schema's "no label" marker; every AU of a frame for the AU task)."""
    aus = clip.action_units
    return (clip.expression != keys.EXPRESSION_INVALID, (clip.valence_arousal != keys.VA_INVALID).all(axis=1),
            (aus != keys.AU_INVALID).all(axis=1) & (aus.shape[1] > 0))


def labelled_frames(clip) -> np.ndarray:
    """bool ``[T]``: frames with a valid label of any task; the conversion's accounting counts these.

    The same rule as ``beam_jobs.sources.base.TrackLabels.valid``, on the labels the record holds.
    """
    expression, va, aus = _labelled_by_task(clip)
    return expression | va | aus


def out_of_range_frames(clip, num_classes: int) -> np.ndarray:
    """bool ``[T]``: frames with a task labelled by the conversion's rule (:func:`labelled_frames`) whose label is not
    valid for the trainer (``trainer.input.frames``: in range; :attr:`Recount.out_of_range`). So a frame the
    conversion counts is the trainer's labelled frame or this, task by task (tests/test_inspect.py holds them
    together)."""
    expression, va, aus = clip.expression, clip.valence_arousal, clip.action_units
    has_expression, has_va, has_aus = _labelled_by_task(clip)
    return ((has_expression & ((expression < 0) | (expression >= num_classes)))
            | (has_va & ~((va >= -1.0) & (va <= 1.0)).all(axis=1))  # (NaN fails both tests.)
            | (has_aus & ~((aus == 0) | (aus == 1)).all(axis=1)))


def recount_shard(path: str, num_classes: int | None = None) -> Recount:
    """Reads one TFRecord shard record by record; raises on a corrupt file or a record of another schema.
    ``num_classes``: the expression classes of the label names, to count :attr:`Recount.out_of_range` (None: not
    counted)."""
    import tensorflow as tf

    out = Recount()
    for raw in tf.data.TFRecordDataset(path):
        clip = decode_clip(raw.numpy())
        if num_classes is not None:
            out.out_of_range += int(out_of_range_frames(clip, num_classes).sum())
        labelled, face = labelled_frames(clip), clip.has_face
        au_ok = _labelled_by_task(clip)[2]
        out.add(Recount(
            records=1, frames=clip.num_frames, with_face=int((labelled & face).sum()),
            without_face=int((labelled & ~face).sum()), au_labelled=int(au_ok.sum()),
            au_positives=(clip.action_units[au_ok] == 1).sum(axis=0).astype(np.int64),
            crop_sizes={crop_shape(image, clip.image_format)
                        for image in (clip.images if clip.image_format == CODEC_RAW else clip.images[:1])},
            image_formats={clip.image_format},
        ))
    return out


def _au_rows(info: DatasetInfo, split: str, hist: dict[str, int], recount: Recount | None) -> tuple[list, str]:
    """AU table rows (name, positive frames, share of AU-labelled frames) and the line above them."""
    s = info.splits[split]
    if recount is not None and recount.au_labelled:
        labelled, how = recount.au_labelled, "counted in the shards"
    elif info.tasks == [TASK_ACTION_UNITS]:
        labelled, how = s.accounting.written_frames, "every written labelled frame"  # AUs are the only labels.
    else:
        labelled, how = 0, ""
    names = [n for n in info.action_unit_names if n in hist] + sorted(n for n in hist if n not in
                                                                     info.action_unit_names)
    if not labelled:
        title = (f"  {TASK_ACTION_UNITS} positive frames per AU (occurrence per frame: run with --verify, which "
                 "counts the AU-labelled frames in the shards):")
        return [(n, hist[n]) for n in names], title
    return ([(n, hist[n], f"{100.0 * hist[n] / labelled:.1f}%") for n in names],
            f"  {TASK_ACTION_UNITS} occurrence per frame (frames with the AU / {labelled} AU-labelled frames, {how}):")


def _histogram_lines(info: DatasetInfo, split: str, recount: Recount | None) -> list[str]:
    lines = []
    for task, hist in sorted(info.splits[split].class_frames.items()):
        if not hist:
            continue
        if task == TASK_ACTION_UNITS:
            rows, title = _au_rows(info, split, hist, recount)
            lines += [title] + _table(rows)
            continue
        total = sum(hist.values()) or 1
        order = {TASK_EXPRESSION: info.expression_names, TASK_VALENCE_AROUSAL: va_cell_names()}.get(task, [])
        names = [n for n in order if n in hist] + sorted(n for n in hist if n not in order)
        what = "valence/arousal grid cell" if task == TASK_VALENCE_AROUSAL else "class"
        lines.append(f"  {task} frames per {what} (share of the frames labelled for {task}):")
        lines += _table([(name, hist[name], f"{100.0 * hist[name] / total:.1f}%") for name in names])
    return lines


def format_info(info: DatasetInfo, dead_letter_lines: list[str] | None = None,
                recounts: dict[str, Recount] | None = None) -> str:
    """The summary text: splits, buckets, class histograms, accounting and failures.

    Args:
        info: The dataset info.
        dead_letter_lines: Lines of the dead-letter files, shown (the first few) under the failures.
        recounts: Per split, what ``--verify`` counted in the shards (gives the AU occurrence per frame).
    """
    lines = [
        f"dataset {info.name!r} (schema version {info.schema_version}); tasks: {', '.join(info.tasks) or 'none'}",
        f"crops {info.crop_size}x{info.crop_size} ({info.codec}), clips of {info.clip_length} frames, buckets by "
        f"{info.bucket_by}",
    ]
    for task, names in sorted(info.label_names.items()):
        if names:
            lines.append(f"labels {task}: {', '.join(names)}")
    if info.bucket_by == BUCKET_BY_TASKS:
        parts = {TASK_EXPRESSION: "expression class or no_expression", TASK_VALENCE_AROUSAL: "grid cell or no_va",
                 TASK_ACTION_UNITS: "au or no_au"}
        lines.append(f"bucket names: the clip's {' | '.join(parts[t] for t in composite_tasks(info.tasks))}")
    if info.bucket_by == BUCKET_BY_VA_GRID or TASK_VALENCE_AROUSAL in info.tasks:
        lines.append(va_grid_legend())
    run = {k: v for k, v in info.run.items() if k != MEDIA_KEY}
    if run:
        lines.append("run: " + ", ".join(f"{k} {v}" for k, v in sorted(run.items())))
    lines += media_lines(info)
    for split, s in sorted(info.splits.items()):
        a = s.accounting
        status = "adds up" if a.is_balanced() else "DOES NOT ADD UP"
        lines += [
            "",
            f"[{split}] {s.num_clips} clips, {s.num_frames} frames, {len(s.shards)} shards",
            (f"  accounting ({status}): labelled {a.labelled_frames} = written with face "
             f"{a.written_frames_with_face} + without face {a.written_frames_without_face} + dropped "
             f"{a.dropped_frames}"),
        ]
        for reason, count in sorted(a.dropped.items()):
            lines.append(f"    dropped {reason}: {count}")
        if s.bucket_clips:
            lines.append("  buckets (clips, frames):")
            buckets = [b for b in info.bucket_names if b in s.bucket_clips]
            buckets += sorted(b for b in s.bucket_clips if b not in buckets)
            lines += _table([(b, s.bucket_clips[b], s.bucket_frames.get(b, 0)) for b in buckets])
        lines += _histogram_lines(info, split, (recounts or {}).get(split))
    failures = info.failures or {}
    by_reason = json.dumps(failures.get("by_reason", {}), sort_keys=True)
    files = ", ".join(failures.get("files", []))
    lines += ["", f"failures: {failures.get('dead_letters', 0)} dead letters {by_reason}" + (f" in {files}" if files
                                                                                          else "")]
    for line in (dead_letter_lines or [])[:_MAX_DEAD_LETTERS_SHOWN]:
        lines.append(f"  {line}")
    if dead_letter_lines and len(dead_letter_lines) > _MAX_DEAD_LETTERS_SHOWN:
        lines.append(f"  ... {len(dead_letter_lines) - _MAX_DEAD_LETTERS_SHOWN} more")
    if info.unused_media:
        lines.append(f"media without annotation: {len(info.unused_media)} ({first_of(info.unused_media, 5)})")
    return "\n".join(lines)


def _named(media: list[str], shown: int = 5) -> str:
    return ", ".join(media[:shown]) + (f", ... ({len(media)} in all)" if len(media) > shown else "")


def media_lines(info: DatasetInfo) -> list[str]:
    """What decoding found about the videos (``run["media"]``): variable frame rate, truncated, turned upright."""
    media = info.run.get(MEDIA_KEY) or {}
    lines = []
    vfr = list(media.get("variable_frame_rate", []))
    if vfr:
        lines.append(f"variable frame rate: {len(vfr)} video(s), timestamps and time segments from their "
                     f"presentation times: {_named(vfr)}")
    truncated = media.get("truncated", {})
    if truncated:
        cut = [f"{m} ({t['declared_frames']} declared, {t['decoded_frames']} decode)" for m, t in truncated.items()]
        lines.append(f"truncated: {len(cut)} video(s) decode fewer frames than their container declares (a cut "
                     "file, or frames lost inside it; its annotation lines past the end are dropped as "
                     f"beyond_video_end): {_named(cut)}")
    rotated = media.get("rotated", {})
    if rotated:
        turned = [f"{m} ({deg} degrees)" for m, deg in rotated.items()]
        lines.append(f"rotated: {len(turned)} video(s) turned upright as their container says: {_named(turned)}")
    return lines


def _dead_letter_lines(data_dir: str, info: DatasetInfo) -> list[str]:
    import tensorflow as tf

    out = []
    for rel in (info.failures or {}).get("files", []):
        path = join_path(data_dir, rel)
        if not tf.io.gfile.exists(path):
            out.append(f"(missing {rel})")
            continue
        with tf.io.gfile.GFile(path, "r") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    # A frame can lose labels to two files (a VA and an AU line) and keep others: the accounting
                    # above counts each dropped frame once, under one reason.
                    out.append(f"{d['reason']}: {d['source']}: {d['message']} (labels of {d.get('frames', 0)} "
                               "frames lost)")
                except (ValueError, KeyError):
                    out.append(line.strip())
    return out


def leftover_lines(data_dir: str) -> list[str]:
    """What conversions left in ``data_dir`` (beside it on object stores), and who holds its lock (empty: nothing)."""
    import tensorflow as tf

    from tfrecords_schema.locks import LockError, output_lock_path, read_lock_file
    from tfrecords_schema.transaction import find_leftovers

    lines = []
    try:
        for item in find_leftovers(data_dir):
            lines.append(f"left by a conversion that did not finish: {item.describe()} (the next conversion into "
                         f"{data_dir} does this)")
        tmp = join_path(data_dir, CONVERT_TMP_DIRNAME)
        if tf.io.gfile.isdir(tmp):
            lines.append(f"temp folder {tmp} (spill files of a run killed during its cleanup) is still there: "
                         "delete it to free its space; the shards do not need it")
        lock_path = output_lock_path(data_dir)
        holder = read_lock_file(lock_path)
        if holder is not None:
            state = ("its process is gone: the next conversion takes the lock over" if holder.is_dead_here()
                     else "a conversion into this folder may be running: its result replaces this folder")
            lines.append(f"lock {lock_path} held by pid {holder.pid} on {holder.host} since {holder.started}: {state}")
    except (LockError, OSError, tf.errors.OpError) as e:
        lines.append(f"could not look for leftovers of conversions: {type(e).__name__}: {e}")
    return lines


def _check_shard_file(data_dir: str, info: DatasetInfo, shard) -> tuple[list[str], Recount | None]:
    """Problems of one listed shard (existence, size, counts, crop size) and what it holds."""
    import tensorflow as tf

    path = join_path(data_dir, shard.path)
    if not tf.io.gfile.exists(path):
        return [f"{shard.path}: missing"], None
    problems = []
    size = tf.io.gfile.stat(path).length
    if size != shard.num_bytes:
        problems.append(f"{shard.path}: {size} bytes on disk, {shard.num_bytes} in dataset_info")
    try:
        counted = recount_shard(path, len(info.expression_names))
    except (tf.errors.OpError, ValueError) as e:
        text = tidy_tf_message(e.message) if isinstance(e, tf.errors.OpError) else str(e)
        return problems + [f"{shard.path}: unreadable ({type(e).__name__}: {text.splitlines()[0]})"], None
    if (counted.records, counted.frames) != (shard.num_records, shard.num_frames):
        problems.append(f"{shard.path}: {counted.records} records / {counted.frames} frames in the file, "
                        f"{shard.num_records} / {shard.num_frames} in dataset_info")
    wrong = sorted(s for s in counted.crop_sizes if s != (info.crop_size, info.crop_size))
    if wrong:
        problems.append(f"{shard.path}: crops of {', '.join(f'{h}x{w}' for h, w in wrong)} pixels, but "
                        f"dataset_info says crop_size {info.crop_size} ({info.crop_size}x{info.crop_size})")
    if counted.image_formats - {info.codec}:
        problems.append(f"{shard.path}: crops stored as {', '.join(sorted(counted.image_formats))}, but dataset_info "
                        f"says codec {info.codec}")
    return problems, counted


def verify(data_dir: str, info: DatasetInfo, recounts: dict[str, Recount] | None = None) -> list[str]:
    """Re-counts every shard against the info; returns the mismatches (empty when all agree).

    Args:
        data_dir: The conversion output.
        info: Its dataset info.
        recounts: Filled with what each split's shards hold (for :func:`format_info`), when given.
    """
    import tensorflow as tf

    problems = []
    for split, s in sorted(info.splits.items()):
        listed, total = set(), Recount()
        for shard in s.shards:
            listed.add(shard.basename)
            found, counted = _check_shard_file(data_dir, info, shard)
            problems += found
            if counted is not None:
                total.add(counted)
        if recounts is not None:
            recounts[split] = total
        split_dir = join_path(data_dir, split)
        if tf.io.gfile.isdir(split_dir):
            for name in sorted(tf.io.gfile.listdir(split_dir)):
                if ".tfrecord" in name and name.rstrip("/") not in listed:
                    problems.append(f"{split}/{name}: shard file not listed in dataset_info")
        if sum(x.num_records for x in s.shards) != s.num_clips:
            problems.append(f"{split}: shards list {sum(x.num_records for x in s.shards)} records, "
                            f"num_clips says {s.num_clips}")
        if sum(x.num_frames for x in s.shards) != s.num_frames:
            problems.append(f"{split}: shards list {sum(x.num_frames for x in s.shards)} frames, "
                            f"num_frames says {s.num_frames}")
        a = s.accounting
        if not a.is_balanced():
            problems.append(f"{split}: accounting does not add up")
        if total.out_of_range:
            problems.append(f"{split}: {total.out_of_range} frames hold a label out of range of dataset_info's label "
                            "names (an expression class past them, valence/arousal outside [-1, 1], an AU other than "
                            "0 or 1): the trainer takes it as no label of that task")
        if not any(p.startswith(f"{split}/") for p in problems) and \
                (total.with_face, total.without_face) != (a.written_frames_with_face, a.written_frames_without_face):
            problems.append(f"{split}: the shards hold {total.with_face} labelled frames with a face and "
                            f"{total.without_face} without; the accounting says {a.written_frames_with_face} and "
                            f"{a.written_frames_without_face}")
    problems += _unlisted_split_shards(data_dir, info)
    return problems


def _unlisted_split_shards(data_dir: str, info: DatasetInfo) -> list[str]:
    """Shard files in a folder of ``data_dir`` that is not one of the info's splits (copied in by hand)."""
    import tensorflow as tf

    problems = []
    for entry in sorted(tf.io.gfile.listdir(data_dir)):
        name = entry.rstrip("/")
        folder = join_path(data_dir, name)
        if name.startswith(".") or name in info.splits or not tf.io.gfile.isdir(folder):
            continue
        for shard in sorted(tf.io.gfile.listdir(folder)):
            if ".tfrecord" in shard:
                problems.append(f"{name}/{shard.rstrip('/')}: shard file not listed in dataset_info (it has no split "
                                f"{name!r})")
    return problems


def run(argv: list[str] | None = None) -> int:
    """``inspect DIR [--verify]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog=command_prog("beam_jobs.inspect_dataset"), description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="output folder of beam_jobs.convert (local, gs:// or s3://)")
    parser.add_argument("--verify", action="store_true",
                        help="read every record back: counts, sizes, crop size, labelled frames with/without face")
    add_verbose_flag(parser)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        register_filesystems(args.data_dir)  # s3:// and the other tensorflow-io schemes
        info = read_dataset_info(args.data_dir)
    except (DatasetInfoError, ValueError, ImportError) as e:
        print(f"inspect: error: {e}", file=sys.stderr)
        for line in leftover_lines(args.data_dir):
            print(f"inspect: note: {line}", file=sys.stderr)
        return 1
    recounts: dict[str, Recount] = {}
    problems = verify(args.data_dir, info, recounts) if args.verify else []
    print(format_info(info, _dead_letter_lines(args.data_dir, info), recounts))
    leftovers = leftover_lines(args.data_dir)
    if leftovers:
        print("\nleft behind by conversions:\n" + "\n".join(f"  {line}" for line in leftovers))
    if not args.verify:
        return 0
    shards = sum(len(s.shards) for s in info.splits.values())
    if problems:
        print(f"\nverify: {len(problems)} mismatch(es) in {shards} shards:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    records = sum(s.num_clips for s in info.splits.values())
    frames = sum(s.num_frames for s in info.splits.values())
    labelled = sum(r.with_face + r.without_face for r in recounts.values())
    print(f"\nverify: OK, {shards} shards, {records} records and {frames} frames match dataset_info; "
          f"{labelled} labelled frames recounted (with and without a face) match the accounting")
    return 0


def main() -> None:
    """Console entry point: runs with ``sys.argv`` and exits with the run's status."""
    sys.exit(exit_hard_if_needed(run()))  # (tensorflow-io's s3:// aborts at interpreter exit)


if __name__ == "__main__":
    main()
