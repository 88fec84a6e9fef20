"""What decoding costs per frame, and how much of it is the whole frame's colour conversion (issue 18 point 6).

The conversion's workers decode with OpenCV (``VideoCapture``: FFmpeg, one thread each) and get every frame as BGR,
although the face stage reads only a few small regions of it. This measures, in one process with one decoding
thread, CPU milliseconds per frame of the same frames of the bench material (``bench/videos.py``):

* ``opencv_read``: ``VideoCapture.read``, decode and the whole frame's YUV→BGR (swscale), as the workers now.
* ``opencv_grab``: ``VideoCapture.grab``, the decode alone (OpenCV gives no access to the YUV planes: with
  ``CAP_PROP_CONVERT_RGB`` off it returns the Y plane only).
* ``pyav_yuv``: PyAV (``av``, FFmpeg's own bindings; not a dependency of the project, ``pip install av``), decoding
  to the frame's YUV 4:2:0 planes, viewed without a copy.
* ``pyav_yuv_region_bgr``: the same, plus OpenCV's I420→BGR of one centred square region of ``--region`` pixels (a
  face crop's source region or a detector window: what a reader that converts only regions would pay per region).

Rounds alternate the readers so that load moves them alike; the figures are each reader's median over the rounds.

```
python bench/decoders.py --material megamind_native --frames 3000 --rounds 3
```
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import videos  # bench/videos.py: this script's folder is on the path.


def _opencv(path: str, frames: int, convert: bool) -> float:
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
    started = time.process_time()
    done = 0
    while done < frames and (cap.read()[0] if convert else cap.grab()):
        done += 1
    spent = time.process_time() - started
    cap.release()
    return spent / max(1, done)


def _i420(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes of a PyAV yuv420p frame as arrays viewing its buffers (rows padded to the line size)."""
    planes = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        planes.append(rows[:, :plane.width])
    return planes[0], planes[1], planes[2]


def _to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """OpenCV's I420→BGR of planes of even size (the I420 layout: Y rows, then U, then V, each contiguous)."""
    import cv2

    h, w = y.shape
    packed = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
    return cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420)


def _pyav(path: str, frames: int, convert: bool, region: int) -> float:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        started = time.process_time()
        done = 0
        for frame in container.decode(stream):
            y, u, v = _i420(frame)
            if convert:
                side = min(region, y.shape[0], y.shape[1]) // 4 * 4
                y0, x0 = (y.shape[0] - side) // 4 * 2, (y.shape[1] - side) // 4 * 2
                _to_bgr(y[y0:y0 + side, x0:x0 + side], u[y0 // 2:(y0 + side) // 2, x0 // 2:(x0 + side) // 2],
                        v[y0 // 2:(y0 + side) // 2, x0 // 2:(x0 + side) // 2])
            done += 1
            if done >= frames:
                break
        return (time.process_time() - started) / max(1, done)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--material", choices=sorted(videos.MATERIALS), default="megamind_native")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the material video (default 180)")
    parser.add_argument("--frames", type=int, default=3000, help="frames decoded per reader and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--region", type=int, default=256, help="side of the region converted (default 256)")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)  # One thread, as in the conversion's workers.
    path, _ = videos.make_videos(args.material, args.seconds, None, args.cache_dir)
    readers = {"opencv_read": lambda: _opencv(path, args.frames, True),
               "opencv_grab": lambda: _opencv(path, args.frames, False)}
    try:
        import av  # noqa: F401 - only whether it is there
    except ImportError:
        print("[decoders] PyAV is not installed (pip install av): its readers are left out", file=sys.stderr)
    else:
        readers.update({"pyav_yuv": lambda: _pyav(path, args.frames, False, args.region),
                        "pyav_yuv_region_bgr": lambda: _pyav(path, args.frames, True, args.region)})
    rounds = {name: [] for name in readers}
    for _ in range(args.rounds):
        for name, read in readers.items():
            rounds[name].append(1e3 * read())
    result = {"material": args.material, "video": path, "frames": args.frames, "region": args.region,
              "load_average": os.getloadavg()[0],
              "cpu_ms_per_frame": {name: round(statistics.median(ms), 3) for name, ms in rounds.items()},
              "rounds": {name: [round(ms, 3) for ms in values] for name, values in rounds.items()}}
    for name, ms in result["cpu_ms_per_frame"].items():
        print(f"{name:22s} {ms:6.3f} CPU ms a frame (rounds {', '.join(f'{v:.3f}' for v in result['rounds'][name])})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
