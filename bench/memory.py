"""Peak memory of the conversion on a long video vs a short one: it stays flat.

Example::

    python bench/memory.py                       # 20 min and 30 s of 720p with a real face
    python bench/memory.py --minutes 3           # a quicker look
    python bench/memory.py --material megamind   # the looped real trailer instead

Both videos come from ``bench/videos.py`` (the short one is the first ``--short_seconds`` of
the long one; both cached under ``--cache_dir``; generating 20 minutes of 720p takes a few
minutes) and are labelled on every frame. Each conversion runs in a fresh process on the
DirectRunner in ``in_memory`` mode, so that one process is the worker *and* the runner (the
worst case: the runner's shuffle lives in the same memory); its peak resident memory
(``VmHWM``) is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import videos as bench_videos  # bench/videos.py: this script's folder is on the path.

REPO = pathlib.Path(__file__).resolve().parents[1]


def layout(video: pathlib.Path, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = 0
    while cap.grab():  # The container's frame count is an estimate for some formats; count them.
        frames += 1
    cap.release()
    vdir = root / "videos"
    adir = root / "annotations" / "EXPR_Classification_Challenge" / "Train_Set"
    vdir.mkdir(parents=True)
    adir.mkdir(parents=True)
    os.symlink(os.path.abspath(video), vdir / "long.mp4")
    lines = ["Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"]
    lines += [str((i // 150) % 8) for i in range(frames)]
    (adir / "long.txt").write_text("\n".join(lines) + "\n")
    return root / "annotations", vdir, frames


def child(ann: str, videos: str, output: str) -> None:
    """Runs one conversion in this process and prints its peak RSS as JSON."""
    sys.path.insert(0, str(REPO))
    from beam_jobs import convert

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = convert.run(["--videos", videos, "--annotations", ann, "--output", output, "--runner", "DirectRunner",
                          "--direct_running_mode", "in_memory", "--direct_num_workers", "1", "--progress_every", "0"])
    seconds = time.perf_counter() - started
    peak_kib = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak_kib = int(line.split()[1])
    info = json.loads(pathlib.Path(output, "dataset_info.json").read_text())
    written = sum(s["accounting"]["written_frames_with_face"] + s["accounting"]["written_frames_without_face"]
                  for s in info["splits"].values())
    output_bytes = sum(p.stat().st_size for p in pathlib.Path(output).rglob("*") if p.is_file())
    print(json.dumps({"rc": rc, "peak_rss_mib": peak_kib / 1024, "frames": written, "seconds": seconds,
                      "output_mib": output_bytes / 2**20}))


def measure(video: str) -> dict:
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        ann, vdir, _ = layout(video, root)
        out = subprocess.run([sys.executable, __file__, "--child", str(ann), str(vdir), str(root / "out")],
                             capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"conversion of {video} failed:\n{out.stderr[-3000:]}")
        return json.loads(lines[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the long video (default 20)")
    parser.add_argument("--short_seconds", type=float, default=30.0, help="length of the short video (default 30)")
    parser.add_argument("--material", default="astronaut", choices=bench_videos.MATERIALS)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-videos"))
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", nargs=3, metavar=("ANN", "VIDEOS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    started = time.perf_counter()
    long_video, short_video = bench_videos.make_videos(args.material, args.minutes * 60, args.short_seconds,
                                                       args.cache_dir)
    print(f"material: {bench_videos.describe(args.material)} (ready in {time.perf_counter() - started:.0f} s)")
    short = measure(short_video)
    long = measure(long_video)
    for name, r in (("short", short), ("long", long)):
        print(f"{name}: {r['frames']} frames of {bench_videos.size_label(args.material)},"
              f" output {r['output_mib']:.1f} MiB,"
              f" {r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    ratio = long["peak_rss_mib"] / short["peak_rss_mib"]
    print(f"long/short: {long['frames'] / max(1, short['frames']):.0f}x the frames, "
          f"{long['output_mib'] / max(1e-9, short['output_mib']):.0f}x the output, peak RSS {ratio:.2f}x")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"short": short, "long": long, "rss_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
