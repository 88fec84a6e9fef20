"""Face detectors and the face stage: precision/recall on real faces, speed per frame, cost profile.

Example::

    python bench/detectors.py                       # everything (MTCNN makes it take a few minutes)
    python bench/detectors.py --parts lfw speed     # some parts
    python bench/detectors.py --detectors haar blazeface --parts video stage

Parts (all on one core: interpreter threads 1, ``cv2.setNumThreads(1)``; times are CPU time
of this process, ``time.process_time``, so other load on the machine barely shifts them):

* ``lfw``: scikit-image's ``lfw_subset`` (100 real LFW faces, 100 non-faces, 25x25), each
  upscaled to 96 px in the middle of a 192 px grey square: recall (faces found) and
  precision (found faces among all images with a detection), false-positive rate on non-faces.
* ``speed``: one detection on a 720p frame with the astronaut's face (~200 px) shrunk to
  320 px wide (what ``FaceCropper`` does for a whole-frame search), and for the model
  detectors a search of the window around a known face (``near_window``), in ms.
* ``video``: ``tests/real_face_scenes.real_face_video`` (pans, zooms, +-30 deg rotation, a
  half-face occluder, cuts to face-free scenes, title cards, cuts between LFW faces) at
  240x180 and 1280x720 through ``FaceCropper``: face recall, boxes on the face, false faces.
* ``stage``: per-frame cost of the face stage on 720p frames: the shot-cut test, aligned
  and square crop and JPEG on one frame, then the whole stage (``FaceCropper.process`` +
  JPEG, detection amortised) for several ``--detect_every`` (with and without the
  ``--redetect_change`` trigger) on two 300-frame MPEG-4 Part 2 ``.mp4`` videos (a face
  panning in every frame; a face-free picture panning), each frame processed as it is
  decoded, as in the job; decoding is timed apart, for scale.

Each detector is built as the conversion builds it (``FaceStageConfig.build_detector``), with ``--near_input`` (the
face stage's default unless given) where it applies.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np
from skimage import data

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import real_face_scenes as scenes  # noqa: E402 - from tests/, put on the path just above.

from beam_jobs.faces import detectors as face_detectors  # noqa: E402
from beam_jobs.faces import stage as faces  # noqa: E402

ALL_DETECTORS = ("haar", "blazeface_short", "blazeface_full", "blazeface", "mtcnn")
MTCNN_MISSING = 'the mtcnn package is not installed (pip install -e ".[mtcnn]")'


def mtcnn_installed() -> bool:
    """Whether ``--detector mtcnn`` can be built: its package is an extra that ``make env`` does not install."""
    return importlib.util.find_spec("mtcnn") is not None


def chosen_detectors(names: list[str] | None) -> list[str]:
    """``--detectors``, or by default every detector (MTCNN only when its package is installed, with a note)."""
    if names is None:
        if mtcnn_installed():
            return list(ALL_DETECTORS)
        print(f"[detectors] mtcnn left out: {MTCNN_MISSING}", flush=True)
        return [name for name in ALL_DETECTORS if name != "mtcnn"]
    if "mtcnn" in names and not mtcnn_installed():
        raise ValueError(f"--detectors mtcnn: {MTCNN_MISSING}")
    return names


def cpu_ms(fn, repeat: int) -> float:
    """CPU milliseconds of ``fn()``: the 10th percentile of ``repeat`` calls (after one warm-up call).

    A low percentile rather than the median: on a shared machine other processes only ever
    add time (cache and memory contention), so the fast calls are the undisturbed ones.
    """
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * float(np.percentile(times, 10))


def part_lfw(detectors: dict) -> None:
    positives, negatives = scenes.lfw(faces=True), scenes.lfw(faces=False)
    print("\n## lfw_subset: 100 faces + 100 non-faces, 25 px upscaled to 96 px on a 192 px grey square")
    print(f"{'detector':<16} {'recall':>7} {'precision':>9} {'false pos.':>10}")
    for name, det in detectors.items():
        found = sum(bool(det.detect_faces(scenes.lfw_canvas(p))) for p in positives)
        false = sum(bool(det.detect_faces(scenes.lfw_canvas(p))) for p in negatives)
        precision = found / (found + false) if found + false else float("nan")
        print(f"{name:<16} {found / 100:>7.2f} {precision:>9.2f} {false / 100:>10.2f}")


def _frame_720p() -> scenes.SceneFrame:
    return scenes.place_astronaut(1280, 720, 200, (560, 360))


def part_speed(detectors: dict, repeat: int) -> None:
    frame = _frame_720p()
    small = faces.shrink(frame.image, 320, 180)
    print("\n## Detection speed, CPU ms per call, 1 thread (720p frame, face ~200 px)")
    print(f"{'detector':<16} {'whole frame @320x180':>21} {'window around face':>19} {'faces found':>12}")
    for name, det in detectors.items():
        image = small if det.wants_color else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        n = max(3, repeat // 20) if name == "mtcnn" else repeat
        whole = cpu_ms(lambda det=det, image=image: det.detect_faces(image), n)
        found = len(det.detect_faces(image))
        near = "-"
        if det.wants_color:
            x0, y0, x1, y1 = frame.face
            size = max(x1 - x0, y1 - y0)
            half = det.near_window / 2 * size
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            roi = frame.image[int(cy - half):int(cy + half), int(cx - half):int(cx + half)]
            side = int(det.near_window * det.near_face_pixels)
            lo, hi = int(0.6 * det.near_face_pixels), int(1.7 * det.near_face_pixels) + 1
            def search(det=det, roi=roi, side=side, lo=lo, hi=hi):
                return det.detect_faces(faces.shrink(roi, side, side), lo, hi)

            near = f"{cpu_ms(search, n):.2f}"
        print(f"{name:<16} {whole:>21.2f} {near:>19} {found:>12}")


def _video_rates(frames, got, width, height):
    with_face = [(f, g) for f, g in zip(frames, got) if f.face is not None]
    without = [g for f, g in zip(frames, got) if f.face is None]
    recall = sum(g.bbox is not None for _, g in with_face) / len(with_face)
    on_face = sum(g.bbox is not None and scenes.centre_in(g.bbox, f.face, width, height) for f, g in with_face)
    false = sum(g.bbox is not None for g in without) / len(without)
    by_kind = {}
    for kind in scenes.KINDS_WITH_FACE:
        pairs = [(f, g) for f, g in with_face if f.kind == kind]
        hits = sum(g.bbox is not None and scenes.centre_in(g.bbox, f.face, width, height) for f, g in pairs)
        by_kind[kind] = hits / len(pairs)
    return recall, on_face / len(with_face), false, by_kind


def _centre_offsets(frames, got, width, height) -> str:
    """Median (90th percentile) distance of box centres from the known face centres, in face widths."""
    off = []
    for f, g in zip(frames, got):
        if f.face is not None and g.bbox is not None:
            ymin, xmin, ymax, xmax = g.bbox
            dx = (xmin + xmax) / 2 * width - (f.face[0] + f.face[2]) / 2
            dy = (ymin + ymax) / 2 * height - (f.face[1] + f.face[3]) / 2
            off.append(np.hypot(dx, dy) / (f.face[2] - f.face[0]))
    return f"{np.median(off):.2f} ({np.percentile(off, 90):.2f})" if off else "-"


def part_video(detectors: dict, every: list[int], triggers: list[float | None]) -> None:
    print("\n## Real-face video (175 frames: 123 with a face, 52 without), FaceCropper, align on")
    print("k: detect_every; trigger: redetect_change; det: frames with a detection; off: median distance of")
    print("the box centre from the known face centre, in face widths (90th percentile in brackets)")
    print(f"{'detector':<16} {'size':>9} {'k':>3} {'trigger':>7} {'det':>4} {'recall':>7} {'on face':>8} "
          f"{'false':>6} {'off':>11}  on face by scene")
    for width, height in ((240, 180), (1280, 720)):
        frames = scenes.real_face_video(width, height)
        for name, det in detectors.items():
            for k, trigger in ((k, t) for k in every for t in triggers):
                if name == "mtcnn" and k < 5:
                    continue  # ~1 s per frame: too slow to matter.
                cropper = faces.FaceCropper(det, detect_every=k, align=True, redetect_change=trigger)
                got = [cropper.process(f.image) for f in frames]
                recall, on_face, false, by_kind = _video_rates(frames, got, width, height)
                kinds = " ".join(f"{kind}={v:.2f}" for kind, v in by_kind.items())
                off = _centre_offsets(frames, got, width, height)
                n_det = sum(g.status == faces.STATUS_DETECTED for g in got)
                print(f"{name:<16} {width:>4}x{height:<4} {k:>3} {trigger or '-':>7} {n_det:>4} {recall:>7.2f} "
                      f"{on_face:>8.2f} {false:>6.2f} {off:>11}  {kinds}")


def _pan_720p(n: int, with_face: bool):
    """``n`` 720p frames: the astronaut's ~200 px face panning slowly, or the coffee picture panning."""
    if with_face:
        src = scenes.astronaut()
        for t in range(n):
            yield scenes.place_astronaut(1280, 720, 200, (500 + 2 * t, 360), source=src).image
        return
    coffee = cv2.resize(data.coffee()[:, :, ::-1], (1280 + n, (1280 + n) * 2 // 3))
    top = (coffee.shape[0] - 720) // 2
    for t in range(n):
        yield np.ascontiguousarray(coffee[top:top + 720, t:t + 1280])


def _write_mp4(path: str, frames) -> None:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (1280, 720))
    for f in frames:
        writer.write(f)
    writer.release()


def _stage_ms(path: str, cropper: faces.FaceCropper | None = None) -> tuple[float, list, list]:
    """Decode ``path``, cropping + JPEG-encoding each frame as soon as it is decoded (hot, as in the job).

    Returns:
        Decode CPU ms per frame; the CPU ms of each frame's stage on frames where no detection
        ran, and on frames where one ran (whether it found a face or not).
    """
    cap = cv2.VideoCapture(path)
    decode, n = 0.0, 0
    held, detected = [], []
    while True:
        start = time.process_time()
        ok, frame = cap.read()
        decode += time.process_time() - start
        if not ok:
            break
        n += 1
        if cropper is not None:
            runs = cropper.detections_run
            start = time.process_time()
            face = cropper.process(frame)
            faces.encode_jpeg(face.crop, 90)
            spent = 1e3 * (time.process_time() - start)
            (held if cropper.detections_run == runs else detected).append(spent)
    cap.release()
    return 1e3 * decode / max(n, 1), held, detected


def part_stage(detectors: dict, every: list[int], triggers: list[float | None], repeat: int,
               repeats: int = 3) -> None:
    """Component costs, then whole-stage cost per frame (each the fastest of ``repeats`` passes)."""
    frame = _frame_720p()
    print("\n## Face stage cost on 720p frames, CPU ms, 1 thread")
    cuts = faces.ShotCutDetector()
    box = (frame.face[0], frame.face[1], frame.face[2] - frame.face[0], frame.face[3] - frame.face[1])
    crop = faces.aligned_crop(frame.image, frame.eyes, 112, box)
    print(f"shot-cut test: {cpu_ms(lambda: cuts.update(frame.image), repeat * 5):.3f}")
    print(f"aligned crop 112 px: {cpu_ms(lambda: faces.aligned_crop(frame.image, frame.eyes, 112, box), repeat):.3f}")
    print(f"square crop 112 px: {cpu_ms(lambda: faces.square_crop(frame.image, box, 112), repeat):.3f}")
    print(f"JPEG q90 112 px: {cpu_ms(lambda: faces.encode_jpeg(crop, 90), repeat * 5):.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        videos = {}
        for label, with_face in (("face", True), ("no face", False)):
            videos[label] = os.path.join(tmp, f"{label.replace(' ', '_')}.mp4")
            _write_mp4(videos[label], _pan_720p(300, with_face))
        decode = {label: min(_stage_ms(path)[0] for _ in range(repeats)) for label, path in videos.items()}
        print(f"decode (mp4v .mp4, 720p) per frame: face video {decode['face']:.3f}, "
              f"no-face video {decode['no face']:.3f}")
        print("\nFace stage per frame: FaceCropper.process + JPEG, align on, 300 frames, 3 passes. 'mean' is the")
        print("plain mean; 'quiet' = (n_other * P10(other frames) + n_det * P10(frames with a detection)) / n, the")
        print("same mix at undisturbed per-frame costs (other processes on the 2 shared cores only add time).")
        print(f"{'detector':<16} {'k':>3} {'trigger':>7} {'face: mean':>10} {'quiet':>6} {'det':>4} "
              f"{'no face: mean':>13} {'quiet':>6} {'det':>4} {'face quiet/decode':>18}")
        for name, det in detectors.items():
            if name == "mtcnn":
                continue
            for k, trigger in ((k, t) for k in every for t in triggers):
                cells = []
                for path in videos.values():
                    held, detected = [], []
                    for _ in range(repeats):
                        _, h, d = _stage_ms(path, faces.FaceCropper(det, detect_every=k, align=True,
                                                                    redetect_change=trigger))
                        held, detected = held + h, detected + d
                    n = len(held) + len(detected)
                    quiet = (len(held) * _p10(held) + len(detected) * _p10(detected)) / n
                    cells.append((float(np.mean(held + detected)), quiet, len(detected) // repeats))
                (fm, fq, fd), (nm, nq, nd) = cells
                print(f"{name:<16} {k:>3} {trigger or '-':>7} {fm:>10.3f} {fq:>6.3f} {fd:>4} {nm:>13.3f} {nq:>6.3f} "
                      f"{nd:>4} {fq / decode['face']:>18.2f}")


def _p10(values: list) -> float:
    return float(np.percentile(values, 10)) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["lfw", "speed", "video", "stage"],
                        choices=["lfw", "speed", "video", "stage"])
    parser.add_argument("--detectors", nargs="+", default=None, choices=sorted(faces.DETECTORS),
                        help="default: every one (mtcnn when its package is installed)")
    parser.add_argument("--detect_every", nargs="+", type=int, default=[5, 10, 15])
    parser.add_argument("--redetect_change", type=float, default=0.08,
                        help="Also run every detect_every with this change trigger (0: fixed schedules only).")
    parser.add_argument("--repeat", type=int, default=200, help="Timed calls per figure.")
    parser.add_argument("--near_input", type=int, default=faces.FaceStageConfig.near_input,
                        help="BlazeFace's input side near a held face, as the conversion's --near_input "
                             f"(default {faces.FaceStageConfig.near_input}; 128: the model's own)")
    args = parser.parse_args(argv)
    try:
        face_detectors.check_near_input(args.near_input, "--near_input")
        args.detectors = chosen_detectors(args.detectors)
    except ValueError as e:
        parser.error(str(e))
    cv2.setNumThreads(1)
    if "mtcnn" in args.detectors:  # MTCNN runs on TensorFlow ops: one thread too (before TF starts).
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    # Each detector as the conversion builds it (FaceStageConfig.build_detector: near_input where it applies).
    detectors = {name: faces.FaceStageConfig(detector=name, near_input=args.near_input).build_detector()
                 for name in args.detectors}
    if "lfw" in args.parts:
        part_lfw(detectors)
    if "speed" in args.parts:
        part_speed(detectors, args.repeat)
    triggers = [None] + ([args.redetect_change] if args.redetect_change else [])
    if "video" in args.parts:
        part_video(detectors, args.detect_every, triggers)
    if "stage" in args.parts:
        part_stage(detectors, args.detect_every, triggers, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
