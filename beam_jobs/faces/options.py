"""The face stage's command-line options, declared once: ``affectstream convert`` and ``affectstream import-model``.

Their defaults are :class:`beam_jobs.faces.stage.FaceStageConfig`'s; :func:`face_stage_from_args` turns the
parsed values back into that config. No OpenCV or model import: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from beam_jobs.faces.detectors import NEAR_INPUT_DETECTORS, NEAR_INPUT_STEP, SHORT_RANGE_INPUT, check_near_input
from beam_jobs.faces.stage import DETECTORS, FaceStageConfig

# The options below, by their destination name.
FACE_STAGE_OPTIONS = ("crop_size", "detector", "detect_every", "max_hold", "detect_width", "align", "redetect_change",
                      "near_input")
_DEFAULT_CROP = object()  # add_face_stage_arguments' crop_size default: FaceStageConfig's


def on_off(text: str) -> bool:
    """``on``/``off`` (any case) → True/False."""
    value = {"on": True, "off": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return value


def change_or_off(text: str) -> float | None:
    """A fraction in (0, 1], or ``off`` → None."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or off, got {text!r}")
    return value


def add_face_stage_arguments(parser, crop_size=_DEFAULT_CROP, crop_size_help: str | None = None) -> list:
    """Adds ``--crop_size``, ``--detector``, ``--detect_every``, ``--max_hold``, ``--detect_width``, ``--align``,
    ``--redetect_change`` and ``--near_input`` to ``parser`` (an ``ArgumentParser`` or a group); returns the
    argparse actions.

    Args:
        parser: Where the options go.
        crop_size: Default of ``--crop_size`` (FaceStageConfig's unless given; None: decided by the caller).
        crop_size_help: Its help text instead of the default one.
    """
    face = {f.name: f.default for f in dataclasses.fields(FaceStageConfig)}
    crop = face["crop_size"] if crop_size is _DEFAULT_CROP else crop_size
    add = parser.add_argument
    return [
        add("--crop_size", type=int, default=crop,
            help=crop_size_help or f"side of the square face crops (default {face['crop_size']})"),
        add("--detector", default=face["detector"], help=f"face detector, one of {sorted(DETECTORS)}"),
        add("--detect_every", type=int, default=face["detect_every"],
            help=f"detect every N frames, hold the box between (default {face['detect_every']})"),
        add("--max_hold", type=int, default=face["max_hold"],
            help="frames a face box is held after the detection that found it (default: until the next detection)"),
        add("--detect_width", type=int, default=face["detect_width"],
            help=f"width of the downscaled detection image (default {face['detect_width']})"),
        add("--align", type=on_off, default=face["align"], metavar="on|off",
            help="eye-aligned crops where the detector gives eyes; off: square crops around the box "
                 f"(default {'on' if face['align'] else 'off'})"),
        add("--redetect_change", type=change_or_off, default=face["redetect_change"], metavar="F|off",
            help="detect early when the held face region changes by more than F (0-1); off: only every "
                 f"--detect_every frames (default {face['redetect_change']})"),
        add("--near_input", type=int, default=face["near_input"], metavar="N",
            help="input side of the BlazeFace short-range model on the passes near a held face, a multiple of "
                 f"{NEAR_INPUT_STEP}: the window is N/64 face sides, the face kept at 64 pixels; {SHORT_RANGE_INPUT} "
                 "(the model's own, and what conversions made before this option record) costs the most CPU, a "
                 f"smaller N sees less around the face (used by {' and '.join(NEAR_INPUT_DETECTORS)}, checked for "
                 f"every detector) (default {face['near_input']})"),
    ]


def check_face_stage_options(args) -> None:
    """Raises ValueError for an unknown detector or a value out of range (the message gives the valid ones)."""
    if args.detector not in DETECTORS:
        raise ValueError(f"unknown detector {args.detector!r}; valid detectors: {sorted(DETECTORS)}")
    for name, low in (("crop_size", 8), ("detect_every", 1), ("detect_width", 32), ("max_hold", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name} must be >= {low}, got {value}")
    check_near_input(args.near_input, "--near_input")


def face_stage_from_args(args, **overrides) -> FaceStageConfig:
    """The :class:`FaceStageConfig` of the parsed options (``overrides`` win, e.g. a crop size decided later)."""
    values = {name: getattr(args, name) for name in FACE_STAGE_OPTIONS}
    return FaceStageConfig.from_dict({**values, **overrides})
