"""Phone-like MP4 files made on the fly: a display rotation and variable frame timing written into the container.

OpenCV's writer (``mp4v`` in ``.mp4``, ``video_fixtures.write_container_video``) writes neither, so these helpers
edit the boxes of the file it wrote, as a phone's muxer would have written them (ISO/IEC 14496-12):

* :func:`set_display_rotation`: the track header's (``tkhd``) transformation matrix, which phones set when the
  camera is held sideways: the pixels are stored as the sensor saw them, and a player turns them. FFmpeg reads it
  as the stream's display matrix (ffprobe: "displaymatrix: rotation of -90.00 degrees").
* :func:`set_frame_durations`: the sample durations (``stts``), i.e. when each frame is shown: a variable frame rate
  as phones and screen recorders write it. The durations in the movie, track and edit-list headers follow.

The file must have its ``moov`` box after ``mdat`` (OpenCV's muxer does): growing ``stts`` then moves no sample.

Example::

    path = vf.write_container_video(tmp_path / "phone.mp4", [np.rot90(f, k=-1) for f in upright])  # stored turned
    set_display_rotation(path, 90)                   # shown turned back: 90 degrees counter-clockwise
    set_frame_durations(path, [1 / 30] * 20 + [4 / 30] * 20)
"""

from __future__ import annotations

import math
import pathlib
import struct
from collections.abc import Sequence

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of every box, depth first (32-bit sizes: files of a test's size)."""
    end = len(data) if end is None else end
    found, at = [], start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        found.append((kind, at, size))
        if kind in _CONTAINERS:
            found += _boxes(data, at + 8, at + size)
        at += size
    return found


def _box(found, kind: bytes) -> tuple[int, int]:
    (offset, size), = [(o, s) for k, o, s in found if k == kind]  # One video track.
    return offset, size


def set_display_rotation(path, degrees_ccw: int) -> pathlib.Path:
    """Makes a player show the stored frames turned ``degrees_ccw`` counter-clockwise (a multiple of 90)."""
    path = pathlib.Path(path)
    data = bytearray(path.read_bytes())
    radians = math.radians(degrees_ccw)
    c, s = round(math.cos(radians)), round(math.sin(radians))
    # tkhd stores (a, b, u, c, d, v, x, y, w), 16.16 fixed point (w 2.30): FFmpeg reads [a b; c d] = [c -s; s c]
    # transposed, so a counter-clockwise turn of the picture is b = -sin, c = sin.
    matrix = (c << 16, (-s) << 16, 0, s << 16, c << 16, 0, 0, 0, 1 << 30)
    offset, _ = _box(_boxes(bytes(data)), b"tkhd")
    struct.pack_into(">9i", data, offset + 8 + 40, *matrix)  # After version/flags, times, ids, layer, volume.
    path.write_bytes(bytes(data))
    return path


def set_frame_durations(path, durations_s: Sequence[float]) -> pathlib.Path:
    """Shows frame ``i`` for ``durations_s[i]`` seconds (one entry per frame of the file)."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    found = _boxes(data)
    mdhd, _ = _box(found, b"mdhd")
    media_scale = struct.unpack_from(">I", data, mdhd + 20)[0]
    units = [round(d * media_scale) for d in durations_s]
    runs: list[list[int]] = []
    for unit in units:
        if runs and runs[-1][1] == unit:
            runs[-1][0] += 1
        else:
            runs.append([1, unit])
    stts, stts_size = _box(found, b"stts")
    if struct.unpack_from(">I", data, stts + 16)[0] != len(units):
        raise ValueError(f"{path}: {len(units)} durations for a file of another frame count")
    new = struct.pack(">I4sII", 16 + 8 * len(runs), b"stts", 0, len(runs)) + b"".join(
        struct.pack(">II", *run) for run in runs)
    grow = len(new) - stts_size
    out = bytearray(data[:stts] + new + data[stts + stts_size:])
    for kind, offset, size in found:  # The boxes that hold stts grow with it.
        if offset < stts < offset + size and kind != b"stts":
            struct.pack_into(">I", out, offset, size + grow)

    def moved(offset: int) -> int:
        return offset + grow if offset > stts else offset

    total = sum(units)
    mvhd, _ = _box(found, b"mvhd")
    movie_scale = struct.unpack_from(">I", out, moved(mvhd) + 20)[0]
    movie_total = round(total * movie_scale / media_scale)
    struct.pack_into(">I", out, moved(mdhd) + 24, total)
    struct.pack_into(">I", out, moved(mvhd) + 24, movie_total)
    struct.pack_into(">I", out, moved(_box(found, b"tkhd")[0]) + 28, movie_total)
    struct.pack_into(">I", out, moved(_box(found, b"elst")[0]) + 16, movie_total)
    path.write_bytes(bytes(out))
    return path
