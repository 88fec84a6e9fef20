"""What brings on the face stage's detection passes and what one costs (issue 18 point 6).

On cheap-to-decode footage detection is the conversion's largest cost after decoding (``docs/convert_speed.md``).
This runs the conversion's face stage (its defaults, or ``--beam_args``) over the first ``--frames`` frames of the
bench material, in one process with one decoding thread, and prints one JSON line with:

* the passes per frame, by what brought each on (:data:`beam_jobs.faces.stage.PASS_REASONS`: a shot cut, the held
  face's region changing by more than ``redetect_change``, the ``detect_every`` schedule);
* CPU milliseconds per pass in the detector (``detect_faces``: fitting the window or frame to the model's input, the
  model, decoding its outputs, NMS), and of it TF Lite's ``Invoke``;
* how far the face had moved when the region-change test brought a pass on: the IoU of the box held on the frame
  before with the box after the pass (low: the pass moved the box; near 1: it found the face where it was held).

With ``--score`` it also runs, on the same decoded frames, the same stage detecting on every frame (a new pass each
frame, no box held between passes: what the schedule saves work against) and prints how far the measured stage's
faces are from it: the box centre's offset in box sides, the worse eye's distance from its place in the reference
in eye distances, the crops' mean absolute difference in grey levels (each a mean and a 90th percentile over the
frames where both have a face), and the frames where only one of them has a face. That prices a cheaper schedule or detector in
crop quality, not only in CPU.

``--near_input N`` sets the face stage's ``near_input`` (the conversion's ``--near_input``, default 128, the
model's own): passes near a held face run the short-range BlazeFace model with its input
resized to N pixels, on a window of N / 64 face sides, so the face keeps its 64 pixels. The ``--score`` reference
always runs them at the model's own 128, so every N is scored against the same faces.

```
python bench/face_passes.py --material megamind_native --frames 3000
python bench/face_passes.py --material megamind_native --frames 3000 --score
python bench/face_passes.py --material astronaut --seconds 30 --frames 900 --score --near_input 96
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import cv2
import numpy as np
import videos as bench_videos  # bench/videos.py: this script's folder is on the path.
from convert import TimedCalls, face_stage_config  # bench/convert.py

from beam_jobs.faces import detectors
from beam_jobs.faces import stage as faces
from beam_jobs.media.video import FrameStatus, VideoReader

# The --score reference's near passes: the short-range model's own input, whatever the measured stage's near_input.
REFERENCE_NEAR_INPUT = detectors.SHORT_RANGE_INPUT


def _xywh(bbox) -> faces.Box:
    """A :class:`beam_jobs.faces.stage.Face` bbox ``(ymin, xmin, ymax, xmax)`` as ``(x, y, w, h)`` for ``faces.iou``."""
    ymin, xmin, ymax, xmax = bbox
    return xmin, ymin, xmax - xmin, ymax - ymin


class Agreement:
    """How far one stage's faces are from a reference stage's, frame by frame (``--score``)."""

    def __init__(self):
        self.centre, self.eyes, self.crop = [], [], []
        self.presence_differs = 0

    def add(self, ref: faces.Face, got: faces.Face, height: int, width: int) -> None:
        if (ref.bbox is None) != (got.bbox is None):
            self.presence_differs += 1
            return
        if ref.bbox is None:
            return
        (ry0, rx0, ry1, rx1), (gy0, gx0, gy1, gx1) = ref.bbox, got.bbox
        side = max((ry1 - ry0) * height, (rx1 - rx0) * width)
        offset = np.hypot((ry0 + ry1 - gy0 - gy1) / 2 * height, (rx0 + rx1 - gx0 - gx1) / 2 * width)
        self.centre.append(offset / side)
        if ref.keypoints is not None and got.keypoints is not None:
            pixels = np.float32((width, height))
            eye_distance = np.hypot(*((ref.keypoints[1] - ref.keypoints[0]) * pixels))
            offsets = (got.keypoints[:2] - ref.keypoints[:2]) * pixels  # [2 eyes, (x, y)] in pixels.
            self.eyes.append(float(np.hypot(offsets[:, 0], offsets[:, 1]).max()) / eye_distance)
        self.crop.append(float(np.abs(ref.crop.astype(np.float32) - got.crop.astype(np.float32)).mean()))

    def summary(self) -> dict:
        def mean_p90(values):
            return [round(float(np.mean(values)), 4), round(float(np.quantile(values, 0.9)), 4)] if values else None

        return {"frames_with_face_in_both": len(self.centre), "presence_differs": self.presence_differs,
                "centre_offset_box_sides_mean_p90": mean_p90(self.centre),
                "eye_offset_eye_distances_mean_p90": mean_p90(self.eyes),
                "crop_abs_diff_grey_levels_mean_p90": mean_p90(self.crop)}


def measure(path: str, config: faces.FaceStageConfig, max_frames: int, score: bool = False) -> dict:
    cv2.setNumThreads(1)
    detector = config.build_detector()
    invoke_seconds = [0.0]
    nets = [*getattr(detector, "_nets", {}).values(), getattr(detector, "_near", None)]
    for net in {id(n): n for n in nets if n is not None}.values():  # BlazeFace's models: time each one's Invoke.
        def timed_invoke(inner=net._interpreter.invoke):
            started = time.thread_time()
            inner()
            invoke_seconds[0] += time.thread_time() - started

        net._interpreter.invoke = timed_invoke
    timed_detector = TimedCalls(detector)  # Its detect_faces: window or frame in, faces out.
    cropper = faces.FaceCropper.from_config(config, None, detector=timed_detector)
    # The reference: the same stage with a pass on every frame (its own detector, so it is not timed).
    reference = faces.FaceCropper.from_config(dataclasses.replace(
        config, detect_every=1, redetect_change=None, near_input=REFERENCE_NEAR_INPUT), None) if score else None
    agreement = Agreement()
    moved = []
    frames = 0
    previous = None
    with VideoReader(path, threads=1) as video:
        while frames < max_frames:
            frame = video.next_frame()
            if frame.status is FrameStatus.END:
                break
            if frame.status is FrameStatus.CORRUPT:
                continue
            frames += 1
            changes = cropper.passes_by_reason[faces.PASS_CHANGE]
            face = cropper.process(frame.image, crop=score)
            if reference is not None:
                agreement.add(reference.process(frame.image), face, *frame.image.shape[:2])
            if cropper.passes_by_reason[faces.PASS_CHANGE] > changes and previous is not None and face.bbox:
                moved.append(faces.iou(_xywh(previous), _xywh(face.bbox)))
            previous = face.bbox
    passes = cropper.detections_run
    invoke_seconds = invoke_seconds[0]
    quantiles = np.quantile(moved, [0.1, 0.5, 0.9]).round(3).tolist() if moved else None
    return {"frames": frames, "passes": passes, "passes_per_frame": round(passes / max(1, frames), 4),
            "passes_by_reason": dict(cropper.passes_by_reason),
            "detection_ms_per_pass": round(1e3 * timed_detector.seconds / max(1, passes), 3),
            "invoke_ms_per_pass": round(1e3 * invoke_seconds / max(1, passes), 3),
            "around_invoke_ms_per_pass": round(1e3 * (timed_detector.seconds - invoke_seconds) / max(1, passes), 3),
            "detection_ms_per_frame": round(1e3 * timed_detector.seconds / max(1, frames), 4),
            "region_change_iou_q10_q50_q90": quantiles,
            **({"vs_a_pass_on_every_frame": agreement.summary()} if score else {})}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--material", choices=sorted(bench_videos.MATERIALS), default="megamind_native")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the material video (default 180)")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--beam_args", default="", help="convert flags that shape the face stage, e.g. "
                        "'--redetect_change 0.12'")
    parser.add_argument("--score", action="store_true",
                        help="also score the faces against the same stage detecting on every frame")
    parser.add_argument("--near_input", type=int, default=None,
                        help="the face stage's near_input (the convert flag's; default: the conversion's default)")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    args = parser.parse_args(argv)
    near = [] if args.near_input is None else ["--near_input", str(args.near_input)]  # The convert flag itself.
    try:
        config, _ = face_stage_config([*args.beam_args.split(), *near])
    except ValueError as e:
        parser.error(str(e))
    path, _ = bench_videos.make_videos(args.material, args.seconds, None, args.cache_dir)
    started = time.process_time()
    result = {"material": args.material, "video": path, "face_stage": config.to_dict(),
              **measure(path, config, args.frames, args.score), "load_average": os.getloadavg()[0]}
    result["cpu_seconds"] = round(time.process_time() - started, 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
