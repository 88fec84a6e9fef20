"""The extra decoding pass of a video labelled by time segments, against decoding it, in the same run.

A manifest video with ``start``/``end`` segments is decoded once more before it is converted, to read when each
frame is shown (:func:`beam_jobs.media.video.probe_video`, decoding without colour conversion): its segments then
label the frames shown in them, also at a variable frame rate. This bench prices that pass as a ratio to the
conversion's own decode (every frame decoded to BGR, :class:`beam_jobs.media.video.VideoReader`) on the same video,
in alternating rounds, in CPU time of this process (one OpenCV thread, like a worker) and wall clock.

Example::

    python bench/presentation_times.py                      # 30 s of 720p astronaut material, 5 rounds
    python bench/presentation_times.py --material megamind --seconds 60

Material: ``bench/videos.py`` (720p MPEG-4 Part 2, cached under ``--cache_dir``). Compare the pass with the
steady-state conversion cost per frame in docs/benchmarks.md (about 3.6-4.3 ms CPU a frame, decode included).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import cv2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import videos as bench_videos  # noqa: E402  (bench/ is not a package)

from beam_jobs.media.video import FrameStatus, VideoReader, probe_video  # noqa: E402


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(work) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), _cpu_s()
    frames = work()
    return time.perf_counter() - wall, _cpu_s() - cpu, frames


def _decode(path: str) -> int:
    with VideoReader(path) as video:
        while video.next_frame().status is not FrameStatus.END:
            pass
        return video.frames_read


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--material", default="astronaut", choices=bench_videos.MATERIALS)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the video")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    path, _ = bench_videos.make_videos(args.material, args.seconds, None, args.cache_dir)
    print(f"material: {bench_videos.describe(args.material)}; {args.seconds:g} s; load average "
          f"{os.getloadavg()[0]:.1f}")
    passes, decodes = [], []
    for _ in range(args.rounds):  # Alternating, so that a change of load hits both alike.
        passes.append(_timed(lambda: probe_video(path).frames))
        decodes.append(_timed(lambda: _decode(path)))
    frames = passes[0][2]
    for name, runs in (("presentation-time pass", passes), ("decode to BGR (conversion)", decodes)):
        print(f"{name}: {1000 * statistics.median(r[1] for r in runs) / frames:.2f} ms CPU a frame, "
              f"{1000 * statistics.median(r[0] for r in runs) / frames:.2f} ms wall ({frames} frames)")
    ratio_cpu = statistics.median(p[1] / d[1] for p, d in zip(passes, decodes))
    ratio_wall = statistics.median(p[0] / d[0] for p, d in zip(passes, decodes))
    print(f"ratio pass / decode: {ratio_cpu:.2f} in CPU time, {ratio_wall:.2f} wall clock (median of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
