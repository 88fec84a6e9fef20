"""Real sample footage that nobody on the team made: OpenCV's documentation videos from Debian.

Debian's ``opencv-doc`` package ships ``Megamind.avi`` (a 270-frame, 720x528 movie
trailer excerpt with a face in most frames). The demo converts it through real
face detection. It is found in, in order: the installed package, our cache
(``~/.cache/affectstream/opencv-doc``), or fetched with ``apt-get download`` and
unpacked with ``dpkg-deb`` (no root needed for either).

Example:
    python -m affectstream.real_videos
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

PACKAGE = "opencv-doc"
DATA_DIR = "usr/share/doc/opencv-doc/examples/data"
SAMPLE_VIDEOS = ("Megamind.avi",)
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "affectstream", PACKAGE)


class RealVideoUnavailable(RuntimeError):
    """The sample videos are not installed and could not be fetched; the message says why."""


def _installed(root: str) -> list[str] | None:
    paths = [os.path.join(root, DATA_DIR, name) for name in SAMPLE_VIDEOS]
    return paths if all(os.path.isfile(p) and os.path.getsize(p) > 0 for p in paths) else None


def opencv_sample_videos(cache_dir: str = DEFAULT_CACHE, fetch: bool = True) -> list[str]:
    """Paths of the real sample videos, fetching the Debian package into ``cache_dir`` if needed.

    Raises:
        RealVideoUnavailable: not installed, not cached, and ``apt-get download`` failed or is absent.
    """
    for root in ("/", cache_dir):
        found = _installed(root)
        if found:
            return found
    if not fetch:
        raise RealVideoUnavailable(f"{PACKAGE} is neither installed nor cached in {cache_dir}")
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise RealVideoUnavailable(f"{PACKAGE} is not installed and this system has no apt-get/dpkg-deb to fetch it")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True, check=False)
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if result.returncode != 0 or not debs:
            raise RealVideoUnavailable(
                f"`apt-get download {PACKAGE}` failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
                " — run `apt-get update` first, or install the package"
            )
        staging = os.path.join(tmp, "unpacked")
        subprocess.run(["dpkg-deb", "-x", os.path.join(tmp, debs[0]), staging], check=True)
        for name in SAMPLE_VIDEOS:
            target = os.path.join(cache_dir, DATA_DIR, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # A name of this process's own: two processes fetching at once (`make demo` beside `make test`) never
            # write into one partial file, and the rename puts a whole file in place either way.
            partial = f"{target}.{os.getpid()}.part"
            shutil.copyfile(os.path.join(staging, DATA_DIR, name), partial)
            os.replace(partial, target)
    found = _installed(cache_dir)
    if not found:
        raise RealVideoUnavailable(f"{PACKAGE} was fetched but holds none of {SAMPLE_VIDEOS}")
    return found


def write_placeholder_layout(video: str, root: str) -> tuple[str, str, int]:
    """An ABAW-5 layout under ``root`` for one real video, every frame labelled "Neutral".

    The labels are placeholders: they exist so that real face detection and the accounting run on
    footage nobody on the team made. Such an output is for inspecting crops, never for training.

    Returns:
        ``(videos_dir, annotations_dir, num_frames)``.
    """
    from affectstream import demo_data
    from beam_jobs.media.video import VideoError, probe_video

    try:
        frames = probe_video(video).frames  # Decodable frames, counted (a container's count can be an estimate).
    except VideoError as e:
        raise RealVideoUnavailable(f"cannot read the frames of {video}: {e}") from e
    videos = os.path.join(root, "videos")
    os.makedirs(videos, exist_ok=True)
    shutil.copyfile(video, os.path.join(videos, os.path.basename(video)))
    annotations = os.path.join(root, "annotations")
    labels = os.path.join(annotations, demo_data.EXPR_DIR, demo_data.SPLIT_DIRS["validation"])
    os.makedirs(labels, exist_ok=True)
    stem = os.path.splitext(os.path.basename(video))[0]
    with open(os.path.join(labels, stem + ".txt"), "w", encoding="utf-8") as f:
        f.write(",".join(demo_data.EXPRESSION_NAMES) + "\n")
        f.writelines("0\n" for _ in range(frames))
    return videos, annotations, frames


def main() -> int:
    try:
        for path in opencv_sample_videos():
            print(path)
    except RealVideoUnavailable as e:
        print(f"unavailable: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
