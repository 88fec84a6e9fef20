"""The embedded demo dataset: labelled face videos in the ABAW-5 layout, made on the fly.

Every label is visible in the faces (see :mod:`affectstream.synthetic_faces`), so a
model trained on the output of the conversion has something real to learn, and
the class mix is skewed like Aff-Wild2's (Neutral common, Fear rare) so the
rebalancing sampler matters. The layout exercises what the ABAW adapter must
handle: two subjects sharing one video (``_left`` / ``_right``, in training and in validation), ``.mp4``
and ``.avi`` media in nested folders, a video whose tasks fall in different splits,
unlabelled stretches (-1 / -5; in one validation video a stretch longer than two clips), a face that leaves
the picture, a frame that does not decode, and an annotation file that runs past the end of its video.

Example:
    python -m affectstream.demo_data /tmp/demo_abaw
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Iterator

import numpy as np

from beam_jobs.sources import abaw
from tfrecords_schema.cli import add_verbose_flag, command_prog

# The ABAW-3+ headers, as the adapter reads them: 8 expression classes, 12 AUs.
EXPRESSION_NAMES = abaw.EXPRESSION_NAMES_8
AU_NAMES = abaw.ACTION_UNITS_12
# Relative frequency of each expression in the demo, skewed like Aff-Wild2 (max/min 5x here).
EXPRESSION_MIX = np.array([0.25, 0.08, 0.07, 0.05, 0.18, 0.15, 0.09, 0.13])
# Valence each expression leans to, so VA and expression agree the way people expect.
EXPRESSION_VALENCE = np.array([0.0, -0.6, -0.5, -0.7, 0.8, -0.6, 0.3, 0.1])

EXPR_DIR = "EXPR_Classification_Challenge"
VA_DIR = "VA_Estimation_Challenge"
AU_DIR = "AU_Detection_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}


@dataclasses.dataclass(frozen=True)
class DemoVideo:
    """One video of the demo and how its subjects are annotated.

    Attributes:
        media: Path of the media file relative to the videos root.
        subjects: Annotation names, ``("<stem>",)`` or ``("<stem>_left", "<stem>_right")``.
        expr_split: Split of the expression annotations (None: not annotated).
        va_split: Split of the valence/arousal annotations.
        au_split: Split of the action-unit annotations.
        extra_lines: Annotation lines past the last frame (bad input the job must account for).
        long_gap: Leave frames 25 %-70 % of every track unlabelled (whole clips are then not written).
        corrupt_frames: 1-based frames whose JPEG data is destroyed (an ``.avi`` video): they do not decode.
    """

    media: str
    subjects: tuple[str, ...]
    expr_split: str | None = "train"
    va_split: str | None = "train"
    au_split: str | None = "train"
    extra_lines: int = 0
    long_gap: bool = False
    corrupt_frames: tuple[int, ...] = ()


def demo_videos(num_train: int = 16, frames_per_video: int = 150) -> list[DemoVideo]:
    """The demo's videos: ``num_train`` for training, three for validation (one of two people, one with a long
    unlabelled stretch and a frame that does not decode), one split across tasks."""
    videos = []
    for i in range(num_train):
        ext = ".avi" if i % 3 == 2 else ".mp4"
        stem = f"{i + 1}-30-320x240" if i != 1 else "video_two_people"
        subjects = (f"{stem}_left", f"{stem}_right") if i == 1 else (stem,)
        videos.append(DemoVideo(f"batch{i % 2 + 1}/{stem}{ext}", subjects, extra_lines=12 if i == 0 else 0))
    videos.append(DemoVideo("batch1/val-30-320x240.mp4", ("val-30-320x240",), "validation", "validation", "validation"))
    videos.append(DemoVideo("batch2/val_b.avi", ("val_b",), "validation", "validation", "validation", long_gap=True,
                            corrupt_frames=(frames_per_video - 12,)))
    videos.append(DemoVideo("batch1/val_duo.mp4", ("val_duo_left", "val_duo_right"), "validation", "validation",
                            "validation"))
    # Expressions in validation, valence/arousal in train: the adapter must keep each label in its own split.
    videos.append(DemoVideo("batch2/mixed_split.mp4", ("mixed_split",), "validation", "train", None))
    return videos


@dataclasses.dataclass
class _SubjectTrack:
    expression: np.ndarray  # int [N]
    valence_arousal: np.ndarray  # float [N, 2]
    action_units: np.ndarray  # int [N, 12]
    centre: np.ndarray  # float [N, 2], pixels
    size: np.ndarray  # float [N]
    visible: np.ndarray  # bool [N]


def _subject_track(
    rng: np.random.Generator, n: int, home_x: float, home_y: float, unlabelled: bool, every_class: bool,
    long_gap: bool = False,
) -> _SubjectTrack:
    expression = np.empty(n, np.int64)
    t = 0
    # Training videos draw classes with the skewed mix; validation videos cycle through every class so the
    # whole-set metrics cover all of them.
    cycle = rng.permutation(len(EXPRESSION_MIX))
    while t < n:
        seg = int(rng.integers(12, 30))
        if every_class:
            expression[t:t + seg] = cycle[0]
            cycle = np.roll(cycle, -1)
        else:
            expression[t:t + seg] = rng.choice(len(EXPRESSION_MIX), p=EXPRESSION_MIX / EXPRESSION_MIX.sum())
        t += seg
    phase = rng.uniform(0, 2 * math.pi)
    time = np.arange(n)
    valence = np.clip(EXPRESSION_VALENCE[expression] + 0.15 * np.sin(time / 17.0 + phase), -1, 1)
    arousal = np.clip(0.7 * np.sin(time / 23.0 + 2 * phase) + 0.1 * rng.standard_normal(n), -1, 1)
    action_units = np.zeros((n, len(AU_NAMES)), np.int64)
    for k in range(len(AU_NAMES)):
        t = 0
        while t < n:
            seg = int(rng.integers(15, 60))
            action_units[t:t + seg, k] = int(rng.random() < 0.3)
            t += seg
    centre = np.stack([home_x + 18 * np.sin(time / 29.0 + phase), home_y + 10 * np.cos(time / 31.0 + phase)], 1)
    size = 118 + 14 * np.sin(time / 41.0 + phase)
    visible = np.ones(n, bool)
    if unlabelled:
        # The face leaves the picture for a while, and a stretch is not annotated at all.
        gone = int(rng.integers(n // 4, n // 2))
        visible[gone:gone + 15] = False
        hole = int(rng.integers(n // 2, 3 * n // 4))
        expression[hole:hole + 20] = -1
        valence[hole:hole + 20] = -5.0
        arousal[hole:hole + 20] = -5.0
        action_units[hole:hole + 20] = -1
    if long_gap:
        gap = slice(n // 4, n * 7 // 10)
        expression[gap], valence[gap], arousal[gap], action_units[gap] = -1, -5.0, -5.0, -1
    return _SubjectTrack(expression, np.stack([valence, arousal], 1).astype(np.float32), action_units, centre, size, visible)


def _frames(tracks: list[_SubjectTrack], height: int, width: int, background, seed: int) -> Iterator[np.ndarray]:
    from affectstream.synthetic_faces import FaceSpec, render_frame  # Late import (OpenCV): see run().

    n = len(tracks[0].expression)
    for i in range(n):
        faces = [
            FaceSpec(
                cx=float(tr.centre[i, 0]), cy=float(tr.centre[i, 1]), size=float(tr.size[i]),
                expression=int(tr.expression[i]), valence=float(tr.valence_arousal[i, 0]),
                arousal=float(tr.valence_arousal[i, 1]), action_units=tuple(int(a) for a in tr.action_units[i]),
            )
            for tr in tracks
            if tr.visible[i]
        ]
        yield render_frame(height, width, faces, background=background, noise_seed=seed * 100003 + i)


def _write_annotation(path: str, header: str, rows: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        f.writelines(row + "\n" for row in rows)


def check_sizes(frames_per_video: int, num_train_videos: int) -> None:
    """Raises ValueError (one line naming the option) for a size the demo dataset cannot have."""
    if frames_per_video < 60:  # The drawn expressions change every 12-30 frames; annotation tails need room.
        raise ValueError(f"--frames_per_video must be >= 60, got {frames_per_video}")
    if num_train_videos < 1:
        raise ValueError(f"--num_train_videos must be >= 1, got {num_train_videos}")


def make_demo_dataset(root: str, *, frames_per_video: int = 150, num_train_videos: int = 16, seed: int = 0) -> dict:
    """Writes the demo dataset under ``root`` (``videos/`` and ``annotations/``).

    Args:
        root: Output folder (created).
        frames_per_video: Frames of each video (30 fps).
        num_train_videos: Training videos (three validation videos and one mixed-split video are added).
        seed: Seed of every random choice; the same seed gives the same files.

    Returns:
        ``{"videos": dir, "annotations": dir, "num_videos": n, "num_frames": total}``.
    """
    check_sizes(frames_per_video, num_train_videos)
    from affectstream.synthetic_faces import write_video  # Late import (OpenCV): see run().

    videos_dir = os.path.join(root, "videos")
    ann_dir = os.path.join(root, "annotations")
    total = 0
    for v_index, video in enumerate(demo_videos(num_train_videos, frames_per_video)):
        rng = np.random.default_rng([seed, v_index])
        two = len(video.subjects) == 2
        width = 480 if two else 320
        homes = [(120.0, 120.0), (360.0, 120.0)] if two else [(160.0, 120.0)]
        tracks = [
            _subject_track(rng, frames_per_video, hx, hy, unlabelled=(v_index % 2 == 0),
                           every_class=(video.expr_split == "validation"), long_gap=video.long_gap)
            for hx, hy in homes
        ]
        background = tuple(int(c) for c in rng.integers(40, 140, 3))
        media_path = os.path.join(videos_dir, video.media)
        os.makedirs(os.path.dirname(media_path), exist_ok=True)
        total += write_video(media_path, _frames(tracks, 240, width, background, seed * 1000 + v_index), fps=30)
        if video.corrupt_frames:
            from affectstream.synthetic_faces import corrupt_mjpeg_frames

            corrupt_mjpeg_frames(media_path, video.corrupt_frames)
        for name, tr in zip(video.subjects, tracks):
            pad = video.extra_lines

            def rows(fmt, values, invalid, pad=pad):
                return [fmt(values[i]) for i in range(frames_per_video)] + [invalid] * pad

            if video.expr_split:
                _write_annotation(
                    os.path.join(ann_dir, EXPR_DIR, SPLIT_DIRS[video.expr_split], name + ".txt"),
                    ",".join(EXPRESSION_NAMES), rows(lambda e: str(int(e)), tr.expression, "4"),
                )
            if video.va_split:
                _write_annotation(
                    os.path.join(ann_dir, VA_DIR, SPLIT_DIRS[video.va_split], name + ".txt"),
                    "valence,arousal", rows(lambda va: f"{va[0]:.3f},{va[1]:.3f}", tr.valence_arousal, "0.5,0.5"),
                )
            if video.au_split:
                _write_annotation(
                    os.path.join(ann_dir, AU_DIR, SPLIT_DIRS[video.au_split], name + ".txt"),
                    ",".join(AU_NAMES), rows(lambda a: ",".join(str(int(x)) for x in a), tr.action_units,
                                            ",".join(["0"] * len(AU_NAMES))),
                )
    return {"videos": videos_dir, "annotations": ann_dir,
            "num_videos": len(demo_videos(num_train_videos, frames_per_video)),
            "num_frames": total}


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_prog("affectstream.demo_data"), description=__doc__.split("\n")[0])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--frames_per_video", type=int, default=150)
    parser.add_argument("--num_train_videos", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_verbose_flag(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and why (an option that is not a number, say).
        return int(e.code or 0)
    try:
        summary = make_demo_dataset(args.root, frames_per_video=args.frames_per_video,
                                    num_train_videos=args.num_train_videos, seed=args.seed)
    except ValueError as e:
        print(f"make-demo-data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # The folder cannot be written (a file in the way, no permission, a full disk).
        print(f"make-demo-data: error: {args.root}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"demo dataset: {summary['num_videos']} videos, {summary['num_frames']} frames under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
