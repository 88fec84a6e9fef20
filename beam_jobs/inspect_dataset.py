"""Print a conversion output's ``dataset_info.json`` as a readable summary; ``--verify`` re-counts the shards.

Example::

    python -m beam_jobs.inspect_dataset /tmp/affect_tfrecords --verify

Exit status: 0 when the info reads (and, with ``--verify``, every shard matches it), 1 otherwise,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from tfrecords_schema import (
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    DatasetInfo,
    DatasetInfoError,
    join_path,
    keys,
    read_dataset_info,
)

_MAX_DEAD_LETTERS_SHOWN = 10


def _table(rows: list[tuple], indent: str = "    ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows]


def format_info(info: DatasetInfo, dead_letter_lines: list[str] | None = None) -> str:
    """The summary text: splits, buckets, class histograms, accounting and failures."""
    lines = [
        f"dataset {info.name!r} (schema version {info.schema_version}); tasks: {', '.join(info.tasks) or 'none'}",
        f"crops {info.crop_size}x{info.crop_size}, clips of {info.clip_length} frames, buckets by {info.bucket_by}",
    ]
    for task, names in sorted(info.label_names.items()):
        if names:
            lines.append(f"labels {task}: {', '.join(names)}")
    if info.run:
        lines.append("run: " + ", ".join(f"{k} {v}" for k, v in sorted(info.run.items())))
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
        for task, hist in sorted(s.class_frames.items()):
            if not hist:
                continue
            total = sum(hist.values()) or 1
            lines.append(f"  {task} frames per class:")
            order = {TASK_EXPRESSION: info.expression_names, TASK_ACTION_UNITS: info.action_unit_names}.get(task, [])
            names = [n for n in order if n in hist] + sorted(n for n in hist if n not in order)
            lines += _table([(name, hist[name], f"{100.0 * hist[name] / total:.1f}%") for name in names])
    failures = info.failures or {}
    by_reason = json.dumps(failures.get("by_reason", {}), sort_keys=True)
    files = ", ".join(failures.get("files", []))
    lines += ["", f"failures: {failures.get('dead_letters', 0)} dead letters {by_reason} in {files}"]
    for line in (dead_letter_lines or [])[:_MAX_DEAD_LETTERS_SHOWN]:
        lines.append(f"  {line}")
    if dead_letter_lines and len(dead_letter_lines) > _MAX_DEAD_LETTERS_SHOWN:
        lines.append(f"  ... {len(dead_letter_lines) - _MAX_DEAD_LETTERS_SHOWN} more")
    if info.unused_media:
        lines.append(f"media without annotation: {len(info.unused_media)} ({', '.join(info.unused_media[:5])}"
                     + (", ..." if len(info.unused_media) > 5 else "") + ")")
    return "\n".join(lines)


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
                    out.append(f"{d['reason']}: {d['source']}: {d['message']} ({d.get('frames', 0)} frames)")
                except (ValueError, KeyError):
                    out.append(line.strip())
    return out


def count_shard(path: str) -> tuple[int, int]:
    """(records, frames) of one TFRecord shard; raises on a corrupt file."""
    import tensorflow as tf

    records = frames = 0
    for raw in tf.data.TFRecordDataset(path):
        example = tf.train.SequenceExample.FromString(raw.numpy())
        records += 1
        frames += len(example.feature_lists.feature_list[keys.IMAGE_ENCODED].feature)
    return records, frames


def verify(data_dir: str, info: DatasetInfo) -> list[str]:
    """Re-counts every shard against the info; returns the mismatches (empty when all agree)."""
    import tensorflow as tf

    problems = []
    for split, s in sorted(info.splits.items()):
        listed = set()
        for shard in s.shards:
            path = join_path(data_dir, shard.path)
            listed.add(shard.basename)
            if not tf.io.gfile.exists(path):
                problems.append(f"{shard.path}: missing")
                continue
            size = tf.io.gfile.stat(path).length
            if size != shard.num_bytes:
                problems.append(f"{shard.path}: {size} bytes on disk, {shard.num_bytes} in dataset_info")
            try:
                records, frames = count_shard(path)
            except (tf.errors.OpError, ValueError) as e:
                problems.append(f"{shard.path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})")
                continue
            if (records, frames) != (shard.num_records, shard.num_frames):
                problems.append(f"{shard.path}: {records} records / {frames} frames in the file, "
                                f"{shard.num_records} / {shard.num_frames} in dataset_info")
        split_dir = join_path(data_dir, split)
        if tf.io.gfile.isdir(split_dir):
            for name in sorted(tf.io.gfile.listdir(split_dir)):
                if ".tfrecord" in name and name.rstrip("/") not in listed:
                    problems.append(f"{split}/{name}: shard file not listed in dataset_info")
        if sum(x.num_records for x in s.shards) != s.num_clips:
            problems.append(f"{split}: shards list {sum(x.num_records for x in s.shards)} records, "
                            f"num_clips says {s.num_clips}")
        if not s.accounting.is_balanced():
            problems.append(f"{split}: accounting does not add up")
    return problems


def run(argv: list[str] | None = None) -> int:
    """``inspect DIR [--verify]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="inspect", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="output folder of beam_jobs.convert (local or gs://...)")
    parser.add_argument("--verify", action="store_true", help="re-count records and frames in every shard")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        info = read_dataset_info(args.data_dir)
    except DatasetInfoError as e:
        print(f"inspect: error: {e}", file=sys.stderr)
        return 1
    print(format_info(info, _dead_letter_lines(args.data_dir, info)))
    if not args.verify:
        return 0
    problems = verify(args.data_dir, info)
    shards = sum(len(s.shards) for s in info.splits.values())
    if problems:
        print(f"\nverify: {len(problems)} mismatch(es) in {shards} shards:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    records = sum(s.num_clips for s in info.splits.values())
    frames = sum(s.num_frames for s in info.splits.values())
    print(f"\nverify: OK, {shards} shards, {records} records and {frames} frames match dataset_info")
    return 0


def main() -> None:
    """Console entry point: runs with ``sys.argv`` and exits with the run's status."""
    sys.exit(run())


if __name__ == "__main__":
    main()
