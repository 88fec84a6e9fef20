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

```
python bench/face_passes.py --material megamind_native --frames 3000
```
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import cv2
import numpy as np
import videos as bench_videos  # bench/videos.py: this script's folder is on the path.
from convert import TimedCalls, face_stage_config  # bench/convert.py

from beam_jobs.faces import stage as faces
from beam_jobs.media.video import FrameStatus, VideoReader


def _xywh(bbox) -> faces.Box:
    """A :class:`beam_jobs.faces.stage.Face` bbox ``(ymin, xmin, ymax, xmax)`` as ``(x, y, w, h)`` for ``faces.iou``."""
    ymin, xmin, ymax, xmax = bbox
    return xmin, ymin, xmax - xmin, ymax - ymin


def measure(path: str, config: faces.FaceStageConfig, max_frames: int) -> dict:
    cv2.setNumThreads(1)
    detector = faces.make_detector(config.detector)
    invoke_seconds = [0.0]
    for net in getattr(detector, "_nets", {}).values():  # BlazeFace's models: time each one's Invoke.
        def timed_invoke(inner=net._interpreter.invoke):
            started = time.thread_time()
            inner()
            invoke_seconds[0] += time.thread_time() - started

        net._interpreter.invoke = timed_invoke
    timed_detector = TimedCalls(detector)  # Its detect_faces: window or frame in, faces out.
    cropper = faces.FaceCropper.from_config(config, None, detector=timed_detector)
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
            face = cropper.process(frame.image, crop=False)
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
            "region_change_iou_q10_q50_q90": quantiles}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--material", choices=sorted(bench_videos.MATERIALS), default="megamind_native")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the material video (default 180)")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--beam_args", default="", help="convert flags that shape the face stage, e.g. "
                        "'--redetect_change 0.12'")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    args = parser.parse_args(argv)
    path, _ = bench_videos.make_videos(args.material, args.seconds, min(60.0, args.seconds), args.cache_dir)
    config, _ = face_stage_config(args.beam_args.split())
    started = time.process_time()
    result = {"material": args.material, "video": path, "face_stage": config.to_dict(),
              **measure(path, config, args.frames), "load_average": os.getloadavg()[0]}
    result["cpu_seconds"] = round(time.process_time() - started, 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
