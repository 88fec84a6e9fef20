"""Peak memory of the conversion on a long video vs a short one: it stays flat.

Example::

    python bench/memory.py                       # 20 min and 30 s of generated 720p video
    python bench/memory.py --minutes 2           # a quicker look

Both videos are generated frame by frame with ``affectstream.synthetic_faces.write_video``
(cached under ``--cache_dir``, generating 20 minutes of 720p takes a while) and labelled on
every frame. Each conversion runs in a fresh process on the DirectRunner in ``in_memory``
mode, so that one process is the worker *and* the runner (the worst case: the runner's
shuffle lives in the same memory); its peak resident memory (``VmHWM``) is reported.
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

REPO = pathlib.Path(__file__).resolve().parents[1]
FPS = 30.0


def generate(path: pathlib.Path, seconds: float) -> int:
    """Writes ``seconds`` of 1280x720 video with one moving, changing face; streaming, frame by frame."""
    sys.path.insert(0, str(REPO))
    from affectstream.synthetic_faces import FaceSpec, render_frame, write_video

    n = int(seconds * FPS)

    def frames():
        for i in range(n):
            x = 640 + 300 * ((i % 300) / 300.0 - 0.5)
            yield render_frame(720, 1280, [FaceSpec(cx=x, cy=360, size=320, expression=(i // 150) % 8)])

    tmp = path.with_suffix(".part.mp4")
    count = write_video(str(tmp), frames(), FPS)
    tmp.rename(path)
    return count


def cached_video(cache: pathlib.Path, seconds: float) -> pathlib.Path:
    path = cache / f"synthetic-720p-{int(seconds)}s.mp4"
    if not path.exists():
        started = time.perf_counter()
        print(f"generating {path} ({seconds / 60:.1f} min of 720p) ...", flush=True)
        generate(path, seconds)
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def layout(video: pathlib.Path, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    vdir = root / "videos"
    adir = root / "annotations" / "EXPR_Classification_Challenge" / "Train_Set"
    vdir.mkdir(parents=True)
    adir.mkdir(parents=True)
    os.symlink(video, vdir / "long.mp4")
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


def measure(video: pathlib.Path) -> dict:
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
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "affectstream-bench-memory"))
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", nargs=3, metavar=("ANN", "VIDEOS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    cache = pathlib.Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    short = measure(cached_video(cache, args.short_seconds))
    long = measure(cached_video(cache, args.minutes * 60))
    for name, r in (("short", short), ("long", long)):
        print(f"{name}: {r['frames']} frames ({r['frames'] / FPS / 60:.1f} min of 720p), output {r['output_mib']:.1f} MiB,"
              f" {r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    ratio = long["peak_rss_mib"] / short["peak_rss_mib"]
    print(f"long/short: {long['frames'] / max(1, short['frames']):.0f}x the frames, "
          f"{long['output_mib'] / max(1e-9, short['output_mib']):.0f}x the output, peak RSS {ratio:.2f}x")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"short": short, "long": long, "rss_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
